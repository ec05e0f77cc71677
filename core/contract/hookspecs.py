"""Hook specifications: the whole contract between the core and a backend.

A backend is a module registered in the ``tle.backends`` entry-point group::

    [project.entry-points."tle.backends"]
    mybackend = "my_package.plugin"

Only the selected backend is imported and registered, so one broken or slow
backend never costs the others anything. Modules in the ``tle.plugins`` group
are registered for every run and may wrap any hook (``hookwrapper=True``) or
answer it first (``tryfirst=True``), e.g. to add an initialiser.

Backends return their own native objects (a ``torch.nn.Module``, a
``keras.Model``...) from :func:`load_backbone`; the core treats them as opaque
handles and passes them back into the other hooks. Images always travel as
float32 NumPy arrays in NHWC layout with values in [0, 1]; labels as int64.

A hook implementation may declare any subset of a hook's arguments. The backends
shipped with tle declare them all and mark each hook with :func:`implements`
instead of ``@hookimpl``: the type checker (pyright, in CI) then checks the
implementation's arguments and return type against its spec here.
Block names are the ones the backend declares in :func:`register_models`
(``block1`` ... ``blockN`` for CNNs, ``conv1`` ... for spiking nets); the
classifier added on top is always called ``head``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import pluggy

if TYPE_CHECKING:  # the annotations only: importing these here would make every plugin import numpy and pydantic
    import numpy as np

    from tle.contract.records import (Blueprint, BlockCount, BackendInfo, Evaluation, ExportMetadata, Fused, FuseOptions,
                                      ImageSet, ModelInfo, ResolvedWeights, Trained)
    from tle.data import Dataset
    from tle.data.sources import Source
    from tle.contract.distributed import DistributedPlan
    from tle.contract.initializers import InitSpec
    from tle.contract.loop import TrainLoop
    from tle.contract.spec import DataSpec, DistributedSpec, TrainSpec
    from tle.contract.strategy import Stage

hookspec = pluggy.HookspecMarker("tle")
hookimpl = pluggy.HookimplMarker("tle")

_Args = ParamSpec("_Args")
_Return = TypeVar("_Return")


def implements(spec: Callable[_Args, _Return]) -> Callable[[Callable[_Args, _Return]], Callable[_Args, _Return]]:
    """``@hookimpl`` for a function that implements ``spec`` (one of the hooks below) with its very signature.

    ``@implements(hookspecs.train)`` over ``def train(model, data, stage, train, loop) -> Trained`` marks it as
    ``@hookimpl`` does; the type checker reads the decorator's signature and reports an implementation whose
    arguments or return type do not fit ``spec`` (a spec returns ``X`` or ``X | None``: an implementation
    returning ``X`` fits both). At import, a function not named after ``spec`` is a :class:`ValueError`.
    """

    def mark(function: Callable[_Args, _Return]) -> Callable[_Args, _Return]:
        name = getattr(function, "__name__", "?")
        if name != spec.__name__:
            raise ValueError(f"{name} implements {spec.__name__}: name the function after its hook")
        return hookimpl(function)

    return mark


# -- registration ---------------------------------------------------------------


@hookspec(firstresult=True)
def backend_info() -> BackendInfo:
    """Describe the backend for ``tle backends``.

    :return: a :class:`tle.contract.records.BackendInfo`.

    Must not import the framework (``tle backends`` has to stay fast); read
    versions with ``importlib.metadata`` instead. ``default_init`` is the
    initialiser a run gets when its spec names none (``glorot_uniform``
    unless the backend's weights live elsewhere, as spiking synapses do).
    """
    ...


@hookspec
def register_models() -> Iterable[ModelInfo]:
    """Return the models this plugin offers.

    :return: a list of :class:`tle.contract.records.ModelInfo`, blocks in forward order.

    Called on the backend and on every ``tle.plugins`` plugin; the lists are
    merged, so a plugin may add models to a backend. Must not import the
    framework.

    A model that trains layer by layer (a spiking net: STDP per layer, then
    R-STDP on the decision layer) lists its ``phases``
    (:class:`tle.contract.records.TrainingPhase`, in order); ``tle plan`` then shows,
    per stage, which phases run and for how long, and :func:`train` runs them in
    that order for the blocks the stage trains. Models trained end to end leave
    ``phases`` empty.
    """
    ...


@hookspec
def register_datasets() -> dict[str, Callable[[str, DataSpec], ImageSet | Source]]:
    """Return dataset sources as ``{prefix: loader}``; fires when a run, sweep cell or study loads its data.

    ``loader(argument, spec)`` is called for ``--dataset prefix:argument`` with
    the :class:`tle.contract.spec.DataSpec` and returns a :class:`tle.contract.records.ImageSet`
    (or a lazy :class:`tle.data.sources.Source`). The core splits and resizes
    them, so every backend sees the same images. The built-in sources
    (``digits``, ``synthetic``, ``folder``, ``npz``, ``mnist`` ...) are registered
    through this hook too, by ``tle.data.plugin``; a prefix a backend gives wins.
    """
    ...


# -- one experiment, in the order the runner calls them -------------------------


@hookspec(firstresult=True)
def load_backbone(blueprint: Blueprint, weights: ResolvedWeights) -> object:
    """Build ``blueprint.model`` with a head of ``blueprint.num_classes`` outputs.

    :param tle.contract.records.Blueprint blueprint: the model (a name from :func:`register_models`), the class
        names in label order, the input shape ``(height, width, channels)``, the classifier head
        (:class:`tle.contract.spec.HeadSpec`), the device, the precision and the seed for everything random in
        construction.
    :param tle.contract.records.ResolvedWeights weights: where the backbone's weights
        come from. Pretrained blocks are loaded here. The head is new, drawn
        with ``head.init``, unless ``weights.keeps_head(blueprint.class_names)`` (the
        core's one rule, :func:`tle.contract.records.same_classes`: the weights come
        from a run on these very classes) and the saved head fits: then it is
        kept. A new head's layers are drawn with ``head.initializer``.
    :return: the native model (opaque to the core: it only hands it back to the other hooks).

    Raise :class:`tle.UserError` for an unknown model, missing weights offline,
    or weights that do not fit the model (name the layer).
    """
    ...


@hookspec(firstresult=True)
def apply_init(model: Any, blocks: list[str], init: InitSpec, seed: int) -> bool | None:
    """Re-initialise the named ``blocks`` (may include ``head``) with ``init``.

    :param list[str] blocks: blocks the strategy starts from scratch.
    :param tle.contract.spec.InitSpec init: initialiser name and its parameters, with
        Keras's definitions (fan-in/fan-out of a conv = kernel area x channels;
        biases zero).
    :return: ``True`` when done. A ``tle.plugins`` plugin may answer first
        (``tryfirst=True``) for initialisers it adds and return ``None`` for the
        rest.
    """
    ...


@hookspec(firstresult=True)
def freeze_policy(model: Any, trainable: dict[str, bool], fixed_stats: Iterable[str], params: str) -> bool | None:
    """Make exactly the blocks with ``trainable[name] is True`` trainable; called before each stage.

    :param dict[str, bool] trainable: every block and ``head``.
    :param tuple[str, ...] fixed_stats: the blocks whose normalisation statistics (BatchNorm's running
        mean and variance) must stay exactly as they are during the stage: their normalisation layers
        run in inference mode, while their scale and shift still train when the block is trainable
        (``train.batchnorm``, see :mod:`tle.contract.strategy`). Every frozen block is in it. The other blocks
        re-estimate their statistics in training mode. A backend without normalisation layers ignores it.
    :param str params: which parameters of a trainable block train (``train.params``: ``all``, ``bias``,
        ``norm``, ``bias+norm``; see :mod:`tle.contract.tuning`); the head trains whole. Always ``all`` for a
        backend that does not list the ``param-select`` capability, which may leave the argument out.
    :return: ``True`` when done; ``None`` leaves the call to the next implementation (as for :func:`apply_init`).
    """
    ...


@hookspec(firstresult=True)
def count_parameters(model: Any) -> list[BlockCount]:
    """Return a :class:`tle.contract.records.BlockCount` per block and ``head``, in order.

    Reflects the current freeze state: the core checks it against the plan (with ``train.params``, against the
    ``bias``/``norm`` counts the backend gives).
    """
    ...


@hookspec(firstresult=True)
def train(model: Any, data: Dataset, stage: Stage, train: TrainSpec, loop: TrainLoop) -> Trained:
    """Train ``model`` for one stage of the plan.

    :param tle.data.Dataset data: train/val arrays (the core's split).
    :param tle.contract.strategy.Stage stage: epochs, learning rate, trainable blocks; and, for backends that
        list the capabilities of :mod:`tle.contract.tuning`, each block's learning-rate factor
        (``stage.factor(block)``), the epoch's rate (``stage.rate(epoch)``, which such a backend reports as the
        epoch metric ``lr``) and L2-SP (``stage.l2sp``, toward the weights the model held when ``train`` was
        first called on it, before any checkpoint was loaded).
    :param tle.contract.spec.TrainSpec train: optimiser, batch size, seed, device...
    :param tle.contract.loop.TrainLoop loop: the core's side of the loop. Call
        ``loop.epoch_start(epoch, batches)``, ``loop.batch_end()`` after each
        batch and ``loop.epoch_end(epoch, metrics)`` with ``train_loss``,
        ``train_acc``, ``val_loss``, ``val_acc``; stop when ``loop.should_stop``.
        Wrap any other long pass (computing cached features...) in
        ``loop.track(iterable, total, description)`` so that it shows progress.
        Epochs count from ``loop.start_epoch`` (non-zero when resuming).
        The core owns progress display, timing, tracking and early stopping.
        Backends that list ``"resume"`` in their capabilities write a native
        checkpoint (model, optimiser, stage index, epoch) to
        ``loop.checkpoint_path`` (a suffix may be added) before each
        ``epoch_end`` when it is not ``None``. When ``loop.resume_from`` is not
        ``None`` they load the model from it first, and the optimiser state
        too when the checkpoint's stage is ``stage.index``.

    A model with ``phases`` (see :func:`register_models`) runs, for the blocks
    ``stage`` trains, its fixed-length phases first (wrapped in ``loop.track``)
    and its epoch phase for ``stage.epochs`` epochs; measures of the earlier
    phases (e.g. ``conv1_convergence``) go into epoch 0's metrics.

    :return: a :class:`tle.contract.records.Trained`: ``epochs``, how many epochs this
        call ran (the ``epoch_end`` calls it made; 0 for a resumed stage already
        done), ``stopped_early`` when ``loop.should_stop`` ended it before
        ``stage.epochs``, and ``metrics``, stage-level numbers the runner logs as
        ``stage{index}_{name}`` (blocks served from a feature cache as
        ``cached_blocks``, the STDP phases' measures). Optimisers and other
        state stay inside the backend.
    """
    ...


@hookspec(firstresult=True)
def evaluate(model: Any, images: np.ndarray, labels: np.ndarray | None, batch_size: int) -> Evaluation:
    """Run ``model`` in inference mode, float32.

    :param labels: int64 labels, or ``None`` (then the loss is NaN).
    :return: a :class:`tle.contract.records.Evaluation` (mean cross-entropy and the
        logits, one row per image). The core derives every metric from these,
        and compares the logits with the exported ONNX model's. ``extras`` may
        carry what else the backend observed (a spiking net's ``silent_rate``
        and per-neuron ``firing_counts``); where the core logs them (``tle
        fuse`` does), numbers become metrics and the rest a JSON artifact.
    """
    ...


@hookspec(firstresult=True)
def save_weights(model: Any, directory: Path) -> str | Path:
    """Write the model's weights in the backend's native format into ``directory``.

    :return: the path written. The core logs it as the run's ``weights/``
        artifact; ``--weights runs:/ID`` hands the same file back to
        :func:`load_backbone`.
    """
    ...


@hookspec(firstresult=True)
def portable_weights(model: Any) -> dict[str, np.ndarray] | None:
    """The model's weights as the portable dict of :mod:`tle.contract.portable` (torchvision keys, torch layouts).

    Fires when another framework needs this run's weights: ``--weights runs:/ID`` of a run of this
    backend given to a run of another one, and ``tle convert``. It runs in this backend's own process.
    A backend whose models have no counterpart elsewhere returns ``None`` (the caller says so in one line).
    :func:`load_backbone` must accept the file :func:`tle.contract.portable.write` makes of the result
    (``weights.path`` ending in ``.tle.npz``) for the same model name.

    :return: ``dict[str, numpy.ndarray]`` or ``None``.
    """
    ...


@hookspec(firstresult=True)
def export_onnx(model: Any, path: Path, sample: np.ndarray, metadata: ExportMetadata) -> str | Path:
    """Export ``model`` to the ONNX file ``path`` with a dynamic batch axis.

    :param numpy.ndarray sample: a batch of real input images (NHWC, [0, 1]).
    :param tle.contract.records.ExportMetadata metadata: to store in the file
        (``metadata.as_props()``).
    :return: the path written. The graph's input is NHWC float32 in [0, 1];
        its output is logits. The core then checks parity with onnxruntime.
    """
    ...


@hookspec(firstresult=True)
def export_extras(model: Any, directory: Path) -> list[str] | None:
    """Write other exported forms of ``model`` into ``directory`` (e.g. a spiking net's NIR graph).

    :return: the paths written, or ``None``. ``tle fuse`` logs them under the run's
        ``export/`` artifact.
    """
    ...


@hookspec(firstresult=True)
def fuse(models: list[Any], class_names: list[list[str]], options: FuseOptions,
         images: list[np.ndarray] | None) -> Fused | None:
    """Merge several trained models into one (S2's knowledge fusion); used by ``tle fuse``.

    :param list models: native models built by :func:`load_backbone` from finished runs
        (each with its own head kept), in the order the user named the runs.
    :param list[list[str]] class_names: each model's classes as the fusion names them, in label
        order. With ``tle fuse --align names`` they are the runs' own class names; with
        ``--align index`` (S2's protocol: class k of every run shares output k) every model gets
        the same list, output k named after the runs' classes k (``0/a``), so that a backend
        fuses by these names and never by the models' own.
    :param tle.contract.records.FuseOptions options: ``keep`` (fraction of each model's head units
        kept per class, default 0.5), ``ratio`` (fraction of a unit's incoming weights that
        rank it, default 0.1), ``normalise`` (put the models' scores on one scale, from their
        weights alone), ``scales`` (or apply these factors, one per model, that the core measured on
        the runs' validation images). ``concatenate`` (True) asks for the full concatenation instead: every
        head unit of every model in one model, the baseline the fused model is judged against.
        The core asks it only of backends that list ``fuse-concatenate`` in their
        capabilities; they may return ``None`` (then the baseline is skipped). Read it with
        ``FuseOptions.of(options)``, which also takes a dict.
    :param images: with ``options.rank == "activity"``, each model's own training images (its
        run's split, N x H x W x C in [0, 1]), in the models' order, to rank units by how often
        they decide; ``None`` otherwise. A hook that does not name this argument never gets it.
    :return: a :class:`tle.contract.records.Fused` holding the fused native model, with the
        factor it applied to each model's scores (``normalise``; the core applies the same
        factors before bagging; none: every factor 1), or ``None`` if the backend cannot fuse (the
        core then stops with a user error). The core still reads a bare model, from a backend
        written before this contract was type-checked, as ``Fused(model)``. The fused model's logits follow the ordered union of
        ``class_names``: the first model's classes, then each later model's new classes in
        their order. :func:`evaluate`, :func:`save_weights`, :func:`export_onnx` and
        :func:`export_extras` must accept it.

    Raise :class:`tle.UserError` for models that cannot be fused together (name why).
    The core evaluates the fused model beside each model alone, beside bagging
    (per class, the largest logit among the models that know the class) and beside the
    concatenation when the backend gives one.
    """
    ...


@hookspec(firstresult=True)
def resolve_device(device: str) -> str:
    """Return the concrete device ``device`` (``auto``...) means here, e.g. ``cuda:0`` or ``cpu``.

    Logged with the run. Must not fail when CUDA is absent: ``auto`` falls back to CPU.
    """
    ...


# -- one run over several processes or devices (``train.distributed``, see :mod:`tle.run.distributed`) ----


@hookspec(firstresult=True)
def distributed_plan(distributed: DistributedSpec, device: str) -> DistributedPlan:
    """Say how this backend runs one experiment over ``distributed``'s processes, devices and hosts.

    Fired by the runner in the process the user started (on every node), before data is loaded or MLflow is
    touched, when ``train.distributed`` asks for more than one process or node; only for backends that list
    ``"distributed"`` in their capabilities.

    :param tle.contract.spec.DistributedSpec distributed: ``nproc`` (or ``auto``), ``nnodes``, ``node_rank``,
        ``master_addr``, ``master_port``, ``backend`` (collective), ``sync_batchnorm``.
    :param str device: ``train.device`` as given (``auto``, ``cpu``, ``cuda``...).
    :return: a :class:`tle.contract.distributed.DistributedPlan`. ``local_processes`` 0 means the backend distributes
        inside this process (it sets that up here, e.g. a ``tf.distribute`` strategy, before its framework
        initialises its devices) and the runner goes on as for any run; otherwise the runner calls
        :func:`launch_ranks`.

    Raise :class:`tle.UserError` for what cannot run here (NCCL without CUDA, more processes than GPUs, a
    multi-host setting the framework does not support), naming the setting.
    """
    ...


@hookspec(firstresult=True)
def launch_ranks(plan: DistributedPlan, distributed: DistributedSpec, entry: Callable[..., Any],
                 args: tuple, failures: str, waiting: Callable[[str], None]) -> dict[int, Any]:
    """Start this node's ``plan.local_processes`` ranks with the framework's own launcher and wait for all of them.

    Fired by the runner after :func:`distributed_plan` returned a plan with processes; on node 0 inside the
    run's MLflow run, whose status the runner owns. Each rank sets up the framework's process group (``plan.
    collective``, ``distributed.master_addr``/``master_port``/``node_rank`` joining hosts), binds its device and
    calls ``entry(context, *args)`` with a :class:`tle.contract.distributed.RankContext`; ``entry`` runs the experiment,
    whose :func:`train` then replicates the model over the group.

    :return: ``{global rank: entry's return value}`` for this node's ranks (rank 0's is the run's result).

    :param str failures: the folder where failing ranks record their one-line reasons.
    :param waiting: call it with one line (no newline) whenever what the launcher waits for outside this process
        changes: "waiting at ADDR:PORT for 2 nodes: 1 joined (join timeout 300s)"; the runner shows it.

    When a rank fails, stop the others and raise ``tle.contract.distributed.rank_failure(failures, {rank: what the
    launcher saw})``; when this process is interrupted (SIGINT, SIGTERM), stop every rank (none may survive) and
    raise ``KeyboardInterrupt``, within seconds whatever the launcher waits for: never block the main thread in
    a call that does not return to Python (a socket or store wait of the framework's C++ code) for longer than
    a second or so, because Python runs signal handlers only between bytecodes. Every wait on other hosts is
    bounded: ``distributed.join_timeout`` for the nodes to meet (then raise a :class:`tle.UserError` saying
    where and who joined), ``distributed.collective_timeout`` for a collective.
    """
    ...


# -- probes: activations at initialisation (``tle init-study``, S4) -------------------


@hookspec(firstresult=True)
def dense_activations(inputs: np.ndarray, units: int, activation: str, init: InitSpec, seed: int) -> np.ndarray:
    """Build one dense layer in the backend's framework and return its activations on ``inputs``.

    Fired by ``tle init-study`` (S4) once per initialiser and seed, in a
    process that holds only this backend. The layer maps ``inputs.shape[1]`` features to
    ``units`` neurons; its kernel is drawn with ``init`` by the backend's own
    initialiser code (the one :func:`apply_init` uses, so the study measures
    what training would start from) and its bias is zero.

    :param numpy.ndarray inputs: float32 ``(N, features)``, the same array for every backend.
    :param int units: neurons in the layer (S4: 256).
    :param str activation: ``sigmoid``, ``tanh``, ``relu`` or ``linear``.
    :param tle.contract.initializers.InitSpec init: the kernel's initialiser.
    :param int seed: seed of the kernel's draw.
    :return: float32 NumPy array ``(N, units)``, computed by the framework in inference mode.
    """
    ...


@hookspec(firstresult=True)
def block_activations(model: Any, images: np.ndarray, blocks: list[str] | None = None) -> dict[str, np.ndarray]:
    """Run ``model`` (from :func:`load_backbone`) in inference mode and return every block's output.

    Fired by ``tle init-study --model`` on successive chunks of one batch of
    images, right after :func:`load_backbone` and :func:`apply_init`; the core
    computes the statistics (mean, std, dead and saturated fractions), so every
    backend is measured with the same definitions. ``tle rank`` fires it with
    ``blocks``: the last block's output (its features) and, for a candidate
    whose source head is kept, ``head`` (NCE/LEEP's source predictions), in one
    forward pass.

    :param numpy.ndarray images: float32 NHWC in [0, 1], a chunk of a few images.
    :param blocks: None for every backbone block; else only these (the forward
        pass may stop after the last one), ``head`` among them for the model's
        logits ``(N, classes)`` under ``head``. A backend that ignores it returns
        every backbone block, and the core then gets the logits from
        :func:`evaluate`.
    :return: ``{block: float32 NumPy array}`` for every backbone block in forward
        order (not ``head`` unless ``blocks`` names it), each the block's output
        with the channels last (``(N, H, W, C)`` for conv blocks, ``(N, C)`` for
        dense ones).
    """
    ...


@hookspec(firstresult=True)
def block_parameters(model: Any) -> dict[str, dict[str, np.ndarray]] | None:
    """Every parameter an optimiser may train, by block, as NumPy copies: what the conformance suite
    (:mod:`tle.testing`) reads to check that a stage moves exactly the parameters it should, each block at its
    rate, with L2-SP's pull.

    :return: ``{block: {name: array}}`` for every backbone block and ``head``, names the backend's own (stable
        between calls), normalisation statistics (running mean and variance) left out; ``None`` from a backend
        that does not offer it (the suite then skips those checks).
    """
    ...
