"""The inference path as an ONNX graph, written node by node with ``onnx.helper``.

NHWC [0, 1] in -> grey 0..255 -> DoG -> spikes -> conv1 -> threshold -> pool ->
conv2 -> threshold -> pool -> conv3 -> per class, the largest final potential.
The time steps are not unrolled because nothing observable depends on them:
with no inhibition at inference every response above the DoG threshold fires
at some step, potentials never fall, and the decision reads the last step,
so the last step's spikes give the very logits a T-step simulation gives
(``tests/test_spyketorch_layers.py`` checks this against ``reference.py``).
Thresholds are crossed identically in ONNX Runtime because every sum is exact
(see ``coding``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tle_spyketorch import coding, layers

OPSET = 17
IR_VERSION = 8


def export(net, path, metadata) -> str:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    a = net.arch
    h, w, c = net.input_shape
    inits = [numpy_helper.from_array(np.asarray(v, dtype=np.float32), name) for name, v in (
        ("k255", 255.0), ("dog_threshold", coding.DOG_THRESHOLD), ("threshold1", a.threshold1),
        ("threshold2", a.threshold2))]
    inits += [numpy_helper.from_array(net.bank.cpu().numpy(), "dog_bank")]
    for block in ("conv1", "conv2", "head"):
        inits.append(numpy_helper.from_array(layers.quantise(net.synapses(block).detach().cpu()).numpy(), block))
    inits.append(numpy_helper.from_array(np.asarray([0, net.num_classes, net.per_class], dtype=np.int64), "by_class"))
    nodes = [helper.make_node("Transpose", ["images"], ["nchw"], perm=[0, 3, 1, 2])]
    grey = "nchw"
    if c != 1:
        nodes.append(helper.make_node("ReduceMean", ["nchw"], ["grey"], axes=[1], keepdims=1))
        grey = "grey"
    nodes += [helper.make_node("Mul", [grey, "k255"], ["scaled"]),
              helper.make_node("Round", ["scaled"], ["levels"]),
              helper.make_node("Conv", ["levels", "dog_bank"], ["dog"], pads=[coding.DOG_PADDING] * 4),
              helper.make_node("GreaterOrEqual", ["dog", "dog_threshold"], ["dog_fired"]),
              helper.make_node("Cast", ["dog_fired"], ["s0"], to=TensorProto.FLOAT)]
    for i, (block, threshold, pool) in enumerate((("conv1", "threshold1", a.pool1), ("conv2", "threshold2", a.pool2))):
        k, s, p = pool
        src, out = f"s{i}", f"s{i + 1}"
        inits.append(numpy_helper.from_array(np.asarray([0, 0, p, p, 0, 0, p, p], dtype=np.int64), f"pads{i + 1}"))
        nodes += [helper.make_node("Conv", [src, block], [f"{block}_pot"]),
                  helper.make_node("GreaterOrEqual", [f"{block}_pot", threshold], [f"{block}_fired"]),
                  helper.make_node("Cast", [f"{block}_fired"], [f"{block}_spikes"], to=TensorProto.FLOAT),
                  # Explicit padding: MaxPool's own may not exceed half the kernel, and zeros never fire.
                  helper.make_node("Pad", [f"{block}_spikes", f"pads{i + 1}"], [f"{block}_padded"], mode="constant"),
                  helper.make_node("MaxPool", [f"{block}_padded"], [out], kernel_shape=[k, k], strides=[s, s])]
    nodes += [helper.make_node("Conv", ["s2", "head"], ["potentials"]),
              helper.make_node("ReduceMax", ["potentials"], ["final"], axes=[2, 3], keepdims=0),
              helper.make_node("Reshape", ["final", "by_class"], ["per_class"]),
              helper.make_node("ReduceMax", ["per_class"], ["logits"], axes=[2], keepdims=0)]
    graph = helper.make_graph(
        nodes, f"tle_spyketorch_{net.model_name}",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", h, w, c])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", net.num_classes])], inits)
    model = helper.make_model(graph, producer_name="tle-spyketorch", ir_version=IR_VERSION,
                              opset_imports=[helper.make_opsetid("", OPSET)])
    if metadata is not None:
        helper.set_model_props(model, metadata.as_props())
    onnx.checker.check_model(model, full_check=True)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return str(path)
