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
"""

from __future__ import annotations

from collections import OrderedDict

HEAD = "head"


class KerasNet:
    def __init__(self, name: str, family: str, net, cuts: list, block_layers: "OrderedDict[str, list]",
                 new_head: list[str], num_classes: int, input_shape, class_names):
        self.model_name = name
        self.family = family
        self.net = net
        self.cuts = cuts
        self.block_layers = block_layers
        self.new_head = list(new_head)
        self.num_classes = int(num_classes)
        self.input_shape = tuple(int(v) for v in input_shape)
        self.class_names = list(class_names) if class_names is not None else None
        self.trainable = {b: True for b in block_layers}
        # Variables that can train (BatchNorm's moving statistics cannot): recorded while everything is
        # trainable, so counts stay right whatever the freeze state is later.
        self.capable = {v.path for v in net.trainable_weights}
        self.optimizer = None  # the last stage's, for checkpoints and tests

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

        fixed = set(blocks)
        for block, layers in self.block_layers.items():
            for layer in layers:
                if isinstance(layer, keras.layers.BatchNormalization):
                    if block in fixed:
                        object.__setattr__(layer, "call", _inference_call(layer))
                    else:
                        vars(layer).pop("call", None)

    def prefix_model(self, k: int):
        import keras

        return keras.Model(self.net.input, self.cuts[k])

    def tail_model(self, k: int):
        """Blocks k+1.. and the head as a model of the block-k output (layers shared with ``net``)."""
        import keras

        return keras.Model(self.cuts[k], self.net.output) if k else self.net


def _inference_call(layer):
    base = type(layer).call

    def call(inputs, training=None, mask=None):
        return base(layer, inputs, training=False, mask=mask)

    return call
