"""The network in NIR (Neuromorphic Intermediate Representation), for neuromorphic toolchains.

The graph starts at the coded input spikes (6 DoG maps; the filters and the
rank-order coding are in the graph's metadata, NIR has no node for them):
conv1 -> IF(threshold 15) -> pool -> conv2 -> IF(threshold 10) -> pool ->
conv3 -> integrator (no threshold: the decision is the largest potential).
Max-pooling of binary spikes is a sum-pool followed by a threshold at 0.5.
What NIR cannot say: these neurons fire at most once and their trains stay high
(cumulative), which the metadata records as ``spike_train: cumulative``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tle_spyketorch import coding, layers


def export(net, path) -> str:
    import nir

    a = net.arch
    h, w, _ = net.input_shape

    def weights(block):
        return layers.quantise(net.synapses(block).detach().cpu()).numpy().astype(np.float32)

    def pool(k, s, p):
        return nir.SumPool2d(kernel_size=np.array([k, k]), stride=np.array([s, s]), padding=np.array([p, p]))

    side1 = h + 2 * coding.DOG_PADDING - coding.padded_size() + 1

    def pooled(side, kernel, pool):
        k, s, p = pool
        return (side - kernel + 1 + 2 * p - k) // s + 1

    side2 = pooled(side1, a.kernel1, a.pool1)
    side3 = pooled(side2, a.kernel2, a.pool2)

    out1, out2 = side1 - a.kernel1 + 1, side2 - a.kernel2 + 1
    out3 = side3 - a.kernel3 + 1
    shape1, shape2 = (a.maps1, out1, out1), (a.maps2, out2, out2)
    shape3 = (int(net.head.shape[0]), out3, out3)

    def neurons(shape, threshold):
        # NIR types every neuron: parameters carry the layer's full (C, H, W) shape.
        return nir.IF(r=np.ones(shape, np.float32), v_threshold=np.full(shape, threshold, np.float32),
                      v_reset=np.zeros(shape, np.float32))

    def spikes(side, channels):
        return nir.Threshold(threshold=np.full((channels, side, side), 0.5, np.float32))
    nodes = {
        "input": nir.Input(input_type={"input": np.array([len(coding.DOG), side1, side1])}),
        "conv1": nir.Conv2d(input_shape=(side1, side1), weight=weights("conv1"), stride=1, padding=0, dilation=1,
                            groups=1, bias=np.zeros(a.maps1, np.float32)),
        "if1": neurons(shape1, a.threshold1),
        "pool1": pool(*a.pool1),
        "spike1": spikes(side2, a.maps1),
        "conv2": nir.Conv2d(input_shape=(side2, side2), weight=weights("conv2"), stride=1, padding=0, dilation=1, groups=1,
                            bias=np.zeros(a.maps2, np.float32)),
        "if2": neurons(shape2, a.threshold2),
        "pool2": pool(*a.pool2),
        "spike2": spikes(side3, a.maps2),
        "conv3": nir.Conv2d(input_shape=(side3, side3), weight=weights("head"), stride=1, padding=0, dilation=1, groups=1,
                            bias=np.zeros(net.head.shape[0], np.float32)),
        "decision": nir.I(r=np.ones(shape3, np.float32)),
        "output": nir.Output(output_type={"output": np.array(shape3)}),
    }
    order = list(nodes)
    meta = {"dog_kernels": np.asarray(coding.DOG, dtype=np.float64), "dog_threshold": coding.DOG_THRESHOLD,
            "dog_padding": coding.DOG_PADDING, "normalisation_radius": coding.NORM_RADIUS,
            "coding": "intensity-to-latency rank order", "timesteps": a.timesteps, "spike_train": "cumulative",
            "class_names": ",".join(net.class_names), "neurons_per_class": net.per_class,
            "decision": "class of the conv3 neuron with the largest final potential"}
    graph = nir.NIRGraph(nodes=nodes, edges=list(zip(order, order[1:])), metadata=meta, type_check=False)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nir.write(str(path), graph, compression=None)  # gzip cannot hold the scalar parameters (thresholds)
    return str(path)
