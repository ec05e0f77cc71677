"""The model's own input preprocessing, inside the graph.

Every model takes float32 NHWC in [0, 1] (the core's data and the exported
ONNX graph's input) and turns it into what its weights expect:

=========== ===================================================================
caffe       keras_vgg16/19, keras_resnet*: x * 255, RGB -> BGR, minus ImageNet's
            BGR mean (``keras.applications.vgg16.preprocess_input``)
torch       keras_densenet*, and every torchvision-layout model (alexnet, vgg*,
            resnet*, densenet*): (x - ImageNet mean) / ImageNet std, what
            the torch backend's wrapper applies
tf          keras_mobilenet_v2: x * 2 - 1
scale255    keras_mobilenet_v3_*: x * 255 (the application holds its own Rescaling layer)
none        vgg_small, resnet_small: the data as it is
=========== ===================================================================

A single grey channel is repeated to three first: every backbone is built with
three input channels whatever the data, as the torch backend does, so ImageNet
weights, a file, or a run trained on grey digits fit colour data and back.
"""

from __future__ import annotations

from tle_keras.runtime import keras as _keras

keras = _keras()

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)

MODES = {"vgg": "caffe", "resnet": "caffe", "densenet": "torch", "mobilenet_v2": "tf",
         "mobilenet_v3": "scale255", "small": "none"}


@keras.saving.register_keras_serializable(package="tle_keras")
class Preprocess(keras.layers.Layer):
    """[0, 1] NHWC with 1 or 3 channels -> the 3-channel input a backbone's weights expect. No weights."""

    def __init__(self, mode: str = "none", **kwargs):
        super().__init__(**kwargs)
        if mode not in ("caffe", "torch", "tf", "scale255", "none"):
            raise ValueError(f"unknown preprocessing mode {mode!r}")
        self.mode = mode

    def call(self, x):
        ops = keras.ops
        if x.shape[-1] == 1:
            x = ops.repeat(x, 3, axis=-1)
        if self.mode == "caffe":
            x = x[..., ::-1] * 255.0 - ops.convert_to_tensor(CAFFE_BGR_MEAN, dtype=x.dtype)
        elif self.mode == "torch":
            x = (x - ops.convert_to_tensor(IMAGENET_MEAN, dtype=x.dtype)) / ops.convert_to_tensor(IMAGENET_STD,
                                                                                                  dtype=x.dtype)
        elif self.mode == "tf":
            x = x * 2.0 - 1.0
        elif self.mode == "scale255":
            x = x * 255.0
        return x

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], 3)

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


def mode_for(name: str, family: str) -> str:
    from tle_keras import registry

    layout = registry.layout(name)
    if layout == "small":
        return "none"
    if layout == "torchvision":
        return "torch"  # torchvision's weights expect ImageNet mean/std, as tle_torch.wrapper applies
    if family == "mobilenet":
        return MODES["mobilenet_v2" if registry.application(name) == "mobilenet_v2" else "mobilenet_v3"]
    return MODES[family]
