"""``mozafari``'s decision against the network written out from Mozafari et al.'s equations and SpykeTorch's
MozafariDeep geometry, in numpy and float64, one image and one time step at a time: nothing here calls the
backend's coding, layers, race or decision code. The backend must decide as this oracle does for fixed synapses
and fixed images."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

torch = pytest.importorskip("torch")

from tle_spyketorch import coding  # noqa: E402
from tle_spyketorch.network import SpikingNet  # noqa: E402
from tle_spyketorch.registry import ARCHS  # noqa: E402

T = 15
# (size, sigma1, sigma2) of the six DoG filters; thresholds; MozafariDeep's paddings and poolings.
DOG = ((3, 1 / 3, 2 / 3), (3, 2 / 3, 1 / 3), (7, 7 / 9, 14 / 9), (7, 14 / 9, 7 / 9), (13, 13 / 9, 26 / 9),
       (13, 26 / 9, 13 / 9))


def dog_filter(size, s1, s2):
    """DoG(x, y) = G_s1 - G_s2, G_s = exp(-(x^2 + y^2) / 2s^2) / (2 pi s^2); less its mean, over its maximum."""
    r = np.arange(size) - size // 2
    d2 = r[:, None] ** 2 + r[None, :] ** 2
    k = sum(sign * np.exp(-d2 / (2 * s * s)) / (2 * np.pi * s * s) for sign, s in ((1, s1), (-1, s2)))
    k = k - k.mean()
    return k / k.max()


def correlate(x, k, pad):
    """Cross-correlation of a 2-D map with a 2-D kernel, zero padding ``pad``."""
    x = np.pad(x, pad)
    return np.einsum("ijkl,kl->ij", sliding_window_view(x, k.shape), k)


def code(grey):
    """28x28 grey levels (0..255) -> firing step of each of the 6x28x28 input neurons (T: never)."""
    maps = []
    for size, s1, s2 in DOG:
        r = correlate(grey.astype(np.float64), dog_filter(size, s1, s2), size // 2)
        r[r < 50] = 0  # responses below 50 are dropped
        mean = correlate(r, np.full((17, 17), 1 / 289), 8)  # local mean over 17x17
        maps.append(r / (mean + 1e-12))
    values = np.stack(maps).ravel()
    per_step = np.count_nonzero(values) // T  # T equal bins of the largest values, the remainder silent
    steps = np.full(values.shape, T)
    order = np.argsort(-values, kind="stable")
    steps[order[:T * per_step]] = np.arange(T * per_step) // max(per_step, 1)
    return steps.reshape(6, 28, 28)


def conv(spikes, w, pad):
    """Potentials of a layer: sum over inputs of w * s (float64), the input zero-padded by ``pad``."""
    s = np.pad(spikes, ((0, 0), (pad, pad), (pad, pad)))
    win = sliding_window_view(s, w.shape[-2:], axis=(1, 2))  # (C, H', W', k, k)
    return np.einsum("chwij,mcij->mhw", win, w)


def pool(spikes, k):
    c, h, w = spikes.shape
    return spikes[:, :h // k * k, :w // k * k].reshape(c, h // k, k, w // k, k).max(axis=(2, 4))


def decide(grey, w1, w2, w3):
    """The class (neuron // 20) of the conv3 neuron that spikes first, then has the largest potential, over all
    neurons and positions; -1 when none spikes."""
    steps = code(grey)
    hidden = np.zeros((T, w2.shape[0], 4, 4))
    for t in range(T):
        s0 = (steps <= t).astype(np.float64)  # cumulative trains: a neuron that fired stays on
        s1 = pool((conv(s0, w1, 2) > 15).astype(np.float64), 2)
        hidden[t] = pool((conv(s1, w2, 1) > 10).astype(np.float64), 3)
    # conv3 has no threshold: its neurons fire at the last step when their potential is above 0.
    final = conv(hidden[-1], w3, 2)
    if not (final > 0).any():
        return -1, steps
    return int(np.unravel_index(np.argmax(final), final.shape)[0]) // 20, steps  # the first on ties


def synapses(seed):
    """Synapses as STDP and R-STDP leave them: conv1/conv2 mostly near 0 or 1, conv3 within [0.2, 0.8]."""
    g = np.random.default_rng(seed)
    out = []
    for shape, share in (((30, 6, 5, 5), 0.3), ((250, 30, 3, 3), 0.15)):
        chosen = g.random(shape) < share
        out.append(np.where(chosen, 0.7 + 0.3 * g.random(shape), 0.02 * g.random(shape)))
    out.append(0.2 + 0.6 * g.random((200, 250, 5, 5)))
    return [w.astype(np.float32) for w in out]


@pytest.mark.parametrize("seed", [0, 1])
def test_mozafari_decides_as_the_equations(seed):
    from tle_torch.testing import digits_dataset

    images = digits_dataset(range(10), size=28, channels=1).x_test[seed * 6:(seed + 1) * 6]
    images = np.concatenate([images, np.zeros((1, 28, 28, 1), np.float32)])  # and a blank image: no decision
    w1, w2, w3 = synapses(seed)
    net = SpikingNet("mozafari", ARCHS["mozafari"], [str(c) for c in range(10)], (28, 28, 1))
    for block, w in zip(("conv1", "conv2", "head"), (w1, w2, w3)):
        net.synapses(block).data.copy_(torch.from_numpy(w))
    x = torch.from_numpy(images)
    pot = net.final_potentials(x)
    _, winner = net.decide(pot)
    per_position = pot.shape[2] * pot.shape[3]
    assert per_position == 16  # conv3 at 4x4 positions
    got = torch.where(winner >= 0, winner // per_position // 20, -1).tolist()
    logits = net(x).argmax(1).tolist()
    want = []
    for i, image in enumerate(images):
        grey = np.round(image[..., 0] * 255)
        decided, steps = decide(grey, *(w.astype(np.float64) for w in (w1, w2, w3)))
        want.append(decided)
        # The backend's coding, against the oracle's.
        assert np.array_equal(coding.encode(x[i:i + 1], net.bank, T)[0].numpy(), steps)
    assert got == want
    assert want[-1] == -1 and len(set(want[:-1])) > 1  # the blank is silent; the others are not all one class
    assert [g for g, w in zip(logits, want) if w >= 0] == [w for w in want if w >= 0]
