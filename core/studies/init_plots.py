"""The init study's PNGs: S4's histograms side by side, and a model's per-block profile."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tle.studies.init_study import SATURATION, StudyResult

RANGES = {"sigmoid": (0.0, 1.0), "tanh": (-1.0, 1.0)}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def histogram_grid(result: StudyResult, path: Path) -> Path:
    """One histogram per (initialiser, backend): rows initialisers, columns backends, shared x-axis."""
    plt = _pyplot()
    activation = result.config["activation"]
    inits, backends = result.inits, list(result.backends)
    fig, axes = plt.subplots(len(inits), len(backends), figsize=(3.2 * len(backends) + 0.6, 1.7 * len(inits) + 0.8),
                             squeeze=False, sharex=True)
    lo, hi = RANGES.get(activation, (0.0, max(float(np.max(c.activations)) for c in result.cells) or 1.0))
    bins = np.linspace(lo, hi, 51)
    summary = {(r["backend"], r["init"]): r for r in result.summary()}
    for i, init in enumerate(inits):
        for j, backend in enumerate(backends):
            ax = axes[i][j]
            # Every seed's activations together: the panel shows the distribution the initialiser gives.
            values = np.concatenate([c.activations.ravel() for c in result.cells_of(backend, init)])
            values = np.clip(values, lo, hi)
            stats = summary[backend, init]
            # Weights, not counts: a constant layer (zeros) would otherwise dwarf every other panel's scale.
            ax.hist(values, bins=bins, weights=np.full(values.size, 1.0 / values.size), color="tab:blue")
            if activation in RANGES:
                mid, edge = (lo + hi) / 2, SATURATION * (hi - lo)
                for a, b in ((lo, mid - edge), (mid + edge, hi)):
                    ax.axvspan(a, b, color="tab:red", alpha=0.12, linewidth=0)
            ax.set_ylim(0, ax.get_ylim()[1] * 1.3)  # room for the label above the tallest bar
            ax.text(0.5, 0.95, f"sat {stats['saturated_fraction']:.1%}  std {stats['std']:.3f}", transform=ax.transAxes,
                    ha="center", va="top", fontsize=8)
            ax.set_yticks([])
            if i == 0:
                ax.set_title(backend)
            if j == 0:
                ax.set_ylabel(init, rotation=0, ha="right", va="center", fontsize=9)
    for ax in axes[-1]:
        ax.set_xlabel(f"{activation} activation")
    c = result.config
    title = (f"{c['features']} inputs U[0,1) -> Dense {c['units']} {activation}, bias 0; {c['samples']} samples x "
             f"{len(result.seeds)} seed{'s' if len(result.seeds) > 1 else ''}")
    if activation == "sigmoid":
        title += f"\nred: saturated, |a - 0.5| > {SATURATION}"
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def block_profile(result: StudyResult, path: Path) -> Path:
    """Std and dead fraction of each block's output, one line per (backend, initialiser)."""
    plt = _pyplot()
    fig, (ax_std, ax_dead) = plt.subplots(1, 2, figsize=(11, 4))
    styles = ("-o", "--s", ":^", "-.v")
    summary = result.summary()
    for k, backend in enumerate(result.backends):
        for n, init in enumerate(result.inits):
            rows = [r for r in summary if r["backend"] == backend and r["init"] == init]
            blocks = [r["block"] for r in rows]
            color = f"C{n % 10}"
            # Means over the seeds; a zero std (the zeros initialiser) cannot sit on a log axis.
            ax_std.plot(blocks, [max(r["std"], 1e-12) for r in rows], styles[k % len(styles)], color=color,
                        label=f"{init} ({backend})", markersize=4)
            ax_dead.plot(blocks, [r["zero_fraction"] for r in rows], styles[k % len(styles)], color=color,
                         markersize=4)
    ax_std.set_yscale("log")
    ax_std.set_ylabel("std of the block's output")
    ax_dead.set_ylabel("fraction of outputs at zero")
    ax_dead.set_ylim(0, 1)
    for ax in (ax_std, ax_dead):
        ax.grid(alpha=0.3)
        ax.set_xlabel("block")
    ax_std.legend(fontsize=7)
    c = result.config
    fig.suptitle(f"{c['model']} at initialisation on {c['data'].get('images', '?')} images of {c['dataset']['source']}"
                 f" ({len(result.seeds)} seed{'s' if len(result.seeds) > 1 else ''})")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
