"""The network in NIR (Neuromorphic Intermediate Representation), for neuromorphic toolchains.

The graph starts at the coded input spikes (6 DoG maps; the filters and the
rank-order coding are in the graph's metadata, NIR has no node for them):
conv1 (padding 2) -> IF(threshold 15) -> pool -> conv2 (padding 1) -> IF(threshold 10)
-> pool -> conv3 (padding 2) -> integrator (no threshold: the decision is the
largest potential over conv3's neurons and positions). The synapses are the
full-precision ones of ``weights.pt``.
Max-pooling of binary spikes is a sum-pool followed by a threshold at 0.5.
What NIR cannot say: these neurons fire at most once and their trains stay high
(cumulative), which the metadata records as ``spike_train: cumulative``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tle_spyketorch import coding


def export(net, path) -> str:
    import nir

    a = net.arch
    h = net.input_shape[0]

    def weights(block):
        return net.synapses(block).detach().cpu().numpy().astype(np.float32)

    def pool(k, s, p):
        return nir.SumPool2d(kernel_size=np.array([k, k]), stride=np.array([s, s]), padding=np.array([p, p]))

    _, out1, in2, out2, in3, out3 = a.sides()
    side1 = h  # the coded input (DoG padded to keep the image's size)
    side2, side3 = in2 - 2 * a.pad1, in3 - 2 * a.pad2  # pooled, before the next layer's padding
    shape1, shape2 = (a.maps1, out1, out1), (a.maps2, out2, out2)
    shape3 = (int(net.head.shape[0]), out3, out3)

    def neurons(shape, threshold):
        # NIR types every neuron: parameters carry the layer's full (C, H, W) shape.
        return nir.IF(r=np.ones(shape, np.float32), v_threshold=np.full(shape, threshold, np.float32),
                      v_reset=np.zeros(shape, np.float32))

    def spikes(side, channels):
        return nir.Threshold(threshold=np.full((channels, side, side), 0.5, np.float32))

    def conv(side, block, pad, out):
        return nir.Conv2d(input_shape=(side, side), weight=weights(block), stride=1, padding=pad, dilation=1,
                          groups=1, bias=np.zeros(out, np.float32))
    nodes = {
        "input": nir.Input(input_type={"input": np.array([len(coding.DOG), side1, side1])}),
        "conv1": conv(side1, "conv1", a.pad0, a.maps1),
        "if1": neurons(shape1, a.threshold1),
        "pool1": pool(*a.pool1),
        "spike1": spikes(side2, a.maps1),
        "conv2": conv(side2, "conv2", a.pad1, a.maps2),
        "if2": neurons(shape2, a.threshold2),
        "pool2": pool(*a.pool2),
        "spike2": spikes(side3, a.maps2),
        "conv3": conv(side3, "head", a.pad2, int(net.head.shape[0])),
        "decision": nir.I(r=np.ones(shape3, np.float32)),
        "output": nir.Output(output_type={"output": np.array(shape3)}),
    }
    order = list(nodes)
    meta = {"dog_kernels": np.asarray(coding.DOG, dtype=np.float64), "dog_threshold": coding.DOG_THRESHOLD,
            "dog_padding": coding.DOG_PADDING, "normalisation_radius": coding.NORM_RADIUS,
            "coding": "intensity-to-latency rank order, nnz // T values per step, the remainder silent",
            "timesteps": a.timesteps, "spike_train": "cumulative", "firing": "potential > threshold",
            "class_names": ",".join(net.class_names), "neurons_per_class": net.per_class,
            "decision": "class of the conv3 neuron (any position) with the largest final potential; "
                        "none when no potential is above 0"}
    graph = nir.NIRGraph(nodes=nodes, edges=list(zip(order, order[1:])), metadata=meta, type_check=False)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nir.write(str(path), graph, compression=None)  # gzip cannot hold the scalar parameters (thresholds)
    return str(path)
