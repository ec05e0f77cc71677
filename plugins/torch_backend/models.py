"""Building a :class:`TleNet` from a torchvision model, its block map, a head spec and a weight source."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import replace

import torch
from torch import nn

from tle import UserError
from tle.contract.portable import check_model, is_portable
from tle.contract.helpers import image_shape
from tle.contract.records import Blueprint, ResolvedWeights
from tle.contract.spec import HeadSpec
from tle.contract.portable import read as read_portable
from tle_torch import blocks as block_maps
from tle_torch import registry
from tle_torch import weights as weight_files
from tle_torch.heads import build_head
from tle_torch.init import apply_init
from tle_torch.wrapper import TleNet

def build(blueprint: Blueprint, weights: ResolvedWeights | None) -> TleNet:
    name, num_classes, class_names = blueprint.model, blueprint.num_classes, list(blueprint.class_names)
    head, seed, input_shape = blueprint.head or HeadSpec(), int(blueprint.seed or 0), blueprint.input_shape
    h, w, c = image_shape("torch", name, registry.names(), input_shape)
    kind = getattr(weights, "kind", "none") if weights is not None else "none"
    source = str(getattr(weights, "source", "") or getattr(weights, "path", ""))
    state = portable = None
    # Construction draws from torch's global generator; fork it so the seed fixes the model
    # without disturbing the caller's random stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if kind == "imagenet":
            tv = weight_files.imagenet_model(name)
        elif kind in ("none", "file"):
            tv = block_maps.build_torchvision(name)
        else:
            raise UserError(f"unknown weights kind {kind!r}", "use none, imagenet, a .pt file or runs:/RUN_ID")
        bmap = block_maps.block_map(name, tv)
        if kind == "file":
            if weights.path is None:
                raise UserError(f"weights {source!r} resolved to no file", "give a .pt/.pth path or runs:/RUN_ID")
            if is_portable(weights.path):
                portable = read_portable(weights.path, source)
                check_model(portable, name, source)
            else:
                state = weight_files.read_state_dict(weights.path, source or str(weights.path))
            if state is not None and not weight_files.is_tle_layout(state):
                weight_files.load_torchvision_layout(tv, name, state, source, bmap)
                state = None
        body: OrderedDict[str, nn.Sequential] = OrderedDict()
        tv_paths: dict[str, str] = {}
        for block, paths in bmap:
            body[block] = nn.Sequential(OrderedDict((p.replace(".", "_"), tv.get_submodule(p)) for p in paths))
            tv_paths.update({f"body.{block}.{p.replace('.', '_')}": p for p in paths})
        feature_shape = _feature_shape(name, body, h, w)
        head_module, new_parts, reused = build_head(head, name, tv, feature_shape, num_classes)
        tv_paths.update({f"head.{k}": v for k, v in reused.items()})
        net = TleNet(replace(blueprint, input_shape=(h, w, c)), body, head_module, new_parts, tv_paths,
                     normalise=name not in registry.SMALL)
    # The new head layers are drawn here (with Keras's definitions); a saved head then replaces them
    # only when it was trained on these very classes.
    apply_init(net, ["head"], head.initializer, seed)
    if state is not None:
        weight_files.load_tle_layout(net, state, source, weights.keeps_head(class_names))
    elif portable is not None:
        from tle_torch.portable import from_portable

        from_portable(net, portable, source, class_names)
    return net


def _feature_shape(name: str, body, h: int, w: int) -> tuple[int, int, int]:
    probe = torch.zeros(1, 3, h, w)
    seq = nn.Sequential(*body.values())
    was_training = seq.training
    seq.eval()
    try:
        with torch.no_grad():
            out = seq(probe)
    except RuntimeError as exc:
        info = {m.name: m for m in registry.model_infos()}[name]
        raise UserError(f"{name} cannot take {h}x{w} images ({str(exc).splitlines()[0]})",
                        f"use at least {info.min_size}px (set --image-size)") from None
    finally:
        seq.train(was_training)
    return tuple(int(v) for v in out.shape[1:])  # type: ignore[return-value]
