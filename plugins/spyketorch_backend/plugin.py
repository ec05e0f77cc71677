"""The spiking backend's hook implementations (see ``tle.contract.hookspecs`` for the contract).

torch is imported inside the hooks only: ``tle backends`` / ``tle models``
import this module and must stay fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from tle.contract import hookspecs
from tle.contract.helpers import delegate, installed_version
from tle.contract.hookspecs import implements
from tle.contract.records import BackendInfo, Fused, FuseOptions
from tle_spyketorch import registry

if TYPE_CHECKING:
    from collections.abc import Iterable

    import numpy as np

    from tle.contract.records import (Blueprint, BlockCount, ExportMetadata, ModelInfo, ResolvedWeights)

# Every hook is a plain function with its spec's arguments; torch is imported inside the hook, on its first call.
# @implements(spec) is @hookimpl, and lets pyright check the signature and return type against spec.


@implements(hookspecs.backend_info)
def backend_info() -> BackendInfo:
    torch_version = installed_version("torch")
    status = "ok" if torch_version else "torch is not installed"
    return BackendInfo(name="spyketorch", framework="pytorch", framework_version=torch_version or "-",
                       description="SpykeTorch's spiking networks (DoG, latency coding, STDP, R-STDP), batched",
                       status=status, devices=("cpu", "cuda"), capabilities=("onnx", "nir", "resume", "fuse", "cuda"),
                       default_init=registry.DEFAULT_INIT)


@implements(hookspecs.register_models)
def register_models() -> list[ModelInfo]:
    return registry.model_infos()


resolve_device = delegate(hookspecs.resolve_device, "tle_torch.device:resolve")


@implements(hookspecs.load_backbone)
def load_backbone(blueprint: Blueprint, weights: ResolvedWeights) -> object:
    """``blueprint.precision`` is not used: spikes and potentials are computed in float32."""
    from tle_spyketorch.models import build
    from tle_torch.device import resolve

    b = blueprint
    net = build(b.model, list(b.class_names), tuple(b.input_shape), b.head, weights, int(b.seed or 0))
    return net.to(resolve(b.device))


apply_init = delegate(hookspecs.apply_init, "tle_spyketorch.init:apply_init")


@implements(hookspecs.freeze_policy)
def freeze_policy(model: Any, trainable: dict[str, bool], fixed_stats: Iterable[str] = (), params: str = "all") -> bool:
    """A spiking net has no normalisation layers: ``fixed_stats`` is not used (pluggy leaves it out: it has a
    default). Its synapses are one array per block with no bias: ``params`` is always ``all`` here (the backend
    lists none of ``tle.contract.tuning``'s capabilities, so the core refuses a spec that asks otherwise)."""
    for block in model.trainable:
        flag = trainable.get(block) is True
        model.trainable[block] = flag
        model.synapses(block).requires_grad_(flag)
    return True


@implements(hookspecs.count_parameters)
def count_parameters(model: Any) -> list[BlockCount]:
    from tle.contract.records import BlockCount

    counts = []
    for block in model.trainable:
        w = model.synapses(block)
        counts.append(BlockCount(block, w.numel(), w.numel() if w.requires_grad else 0))
    return counts


train = delegate(hookspecs.train, "tle_spyketorch.train:fit")
evaluate = delegate(hookspecs.evaluate, "tle_spyketorch.train:evaluate")
block_activations = delegate(hookspecs.block_activations, "tle_spyketorch.probe:block_activations")
save_weights = delegate(hookspecs.save_weights, "tle_spyketorch.weights:save")


@implements(hookspecs.export_onnx)
def export_onnx(model: Any, path: Path, sample: np.ndarray, metadata: ExportMetadata) -> str:
    """No ``sample``: the graph is written node by node."""
    from tle_spyketorch.export import export

    return export(model, path, metadata)


@implements(hookspecs.export_extras)
def export_extras(model: Any, directory: Path) -> list[str]:
    from tle_spyketorch.nir_export import export

    return [export(model, Path(directory) / "model.nir")]


@implements(hookspecs.fuse)
def fuse(models: list[Any], class_names: list[list[str]], options: FuseOptions,
         images: list[np.ndarray] | None) -> Fused:
    from tle_spyketorch.fusion import fuse as run

    fused = run(list(models), [list(n) for n in class_names], FuseOptions.of(options), images)
    return Fused(fused, tuple(fused.scales), fused.ranked_by)
