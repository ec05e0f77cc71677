"""Spiking backend: images/s of each training phase and of inference, batched vs one image at a time.

The one-image-at-a-time side is ``tle_spyketorch.reference``: every layer simulated for all T steps of one
image, winners picked one by one on the host, one kernel update per winner (the way SpykeTorch runs). Both
sides compute the same thing (checked here on the measured images: identical logits, identical synapses
after batch-1 STDP). Also printed: the multiply-adds per second a dense T-step simulation would need for the
measured speed, beside this machine's dense convolution throughput measured in the same run; and, with
``--accuracy``, the test accuracy of STDP updates summed over batches vs applied one sample at a time.

    .venv/bin/python benchmarks/snn_throughput.py [--model mozafari] [--batch 64] [--device cpu] [--accuracy]
        [--accuracy-model mozafari_small]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from common import report  # noqa: E402

from tle.contract.records import Blueprint, ResolvedWeights  # noqa: E402
from tle.contract.spec import HeadSpec, TrainSpec  # noqa: E402
from tle_spyketorch import plugin  # noqa: E402
from tle_spyketorch.reference import Reference  # noqa: E402
from tle_spyketorch.registry import ARCHS  # noqa: E402


def digits(size: int, classes=range(10)):
    from tle_torch.testing import digits_dataset

    return digits_dataset(classes, size=size, channels=1)


def build(model: str, classes: int, device: str, seed: int = 0):
    a = ARCHS[model]
    return plugin.load_backbone(blueprint=Blueprint(model=model, class_names=[str(c) for c in range(classes)],
                                                    input_shape=(a.size, a.size, 1), head=HeadSpec(), device=device,
                                                    precision="fp32", seed=seed), weights=ResolvedWeights("none"))


def selective(net, seed: int = 0):
    """Synapses as converged STDP leaves them (mostly near 0 or 1), so that spikes are sparse as in training."""
    g = torch.Generator().manual_seed(seed)
    for w, share in ((net.conv1, 0.3), (net.conv2, 0.1)):
        chosen = torch.rand(w.shape, generator=g) < share
        w.data.copy_(torch.where(chosen, 0.9, 0.02).to(w.device))
    return net


def starts_from(net):
    """Wraps a learning step so that every timed call starts from the synapses ``net`` has now: how fast a
    step runs depends on how the synapses make the neurons fire, and each step changes them."""
    start = {b: net.synapses(b).detach().clone() for b in ("conv1", "conv2", "head")}

    def wrap(block, fn):
        def call():
            net.synapses(block).data.copy_(start[block])
            return fn()
        return call
    return wrap


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def seconds(fn, device: str) -> float:
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def rate(fn, n_images: int, device: str, repeat: int = 3) -> float:
    fn()  # warm-up
    sync(device)
    return n_images / min(seconds(fn, device) for _ in range(repeat))


def alternating(sides: list[tuple], rounds: int = 5) -> list[float]:
    """Images/s of each ``(fn, n_images, device)`` side, timed in turn round after round, best round of each:
    on shared cores a neighbour's burst then slows every side alike instead of deciding a ratio."""
    for fn, _, dev in sides:
        fn()
        sync(dev)
    best = [float("inf")] * len(sides)
    for _ in range(rounds):
        for i, (fn, _, dev) in enumerate(sides):
            best[i] = min(best[i], seconds(fn, dev))
    return [n / t for (_, n, _), t in zip(sides, best)]


def dense_macs(a, classes: int) -> dict[str, float]:
    """Multiply-adds per image of a dense T-step simulation of each layer (what a naive simulator computes)."""
    _, s1, _, s2, _, s3 = a.sides()  # conv1's, conv2's and conv3's output sides (MozafariDeep's paddings)
    t = a.timesteps
    conv1 = t * a.maps1 * 6 * a.kernel1**2 * s1 * s1
    conv2 = t * a.maps2 * a.maps1 * a.kernel2**2 * s2 * s2
    conv3 = t * a.per_class * classes * a.maps2 * a.kernel3**2 * s3 * s3
    dog = 6 * 13 * 13 * a.size * a.size
    return {"encoding": dog, "STDP conv1": dog + conv1, "STDP conv2": dog + conv1 + conv2,
            "R-STDP conv3": dog + conv1 + conv2 + conv3, "inference": dog + conv1 + conv2 + conv3}


def dense_conv_throughput(a, device: str) -> float:
    """MAC/s of torch's dense convolution on conv2's shapes with time folded into the batch (T x 16 images)."""
    side = a.sides()[2]  # conv2's padded input
    x = (torch.rand(16 * a.timesteps, a.maps1, side, side, device=device) < 0.2).float()
    w = torch.rand(a.maps2, a.maps1, a.kernel2, a.kernel2, device=device)
    out = x.shape[-1] - a.kernel2 + 1
    macs = x.shape[0] * a.maps2 * a.maps1 * a.kernel2**2 * out * out
    return macs * rate(lambda: F.conv2d(x, w), 1, device)


def throughput(args) -> None:
    a = ARCHS[args.model]
    device = plugin.resolve_device(args.device)
    data = digits(a.size)
    x = torch.from_numpy(data.x_train[: args.batch]).to(device)
    y = torch.from_numpy(data.y_train[: args.batch]).to(device)
    per_image = data.x_train[: args.per_image]
    net = selective(build(args.model, 10, device))
    ref_net = selective(build(args.model, 10, "cpu"))
    ref = Reference(ref_net)
    ref_start = starts_from(ref_net)
    from tle_spyketorch import coding

    rates = (0.004, -0.003)
    conv1_in, conv2_in, hidden = net.block_input("conv1", x), net.block_input("conv2", x), net.hidden_spikes(x)
    same_start = starts_from(net)

    batched = {
        "encoding": lambda: coding.encode(x, net.bank, a.timesteps),
        "STDP conv1": same_start("conv1", lambda: net.stdp_step("conv1", x, rates)),
        "STDP conv2": same_start("conv2", lambda: net.stdp_step("conv2", x, rates)),
        "R-STDP conv3": same_start("head", lambda: net.rstdp_step(x, y, (0.5, 0.5))),
        "inference": lambda: net(x),
    }
    # What a training pass costs once its phase has coded the layer's input (the layers below do not learn
    # during the phase, so train.stdp_phase computes their spikes once for all the passes it makes).
    passes = {
        "STDP conv1": same_start("conv1", lambda: net.learn("conv1", conv1_in, rates)),
        "STDP conv2": same_start("conv2", lambda: net.learn("conv2", conv2_in, rates)),
        "R-STDP conv3": same_start("head", lambda: net.rstdp_from(hidden, y, (0.5, 0.5))),
    }
    single = {
        "encoding": lambda: [coding.encode(torch.from_numpy(im[None]), ref_net.bank, a.timesteps) for im in per_image],
        "STDP conv1": ref_start("conv1", lambda: [ref.stdp("conv1", im, rates) for im in per_image]),
        "STDP conv2": ref_start("conv2", lambda: [ref.stdp("conv2", im, rates) for im in per_image]),
        "R-STDP conv3": ref_start("head", lambda: [ref.rstdp(im, int(lbl), (0.5, 0.5))
                                                   for im, lbl in zip(per_image, data.y_train)]),
        "inference": lambda: [ref.logits(im) for im in per_image],
    }
    # Same results: the batched inference and batch-1 STDP reproduce the step-by-step simulation exactly.
    check = selective(build(args.model, 10, "cpu"))
    twin = selective(build(args.model, 10, "cpu"))
    probe = data.x_test[:8]
    same_logits = torch.equal(check(torch.from_numpy(probe)), torch.stack([Reference(check).logits(im) for im in probe]))
    for im in probe[:4]:
        check.stdp_step("conv1", torch.from_numpy(im[None]), (0.05, -0.04))
        Reference(twin).stdp("conv1", im, (0.05, -0.04))
    same_stdp = torch.equal(check.conv1, twin.conv1)

    macs = dense_macs(a, 10)
    dense = dense_conv_throughput(a, device)
    rows = [("device / threads", f"{device} / {torch.get_num_threads()}"),
            ("results identical (logits, batch-1 STDP)", f"{same_logits}, {same_stdp}"),
            (f"dense conv throughput ({device})", f"{dense / 1e9:.1f} G MAC/s")]
    for phase in batched:
        sides = [(batched[phase], len(x), device), (single[phase], len(per_image), "cpu")]
        if phase in passes:
            sides.append((passes[phase], len(x), device))
        b, s, *p = alternating(sides)
        rows.append((f"{phase}: batched {len(x)} / one at a time (img/s)", f"{b:,.0f} / {s:,.1f} = {b / s:.1f}x"))
        rows.append((f"{phase}: dense-equivalent MAC/s (share of dense conv)",
                     f"{b * macs[phase] / 1e9:.1f} G ({b * macs[phase] / dense:.1f}x)"))
        if p:
            rows.append((f"{phase}: a training pass, input coded once per phase (img/s)",
                         f"{p[0]:,.0f} / {s:,.1f} = {p[0] / s:.1f}x"))
    report(f"spiking {args.model} throughput, batched vs one image at a time (T={a.timesteps})", rows)


def accuracy(args) -> None:
    """Test accuracy when each batch's STDP/R-STDP updates are summed vs applied one sample at a time."""
    from tle.contract.loop import History, TrainLoop
    from tle.contract.strategy import Rates, build_plan

    model = args.accuracy_model
    a = ARCHS[model]
    data = digits(a.size, classes=range(5))
    rows = []
    for batch in (1, args.batch):
        t0 = time.perf_counter()
        net = build(model, 5, plugin.resolve_device(args.device))
        stage = build_plan("scratch", ["conv1", "conv2"], Rates(args.epochs, 1e-3)).stages[0]
        loop = TrainLoop(stage, step_offset=0, history=History(), on_epoch=lambda r: None)
        plugin.train(model=net, data=data, stage=stage, train=TrainSpec(batch_size=batch, epochs=args.epochs),
                     loop=loop)
        ev = plugin.evaluate(model=net, images=data.x_test, labels=data.y_test, batch_size=256)
        acc = float((ev.predictions == data.y_test).mean())
        rows.append((f"batch {batch}: test accuracy (digits 0-4, {args.epochs} R-STDP epochs)",
                     f"{acc:.4f} in {time.perf_counter() - t0:.0f} s"))
    report(f"spiking {model}: STDP updates summed per batch vs sequential", rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mozafari", choices=sorted(ARCHS))
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--per-image", type=int, default=16, help="images for the one-at-a-time side")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--accuracy", action="store_true", help="also train batch 1 vs --batch and compare")
    parser.add_argument("--accuracy-model", default="mozafari_small", choices=sorted(ARCHS))
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    throughput(args)
    if args.accuracy:
        accuracy(args)


if __name__ == "__main__":
    main()
