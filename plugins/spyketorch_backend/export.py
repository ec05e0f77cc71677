"""The inference path as an ONNX graph, written node by node with ``onnx.helper``.

NHWC [0, 1] in -> grey levels -> DoG -> local normalisation -> rank-order
coding (TopK, then each value's rank against ``T * (nnz // T)``) -> the spikes
at the last step -> pad -> conv1 -> fire -> pool -> pad -> conv2 -> fire ->
pool -> pad -> conv3 -> per class, the largest decision score over its neurons
and positions (``SpikingNet.decide``). The time steps are not unrolled because
nothing observable depends on them: with no inhibition at inference potentials
never fall and the decision reads the last step, so the last step's spikes give
the very logits a T-step simulation gives (``tests/test_spyketorch_layers.py``
checks this against ``reference.py``). Each convolution of spikes runs on the
synapses' two exact parts and adds them in float64 (see ``layers``), so
thresholds are crossed as in torch on any provider.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tle_spyketorch import coding, layers


def export(net, path, metadata) -> str:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    a = net.arch
    h, w, c = net.input_shape
    f32, i64 = np.float32, np.int64
    side = 2 * coding.NORM_RADIUS + 1
    consts = {
        "k255": np.asarray(255.0, f32), "zero": np.asarray(0.0, f32), "dog_threshold": np.asarray(coding.DOG_THRESHOLD, f32),
        "eps": np.asarray(coding.NORM_EPS, f32), "steps": np.asarray(a.timesteps, i64),
        "steps_f": np.asarray(float(a.timesteps), f32), "threshold1": np.asarray(a.threshold1, f32),
        "threshold2": np.asarray(a.threshold2, f32), "dog_bank": net.bank.cpu().numpy(),
        "box": np.full((1, 1, side, side), 1.0, f32) / f32(side * side),
        "one_map": np.asarray([-1, 1, h, w], i64), "six_maps": np.asarray([-1, len(coding.DOG), h, w], i64),
        "flat": np.asarray([0, -1], i64), "count": np.asarray([len(coding.DOG) * h * w], i64),
        "positions": np.arange(len(coding.DOG) * h * w, dtype=i64)[None],
        "by_class": np.asarray([0, net.num_classes, -1], i64), "axis1": np.asarray([1], i64),
    }
    for block in ("conv1", "conv2"):  # on their grids: float32 sums are exact in any order
        consts[block] = layers.snap(net.synapses(block).detach().cpu()).numpy().astype(f32)
    consts["head"] = layers.split(net.head.detach().cpu()).numpy()
    consts["head_halves"] = np.asarray([consts["head"].shape[0] // 2] * 2, i64)
    for name, p in (("pad0", a.pad0), ("pad1", a.pad1), ("pad2", a.pad2), ("pool1_pad", a.pool1[2]),
                    ("pool2_pad", a.pool2[2])):
        consts[name] = np.asarray([0, 0, p, p, 0, 0, p, p], i64)
    inits = [numpy_helper.from_array(np.asarray(v), name) for name, v in consts.items()]
    node = helper.make_node
    nodes = [node("Transpose", ["images"], ["nchw"], perm=[0, 3, 1, 2])]
    grey = "nchw"
    if c != 1:
        nodes.append(node("ReduceMean", ["nchw"], ["grey"], axes=[1], keepdims=1))
        grey = "grey"
    # Grey levels as SpykeTorch reads an 8-bit image: round(x * 255) / 255 * 255 in float32.
    nodes += [node("Mul", [grey, "k255"], ["scaled"]), node("Round", ["scaled"], ["byte"]),
              node("Div", ["byte", "k255"], ["unit"]), node("Mul", ["unit", "k255"], ["levels"]),
              node("Conv", ["levels", "dog_bank"], ["dog_raw"], pads=[coding.DOG_PADDING] * 4),
              node("Less", ["dog_raw", "dog_threshold"], ["dog_low"]),
              node("Where", ["dog_low", "zero", "dog_raw"], ["dog"]),
              node("Reshape", ["dog", "one_map"], ["dog_maps"]),
              node("Conv", ["dog_maps", "box"], ["box_mean"], pads=[coding.NORM_RADIUS] * 4),
              node("Reshape", ["box_mean", "six_maps"], ["mean_maps"]),
              node("Add", ["mean_maps", "eps"], ["mean"]),
              node("Div", ["dog", "mean"], ["normalised"]),
              # Rank-order coding: each value's rank (TopK orders equal values by index, as a stable sort),
              # firing when it falls in one of the T bins of nnz // T values.
              node("Reshape", ["normalised", "flat"], ["values"]),
              node("Cast", ["values"], ["nonzero_f"], to=TensorProto.BOOL),
              node("Cast", ["nonzero_f"], ["nonzero"], to=TensorProto.INT64),
              node("ReduceSum", ["nonzero", "axis1"], ["nnz"], keepdims=1),
              node("Div", ["nnz", "steps"], ["per_step"]),
              node("Mul", ["per_step", "steps"], ["coded"]),
              node("TopK", ["values", "count"], ["sorted", "order"], axis=1, largest=1, sorted=1),
              node("Shape", ["order"], ["order_shape"]),
              node("Expand", ["positions", "order_shape"], ["ranks_in_order"]),
              node("ScatterElements", ["order", "order", "ranks_in_order"], ["rank"], axis=1),
              node("Less", ["rank", "coded"], ["fires"]),
              node("Cast", ["fires"], ["fires_f"], to=TensorProto.FLOAT),
              node("Shape", ["dog"], ["dog_shape"]),
              node("Reshape", ["fires_f", "dog_shape"], ["input_spikes"]),
              node("Pad", ["input_spikes", "pad0"], ["s0"], mode="constant")]

    def potentials(src: str, block: str) -> list:
        """conv3's exact potentials (float64): the convolution by the synapses' two parts, added in float64."""
        return [node("Conv", [src, block], [f"{block}_parts"]),
                node("Split", [f"{block}_parts", f"{block}_halves"], [f"{block}_hi", f"{block}_lo"], axis=1),
                node("Cast", [f"{block}_hi"], [f"{block}_hi64"], to=TensorProto.DOUBLE),
                node("Cast", [f"{block}_lo"], [f"{block}_lo64"], to=TensorProto.DOUBLE),
                node("Add", [f"{block}_hi64", f"{block}_lo64"], [f"{block}_pot"])]

    for i, (block, threshold, pool) in enumerate((("conv1", "threshold1", a.pool1), ("conv2", "threshold2", a.pool2))):
        k, s, _ = pool
        src, out = f"s{i}", f"s{i + 1}"
        nodes += [node("Conv", [src, block], [f"{block}_pot"]),
                  node("Greater", [f"{block}_pot", threshold], [f"{block}_fired"]),
                  node("Cast", [f"{block}_fired"], [f"{block}_spikes"], to=TensorProto.FLOAT),
                  # Explicit padding: MaxPool's own may not exceed half the kernel, and zeros never fire.
                  node("Pad", [f"{block}_spikes", f"pool{i + 1}_pad"], [f"{block}_padded"], mode="constant"),
                  node("MaxPool", [f"{block}_padded"], [f"{block}_pooled"], kernel_shape=[k, k], strides=[s, s]),
                  node("Pad", [f"{block}_pooled", f"pad{i + 1}"], [out], mode="constant")]
    # The decision score of every conv3 neuron and position: (p + v) - v in float32, v = T * max p (0 if silent).
    nodes += potentials("s2", "head")
    nodes += [node("Cast", ["head_pot"], ["p"], to=TensorProto.FLOAT),
              node("Reshape", ["p", "flat"], ["p_flat"]),
              node("ReduceMax", ["p_flat"], ["p_max"], axes=[1], keepdims=1),
              node("Max", ["p_max", "zero"], ["p_top"]),
              node("Mul", ["p_top", "steps_f"], ["v"]),
              node("Add", ["p_flat", "v"], ["p_plus_v"]),
              node("Sub", ["p_plus_v", "v"], ["on_grid"]),
              node("Greater", ["p_flat", "zero"], ["fired3"]),
              node("Where", ["fired3", "on_grid", "zero"], ["score"]),
              node("Reshape", ["score", "by_class"], ["per_class"]),
              node("ReduceMax", ["per_class"], ["logits"], axes=[2], keepdims=0)]
    graph = helper.make_graph(
        nodes, f"tle_spyketorch_{net.model_name}",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", h, w, c])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", net.num_classes])], inits)
    model = helper.make_model(graph, producer_name="tle-spyketorch", ir_version=8,
                              opset_imports=[helper.make_opsetid("", 17)])
    if metadata is not None:
        helper.set_model_props(model, metadata.as_props())
    onnx.checker.check_model(model, full_check=True)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return str(path)
