"""S2's ranking and merge for classifier heads held as NumPy arrays, shared by the CNN backends' ``fuse`` hooks.

A backend hands over each model's head as arrays (:class:`HeadArrays`, weights
``(outputs, inputs)`` as torch stores them) and builds its native model from
the result; the arithmetic lives here once, so torch and keras fuse alike.

A hidden unit's importance is the sum of its largest ``ratio`` (10 %) incoming
|weights| (S2's measure; CNN weights are signed, so their magnitude). Each
model gives its ``keep`` most important units; the fused hidden layer lists
the first model's kept units, then the next one's. Its output layer connects a
kept unit only to its own model's classes, so each model's knowledge stays
where it was learned. A class several models know gets the mean of their
output weights and biases: its logit then stays on the scale of the classes
one model knows. A ``linear`` head has no hidden units: the fused head takes
every output row (exact for disjoint classes), so there it equals the full
concatenation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from tle.errors import UserError

SUPPORTED = "'dense' (ranks its hidden units) and 'linear' (merges its output rows)"


@dataclass
class HeadArrays:
    kind: str  # "dense" or "linear"
    out_w: np.ndarray  # (classes, units) — or (classes, features) for "linear"
    out_b: np.ndarray  # (classes,)
    class_names: list[str]
    hidden_w: np.ndarray | None = None  # (units, features), "dense" only
    hidden_b: np.ndarray | None = None  # (units,)


@dataclass
class MergedHead:
    kind: str
    classes: list[str]
    out_w: np.ndarray
    out_b: np.ndarray
    hidden_w: np.ndarray | None = None
    hidden_b: np.ndarray | None = None
    provenance: list[tuple[int, int]] = field(default_factory=list)  # (model, unit) per fused hidden unit

    @property
    def units(self) -> int:
        return 0 if self.hidden_w is None else int(self.hidden_w.shape[0])


def importance(weights: np.ndarray, ratio: float) -> np.ndarray:
    """Per unit (row), the sum of its largest ``ratio`` incoming |weights|."""
    magnitude = np.abs(np.asarray(weights, dtype=np.float64)).reshape(len(weights), -1)
    k = max(1, math.ceil(ratio * magnitude.shape[1]))
    return -np.sort(-magnitude, axis=1)[:, :k].sum(axis=1)


def ranked(weights: np.ndarray, ratio: float) -> list[int]:
    """Unit indices, most important first (ties: lower index first)."""
    score = importance(weights, ratio)
    return [int(i) for i in np.lexsort((np.arange(len(score)), -score))]


def ordered_union(class_names: list[list[str]]) -> list[str]:
    out: list[str] = []
    for names in class_names:
        out += [str(c) for c in names if str(c) not in out]
    return out


def check_kinds(kinds: list[str], labels: list[str]) -> str:
    for kind, label in zip(kinds, labels):
        if kind not in ("dense", "linear"):
            raise UserError(f"{label} has a head of kind {kind!r}, which fusion cannot rank",
                            f"fuse runs trained with --head dense (or linear); supported: {SUPPORTED}")
    if len(set(kinds)) != 1:
        raise UserError(f"the runs have heads of different kinds ({', '.join(kinds)})",
                        "fuse runs trained with the same --head")
    return kinds[0]


def check_models(models: list, head_kind, backbone_hash) -> str:
    """The head kind the ``models`` share, after checking that they can be fused: at least two, one model at
    one input shape (``model_name``, ``input_shape``), heads of one rankable kind (``head_kind(model)``), and
    one backbone (``backbone_hash(model)``), so that their heads read the same features."""
    if len(models) < 2:
        raise UserError("fusion needs at least two models", "pass two run ids")
    labels = [f"model {chr(ord('A') + i)}" for i in range(len(models))]
    first = models[0]
    for label, other in zip(labels[1:], models[1:]):
        if other.model_name != first.model_name or other.input_shape != first.input_shape:
            raise UserError(f"cannot fuse {first.model_name} at {first.input_shape} with {label}, {other.model_name} "
                            f"at {other.input_shape}", "fuse runs of the same model and image size")
    kind = check_kinds([head_kind(m) for m in models], labels)
    reference = backbone_hash(first)
    for label, other in zip(labels[1:], models[1:]):
        if backbone_hash(other) != reference:
            raise UserError(f"{label}'s backbone weights differ from model A's, so their heads read different features",
                            "train both with --strategy feature-extractor --weights runs:/BACKBONE_RUN")
    return kind


def kept(units: int, keep: float) -> int:
    """How many of a model's ``units`` hidden units the fused head keeps."""
    return max(1, round(keep * units))


def merged_spec(heads: list, keep: float):
    """The :class:`tle.contract.spec.HeadSpec` of :func:`merge`'s head over models whose heads were built from
    ``heads`` (theirs, in order): a ``dense`` head has :func:`kept` units of each, the first's dropout; a
    ``linear`` head is the first's. What the fused run's ``spec.yaml`` names, so that it rebuilds the fused model
    from its weights."""
    first = heads[0]
    if first.kind != "dense":
        return first
    return first.model_copy(update={"hidden": sum(kept(h.hidden, keep) for h in heads)})


def _hidden(head: HeadArrays) -> tuple[np.ndarray, np.ndarray]:
    """A ``dense`` head's hidden layer: its weights and biases."""
    if head.hidden_w is None or head.hidden_b is None:
        raise ValueError(f"a {head.kind} head has no hidden layer")
    return head.hidden_w, head.hidden_b


def merge(heads: list[HeadArrays], keep: float = 0.5, ratio: float = 0.1) -> MergedHead:
    """One head over the ordered union of the classes; ``keep=1`` gives the full concatenation."""
    if not (0 < keep <= 1 and 0 < ratio <= 1):
        raise UserError(f"--keep {keep} and --ratio {ratio} must lie in (0, 1]", "e.g. --keep 0.5 --ratio 0.1")
    classes = ordered_union([h.class_names for h in heads])
    owners = {c: sum(c in map(str, h.class_names) for h in heads) for c in classes}
    kind = heads[0].kind
    if kind == "linear":
        out_w = np.zeros((len(classes), heads[0].out_w.shape[1]), dtype=np.float32)
        out_b = np.zeros(len(classes), dtype=np.float32)
        for h in heads:
            for j, name in enumerate(h.class_names):
                c = classes.index(str(name))
                out_w[c] += h.out_w[j] / owners[str(name)]
                out_b[c] += h.out_b[j] / owners[str(name)]
        return MergedHead(kind, classes, out_w, out_b)
    hidden = [_hidden(h) for h in heads]
    rows: list[tuple[int, int]] = []
    for i, (w, _) in enumerate(hidden):
        take = kept(len(w), keep)
        rows += [(i, u) for u in ranked(w, ratio)[:take]]
    hidden_w = np.stack([hidden[i][0][u] for i, u in rows]).astype(np.float32)
    hidden_b = np.asarray([hidden[i][1][u] for i, u in rows], dtype=np.float32)
    out_w = np.zeros((len(classes), len(rows)), dtype=np.float32)
    out_b = np.zeros(len(classes), dtype=np.float32)
    for i, h in enumerate(heads):
        cols = [col for col, (m, _) in enumerate(rows) if m == i]
        units = [rows[col][1] for col in cols]
        for j, name in enumerate(h.class_names):
            c = classes.index(str(name))
            out_w[c, cols] = h.out_w[j, units] / owners[str(name)]
            out_b[c] += h.out_b[j] / owners[str(name)]
    return MergedHead(kind, classes, out_w, out_b, hidden_w, hidden_b, rows)
