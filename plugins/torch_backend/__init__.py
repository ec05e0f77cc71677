"""tle's PyTorch backend: torchvision models with Keras-style blocks (see README.md and ``blocks.py``).

Nothing here imports torch at package import; ``tle_torch.plugin`` is the entry point.
"""
