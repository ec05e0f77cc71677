"""The native model handed to the core: a ``keras.Model`` plus its block map.

The Keras graph is ``images (NHWC, [0, 1]) -> preprocess -> block1 .. block5 ->
head -> logits``, one flat functional model (the exported ONNX graph is this
model). ``cuts[k]`` is the tensor between block k and block k+1, which lets a
frozen prefix run once (``cache.py``) and the rest train as its own model
sharing the same layers.

Freeze state is ``layer.trainable`` per block. Keras 3 runs a BatchNormalization
layer whose ``trainable`` is False in inference mode even inside ``fit`` (it
uses and keeps its moving statistics), which is what the contract asks of
frozen blocks; ``tests/test_keras_backend.py`` checks it. A trainable block in
the stage's ``fixed_stats`` (``train.batchnorm: frozen``) needs inference-mode
BatchNorm with trainable gamma/beta, which ``trainable`` cannot say: its
BatchNormalization layers get a ``call`` that passes ``training=False``, what
the Keras transfer-learning guide does by calling the base model with
``training=False``.

A warm sweep worker hands a cell the KerasNet it built for an earlier cell of
the same architecture (``models.py``): ``reset_from`` gives it a freshly built
twin's state, variable for variable (weights, BatchNorm statistics, dropout
seeds), and ``trainers`` keeps the compiled stage models whose train step
``fit`` has already traced, one per freeze configuration (``train.py``).
"""

from __future__ import annotations

from collections import OrderedDict

from tle.contract.records import Blueprint

HEAD = "head"


class KerasNet:
    """``blueprint``'s model (name, classes, input shape) built as ``net``, a Keras model of ``family``; ``cuts``
    the tensors between its blocks, ``block_layers`` each block's layers, ``new_head`` the head layers drawn for
    this task."""

    def __init__(self, blueprint: Blueprint, family: str, net, cuts: list, block_layers: "OrderedDict[str, list]",
                 new_head: list[str]):
        self.model_name = blueprint.model
        self.family = family
        self.net = net
        self.cuts = cuts
        self.block_layers = block_layers
        self.new_head = list(new_head)
        self.num_classes = blueprint.num_classes
        self.input_shape = tuple(int(v) for v in blueprint.input_shape)
        self.class_names = list(blueprint.class_names)
        self.trainable = {b: True for b in block_layers}
        # Variables that can train (BatchNorm's moving statistics cannot): recorded while everything is
        # trainable, so counts stay right whatever the freeze state is later.
        self.capable = {v.path for v in net.trainable_weights}
        self.optimizer = None  # the last stage's, for checkpoints and tests
        self.fixed = frozenset()  # blocks whose BatchNorm runs in inference mode (fix_stats)
        self.params = "all"  # which variables of a trainable block train (train.params, freeze_policy)
        self.l2sp_start: dict | None = None  # L2-SP's w⁰: the variables when fit first ran (train.py)
        # Compiled stage models with their traced train/test steps, by freeze configuration (train.py).
        self.trainers: OrderedDict = OrderedDict()
        self._traced: dict = {}  # inference of the whole net (key None) and of blocks 1..k (key k), traced once

    @property
    def block_names(self) -> list[str]:
        return [b for b in self.block_layers if b != HEAD]

    def layers_of(self, block: str) -> list:
        return self.block_layers[block]

    def frozen_prefix(self) -> int:
        n = 0
        for name in self.block_names:
            if self.trainable.get(name, True):
                break
            n += 1
        return n

    def fix_stats(self, blocks) -> None:
        """BatchNorm of ``blocks`` in inference mode from now on (statistics kept); the others' restored."""
        import keras

        fixed = self.fixed = frozenset(blocks)
        for block, layers in self.block_layers.items():
            for layer in layers:
                if isinstance(layer, keras.layers.BatchNormalization):
                    if block in fixed:
                        object.__setattr__(layer, "call", _inference_call(layer))
                    else:
                        vars(layer).pop("call", None)

    def signature(self) -> tuple:
        """What must match for one KerasNet to take another's state: its layers and their variables' shapes."""
        return (tuple((type(layer).__name__, layer.name) for layer in self.net.layers),
                tuple((tuple(v.shape), str(v.dtype)) for v in self.net.variables))

    def reset_from(self, fresh: "KerasNet") -> None:
        """Become ``fresh`` (a model just built the same way): its variables, seeds, head and class names, and
        the state a new build starts in (every block trainable, no BatchNorm patched)."""
        for mine, theirs in zip(self.net.variables, fresh.net.variables, strict=True):
            mine.assign(theirs)
        self.new_head = list(fresh.new_head)
        self.class_names = fresh.class_names
        self.optimizer = None
        self.params, self.l2sp_start = "all", None
        for block, layers in self.block_layers.items():
            self.trainable[block] = True
            for layer in layers:
                layer.trainable = True
        self.fix_stats(())

    def inference(self, k: int | None = None):
        """``net(x, training=False)`` (or blocks 1..k's, for the feature cache) as one traced function for
        batches of any size, kept with the model: the same logits as the eager call, without Keras's per-layer
        Python on every batch. Inference mode does not depend on the freeze state, so one trace serves all."""
        fn = self._traced.get(k)
        if fn is None:
            from tle_keras.runtime import tf as _tf

            tf = _tf()
            model = self.net if k is None else self.prefix_model(k)
            fn = tf.function(lambda x: model(x, training=False),
                             input_signature=[tf.TensorSpec((None, *self.input_shape), tf.float32)])
            self._traced[k] = fn
        return fn

    def prefix_model(self, k: int):
        import keras

        return keras.Model(self.net.input, self.cuts[k])

    def tail_model(self, k: int):
        """Blocks k+1.. and the head as a model of the block-k output (layers shared with ``net``)."""
        import keras

        return keras.Model(self.cuts[k], self.net.output) if k else self.net

    def stage_model(self, k: int):
        """A model of its own for one freeze configuration of ``fit`` (compiling ``net`` itself would drop the
        train step traced for another configuration); layers shared with ``net``."""
        import keras

        return keras.Model(self.cuts[k] if k else self.net.input, self.net.output)


def _inference_call(layer):
    base = type(layer).call

    def call(inputs, training=None, mask=None):
        return base(layer, inputs, training=False, mask=mask)

    return call
