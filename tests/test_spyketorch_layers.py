"""The spiking backend's pieces: DoG, latency coding, STDP, k-winners, and the batched passes against an
independent one-image-at-a-time simulation over every time step."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tle_spyketorch import coding, competition, layers, plasticity, race  # noqa: E402
from tle_spyketorch.network import SpikingNet  # noqa: E402
from tle_spyketorch.reference import Reference  # noqa: E402
from tle_spyketorch.registry import ARCHS  # noqa: E402


def digits(classes=range(5), size=16, n=None):
    from tle_torch.testing import digits_dataset  # the suite's fixed digits split

    d = digits_dataset(classes, size=size, channels=1)
    return (d.x_train[:n], d.y_train[:n]) if n else (d.x_train, d.y_train)


def small_net(classes=5, seed=0, model="mozafari_small"):
    """Mozafari's N(0.8, 0.05) synapses, clipped to [0, 1]."""
    size = ARCHS[model].size
    net = SpikingNet(model, ARCHS[model], [str(c) for c in range(classes)], (size, size, 1))
    g = torch.Generator().manual_seed(seed)
    for w in (net.conv1, net.conv2, net.head):
        w.data.normal_(0.8, 0.05, generator=g).clamp_(0, 1)
    return net


def mozafari_net():
    return small_net(model="mozafari")


def partly_trained(net, seed=0):
    """Synapses as STDP leaves them, mostly near 0 or 1, so that not every neuron fires any more."""
    g = torch.Generator().manual_seed(seed)
    for w, share in ((net.conv1, 0.3), (net.conv2, 0.15)):
        chosen = torch.rand(w.shape, generator=g) < share
        w.data.copy_(torch.where(chosen, 0.7 + 0.3 * torch.rand(w.shape, generator=g), 0.02 * torch.rand(w.shape, generator=g)))
    net.head.data.uniform_(0.2, 0.8, generator=g)
    return net


@pytest.mark.parametrize("size, s1, s2", coding.DOG)
def test_dog_kernels_are_zero_mean_with_max_one(size, s1, s2):
    k = coding.dog_kernel(size, s1, s2)
    assert k.shape == (size, size)
    assert abs(k.sum()) < 1e-12 and k.max() == 1.0
    centre = k[size // 2, size // 2]
    assert (centre > 0) == (s1 < s2)  # on-centre when the narrow Gaussian is positive
    assert np.array_equal(k, k.T) and np.array_equal(k, k[::-1, ::-1])


def test_dog_kernels_are_the_continuous_gaussians_on_the_grid():
    """(G(s1) - G(s2)) with G = exp(-r^2 / 2s^2) / (2 pi s^2), not normalised over the discrete kernel: the 3x3
    off-centre kernel's centre is -6.41 (normalising each Gaussian over its 9 samples gave -5.42)."""
    k = coding.dog_kernel(3, 6 / 9, 3 / 9)
    assert k[1, 1] == pytest.approx(-6.41, abs=0.01)
    r2 = np.array([[2, 1, 2], [1, 0, 1], [2, 1, 2]], dtype=np.float64)

    def g(s):
        return np.exp(-r2 / (2 * s * s)) / (2 * np.pi * s * s)

    raw = g(6 / 9) - g(3 / 9)
    raw -= raw.mean()
    np.testing.assert_allclose(k, raw / raw.max(), rtol=1e-12)


def test_bank_centres_every_kernel_in_one_window():
    bank = coding.dog_bank(coding.padded_size())
    assert tuple(bank.shape) == (6, 1, 13, 13)
    assert torch.allclose(bank.sum(dim=(1, 2, 3)), torch.zeros(6), atol=1e-5)  # zero-mean up to float32
    assert bank[0, 0, :5].abs().sum() == 0  # a 3x3 kernel sits in the middle


def test_latency_coding_keeps_rank_order_and_fires_once():
    rng = np.random.default_rng(0)
    values = torch.from_numpy(rng.random((3, 6, 10, 10)).astype(np.float32))
    values[values < 0.4] = 0
    steps = coding.latency(values, 15)
    assert any(int((v > 0).sum()) % 15 for v in values)  # a remainder to leave silent
    for v, s in zip(values, steps):
        v, s = v.flatten(), s.flatten()
        nonzero = v > 0
        per_step = int(nonzero.sum()) // 15
        order = torch.argsort(v, descending=True, stable=True)
        ranked = s[order]
        # The largest nnz // T values in the first step, the next as many in the second, ...; the remainder
        # (the smallest nnz mod T) and the zeros never fire.
        assert torch.equal(ranked[:15 * per_step], torch.arange(15).repeat_interleave(per_step))
        assert torch.all(ranked[15 * per_step:] == 15)
        assert torch.all(s[~nonzero] == 15)
    assert torch.all(coding.latency(torch.ones(1, 1, 2, 7), 15) == 15)  # fewer values than steps: silent
    trains = layers.trains(steps, 0, 15).unflatten(0, (3, 15))
    assert torch.all(trains[:, 1:] >= trains[:, :-1])  # cumulative: once fired, stays 1
    assert torch.all(torch.diff(trains, dim=1).clamp_min(0).sum(dim=1) + trains[:, 0] <= 1)  # one onset at most


def test_final_spikes_are_the_last_step_of_the_coding():
    x, _ = digits(n=8)
    net = small_net()
    images = torch.from_numpy(x)
    spikes = coding.final_spikes(images, net.bank, 15)
    assert torch.equal(spikes, (coding.encode(images, net.bank, 15) < 15).float())
    # Not every DoG response above threshold: the remainder of the equal bins stays silent.
    assert (spikes.sum() < (coding.dog(images, net.bank) > 0).sum())


def test_stdp_signs_and_stabiliser():
    weight = torch.tensor([[[[0.0, 0.5], [0.9, 1.0]]]])  # one map, one input channel, 2x2
    times_in = torch.tensor([[[[2, 5], [3, 9]]]])  # input firing steps
    winners = (torch.tensor([[0]]), torch.tensor([[0]]), torch.tensor([[0]]), torch.tensor([[True]]))
    before = weight.clone()
    change = plasticity.update(weight, times_in, winners, torch.tensor([[4]]),
                               plasticity.Rule(0.1, -0.05, stabilise=True, bounds=(0.0, 1.0)))
    expected = torch.tensor([[0.1, -0.05, 0.1, -0.05]]) * before.flatten(1) * (1 - before.flatten(1))
    assert torch.allclose(change, expected)
    # Inputs no later than the output are potentiated, later ones depressed, and w at a bound does not move.
    assert weight[0, 0, 1, 0] > before[0, 0, 1, 0] and weight[0, 0, 0, 1] < before[0, 0, 0, 1]
    assert weight[0, 0, 0, 0] == 0.0 and weight[0, 0, 1, 1] == 1.0
    # Without the stabiliser (R-STDP) every synapse moves by the rate, clipped to the bounds.
    w = torch.full((1, 1, 2, 2), 0.79)
    plasticity.update(w, times_in, winners, torch.tensor([[4]]),
                      plasticity.Rule(0.004, -0.003, stabilise=False, bounds=plasticity.RSTDP_BOUNDS))
    assert torch.allclose(w.flatten(), torch.tensor([0.794, 0.787, 0.794, 0.787]).clamp(max=0.8))


def test_learning_rate_schedule_doubles_to_the_cap():
    s = plasticity.Schedule()
    # MozafariDeep doubles the rates when its counter reaches 500, before that sample's update: the 500th
    # sample (index 499) learns at 0.008.
    assert s.rates(0) == (0.004, -0.003) and s.rates(498) == (0.004, -0.003)
    assert s.rates(499) == (0.008, -0.006) and s.rates(998) == (0.008, -0.006) and s.rates(999) == (0.016, -0.012)
    assert s.rates(10_000) == (0.15, -0.75 * 0.15)


def test_k_winners_respect_the_inhibition_radius():
    rng = np.random.default_rng(1)
    score = torch.from_numpy(rng.random((4, 12, 9, 9)))
    maps, ys, xs, valid = competition.winners(score, 5, 2)
    assert valid.all()
    for n in range(4):
        assert score[n].max() == score[n, maps[n, 0], ys[n, 0], xs[n, 0]]
        assert len(set(maps[n].tolist())) == 5  # a map wins once
        for i in range(5):
            # Pointwise inhibition: a winner is the best map at its position.
            assert score[n, maps[n, i], ys[n, i], xs[n, i]] == score[n, :, ys[n, i], xs[n, i]].max()
            for j in range(i):
                cheb = max(abs(int(ys[n, i] - ys[n, j])), abs(int(xs[n, i] - xs[n, j])))
                assert cheb > 2
    # Fewer candidates than k: the rest are marked invalid.
    sparse = torch.zeros(1, 3, 5, 5, dtype=torch.float64)
    sparse[0, 1, 2, 2] = 1.0
    assert competition.winners(sparse, 3, 1)[3].tolist() == [[True, False, False]]
    # Equal priorities: the lower map wins, then the lower position (the flattened (map, y, x) order).
    tied = torch.zeros(1, 3, 5, 5)
    tied[0, 2, 0, 0] = tied[0, 1, 4, 4] = tied[0, 1, 3, 0] = 7.0
    m, y, x, _ = competition.winners(tied, 2, 0)
    assert (m.tolist(), y.tolist(), x.tolist()) == ([[1, 2]], [[3, 0]], [[0, 0]])


def test_pointwise_inhibition_keeps_the_earliest_per_position():
    times = torch.tensor([[[[3]], [[1]], [[1]], [[15]]]])  # 4 maps at one position; map 3 silent
    pot = torch.tensor([[[[20.0]], [[16.0]], [[18.0]], [[0.0]]]])
    maps, _, _, valid = competition.winners(competition.priority(times, pot, 15, 100), 2, 0)
    assert maps[0, 0] == 2 and valid.tolist() == [[True, False]]  # earliest, then the higher potential


def test_batched_inference_equals_the_step_by_step_simulation_exactly():
    x, _ = digits(n=24)
    net = partly_trained(small_net())
    logits = net(torch.from_numpy(x))
    one_by_one = torch.stack([net(torch.from_numpy(x[i:i + 1]))[0] for i in range(len(x))])
    simulated = torch.stack([Reference(net).logits(x[i]) for i in range(len(x))])
    assert torch.equal(logits, one_by_one) and torch.equal(logits, simulated)
    assert len(torch.unique(logits.argmax(1))) > 1  # not a degenerate network


@pytest.mark.parametrize("block", ["conv1", "conv2"])
def test_batch_of_one_stdp_equals_the_per_image_simulation(block):
    x, _ = digits(n=6)
    net = partly_trained(small_net())
    twin = small_net()
    twin.load_state_dict(net.state_dict())
    for i in range(len(x)):
        net.stdp_step(block, torch.from_numpy(x[i:i + 1]), (0.05, -0.04))
        Reference(twin).stdp(block, x[i], (0.05, -0.04))
    changed = net.synapses(block) != partly_trained(small_net()).synapses(block)
    assert changed.any()
    assert torch.equal(net.synapses(block), twin.synapses(block))


def test_batch_of_one_rstdp_equals_the_per_image_simulation():
    x, y = digits(n=10)
    net = partly_trained(small_net())
    twin = small_net()
    twin.load_state_dict(net.state_dict())
    for i in range(len(x)):
        net.rstdp_step(torch.from_numpy(x[i:i + 1]), torch.from_numpy(y[i:i + 1]), (0.7, 0.3))
        Reference(twin).rstdp(x[i], int(y[i]), (0.7, 0.3))
    assert torch.equal(net.head, twin.head)
    assert net.head.min() >= 0.2 and net.head.max() <= 0.8


def test_batched_stdp_is_deterministic():
    x, _ = digits(n=32)
    a, b = small_net(), small_net()
    for net in (a, b):
        net.stdp_step("conv1", torch.from_numpy(x), (0.05, -0.04))
    assert torch.equal(a.conv1, b.conv1)



@pytest.mark.parametrize("trained", [True, False], ids=["selective-synapses", "untrained-synapses"])
@pytest.mark.parametrize("block", ["conv1", "conv2"])
def test_the_race_finds_the_winners_of_the_full_simulation(block, trained):
    x, _ = digits(n=48, size=28)  # mozafari's size: room for conv2's 8 winners before the last step
    net = mozafari_net()  # most neurons fire within a few steps
    if trained:
        partly_trained(net)  # few fire before the middle step
    a, weight = net.arch, net.synapses(block)
    threshold, k, radius = a.competition(block)
    times = net.block_input(block, torch.from_numpy(x))
    # Every step of every neuron: potentials, firing steps, priorities, pointwise inhibition, k winners.
    pot = layers.potentials(times, weight, 0, a.timesteps)
    out = (pot <= threshold).sum(dim=1)  # potentials never fall: the steps not above threshold = the firing step
    at_fire = pot.gather(1, out.clamp_max(a.timesteps - 1).unsqueeze(1)).squeeze(1)
    full = competition.winners(competition.priority(out, at_fire, a.timesteps, net.fan_in(block)), k, radius)
    step, value, best = race.front(times, weight, threshold, a.timesteps, k, radius)
    raced = competition.pick(competition.priority(step, value, a.timesteps, net.fan_in(block)), best,
                             weight.shape[0], k, radius)
    for got, want in zip(raced, full):
        assert torch.equal(got, want)
    maps, y, xs, valid = full
    assert valid.float().mean() > 0.9  # a real competition, not empty samples
    want_steps = out.flatten(1).gather(1, (maps * out.shape[2] + y) * out.shape[3] + xs)
    assert torch.equal(step.flatten(1).gather(1, y * step.shape[2] + xs).long(), want_steps)
    # Samples left before the last step: positions where the earliest spike came late were never simulated.
    assert ((step == a.timesteps) & (out.amin(dim=1) < a.timesteps)).any()
    # Also without inhibition (conv1's output for conv2): every neuron's firing step.
    if block == "conv1":
        assert torch.equal(race.firing_steps(times, weight, threshold, a.timesteps).long(), out)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("block", ["conv1", "conv2"])
def test_cuda_reproduces_the_cpu(block):
    """Winners, firing steps and logits on CUDA equal the CPU's: every sum of synapses is exact (two parts on
    2**-11 and 2**-23 grids, even under TF32), so the order CUDA adds in cannot matter. The coding (SpykeTorch's
    float32 DoG and normalisation) may round apart in principle; on these images it does not. Only the weight
    updates' products may round apart."""
    x, y = digits(n=48, size=28)
    exact, updated = {}, {}
    for device in ("cpu", "cuda"):
        net = partly_trained(mozafari_net()).to(device)
        images, labels = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
        a = net.arch
        threshold, k, radius = a.competition(block)
        times = net.block_input(block, images)
        front = race.front(times, net.synapses(block), threshold, a.timesteps, k, radius)
        logits = net(images)
        decided = net.rstdp_step(images, labels, (0.5, 0.5))
        net.learn(block, times, (0.05, -0.04))
        exact[device] = [t.cpu() for t in (times, *front, logits, decided)]
        updated[device] = [net.synapses(block).detach().cpu(), net.head.detach().cpu()]
    for got, want in zip(exact["cuda"], exact["cpu"]):
        assert torch.equal(got, want)
    for got, want in zip(updated["cuda"], updated["cpu"]):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_a_neuron_fires_above_its_threshold_not_at_it():
    """SpykeTorch fires where the potential exceeds the threshold (``torch.threshold``): exactly 15 stays silent."""
    times = torch.full((1, 6, 5, 5), 15, dtype=torch.int64)
    times.view(-1)[:30] = 0  # 30 inputs fire at step 0
    weight = torch.full((1, 6, 5, 5), 0.5)  # 30 x 0.5 = 15.0, exactly the threshold
    assert race.firing_steps(times, weight, 15.0, 15).item() == 15  # never
    times.view(-1)[30] = 3
    assert race.firing_steps(times, weight, 15.0, 15).item() == 3  # 15.5 at step 3
    assert layers.conv_final(layers.trains(times, 14, 15), weight).item() == 15.5


def test_rstdp_adapts_its_rates_per_window_of_images():
    """MozafariDeep adapts R-STDP's rates after each batch of 1,000 images: an epoch is cut into such windows
    (the last one shorter), each into compute batches that never cross a window."""
    from tle_spyketorch.train import rstdp_batches

    windows = rstdp_batches(2500, 32, 1000, torch.Generator().manual_seed(0))
    assert [sum(len(b) for b in w) for w in windows] == [1000, 1000, 500]
    assert all(len(b) <= 32 for w in windows for b in w)
    assert torch.equal(torch.cat([b for w in windows for b in w]).sort().values, torch.arange(2500))


def test_a_silent_image_is_neither_rewarded_nor_punished():
    net = partly_trained(mozafari_net())
    head = net.head.detach().clone()
    silent = torch.zeros((2, net.arch.maps2, 4, 4))  # conv3 receives no spike: no potential above 0
    logits, decided = net.rstdp_from(silent, torch.tensor([0, 1]), (1.0, 1.0))
    assert decided.tolist() == [-1, -1] and torch.equal(net.head, head) and torch.all(logits == 0)
