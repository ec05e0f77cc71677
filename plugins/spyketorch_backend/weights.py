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
from tle_torch.weights import load_tensors  # this backend is built on torch: one reader of torch files

SAVED_NAME = "weights.pt"
BLOCKS = ("conv1", "conv2")


FIX = "use a weights.pt written by a spyketorch run (runs:/RUN_ID)"


def read(path: Path, source: str) -> dict[str, torch.Tensor]:
    state = load_tensors(path, source, FIX)
    if not isinstance(state, dict) or not all(k in state for k in BLOCKS):
        raise UserError(f"{source} holds no spiking network (no conv1/conv2 synapses)", FIX)
    return state


def load_into(net, state: dict[str, torch.Tensor], source: str, keep_head: bool) -> None:
    """The synapses into ``net``; the head when ``keep_head`` (the core's rule, :func:`tle.contract.records.same_classes`)
    and its rows fit."""
    for block in BLOCKS:
        own = net.synapses(block)
        if tuple(state[block].shape) != tuple(own.shape):
            raise UserError(f"weights in {source} do not fit {net.model_name}: {block} is "
                            f"{tuple(state[block].shape)} in the file but {tuple(own.shape)} in the model",
                            "use weights saved from the same model")
        own.data.copy_(state[block])
    net.snap()  # a no-op for tle's own files: their conv1-conv2 are on the grids already
    head = state.get("head")
    classes = len(net.class_names)
    if keep_head and head is not None and head.shape[1:] == net.head.shape[1:] and head.shape[0] % classes == 0:
        net.per_class = head.shape[0] // classes
        net.head = torch.nn.Parameter(head.clone().to(net.device), requires_grad=net.head.requires_grad)
        net.new_head = False


def save(net, directory) -> str:
    path = Path(directory) / SAVED_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({b: net.synapses(b).detach().cpu().clone() for b in ("conv1", "conv2", "head")}, path)
    return str(path)
