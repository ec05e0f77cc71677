"""Per-epoch checkpoints (model, optimiser, stage, epoch) so ``tle run --resume`` can continue."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tle_numpy.model import Net


def save(net: Net, optimizer, stage: int, epoch: int, path: Path) -> Path:
    target = Path(path).with_suffix(".npz")
    arrays = {f"param/{layer.name}.{k}": getattr(layer, k) for layer in net.layers for k in ("W", "b")}
    arrays.update({f"opt/{k}": v for k, v in optimizer.state().items()})
    # Written under a temporary name first: an interrupt mid-write must not leave a torn checkpoint.
    partial = target.with_name(target.name + ".partial.npz")
    np.savez(partial, **arrays, **{"meta/stage": np.asarray(stage), "meta/epoch": np.asarray(epoch)})
    partial.replace(target)
    return target


def restore(net: Net, optimizer, path: Path, stage: int) -> None:
    """Load the parameters; the optimiser state only belongs to the stage that wrote it."""
    with np.load(path, allow_pickle=False) as npz:
        state = {k: npz[k] for k in npz.files}
    for layer in net.layers:
        for k in ("W", "b"):
            getattr(layer, k)[...] = state[f"param/{layer.name}.{k}"]
    if int(state["meta/stage"]) == stage:
        optimizer.load_state({k[4:]: v for k, v in state.items() if k.startswith("opt/")})
