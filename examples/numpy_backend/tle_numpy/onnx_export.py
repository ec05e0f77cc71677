"""The MLP as an ONNX graph, written node by node with ``onnx.helper``."""

from __future__ import annotations

from pathlib import Path

from tle_numpy.model import Net

OPSET = 17
IR_VERSION = 8  # the IR that opset 17 shipped with, so older runtimes load the file too


def export(net: Net, path: str | Path, props: dict[str, str]) -> Path:
    import onnx  # here, not at module level: listing backends must stay fast
    from onnx import TensorProto, helper, numpy_helper

    # NHWC flattened row-major is exactly what Net.flatten feeds the first layer.
    nodes = [helper.make_node("Flatten", ["images"], ["flat"], axis=1)]
    initializers = []
    x = "flat"
    for i, layer in enumerate(net.layers):
        w, b = f"{layer.name}.W", f"{layer.name}.b"
        initializers += [numpy_helper.from_array(layer.W, w), numpy_helper.from_array(layer.b, b)]
        out = "logits" if i == len(net.layers) - 1 else f"{layer.name}.out"
        pre = f"{layer.name}.pre" if layer.relu else out
        nodes += [helper.make_node("MatMul", [x, w], [f"{layer.name}.mm"]),
                  helper.make_node("Add", [f"{layer.name}.mm", b], [pre])]
        if layer.relu:
            nodes.append(helper.make_node("Relu", [pre], [out]))
        x = out  # dropout is the identity at inference, so it has no node

    graph = helper.make_graph(
        nodes, f"tle_numpy_{net.model}",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", *net.input_shape])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", net.num_classes])],
        initializers,
    )
    model = helper.make_model(graph, producer_name="tle-numpy-backend", ir_version=IR_VERSION,
                              opset_imports=[helper.make_opsetid("", OPSET)])
    helper.set_model_props(model, props)
    onnx.checker.check_model(model, full_check=True)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    return path
