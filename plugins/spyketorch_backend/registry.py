"""The spiking models this backend offers, described without importing torch.

Each model is Mozafari et al.'s three-layer network (Pattern Recognition 2019):
DoG filters and intensity-to-latency coding, then conv1 and conv2 learning
unsupervised with STDP and conv3, the decision layer, learning with R-STDP.
The blocks are ``conv1`` and ``conv2``; conv3 is the ``head``, so
``feature-extractor --weights runs:/NET_A`` is S2's network B.
"""

from __future__ import annotations

from dataclasses import dataclass

from tle.contract.records import ModelInfo, TrainingPhase

BLOCKS = ("conv1", "conv2")
# Mozafari et al.'s synapses, N(0.8, 0.05): ``normal`` draws the deviation from 0.8 (see ``init``).
DEFAULT_INIT = "normal:0.05"


@dataclass(frozen=True)
class Arch:
    """Every number of one network; conv3's kernel makes its output 1x1 at ``size``."""

    size: int
    maps1: int
    maps2: int
    kernel3: int
    kernel1: int = 5
    threshold1: float = 15.0
    winners1: int = 5
    radius1: int = 3
    pool1: tuple[int, int, int] = (2, 2, 1)  # kernel, stride, padding
    kernel2: int = 3
    threshold2: float = 10.0
    winners2: int = 8
    radius2: int = 1
    pool2: tuple[int, int, int] = (3, 3, 2)
    per_class: int = 20  # conv3 maps per class: class = map index // per_class
    timesteps: int = 15
    rate_every: int = 500  # samples between doublings of the STDP rates (the paper's 500)

    def competition(self, block: str) -> tuple[float, int, int]:
        """A learning block's threshold, number of winners and inhibition radius."""
        if block == "conv1":
            return self.threshold1, self.winners1, self.radius1
        return self.threshold2, self.winners2, self.radius2


ARCHS: dict[str, Arch] = {
    "mozafari": Arch(size=28, maps1=30, maps2=250, kernel3=5),
    # Sized for 2-core CI: 16 px (digits resized), fewer maps and winners, same rules.
    "mozafari_small": Arch(size=16, maps1=16, maps2=64, kernel3=3, winners1=3, radius1=2, winners2=5,
                           rate_every=60),
}

DESCRIPTIONS = {
    "mozafari": "Mozafari et al. 2019: DoG, 30/250 maps STDP, 20 R-STDP neurons per class, 28x28",
    "mozafari_small": "the same network sized for CPU tests: 16/64 maps, 16x16",
}


def phases(arch: Arch) -> tuple[TrainingPhase, ...]:
    # conv1 and conv2 learn before the first epoch until converged or train.stdp.presentations images were shown.
    return (TrainingPhase("conv1", "STDP", presented=True), TrainingPhase("conv2", "STDP", presented=True),
            TrainingPhase("head", "R-STDP"))


def names() -> list[str]:
    return list(ARCHS)


def model_infos() -> list[ModelInfo]:
    return [ModelInfo(name=name, blocks=BLOCKS, family="snn", description=DESCRIPTIONS[name], default_size=arch.size,
                      min_size=arch.size, phases=phases(arch)) for name, arch in ARCHS.items()]
