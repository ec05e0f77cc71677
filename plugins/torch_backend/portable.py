"""This backend's models to and from the portable weight dict of :mod:`tle.contract.portable`.

A :class:`TleNet` keeps torchvision's modules under ``body.blockN.<path with _>``
and remembers each one's torchvision path (``tv_paths``), so the backbone's
portable keys are exactly torchvision's ``state_dict()`` keys; the head keeps
its own module names under ``head.``. Loading goes through the same checks as
this backend's own files (a block whole or not at all, the head only for the
same classes).
"""

from __future__ import annotations

import numpy as np
import torch

from tle.contract.records import same_classes
from tle.contract.portable import HEAD_PREFIX, PortableWeights
from tle_torch import weights as weight_files


def _portable_key(net, key: str) -> str:
    return key if key.startswith(HEAD_PREFIX) else net.torchvision_name(key)


def to_portable(net) -> dict[str, np.ndarray]:
    return {_portable_key(net, k): v.detach().cpu().numpy().copy() for k, v in net.state_dict().items()
            if not k.endswith("num_batches_tracked")}


def from_portable(net, weights: PortableWeights, source: str, class_names) -> None:
    """Load ``weights`` into ``net`` as if they were a file this backend saved for the same model."""
    state = {k: torch.from_numpy(np.ascontiguousarray(weights.arrays[_portable_key(net, k)]))
             for k in net.state_dict() if _portable_key(net, k) in weights.arrays}
    weight_files.load_tle_layout(net, state, source, same_classes(weights.class_names, class_names))
