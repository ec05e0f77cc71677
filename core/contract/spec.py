"""The experiment spec: one pydantic model that every backend reads the same way.

Loaded from YAML or TOML, overridden by CLI flags, validated before any
framework is imported, saved with the run.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tle.errors import UserError
from tle.contract.initializers import InitSpec
from tle.contract.strategy import parse_strategy


class _Strict(BaseModel):
    # A typo in a YAML key must be an error, not a silently ignored setting.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SyntheticSpec(_Strict):
    classes: int = Field(default=4, ge=2, le=1000)
    per_class: int = Field(default=60, ge=3)
    size: int = Field(default=32, ge=4, le=1024)
    channels: Literal[1, 3] = 3


SplitSize = int | float


def not_blank(message: str) -> AfterValidator:
    """A string field that is stripped, and refused with ``message`` when nothing is left."""

    def check(value: str) -> str:
        if not value.strip():
            raise ValueError(message)
        return value.strip()

    return AfterValidator(check)


class DataSpec(_Strict):
    """Where the images come from and how they are split.

    ``source`` is ``digits[:CLASSES]``, ``synthetic``, ``folder:PATH``,
    ``npz:PATH``, a built-in set (``mnist``, ``fashion_mnist``, ``cifar10``,
    ``cifar100``, ``emnist_letters``; ``mnist:0-4`` or ``emnist_letters:a-j``
    keep those classes) or a prefix a plugin registers. Split sizes are per class: an
    int is a count, a float in (0, 1) a fraction; ``train: null`` takes the rest.
    """

    source: Annotated[str, not_blank("dataset source is empty; use digits, synthetic, folder:PATH or npz:PATH")] = \
        "digits"
    image_size: int | None = Field(default=None, ge=4, le=2048,
                                   description="square side in pixels; null keeps the native size")
    channels: Literal[1, 3] | None = None
    max_per_class: int | None = Field(default=None, ge=1)
    train: SplitSize | None = None
    val: SplitSize = 0.2
    test: SplitSize = 0.2
    seed: int | None = Field(default=None, description="split seed; null uses train.seed")
    synthetic: SyntheticSpec = Field(default_factory=SyntheticSpec)

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        return {"source": value} if isinstance(value, str) else value

    @field_validator("train", "val", "test")
    @classmethod
    def _split_size(cls, value: SplitSize | None) -> SplitSize | None:
        if value is None:
            return value
        if isinstance(value, float) and not 0.0 <= value < 1.0:
            raise ValueError("a fraction must be in [0, 1); use an int for a count per class")
        if isinstance(value, int) and value < 0:
            raise ValueError("a count per class must be >= 0")
        return value


class HeadSpec(_Strict):
    """The classifier put on the backbone.

    ``dense``: S0's head (pool/flatten -> Dense ``hidden`` ReLU -> Dropout -> Dense N).
    ``linear``: pool/flatten -> Dense N.
    ``original``: keep the model's own classifier, replace only its last layer
    (S1's procedure).
    ``init`` draws the new layers; unset, it is Keras's Dense default
    ``glorot_uniform``, or ``normal:0.01`` for ``original`` (S1: "initialised
    from a normal distribution").
    """

    kind: Literal["dense", "linear", "original"] = "dense"
    hidden: int = Field(default=256, ge=1)
    dropout: float = Field(default=0.5, ge=0.0, lt=1.0)
    init: InitSpec | None = None

    @field_validator("init", mode="before")
    @classmethod
    def _init(cls, value: Any) -> Any:
        return InitSpec.parse(value) if isinstance(value, str) else value

    @property
    def initializer(self) -> InitSpec:
        if self.init is not None:
            return self.init
        return InitSpec(name="normal", scale=0.01) if self.kind == "original" else InitSpec(name="glorot_uniform")


class StdpSpec(_Strict):
    """Layer-by-layer unsupervised phases (a spiking net's STDP on conv1, then conv2); CNN backends ignore it.

    Each such phase presents training images, reshuffled each pass over the set, until its layer has
    converged (the backend's criterion) or ``presentations`` images have been presented: a small set is
    presented more often, so every set size gets the same plasticity. Mozafari et al.'s rates double every
    500 presentations, so a layer takes about as many presentations to converge whatever the set size: on
    digits, ~3,000 for the 28 px network's conv1 and ~5,500 for its conv2. The default leaves a margin over
    that (a fixed 8 passes over 541 images was 4,328 and left conv2 unconverged).
    """

    presentations: int = Field(default=8000, ge=0, description="images presented to each STDP layer at most")


JOIN_TIMEOUT = 300.0  # torchrun waits 600 s (c10d, static) to 900 s (its launcher); a node not there in 5 min is not coming
COLLECTIVE_TIMEOUT = 1800.0  # torch's default process-group timeout for gloo


class DistributedSpec(_Strict):
    """One run over several processes, devices or hosts, on the framework's own engine (see ``tle.run.distributed``).

    ``nproc`` processes (torch: DDP ranks started by torch's elastic launcher) or replicas (Keras: the devices of
    one ``MirroredStrategy``) per node; ``auto`` is one per GPU when the device is CUDA, else 1. ``train.batch_size``
    stays the global batch: each replica trains on its share. ``nnodes``/``node_rank``/``master_addr``/``master_port``
    join hosts as torchrun does (node 0 owns the tracked run). ``backend``: the collective backend, ``auto`` = NCCL
    on CUDA, gloo on CPU.

    Every wait on another host is bounded: ``join_timeout`` for the nodes to meet at ``master_addr:master_port``
    (torchrun's rendezvous timeout; the run then ends FAILED naming who joined), ``collective_timeout`` for one
    collective (a rank that hangs or died: the others fail after it instead of waiting for ever; torch's gloo
    default). Both are seconds, and neither changes what the run computes (not part of :meth:`ExperimentSpec.key`).
    """

    nproc: int | Literal["auto"] = Field(default=1, description="processes (torch) or replicas (keras) per node")
    nnodes: int = Field(default=1, ge=1)
    node_rank: int = Field(default=0, ge=0)
    master_addr: str = "127.0.0.1"
    master_port: int | None = Field(default=None, ge=1, le=65535,
                                    description="null: a free port on one node, 29500 across nodes")
    backend: Literal["auto", "gloo", "nccl"] = "auto"
    sync_batchnorm: bool = Field(default=False,
                                 description="BatchNorm statistics over the global batch (SyncBatchNorm)")
    join_timeout: float = Field(default=JOIN_TIMEOUT, gt=0, le=86400,
                                description="seconds the nodes may take to meet at master_addr:master_port")
    collective_timeout: float = Field(default=COLLECTIVE_TIMEOUT, gt=0, le=86400,
                                      description="seconds one collective may wait for the other ranks")

    @field_validator("nproc")
    @classmethod
    def _nproc(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError("nproc must be at least 1 (or auto)")
        return value

    @model_validator(mode="after")
    def _node_rank(self) -> "DistributedSpec":
        if self.node_rank >= self.nnodes:
            raise ValueError(f"node_rank {self.node_rank} is not below nnodes {self.nnodes}")
        return self

    @property
    def active(self) -> bool:
        return self.nproc != 1 or self.nnodes > 1


class L2SPSpec(_Strict):
    """L2-SP (see :mod:`tle.contract.tuning`): ``alpha`` pulls the blocks that start pretrained toward their starting
    weights, ``beta`` the re-initialised blocks and the head toward zero. Given as a mapping or as ``"ALPHA,BETA"``
    (``--set train.l2sp=0.01,0.01``; one number is both)."""

    alpha: float = Field(default=0.01, ge=0)
    beta: float = Field(default=0.01, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _from_text(cls, value: Any) -> Any:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return {"alpha": value, "beta": value}
        if isinstance(value, str):
            parts = [p.strip() for p in value.split(",")]
            try:
                numbers = [float(p) for p in parts]
            except ValueError:
                raise ValueError(f"train.l2sp {value!r} is not ALPHA,BETA (e.g. 0.01,0.01)") from None
            if len(numbers) not in (1, 2):
                raise ValueError(f"train.l2sp {value!r} is not ALPHA,BETA (e.g. 0.01,0.01)")
            return {"alpha": numbers[0], "beta": numbers[-1]}
        return value

    def __str__(self) -> str:
        return f"{self.alpha:g},{self.beta:g}"


# Fields added after runs existed: left out of ExperimentSpec.key() while at their defaults, so that a sweep still
# finds the cells it ran before they existed.
_LATER_TRAIN_DEFAULTS = {"gradual_epochs": 1, "lr_decay": 1.0, "params": "all", "l2sp": None, "schedule": "constant",
                         "warmup_epochs": 0}


class TrainSpec(_Strict):
    epochs: int = Field(default=5, ge=1)
    batch_size: int = Field(default=32, ge=1)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    finetune_lr: float = Field(default=1e-5, gt=0)
    finetune_epochs: int = Field(default=2, ge=1)
    gradual_epochs: int = Field(default=1, ge=1, description="epochs of each unfreezing stage of gradual[:BLOCK]")
    # See tle.contract.tuning for the meaning of these five, the same in every backend that lists them.
    lr_decay: float = Field(default=1.0, gt=0, le=1,
                            description="layer-wise LR decay: block i of N at the stage's lr x lr_decay^(N-i)")
    params: Literal["all", "bias", "norm", "bias+norm"] = Field(
        default="all", description="which parameters of a trainable block train; the head always trains whole")
    l2sp: L2SPSpec | None = Field(default=None, description="L2-SP toward the run's starting weights: {alpha, beta}")
    schedule: Literal["constant", "cosine", "step"] = Field(default="constant",
                                                            description="per-epoch learning-rate schedule per stage")
    warmup_epochs: int = Field(default=0, ge=0, description="linear warm-up epochs at the start of each stage")
    seed: int = 0
    device: str = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    early_stopping: int | None = Field(default=None, ge=1, description="patience in epochs on val_acc; null = off")
    # One meaning in every backend (see tle.contract.strategy): "frozen" keeps the BatchNorm statistics of blocks that
    # start pretrained fixed while their gamma/beta train; "train" re-estimates them on the new data.
    batchnorm: Literal["frozen", "train"] = Field(default="frozen",
                                                  description="BatchNorm statistics of pretrained blocks")
    cache_features: bool = True
    checkpoint: bool = Field(default=True, description="write a checkpoint each epoch so --resume can continue the run")
    augment: bool = False
    stdp: StdpSpec = Field(default_factory=StdpSpec)
    distributed: DistributedSpec = Field(default_factory=DistributedSpec)

    @model_validator(mode="after")
    def _l2sp_replaces_weight_decay(self) -> "TrainSpec":
        if self.l2sp is not None and self.weight_decay:
            raise ValueError("train.l2sp replaces weight decay; set train.weight_decay to 0 (or drop train.l2sp)")
        return self

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        ok = value in ("auto", "cpu", "cuda", "gpu") or value.startswith("cuda:")
        if not ok:
            raise ValueError("device must be one of auto, cpu, cuda, cuda:N")
        return value


class TrackingSpec(_Strict):
    uri: str | None = Field(default=None,
                            description="MLflow tracking URI; null = MLFLOW_TRACKING_URI or MLflow's default")
    # An empty name would log into MLflow's "Default" experiment without a word.
    experiment: Annotated[str, not_blank("the MLflow experiment name is empty; give one, e.g. --experiment s1")] = "tle"
    run_name: str | None = None

    registered_model: str | None = Field(default=None, description="register the ONNX model under this name")


class ExportSpec(_Strict):
    # "best": in a sweep, only each group's best cell (by best_val_acc over its seeds) is exported
    # after the grid ran; a single run counts as its own group's best.
    onnx: bool | Literal["best"] = True
    atol: float = Field(default=1e-4, gt=0)
    rtol: float = Field(default=1e-3, ge=0)
    parity_batch: int = Field(default=16, ge=1)


class ExperimentSpec(_Strict):
    backend: str
    model: str
    dataset: DataSpec = Field(default_factory=DataSpec)
    strategy: str = "scratch"
    # Unset: the backend's own default (``BackendInfo.default_init``: glorot_uniform for the CNNs,
    # Mozafari's N(0.8, 0.05) for spiking synapses), filled in before the run is logged.
    init: InitSpec | None = None
    weights: str = "none"
    head: HeadSpec = Field(default_factory=HeadSpec)
    train: TrainSpec = Field(default_factory=TrainSpec)
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    export: ExportSpec = Field(default_factory=ExportSpec)

    @field_validator("strategy")
    @classmethod
    def _strategy(cls, value: str) -> str:
        return str(parse_strategy(value))

    @field_validator("init", mode="before")
    @classmethod
    def _init(cls, value: Any) -> Any:
        return InitSpec.parse(value) if isinstance(value, str) else value

    def with_defaults(self, default_init: str) -> ExperimentSpec:
        """This spec with what its backend decides filled in (the initialiser)."""
        return self if self.init is not None else self.model_copy(update={"init": InitSpec.parse(default_init)})

    @field_validator("backend", "model", "weights")
    @classmethod
    def _not_empty(cls, value: str) -> str:
        if not value or not value.strip():
            raise ValueError("must not be empty")
        return value.strip()

    def flat(self) -> dict[str, str]:
        """The resolved spec as MLflow params: dotted keys, string values."""
        return {k: str(v) for k, v in _flatten(self.model_dump(mode="json")).items()}

    def key(self) -> str:
        """Identity of what the run computes: the resolved spec without where and how it is tracked.

        Logged as the tag ``tle.spec_key``; a sweep skips a cell whose key and
        data fingerprint already have a FINISHED run.
        """
        # Where the ranks meet is not what they compute; a run that is not distributed keeps the key it had
        # before train.distributed existed, so a sweep still finds its earlier cells.
        where = {"node_rank", "master_addr", "master_port", "join_timeout", "collective_timeout"}
        later = {k for k, default in _LATER_TRAIN_DEFAULTS.items() if getattr(self.train, k) == default}
        body = self.model_dump(mode="json", exclude={"tracking": True, "train": {
            "checkpoint": True, "distributed": True if not self.train.distributed.active else where,
            **{k: True for k in later}}})
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:20]

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def read_spec_file(path: str | Path, given_by: str = "-c/--config") -> dict[str, Any]:
    """Read a YAML or TOML spec file into a dict, turning every failure into a UserError.

    ``given_by`` names where the path came from, for the error's hint.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"spec file {path} does not exist", f"check the path given to {given_by}")
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        if path.suffix.lower() == ".toml":
            data = tomllib.loads(text)
        else:
            data = yaml.safe_load(text)
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(f"cannot parse {path}{where}: {problem}", "fix the file's syntax") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{path} must hold a mapping of spec fields, not {type(data).__name__}",
                        "see examples/*.yaml for the layout")
    return data


def set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """Apply one override such as ``train.epochs=3`` to a raw spec dict."""
    keys = dotted.split(".")
    node: dict[str, Any] = tree
    for key in keys[:-1]:
        child: Any = node.get(key)
        if isinstance(child, str) and key == "dataset":
            child = {"source": child}
        if not isinstance(child, dict):
            child = {}
        node[key] = child
        node = child
    node[keys[-1]] = value


def build_spec(base: dict[str, Any] | None = None, overrides: dict[str, Any] | None = None) -> ExperimentSpec:
    """Merge file values and CLI overrides (dotted keys) and validate them."""
    tree: dict[str, Any] = dict(base or {})
    for dotted, value in (overrides or {}).items():
        if value is not None:
            set_dotted(tree, dotted, value)
    try:
        return ExperimentSpec.model_validate(tree)
    except ValidationError as exc:
        raise UserError(describe_validation_error(exc), "fix that field in the spec or its CLI flag") from None


def describe_validation_error(exc: ValidationError) -> str:
    """One line naming the field, the bad value and what is allowed."""
    parts = []
    for err in exc.errors()[:3]:
        field = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-"))
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        elif err["type"] == "missing":
            msg = "required"
        value = err.get("input")
        shown = "" if err["type"] in ("missing",) or isinstance(value, dict) else f" (got {value!r})"
        parts.append(f"{field or 'spec'}: {msg.removeprefix('Value error, ')}{shown}")
    more = len(exc.errors()) - len(parts)
    return "invalid spec: " + "; ".join(parts) + (f"; and {more} more" if more > 0 else "")
