"""Starting weights: torchvision's ImageNet weights, a user's state dict, or a file an earlier run saved.

Two file layouts are recognised by their keys:

* torchvision's (``features.0.weight``, ``layer1.0.conv1.weight`` ...): a full
  model or its backbone only (``model.features.state_dict()`` works too). It
  is loaded into the torchvision model before it is cut into blocks, block by
  block: a block must be complete, a shape must match (the error names the
  layer), blocks absent from the file keep their fresh weights (with a warning).
* this backend's own (``body.block1...``, ``head...``), written by
  ``save_weights``: the backbone is transferred; the head is kept only when the
  run's class names equal the new data's, otherwise it is new.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from tle import UserError
from tle_torch import registry

SAVED_NAME = "weights.pt"


# -- ImageNet -------------------------------------------------------------------


def imagenet_enum(name: str):
    if name in registry.SMALL:
        raise UserError(f"{name} has no ImageNet weights (it is a small test-sized model)",
                        "use --weights none, a weights file, or runs:/RUN_ID of an earlier run")
    from torchvision.models import get_model_weights

    return get_model_weights(name).DEFAULT


def imagenet_path(weights_enum) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights_enum.url)


def imagenet_model(name: str) -> nn.Module:
    """torchvision's own loading path (hub cache, download when online), with an offline message that says what to do."""
    from torchvision.models import get_model

    w = imagenet_enum(name)
    path = imagenet_path(w)
    try:
        return get_model(name, weights=w)
    except Exception as exc:  # URLError, HTTPError, a truncated file... all mean "no usable weights here"
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if path.exists():
            raise UserError(f"cached ImageNet weights {path} for {name} cannot be loaded ({reason})",
                            f"delete it and fetch {w.url} again") from None
        raise UserError(f"ImageNet weights for {name} ({w}) are not in the torch hub cache and cannot be downloaded "
                        f"({reason}): expected {path}",
                        f"download {w.url} on a machine with internet and copy it to {path} "
                        "(torch.hub.get_dir() is $TORCH_HOME/hub)") from None


# -- files ---------------------------------------------------------------------


def load_tensors(path: Path, source: str, fix: str, what: str = ""):
    """``torch.load`` of a weights file, tensors only (no pickled code), onto the CPU; an unreadable file is a
    UserError saying ``fix``. The spiking backend reads its files through it too."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"cannot read weights file {source}{what} ({type(exc).__name__})", fix) from None


def read_state_dict(path: Path, source: str) -> dict[str, torch.Tensor]:
    obj = load_tensors(path, source, "save it with torch.save(model.state_dict(), path) (a .pt/.pth file)",
                       " as a PyTorch state dict")
    if isinstance(obj, dict):
        for wrapper_key in ("state_dict", "model", "model_state_dict"):
            if isinstance(obj.get(wrapper_key), dict):
                obj = obj[wrapper_key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"{source} does not hold a state dict of tensors",
                        "save it with torch.save(model.state_dict(), path)")
    # DataParallel / DDP checkpoints prefix every key with "module.".
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def is_tle_layout(state: dict[str, torch.Tensor]) -> bool:
    return any(k.startswith("body.") for k in state)


# torchvision's DenseNet checkpoints use the old "norm.1" key style; torchvision remaps it the same way.
_DENSENET_OLD = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")


def _optional(key: str) -> bool:
    # Older checkpoints predate BatchNorm's counter; it carries no weights.
    return key.endswith("num_batches_tracked")


@dataclass(frozen=True)
class _Fit:
    """A file's ``state`` read into model ``model``'s own state dict ``own``; ``source`` names the file and
    ``name_of`` a key in messages."""

    state: dict
    own: dict
    model: str
    source: str
    name_of: Callable[[str], str] = str


def _check_block(block: str, keys: list[str], fit: _Fit) -> bool:
    """Return True when the block is in the file and fits; False when absent; raise when partial or misfit."""
    state, own, model, source, name_of = fit.state, fit.own, fit.model, fit.source, fit.name_of
    needed = [k for k in keys if not _optional(k)]
    present = [k for k in needed if k in state]
    if not present:
        return False
    absent = [k for k in needed if k not in state]
    if absent:
        raise UserError(f"{source} holds only part of {block} of {model}: layer {name_of(absent[0])} is missing",
                        "use a file saved from the same architecture")
    for k in keys:
        if k in state and tuple(state[k].shape) != tuple(own[k].shape):
            raise UserError(f"weights in {source} do not fit {model}: layer {name_of(k)} ({block}) is "
                            f"{tuple(state[k].shape)} in the file but {tuple(own[k].shape)} in the model",
                            "use weights saved from the same architecture")
    return True


def load_torchvision_layout(tv: nn.Module, name: str, state: dict[str, torch.Tensor], source: str,
                            block_map: list[tuple[str, list[str]]]) -> None:
    if registry.family(name) == "densenet":
        state = {(_DENSENET_OLD.sub(r"\1\2", k)): v for k, v in state.items()}
    own = tv.state_dict()
    if not any(k in own for k in state):
        prefixed = {f"features.{k}": v for k, v in state.items()}
        if any(k in own for k in prefixed):
            state = prefixed
        else:
            raise UserError(f"{source} holds no weights of {name}: none of its keys (e.g. {next(iter(state))}) "
                            f"is a layer of {name}", f"use a state dict saved from torchvision's {name}")
    chosen: dict[str, torch.Tensor] = {}
    missing = []
    for block, paths in block_map:
        keys = [k for k in own if any(k.startswith(p + ".") for p in paths)]
        if _check_block(block, keys, _Fit(state, own, name, source)):
            chosen.update({k: state[k] for k in keys if k in state})
        else:
            missing.append(block)
    if len(missing) == len(block_map):
        raise UserError(f"{source} holds none of the backbone blocks of {name}",
                        f"use a state dict saved from torchvision's {name}")
    # Classifier layers that fit are kept for the "original" head (its last Linear is replaced anyway).
    for k, v in state.items():
        if k not in chosen and k in own and tuple(v.shape) == tuple(own[k].shape):
            chosen[k] = v
    tv.load_state_dict(chosen, strict=False)
    if missing:
        warnings.warn(f"{source} has no weights for {', '.join(missing)} of {name}; those blocks start fresh",
                      stacklevel=2)


def load_tle_layout(net, state: dict[str, torch.Tensor], source: str, keep_head: bool) -> None:
    """Load the backbone of a file written by ``save_weights``, and its head when ``keep_head`` (the core's rule,
    :func:`tle.contract.records.same_classes`) and it fits."""
    own = net.state_dict()
    chosen: dict[str, torch.Tensor] = {}
    missing = []
    for block in net.block_names:
        keys = [k for k in own if k.startswith(f"body.{block}.")]
        if _check_block(block, keys, _Fit(state, own, net.model_name, source,
                                          name_of=lambda k: f"{k} (torchvision {net.torchvision_name(k)})")):
            chosen.update({k: state[k] for k in keys if k in state})
        else:
            missing.append(block)
    if len(missing) == len(net.block_names):
        raise UserError(f"{source} holds none of the backbone blocks of {net.model_name} (it was saved from "
                        "another model)", f"use a run or file of model {net.model_name}")
    head_keys = [k for k in own if k.startswith("head.")]
    file_head = [k for k in state if k.startswith("head.")]
    if (keep_head and sorted(head_keys) == sorted(file_head)
            and all(tuple(state[k].shape) == tuple(own[k].shape) for k in head_keys)):
        chosen.update({k: state[k] for k in head_keys})
        net.new_head = []
    else:
        # The original head's pretrained layers (VGG's fc1/fc2) come along as Keras's loader brings them: only its
        # new last layer is drawn for the new classes.
        new = tuple(f"head.{part}." for part in net.new_head)
        chosen.update({k: state[k] for k in head_keys if k in state and not k.startswith(new)
                       and tuple(state[k].shape) == tuple(own[k].shape)})
    net.load_state_dict(chosen, strict=False)
    if missing:
        warnings.warn(f"{source} has no weights for {', '.join(missing)} of {net.model_name}; those blocks start fresh",
                      stacklevel=2)


def save(net, directory) -> str:
    path = Path(directory) / SAVED_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    torch.save(state, path)
    return str(path)
