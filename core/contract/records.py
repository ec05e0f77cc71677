"""Plain data passed between the core and backends.

Everything here is framework-neutral: NumPy arrays, strings, numbers. Backends
return their own native objects (models) from hooks; the core only ever holds
those as opaque handles and hands them back.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # annotations only: the records stay free of pydantic for the cheap hooks (backend_info)
    from tle.contract.spec import ExperimentSpec, HeadSpec


@dataclass(frozen=True)
class BackendInfo:
    """What ``tle backends`` shows; must be cheap (no framework import)."""

    name: str
    framework: str
    framework_version: str
    description: str = ""
    # "ok", or why the backend cannot run here (e.g. "tensorflow is not installed").
    status: str = "ok"
    devices: tuple[str, ...] = ("cpu",)
    capabilities: tuple[str, ...] = ()
    # The initialiser a run uses when the spec names none (``tle run`` without ``--init``).
    default_init: str = "glorot_uniform"


@dataclass(frozen=True)
class TrainingPhase:
    """One step of a model that trains layer by layer inside every stage (spiking nets).

    Within a stage, the phases whose ``block`` is trainable run one after the
    other, in this order. A ``presented`` phase runs before the stage's first
    epoch (unsupervised STDP): it presents training images until its layer
    has converged or ``train.stdp.presentations`` images were presented,
    however many passes over the set that takes. Otherwise the phase runs for
    the stage's epochs and reports them through the loop.
    """

    block: str  # a backbone block or ``head``
    rule: str  # the learning rule, e.g. ``STDP`` or ``R-STDP``
    presented: bool = False

    def describe(self, epochs: int, presentations: int) -> str:
        if self.presented:
            return f"{self.rule} to convergence, ≤{presentations:,} images"
        return f"{self.rule} {epochs} ep"


@dataclass(frozen=True)
class ImageSet:
    """What a dataset loader of :func:`tle.contract.hookspecs.register_datasets` may return: every image of the source.

    Images are N x H x W or N x H x W x C, uint8/int (0..255) or float in [0, 1]; labels one int per image,
    or strings (then class_names may be left out). The core splits, resizes and converts them, so every
    backend sees the same images. A loader that decodes files lazily returns a :class:`tle.data.sources.Source`
    instead (labels plus a ``fetch`` of the positions a split selects), as the built-in sources do.
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...] | None = None


@dataclass(frozen=True)
class ModelInfo:
    """A model a backend offers, with its backbone blocks in forward order."""

    name: str
    blocks: tuple[str, ...]
    family: str = ""
    description: str = ""
    # Input side (pixels) the model is normally used at, and the smallest that works.
    default_size: int | None = None
    min_size: int = 1
    available: bool = True
    reason: str = ""
    # Empty: every trainable block trains at once for the stage's epochs (backprop). Otherwise the
    # stage trains block by block in this order, and ``tle plan`` shows each phase.
    phases: tuple[TrainingPhase, ...] = ()


@dataclass(frozen=True)
class BlockCount:
    """Parameter counts of one block (or ``head``) as the backend holds them now.

    ``bias`` and ``norm``: how many of the block's ``total`` are additive biases of its convolutions and dense
    layers, and scales and shifts of its normalisation layers, whatever the freeze state (a backend that lists
    the ``param-select`` capability fills them in; ``train.params``, see :mod:`tle.contract.tuning`).
    """

    name: str
    total: int
    trainable: int
    bias: int = 0
    norm: int = 0

    @classmethod
    def of(cls, name: str, tensors: Iterable[tuple[int, bool, str]]) -> BlockCount:
        """The counts of block ``name`` from its tensors, each (size, trains now, kind: ``bias``, ``norm`` or
        ``weight``): how a backend's ``count_parameters`` reads its own parameter listing."""
        found = list(tensors)
        return cls(name, sum(n for n, _, _ in found), sum(n for n, on, _ in found if on),
                   bias=sum(n for n, _, k in found if k == "bias"), norm=sum(n for n, _, k in found if k == "norm"))


@dataclass(frozen=True)
class ResolvedWeights:
    """Where a model's starting weights come from, already resolved to a local file.

    ``kind`` is ``none``, ``imagenet`` (the backend fetches from its own hub/cache)
    or ``file`` (``path`` is a local file written by the backend's ``save_weights``
    or by the user). ``source`` is what the user wrote (e.g. ``runs:/abc``).
    """

    kind: str
    source: str = "none"
    path: Path | None = None
    # Class names of the run the weights came from, when known: a backend keeps
    # the old head only when these match the new data's classes.
    class_names: tuple[str, ...] | None = None

    def keeps_head(self, class_names) -> bool:
        """Whether a model built from these weights for ``class_names`` keeps their head (see :func:`same_classes`)."""
        return same_classes(self.class_names, class_names)


@dataclass(frozen=True)
class Blueprint:
    """What :func:`tle.contract.hookspecs.load_backbone` is asked to build: ``model`` with a head of one output per
    class of ``class_names`` (in label order) for images of ``input_shape`` ``(height, width, channels)``, the
    classifier ``head``, on ``device`` (``auto``, ``cpu``, ``cuda`` or ``cuda:N``), at ``precision`` (``auto``,
    ``fp32``, ``bf16`` or ``fp16``: backends that fix the compute dtype at build time, like Keras's mixed-precision
    policy, read it here), everything random drawn from ``seed``. With a spec (:meth:`of`) or without one."""

    model: str
    class_names: tuple[str, ...]
    input_shape: tuple[int, int, int]
    head: HeadSpec | None = None  # None: the default head (HeadSpec())
    device: str = "cpu"
    precision: str = "fp32"
    seed: int = 0

    def __post_init__(self) -> None:  # lists given by a caller become the tuples the record promises
        object.__setattr__(self, "class_names", tuple(self.class_names))
        object.__setattr__(self, "input_shape", tuple(self.input_shape))

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @classmethod
    def of(cls, spec: ExperimentSpec, data, device: str | None = None) -> Blueprint:
        """``spec``'s model for ``data``'s classes and images; ``device`` overrides ``train.device`` (a rank's own)."""
        return cls(spec.model, tuple(data.class_names), tuple(data.input_shape), spec.head,
                   device or spec.train.device, spec.train.precision, spec.train.seed)


def same_classes(saved, class_names) -> bool:
    """The head rule of every backend: a saved head is kept only for the very classes, in the order, it was trained
    on. ``saved`` unknown (a bare file, a portable file without names) means a new head. Names compare as strings:
    a JSON file's ``"0"`` is the class ``0``. A backend still checks that the saved head's shapes fit."""
    if saved is None or class_names is None:
        return False
    return [str(c) for c in saved] == [str(c) for c in class_names]


@dataclass(frozen=True)
class Trained:
    """What :func:`tle.contract.hookspecs.train` returns for one stage: what the runner logs, nothing backend-private.

    ``epochs``: epochs this call ran (0 when a resumed stage was already done); ``stopped_early``: the loop's
    early stopping ended the stage before its epochs; ``metrics``: stage-level numbers beside the per-epoch ones
    the loop already logged (a spiking layer's STDP convergence, blocks served from a feature cache), logged by
    the runner as ``stage{index}_{name}``. Optimisers, caches and other state stay inside the backend.
    """

    epochs: int
    stopped_early: bool = False
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class Evaluation:
    """Raw outputs of a model on a set of images; the core computes the metrics."""

    loss: float
    logits: np.ndarray
    # Backend-specific observations beside the logits (a spiking net's silent rate, per-neuron
    # firing counts); where the core logs them, numbers become metrics, anything else JSON.
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def predictions(self) -> np.ndarray:
        return self.logits.argmax(axis=1)


@dataclass
class ExportMetadata:
    """Stored in the ONNX file so that ``tle predict`` needs nothing else.

    The exported graph takes float32 NHWC images in [0, 1] (the core's data
    layout) and returns logits: any normalisation or layout change belongs inside
    the graph.
    """

    class_names: list[str]
    image_size: tuple[int, int]
    channels: int
    backend: str
    model: str
    extra: dict[str, Any] = field(default_factory=dict)

    def as_props(self) -> dict[str, str]:
        import json

        props = {
            "tle.class_names": json.dumps(self.class_names),
            "tle.image_size": json.dumps(list(self.image_size)),
            "tle.channels": str(self.channels),
            "tle.backend": self.backend,
            "tle.model": self.model,
            "tle.input_layout": "NHWC",
            "tle.input_range": "0..1",
        }
        props.update({f"tle.{k}": str(v) for k, v in self.extra.items()})
        return props


@dataclass(frozen=True)
class FuseOptions:
    """What ``tle fuse`` asks of a backend's ``fuse`` hook (see ``tle.contract.hookspecs.fuse``).

    ``keep``: the fraction of each model's head units kept per class; ``ratio``: the fraction of a
    unit's largest incoming weights that rank it (S2: 10 %); ``concatenate``: every head unit of every
    model instead (the baseline the fused model is judged against); ``normalise``: put the models'
    scores on one scale from their weights alone (no data), so that no model outvotes the others on
    every image only because its scores are larger (bagging applies the same factors); ``scales``: one factor
    per model that the core measured on the runs' validation splits (``tle fuse --normalise validation``), to
    apply to each model's scores instead (empty: none given; a backend that cannot rescale ignores it and
    says so by returning no factors); ``rank``: what orders a model's units, ``activity`` (how often each
    decides on its model's own training images, which the core hands over; a backend that cannot count that
    ranks by weights and says so in :class:`Fused`) or ``weights`` (S2's sum of the largest ``ratio`` incoming
    weights).
    """

    keep: float = 0.5
    ratio: float = 0.1
    concatenate: bool = False
    normalise: bool = True
    rank: str = "activity"
    scales: tuple[float, ...] = ()

    @classmethod
    def of(cls, options: Any) -> FuseOptions:
        """``options`` as given to the hook: a :class:`FuseOptions`, a dict of its fields (unknown keys
        ignored), or ``None`` (the defaults)."""
        if isinstance(options, cls):
            return options
        known = {k: v for k, v in dict(options or {}).items() if k in cls.__dataclass_fields__}
        return cls(**known)


@dataclass
class Fused:
    """A ``fuse`` hook's answer when the fused model rescaled its parents' scores (``normalise``).

    ``scales[i]``: the factor the fused model applied to model ``i``'s scores (its logits, for a
    spiking net its potentials); the core multiplies model ``i``'s logits by it before bagging, so
    that bagging and the fused model compare the models on the same scale; none given: every factor 1
    (the core also reads a bare model so, from a backend older than the typed contract). ``ranked_by``: what ordered the units it kept (``activity`` or ``weights``).
    """

    model: Any
    scales: tuple[float, ...] = ()
    ranked_by: str = "weights"


@dataclass(frozen=True)
class ForeignWeights:
    """Weights another backend reads natively (``imagenet``, a ``.pth`` file...), asked for as a portable file
    written by that backend in a worker process of its own (:func:`tle.contract.helpers.portable_from_backend`):
    how Keras takes torchvision's ImageNet file or a user's state dict."""

    backend: str  # the backend that reads ``weights``
    weights: str  # what it reads: ``imagenet`` or a file path
    model: str
    head: Any  # the run's tle.contract.spec.HeadSpec
    input_shape: tuple[int, ...]
    num_classes: int
    out: Path  # a folder for the portable file
    source: str | None = None  # how the user named the weights, for messages

    def options(self) -> dict[str, Any]:
        return {"weights": self.weights, "model": self.model, "head": self.head.model_dump(mode="json"),
                "input_shape": [int(v) for v in self.input_shape], "num_classes": int(self.num_classes),
                "out": str(self.out), "source": self.source or self.weights}
