"""Building a :class:`KerasNet`: input + preprocessing, the backbone, its block map, a head, starting weights.

Reuse in a warm sweep worker: while ``TLE_REUSE_MODELS=1`` (``tle.run.worker``
sets it around each cell, when the previous cell's model is no longer used),
the KerasNet built last is kept, and a cell asking for the same architecture
(model, classes, input shape, head, precision) gets it back with the state of a
model built just now for this cell: the new one is built as before (same seed,
same draws) and its variables are copied in. What is saved is ``fit``'s traced
train step (``KerasNet.trainers``), several seconds per new model. Anything
else that builds models (fusion, export, ``tle inspect``) never sets it, so its
models are never shared.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from dataclasses import replace

from tle import UserError
from tle.contract.helpers import image_shape
from tle.contract.records import Blueprint, ResolvedWeights
from tle.contract.spec import HeadSpec
from tle_keras import blocks as block_maps
from tle_keras import foreign
from tle_keras import registry
from tle_keras import weights as weight_files
from tle_keras.heads import build_head
from tle_keras.init import derived_seed, initializer
from tle_keras.preprocess import Preprocess, mode_for
from tle_keras.runtime import gpus, keras as _keras
from tle_keras.wrapper import HEAD, KerasNet

keras = _keras()

REUSE_ENV = "TLE_REUSE_MODELS"
_kept: dict = {}  # {"key": ..., "knet": KerasNet}: the last model built while reuse was on


def build(blueprint: Blueprint, weights: ResolvedWeights | None) -> KerasNet:
    fresh = _build(blueprint, weights)
    head = blueprint.head or HeadSpec()
    if os.environ.get(REUSE_ENV) != "1":
        return fresh
    key = (blueprint.model, blueprint.num_classes, fresh.input_shape, head.kind, head.hidden, head.dropout,
           keras.mixed_precision.global_policy().name)
    kept = _kept.get("knet")
    if kept is not None and _kept["key"] == key and kept.signature() == fresh.signature():
        kept.reset_from(fresh)
        return kept
    _kept.clear()
    _kept.update(key=key, knet=fresh)
    return fresh


def forget() -> None:
    """Drop the kept model (tests; a worker that wants its memory back)."""
    _kept.clear()


def _build(blueprint: Blueprint, weights: ResolvedWeights | None) -> KerasNet:
    name, num_classes, input_shape, seed = blueprint.model, blueprint.num_classes, blueprint.input_shape, blueprint.seed
    head, class_names = blueprint.head or HeadSpec(), list(blueprint.class_names)
    precision = blueprint.precision or "auto"
    if name in registry.UNAVAILABLE:
        raise UserError(f"model {name!r} is not available in the keras backend: {registry.UNAVAILABLE[name][1]}",
                        "use --backend torch for it")
    h, w, c = image_shape("keras", name, registry.names(), input_shape)
    block_maps.check_size(name, h, w)
    kind = getattr(weights, "kind", "none") if weights is not None else "none"
    if kind not in ("none", "imagenet", "file"):
        raise UserError(f"unknown weights kind {kind!r}", "use none, imagenet, a .h5/.keras file or runs:/RUN_ID")
    if kind == "imagenet" and name in registry.SMALL:
        weight_files.require_imagenet(name, h)  # raises: the small models have none
    from tle_keras.runtime import set_random_seed  # Keras's, without flushing a reused model's traced steps

    set_random_seed(int(seed))
    # Mixed precision only where it pays (on a GPU) and unless fp32 is asked for; the logits stay float32.
    policies = {"auto": "mixed_bfloat16", "bf16": "mixed_bfloat16", "fp16": "mixed_float16", "fp32": "float32"}
    keras.mixed_precision.set_global_policy(policies.get(precision, "float32") if gpus() else "float32")

    inputs = keras.Input((h, w, c), name="images")
    x = Preprocess(mode_for(name, registry.family(name)), name="preprocess")(inputs)
    starts = None  # block2..block5 inputs, when the builder knows them
    if name in registry.SMALL:
        from tle_keras.small import BUILDERS

        y = BUILDERS[name](x)
    elif registry.layout(name) == "torchvision":
        from tle_keras.torchvision_layout import build as build_torchvision

        y, starts = build_torchvision(name, x)
    else:
        y = _application(name, x, h, w, kind)
    head_init = head.initializer  # glorot_uniform, or N(0, 0.01) for "original", unless head.init is set
    logits, new_head, _ = build_head(keras, head, name, y, int(num_classes),
                                     lambda layer: initializer(head_init, derived_seed(seed, HEAD, layer)))
    net = keras.Model(inputs, logits, name=f"tle_{name}")
    cuts = block_maps.cut_tensors(name, net, x, y, starts)
    layers: OrderedDict[str, list] = OrderedDict()
    for i, block in enumerate(registry.BLOCKS):
        layers[block] = block_maps.segment_layers(keras, cuts[i], cuts[i + 1])
    layers[HEAD] = block_maps.segment_layers(keras, cuts[-1], logits)
    knet = KerasNet(replace(blueprint, input_shape=(h, w, c)), registry.family(name), net, cuts, layers, new_head)
    knet.head_kind = head.kind  # which torch head module paths the head's layers have (portable.py)
    if kind == "file" and weights.path is None:
        raise UserError(f"weights {weights.source!r} resolved to no file", "give a file path or runs:/RUN_ID")
    path = getattr(weights, "path", None)
    if foreign.wants_torch(name, kind, path):
        foreign.load_through_torch(knet, weights, head, class_names)
    elif kind == "file" and foreign.is_portable(path):
        foreign.load_portable(knet, Path(path), str(weights.source or path), class_names, head)
    elif kind == "imagenet" and head.kind == "original":
        top = weight_files.require_imagenet(name, h, top=True)
        named, _ = weight_files.read_named(top, str(top))
        weight_files._load_reused_top(knet, named, str(top))
    elif kind == "file":
        if weight_files.load_file(knet, weights.path, str(weights.source or weights.path)):
            knet.new_head = []
    return knet


def _application(name: str, x, h: int, w: int, kind: str):
    ctor = getattr(keras.applications, registry.constructor(name))
    args = {"include_top": False, "input_tensor": x, "input_shape": (h, w, 3), "weights": None}
    if kind == "imagenet":
        weight_files.require_imagenet(name, h)
        args["weights"] = "imagenet"
    if registry.application(name).startswith("mobilenet_v3"):
        args["include_preprocessing"] = True  # its Rescaling layer maps 0..255 to what its weights expect
    try:
        return ctor(**args).output
    except ValueError as exc:
        raise UserError(f"keras.applications cannot build {name} at {h}x{w}: {str(exc).splitlines()[0]}",
                        "use a larger --image-size") from None
    except Exception as exc:  # a download that fails half-way, a corrupt cache file
        if kind != "imagenet":
            raise
        fname, url = weight_files.imagenet_file(name, h)
        raise UserError(f"ImageNet weights for {name} could not be loaded ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0][:200] if str(exc) else ''})",
                        f"put {fname} from {url} into {weight_files.keras_cache_dirs()[0]}/") from None
