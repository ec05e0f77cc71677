"""The spiking backend's hook implementations (see ``tle.contract.hookspecs`` for the contract).

torch is imported inside the hooks only: ``tle backends`` / ``tle models``
import this module and must stay fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from tle.contract import hookspecs
from tle.contract.helpers import installed_version
from tle.contract.hookspecs import implements
from tle.contract.records import BackendInfo, Fused, FuseOptions
from tle_spyketorch import registry

if TYPE_CHECKING:
    from collections.abc import Iterable

    import numpy as np

    from tle.contract.initializers import InitSpec
    from tle.contract.loop import TrainLoop
    from tle.contract.records import (Blueprint, BlockCount, Evaluation, ExportMetadata, ModelInfo, ResolvedWeights,
                                      Trained)
    from tle.contract.spec import TrainSpec
    from tle.contract.strategy import Stage
    from tle.data import Dataset

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


@implements(hookspecs.resolve_device)
def resolve_device(device: str) -> str:
    from tle_torch.device import resolve

    return resolve(device)


@implements(hookspecs.load_backbone)
def load_backbone(blueprint: Blueprint, weights: ResolvedWeights) -> object:
    """``blueprint.precision`` is not used: spikes and potentials are computed in float32."""
    from tle_spyketorch.models import build
    from tle_torch.device import resolve

    b = blueprint
    net = build(b.model, list(b.class_names), tuple(b.input_shape), b.head, weights, int(b.seed or 0))
    return net.to(resolve(b.device))


@implements(hookspecs.apply_init)
def apply_init(model: Any, blocks: list[str], init: InitSpec, seed: int) -> bool:
    from tle_spyketorch.init import apply_init as init_blocks

    return init_blocks(model, blocks, init, seed)


@implements(hookspecs.freeze_policy)
def freeze_policy(model: Any, trainable: dict[str, bool], fixed_stats: Iterable[str] = ()) -> bool:
    """A spiking net has no normalisation layers: ``fixed_stats`` is not used (pluggy leaves it out: it has a
    default)."""
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


@implements(hookspecs.train)
def train(model: Any, data: Dataset, stage: Stage, train: TrainSpec, loop: TrainLoop) -> Trained:
    from tle_spyketorch.train import fit

    return fit(model, data, stage, train, loop)


@implements(hookspecs.evaluate)
def evaluate(model: Any, images: np.ndarray, labels: np.ndarray | None, batch_size: int) -> Evaluation:
    from tle_spyketorch.train import evaluate as run

    return run(model, images, labels, batch_size)


@implements(hookspecs.save_weights)
def save_weights(model: Any, directory: Path) -> str:
    from tle_spyketorch.weights import save

    return save(model, directory)


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
