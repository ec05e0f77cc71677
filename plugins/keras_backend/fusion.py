"""``tle fuse`` for CNNs: heads trained on one frozen backbone, merged into one head over the union of the classes.

Only heads that read the same features can be fused, so the backbones (every
non-head weight and BatchNorm statistic) must hash alike: the second run
trained with ``--strategy feature-extractor --weights runs:/BACKBONE`` like the
first. The ranking and the merge are ``tle.contract.head_fusion``'s (shared with
the torch backend); this file reads the heads out of a :class:`KerasNet` and
builds the fused one: the first model's backbone and a head of the same kind.
Keras keeps a Dense kernel as ``(inputs, outputs)``; the shared code wants
torch's ``(outputs, inputs)``, hence the transposes.
"""

from __future__ import annotations

import hashlib

import numpy as np

from tle.contract.records import Blueprint, ResolvedWeights
from tle.contract.spec import HeadSpec
from tle.contract.head_fusion import HeadArrays, check_models, merge
from tle_keras.heads import NEW_LAST
from tle_keras.models import build
from tle_keras.wrapper import HEAD, KerasNet

_LAYERS = {"dense": ("head_fc1", NEW_LAST), "linear": (NEW_LAST,)}
_PRECISION = {"mixed_bfloat16": "bf16", "mixed_float16": "fp16"}


def backbone_hash(knet: KerasNet) -> str:
    digest = hashlib.sha256()
    for block in knet.block_names:
        for layer in knet.layers_of(block):
            for v in layer.weights:
                a = np.ascontiguousarray(np.asarray(v))
                # Keras numbers unnamed layers per process, so the position names a weight, not its path.
                digest.update(f"{block}:{v.name}:{a.dtype}:{a.shape}".encode())
                digest.update(a.tobytes())
    return digest.hexdigest()


def head_kind(knet: KerasNet) -> str:
    weighted = sorted(layer.name for layer in knet.layers_of(HEAD) if layer.weights)
    for kind, layers in _LAYERS.items():
        if weighted == sorted(layers) and type(knet.net.get_layer(NEW_LAST)).__name__ == "Dense":
            return kind
    return "original"


def head_arrays(knet: KerasNet, kind: str, class_names: list[str]) -> HeadArrays:
    def arrays(name):
        kernel, bias = knet.net.get_layer(name).get_weights()
        return np.asarray(kernel, np.float32).T, np.asarray(bias, np.float32)

    out_w, out_b = arrays(NEW_LAST)
    if kind == "linear":
        return HeadArrays(kind, out_w, out_b, list(class_names))
    hidden_w, hidden_b = arrays("head_fc1")
    return HeadArrays(kind, out_w, out_b, list(class_names), hidden_w, hidden_b)


def fuse(models: list[KerasNet], class_names: list[list[str]], keep: float = 0.5, ratio: float = 0.1,
         concatenate: bool = False) -> KerasNet:
    kind = check_models(models, head_kind, backbone_hash)
    merged = merge([head_arrays(m, kind, n) for m, n in zip(models, class_names)], 1.0 if concatenate else keep, ratio)
    first = models[0]
    dropout = float(first.net.get_layer("head_dropout").rate) if kind == "dense" else 0.0
    spec = HeadSpec(kind=kind, hidden=max(1, merged.units), dropout=dropout)
    # The logits layer is float32 in every policy; a backbone layer tells the one the first model was built with.
    precision = _PRECISION.get(first.layers_of(first.block_names[0])[0].dtype_policy.name, "fp32")
    fused = build(Blueprint(first.model_name, tuple(merged.classes), first.input_shape, spec, precision=precision),
                  ResolvedWeights(kind="none"))
    for block in first.block_names:
        for source, target in zip(first.layers_of(block), fused.layers_of(block), strict=True):
            if source.weights:
                target.set_weights(source.get_weights())
    layers = _LAYERS[kind]
    if kind == "dense":
        fused.net.get_layer(layers[0]).set_weights([merged.hidden_w.T, merged.hidden_b])
    fused.net.get_layer(layers[-1]).set_weights([merged.out_w.T, merged.out_b])
    fused.new_head = []  # the head is trained knowledge: apply_init must not redraw it
    fused.provenance = merged.provenance
    return fused
