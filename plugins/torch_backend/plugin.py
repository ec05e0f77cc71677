"""The torch backend's hook implementations (see ``tle.contract.hookspecs`` for the contract).

torch is imported inside the hooks only: ``tle backends`` / ``tle models``
import this module and must stay fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from tle.contract import hookspecs
from tle.contract.helpers import fuse_heads, installed_version
from tle.contract.hookspecs import implements
from tle.contract.records import BackendInfo

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    import numpy as np

    from tle.contract.distributed import DistributedPlan
    from tle.contract.initializers import InitSpec
    from tle.contract.loop import TrainLoop
    from tle.contract.records import (Blueprint, BlockCount, Evaluation, ExportMetadata, Fused, FuseOptions, ModelInfo,
                                      ResolvedWeights, Trained)
    from tle.contract.spec import DistributedSpec, TrainSpec
    from tle.contract.strategy import Stage
    from tle.data import Dataset

# Every hook is a plain function with its spec's arguments; the framework is imported inside the hook, on its
# first call. @implements(spec) is @hookimpl, and lets pyright check the signature and return type against spec.


@implements(hookspecs.backend_info)
def backend_info() -> BackendInfo:
    torch_version = installed_version("torch")
    missing = [d for d in ("torch", "torchvision") if installed_version(d) is None]
    status = "ok" if not missing else f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed"
    return BackendInfo(name="torch", framework="pytorch", framework_version=torch_version or "-",
                       description="torchvision CNNs with Keras-style blocks, initialisers and heads",
                       status=status, devices=("cpu", "cuda"),
                       capabilities=("onnx", "resume", "feature-cache", "cuda", "bf16", "fuse", "fuse-concatenate",
                                     "distributed"))


@implements(hookspecs.register_models)
def register_models() -> list[ModelInfo]:
    from tle_torch.registry import model_infos

    return model_infos()


@implements(hookspecs.resolve_device)
def resolve_device(device: str) -> str:
    from tle_torch.device import resolve

    return resolve(device)


@implements(hookspecs.load_backbone)
def load_backbone(blueprint: Blueprint, weights: ResolvedWeights) -> object:
    """``blueprint.precision`` is the train spec's: torch reads it when training (autocast), not at build time."""
    from tle_torch.device import resolve
    from tle_torch.models import build

    return build(blueprint, weights).to(resolve(blueprint.device))


@implements(hookspecs.apply_init)
def apply_init(model: Any, blocks: list[str], init: InitSpec, seed: int) -> bool:
    from tle_torch.init import apply_init as init_blocks

    return init_blocks(model, blocks, init, seed)


@implements(hookspecs.freeze_policy)
def freeze_policy(model: Any, trainable: dict[str, bool], fixed_stats: Iterable[str]) -> bool:
    model.fixed_stats = set(fixed_stats or ())
    for block in model.trainable:
        flag = trainable.get(block) is True
        model.trainable[block] = flag
        for p in model.module_of(block).parameters():
            p.requires_grad_(flag)
    model.train(model.training)  # put newly frozen blocks (and fixed statistics) into eval mode now
    return True


@implements(hookspecs.count_parameters)
def count_parameters(model: Any) -> list[BlockCount]:
    from tle.contract.records import BlockCount

    counts = []
    for block in model.trainable:
        params = list(model.module_of(block).parameters())
        total = sum(p.numel() for p in params)
        counts.append(BlockCount(block, total, sum(p.numel() for p in params if p.requires_grad)))
    return counts


@implements(hookspecs.train)
def train(model: Any, data: Dataset, stage: Stage, train: TrainSpec, loop: TrainLoop) -> Trained:
    from tle_torch.train import fit

    return fit(model, data, stage, train, loop)


@implements(hookspecs.evaluate)
def evaluate(model: Any, images: np.ndarray, labels: np.ndarray | None, batch_size: int) -> Evaluation:
    from tle_torch.train import evaluate as run

    return run(model, images, labels, batch_size)


@implements(hookspecs.save_weights)
def save_weights(model: Any, directory: Path) -> str:
    from tle_torch.weights import save

    return save(model, directory)


@implements(hookspecs.portable_weights)
def portable_weights(model: Any) -> dict[str, np.ndarray]:
    from tle_torch.portable import to_portable

    return to_portable(model)


@implements(hookspecs.export_onnx)
def export_onnx(model: Any, path: Path, sample: np.ndarray, metadata: ExportMetadata) -> str:
    from tle_torch.export import export

    return export(model, path, sample, metadata)


@implements(hookspecs.fuse)
def fuse(models: list[Any], class_names: list[list[str]], options: FuseOptions,
         images: list[np.ndarray] | None = None) -> Fused:
    """Heads fused by :mod:`tle.contract.head_fusion`; ``images`` is not used (pluggy leaves it out: it has a default)."""
    from tle_torch.fusion import fuse as fuse_nets

    return fuse_heads(fuse_nets, models, class_names, options)


@implements(hookspecs.dense_activations)
def dense_activations(inputs: np.ndarray, units: int, activation: str, init: InitSpec, seed: int) -> np.ndarray:
    from tle_torch.probe import dense_activations as probe

    return probe(inputs, units, activation, init, seed)


@implements(hookspecs.block_activations)
def block_activations(model: Any, images: np.ndarray) -> dict[str, np.ndarray]:
    from tle_torch.probe import block_activations as probe

    return probe(model, images)


@implements(hookspecs.distributed_plan)
def distributed_plan(distributed: DistributedSpec, device: str) -> DistributedPlan:
    from tle_torch.distributed import plan

    return plan(distributed, device)


@implements(hookspecs.launch_ranks)
def launch_ranks(plan: DistributedPlan, distributed: DistributedSpec, entry: Callable[..., Any], args: tuple,
                 failures: str, waiting: Callable[[str], None]) -> dict[int, Any]:
    from tle_torch.distributed import launch

    return launch(plan, distributed, entry, args, failures, waiting)
