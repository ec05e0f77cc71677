"""The network's synapses as one file (``weights.pt``: conv1, conv2, head), and loading them back.

conv1-conv2 always transfer; the head (conv3) is kept only when the source
run's class names equal the new data's, as in every backend. A head whose rows
are a multiple of the classes (a fused network keeps fewer neurons per class)
brings its own neurons-per-class.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tle import UserError

SAVED_NAME = "weights.pt"
BLOCKS = ("conv1", "conv2")


def read(path: Path, source: str) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"cannot read weights file {source} ({type(exc).__name__})",
                        "use a weights.pt written by a spyketorch run (runs:/RUN_ID)") from None
    if not isinstance(state, dict) or not all(k in state for k in BLOCKS):
        raise UserError(f"{source} holds no spiking network (no conv1/conv2 synapses)",
                        "use a weights.pt written by a spyketorch run (runs:/RUN_ID)")
    return state


def load_into(net, state: dict[str, torch.Tensor], source: str, saved_classes, class_names) -> None:
    for block in BLOCKS:
        own = net.synapses(block)
        if tuple(state[block].shape) != tuple(own.shape):
            raise UserError(f"weights in {source} do not fit {net.model_name}: {block} is "
                            f"{tuple(state[block].shape)} in the file but {tuple(own.shape)} in the model",
                            "use weights saved from the same model")
        own.data.copy_(state[block])
    head = state.get("head")
    same = saved_classes is not None and [str(c) for c in saved_classes] == [str(c) for c in class_names]
    if same and head is not None and head.shape[1:] == net.head.shape[1:] and head.shape[0] % len(class_names) == 0:
        net.per_class = head.shape[0] // len(class_names)
        net.head = torch.nn.Parameter(head.clone().to(net.device), requires_grad=net.head.requires_grad)
        net.new_head = False


def save(net, directory) -> str:
    path = Path(directory) / SAVED_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({b: net.synapses(b).detach().cpu().clone() for b in ("conv1", "conv2", "head")}, path)
    return str(path)
