"""``tle fuse`` on TleNets, as ``tle_keras.fusion`` on KerasNets: one head over the union of the runs' classes.

Heads fuse only when they read the same features, so every run must share one
frozen backbone (its weights and BatchNorm statistics hash alike: trained with
``--strategy feature-extractor --weights runs:/BACKBONE``). ``tle.contract.head_fusion``
ranks and merges the heads as arrays; here they are read out of each TleNet,
and the fused model gets the first run's backbone and a head of its kind.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from tle.contract.records import Blueprint, ResolvedWeights
from tle.contract.spec import HeadSpec
from tle.contract.head_fusion import HeadArrays, check_models, merge
from tle_torch.models import build
from tle_torch.wrapper import HEAD, TleNet

_LAYERS = {"dense": ("fc1", "fc2"), "linear": ("fc",)}


def backbone_hash(net: TleNet) -> str:
    digest = hashlib.sha256()
    for key, value in sorted(net.state_dict().items()):
        if key.startswith(f"{HEAD}."):
            continue
        t = value.detach().to("cpu").contiguous()
        digest.update(f"{key}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.flatten().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def head_kind(net: TleNet) -> str:
    weighted = sorted({k.split(".")[0] for k, _ in net.head.named_parameters()})
    for kind, layers in _LAYERS.items():
        if weighted == sorted(layers):
            return kind
    return "original"


def head_arrays(net: TleNet, kind: str, class_names: list[str]) -> HeadArrays:
    def arr(t):
        return t.detach().to("cpu", torch.float32).numpy()

    if kind == "linear":
        return HeadArrays(kind, arr(net.head.fc.weight), arr(net.head.fc.bias), list(class_names))
    return HeadArrays(kind, arr(net.head.fc2.weight), arr(net.head.fc2.bias), list(class_names),
                      arr(net.head.fc1.weight), arr(net.head.fc1.bias))


def fuse(models: list[TleNet], class_names: list[list[str]], keep: float = 0.5, ratio: float = 0.1,
         concatenate: bool = False) -> TleNet:
    kind = check_models(models, head_kind, backbone_hash)
    merged = merge([head_arrays(m, kind, n) for m, n in zip(models, class_names)], 1.0 if concatenate else keep, ratio)
    first = models[0]
    dropout = float(first.head.dropout.p) if kind == "dense" else 0.0
    spec = HeadSpec(kind=kind, hidden=max(1, merged.units), dropout=dropout)
    fused = build(Blueprint(first.model_name, tuple(merged.classes), first.input_shape, spec),
                  ResolvedWeights(kind="none"))
    body = {k: v for k, v in first.state_dict().items() if not k.startswith(f"{HEAD}.")}
    missing, unexpected = fused.load_state_dict(body, strict=False)
    assert not unexpected and all(k.startswith(f"{HEAD}.") for k in missing), (missing, unexpected)
    layers = _LAYERS[kind]
    with torch.no_grad():
        if kind == "dense":
            _set(getattr(fused.head, layers[0]), merged.hidden_w, merged.hidden_b)
        _set(getattr(fused.head, layers[-1]), merged.out_w, merged.out_b)
    fused.new_head = []  # the head is trained knowledge: apply_init must not redraw it
    fused.provenance = merged.provenance
    device = next(first.parameters()).device
    return fused.to(device).eval()


def _set(layer: torch.nn.Linear, weight: np.ndarray, bias: np.ndarray) -> None:
    layer.weight.copy_(torch.from_numpy(np.ascontiguousarray(weight, dtype=np.float32)))
    layer.bias.copy_(torch.from_numpy(np.ascontiguousarray(bias, dtype=np.float32)))
