"""S2's knowledge fusion: the most important decision neurons of each network in one network of the same size.

A conv3 neuron's importance is the sum of its largest ``ratio`` (10 %) incoming
synapses (S2: it predicts how often the neuron fires). Per class, each network
that knows the class gives its ``keep`` (half) most important neurons; the
fused conv3 lists, class by class over the ordered union of the classes, the
neurons of the first network, then the next one's, so ``index // per_class``
is still the class. Classes known to fewer networks than others are topped up
with their networks' next-ranked neurons, so every class has as many neurons.
conv1-conv2 are copied: the networks must share them (network B trained with
``--strategy feature-extractor --weights runs:/NET_A``).

The classes are the ones the core names (``class_names``): with ``tle fuse
--align index`` every network's class k has one name, so each output gets
``keep`` of every network's neurons for it (S2: 10 of A's and 10 of B's).

``rank``: S2 measured first how often each decision neuron decides (on 4000
test images: 0 to 120 times each), found the sum of the largest 10 % synapses
the parameter that predicts it best, and ranked by that sum. Here R-STDP drives
many synapses to their bound (0.8), so 10-22 of 100 neurons tie on that sum and
the ranking is left to their index. ``activity`` ranks by what the sum stands in
for: how often the neuron decides on its network's own training images (ties by
the sum); on digits 0-4 / 5-9 a network keeps its accuracy with the top half of
every class chosen so, where the sum loses 0.05-0.25. ``weights`` is S2's sum.

``normalise``: a decision neuron's final potential is the sum of its synapses
over the input spikes, and with conv1-conv2 shared both networks see the same
spikes, so the network whose conv3 synapses are heavier on the whole answers
every image with larger potentials (the mass of a net's synapses follows how
its R-STDP went, not what the image is). Each network's synapses are scaled so
that its mean conv3 synapse is the lightest network's: one positive factor per
network, from its weights alone, so each network's own decisions stay exactly
as they were and the synapses stay within [0, 1]. That factor is right when the
two tasks' images look alike (digits 0-4 / 5-9: within 0.01 of the best one)
and 9-10 % off when they do not (digits -> printed letters), where the margin
between the nets' best potentials is about 1 %: it then hands every image to
one net. ``tle fuse --normalise validation`` (the default) measures the factors
on the runs' validation images instead and passes them on (``given``).
"""

from __future__ import annotations

import math

import torch

from tle import UserError
from tle.contract.records import FuseOptions
from tle_spyketorch.network import SpikingNet


def importance(head: torch.Tensor, ratio: float) -> torch.Tensor:
    """Per neuron, the sum of its largest ``ratio`` incoming synapses."""
    flat = head.detach().flatten(1)
    k = max(1, math.ceil(ratio * flat.shape[1]))
    return flat.topk(k, dim=1).values.sum(dim=1)


def decisions(net: SpikingNet, images) -> torch.Tensor:
    """Per decision neuron, how many of ``images`` (N x H x W x C in [0, 1]) it decides (S2's frequency of use):
    the ``firing_counts`` the backend's ``evaluate`` reports, where a silent image is decided by none."""
    from tle_spyketorch.train import EVAL_CHUNK, evaluate

    return torch.tensor(evaluate(net, images, None, EVAL_CHUNK).extras["firing_counts"], dtype=torch.long)


def ranked(net: SpikingNet, ratio: float, class_names: list[str] | None = None,
           activity: torch.Tensor | None = None) -> dict[str, list[int]]:
    """Per class (``class_names``, default the net's own), the net's neuron indices, most important first:
    by ``activity`` (see :func:`decisions`) when given, then by :func:`importance`, then lower index first."""
    score = importance(net.head, ratio).cpu()
    used = activity.cpu() if activity is not None else torch.zeros(len(score), dtype=torch.long)
    out = {}
    for ci, name in enumerate(class_names or net.class_names):
        idx = torch.arange(ci * net.per_class, (ci + 1) * net.per_class)
        out[name] = sorted(idx.tolist(), key=lambda i: (-int(used[i]), -float(score[i]), i))
    return out


def union(class_names: list[list[str]]) -> list[str]:
    seen: list[str] = []
    for names in class_names:
        seen += [str(c) for c in names if str(c) not in seen]
    return seen


def scales(models: list) -> list[float]:
    """Per network, the factor that brings its mean conv3 synapse to the lightest network's (the lightest: 1)."""
    means = [float(m.head.detach().double().mean()) for m in models]
    if min(means) <= 0:
        return [1.0] * len(models)
    return [min(means) / mean for mean in means]


def bounded(factors: list[float]) -> list[float]:
    """``factors`` over their largest: the same comparisons between networks (a common factor changes no
    decision), and no synapse above 1."""
    top = max(float(f) for f in factors)
    if not top > 0 or not all(float(f) > 0 for f in factors):
        raise ValueError(f"factors must be positive, got {factors}")
    return [float(f) / top for f in factors]


def fuse(models: list, class_names: list[list[str]] | None = None, options: FuseOptions = FuseOptions(),
         images: list | None = None) -> SpikingNet:
    """``class_names``: each network's classes as the fusion names them (default their own); ``options``: keep,
    ratio; ``normalise`` scales each network's synapses by :func:`scales` (the fused net's ``scales`` records the
    factors), ``scales`` are factors to use instead (the core's, measured on validation images; see
    :func:`bounded`); ``images``: each network's own training images, to rank its neurons by activity (None: by
    their synapses, S2's measure; also with ``rank`` ``weights``)."""
    keep, ratio, normalise, given = float(options.keep), float(options.ratio), options.normalise, list(options.scales)
    images = images if options.rank == "activity" else None
    names = [[str(c) for c in n] for n in class_names] if class_names is not None else [m.class_names for m in models]
    if len(names) != len(models) or any(len(n) != m.num_classes for n, m in zip(names, models)):
        raise ValueError("fuse needs one class name per class of every network")
    if len(models) < 2:
        raise UserError("fusion needs at least two networks", "pass two run ids")
    first = models[0]
    for other in models[1:]:
        if other.model_name != first.model_name or other.input_shape != first.input_shape:
            raise UserError(f"cannot fuse {first.model_name} at {first.input_shape} with {other.model_name} at "
                            f"{other.input_shape}", "fuse runs of the same model and image size")
        if not (torch.equal(other.conv1.cpu(), first.conv1.cpu()) and torch.equal(other.conv2.cpu(), first.conv2.cpu())):
            raise UserError("the networks do not share conv1-conv2, so their decision neurons read different features",
                            "train the second with --strategy feature-extractor --weights runs:/FIRST_RUN")
    if not 0 < keep <= 1 or not 0 < ratio <= 1:
        raise UserError(f"--keep {keep} and --ratio {ratio} must lie in (0, 1]", "e.g. --keep 0.5 --ratio 0.1")
    classes = union(names)
    if images is not None and len(images) != len(models):
        raise ValueError("fuse needs one set of training images per network")
    activity = [decisions(m, x) for m, x in zip(models, images)] if images is not None else [None] * len(models)
    rankings = [ranked(m, ratio, n, a) for m, n, a in zip(models, names, activity)]
    shares = [max(1, round(keep * m.per_class)) for m in models]
    wanted = max(sum(s for n, s in zip(names, shares) if c in n) for c in classes)
    factors = bounded(given) if given else scales(models) if normalise else [1.0] * len(models)
    if len(factors) != len(models):
        raise ValueError("fuse needs one factor per network")
    rows: list[tuple[int, int]] = []  # (network, neuron) per fused neuron
    for c in classes:
        owners = [i for i, n in enumerate(names) if c in n]
        taken = {i: shares[i] for i in owners}
        while sum(taken.values()) < wanted:  # top up from the owners' next-ranked neurons, in turn
            room = [i for i in owners if taken[i] < models[i].per_class]
            if not room:
                raise UserError(f"class {c!r} has too few neurons to fill {wanted} per class",
                                "lower --keep")
            taken[min(room, key=lambda i: (taken[i] / shares[i], i))] += 1
        for i in owners:
            rows += [(i, n) for n in rankings[i][c][:taken[i]]]
    fused = SpikingNet(first.model_name, first.arch, classes, first.input_shape, per_class=wanted).to(first.device)
    with torch.no_grad():
        fused.conv1.copy_(first.conv1)
        fused.conv2.copy_(first.conv2)
        fused.head.copy_(torch.stack([models[i].head[n].to(first.device) * factors[i] for i, n in rows]))
    fused.new_head = False
    fused.provenance = rows
    fused.scales = factors
    fused.ranked_by = "activity" if images is not None else "weights"
    return fused
