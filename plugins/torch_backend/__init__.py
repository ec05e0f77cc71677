"""tle's PyTorch backend: torchvision models with Keras-style blocks (see README.md and ``blocks.py``).

Nothing here imports torch at package import; ``tle_torch.plugin`` is the entry point.
"""

from tle.contract.threads import share_cores

share_cores()  # before any module of this package imports torch (and with it OpenMP, which reads its settings once)
