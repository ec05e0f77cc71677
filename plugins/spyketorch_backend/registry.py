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
    """Every number of one network.

    The layers in order: the coded input padded by ``pad0`` (never-firing zeros), conv1, its spikes
    max-pooled by ``pool1`` (kernel, stride, padding) and padded by ``pad1``, conv2, pooled by ``pool2`` and
    padded by ``pad2``, conv3. A neuron fires when its potential exceeds (``>``) its layer's threshold.
    """

    size: int
    maps1: int
    maps2: int
    kernel3: int
    kernel1: int = 5
    threshold1: float = 15.0
    winners1: int = 5
    radius1: int = 3
    pool1: tuple[int, int, int] = (2, 2, 0)  # kernel, stride, padding
    kernel2: int = 3
    threshold2: float = 10.0
    winners2: int = 8
    radius2: int = 1
    pool2: tuple[int, int, int] = (3, 3, 0)
    pad0: int = 2  # MozafariDeep: pad(input, 2), pad(pool(conv1, 2, 2), 1), pad(pool(conv2, 3, 3), 2)
    pad1: int = 1
    pad2: int = 2
    per_class: int = 20  # conv3 maps per class: class = map index // per_class
    timesteps: int = 15
    rate_every: int = 500  # samples between doublings of the STDP rates (the paper's 500)
    adapt_every: int = 1000  # R-STDP rates adapt after every this many samples (MozafariDeep's batch of 1000)

    def sides(self) -> tuple[int, int, int, int, int, int]:
        """Sides of conv1's input (padded), conv1's output, conv2's input, conv2's output, conv3's input,
        conv3's output (its positions)."""
        def pooled(side, pool):
            k, s, p = pool
            return (side + 2 * p - k) // s + 1
        in1 = self.size + 2 * self.pad0
        out1 = in1 - self.kernel1 + 1
        in2 = pooled(out1, self.pool1) + 2 * self.pad1
        out2 = in2 - self.kernel2 + 1
        in3 = pooled(out2, self.pool2) + 2 * self.pad2
        return in1, out1, in2, out2, in3, in3 - self.kernel3 + 1

    def competition(self, block: str) -> tuple[float, int, int]:
        """A learning block's threshold, number of winners and inhibition radius."""
        if block == "conv1":
            return self.threshold1, self.winners1, self.radius1
        return self.threshold2, self.winners2, self.radius2


ARCHS: dict[str, Arch] = {
    # SpykeTorch's MozafariDeep.py: 28 -> pad 2 -> conv1 28x28 -> pool 2 -> pad 1 -> conv2 14x14 -> pool 3
    # -> pad 2 -> conv3 at 4x4 positions.
    "mozafari": Arch(size=28, maps1=30, maps2=250, kernel3=5),
    # Sized for 2-core CI, a geometry of its own: 16 px (digits resized), no padding, pooling padded so that
    # conv3 has one position; fewer maps and winners, the same rules.
    "mozafari_small": Arch(size=16, maps1=16, maps2=64, kernel3=3, winners1=3, radius1=2, winners2=5,
                           pool1=(2, 2, 1), pool2=(3, 3, 2), pad0=0, pad1=0, pad2=0, rate_every=60,
                           adapt_every=120),
}

DESCRIPTIONS = {
    "mozafari": "SpykeTorch's MozafariDeep (Mozafari et al. 2019): DoG, 30/250 maps STDP, 20 R-STDP neurons per "
                "class at 4x4 positions, 28x28",
    "mozafari_small": "the same rules in a smaller network of its own for CPU tests: 16/64 maps, 16x16",
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
