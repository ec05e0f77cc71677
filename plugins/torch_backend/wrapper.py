"""The native model handed to the core: ``NHWC [0, 1] -> normalise -> block1..block5 -> head -> logits``.

Input contract (also the exported ONNX graph's): float32 NHWC in [0, 1]. The
wrapper permutes to NCHW (a view whose memory is already channels-last),
repeats a single grey channel to three, and applies ImageNet's mean/std for the
torchvision models (their weights expect it). The small models have no
ImageNet weights and take [0, 1] as it is, exactly as the Keras backend's
small models do, so one spec means the same function in both. The first conv
therefore always has three input channels, whatever the data, so every weight
source (ImageNet, a file, an earlier run) fits every dataset.

Freeze state: ``trainable`` per block. ``train()`` keeps frozen blocks in eval
mode, so BatchNorm layers of frozen blocks use and keep their running
statistics during training, as Keras does for ``trainable = False``. Blocks in
``fixed_stats`` (the stage's, see ``tle.contract.strategy``) keep only their BatchNorm
layers in eval mode: the running statistics stay, gamma/beta still train, and
dropout elsewhere in the block stays on.
"""

from __future__ import annotations

import torch
from torch import nn

from tle.contract.records import Blueprint

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HEAD = "head"


class TleNet(nn.Module):
    """``blueprint``'s model (name, classes, input shape): the blocks of ``body`` then ``head``, of which
    ``new_head`` were drawn for this task; ``tv_paths`` name each layer's torchvision module; ``normalise``:
    the images are standardised with ImageNet's statistics first."""

    def __init__(self, blueprint: Blueprint, body: "dict[str, nn.Sequential]", head: nn.Sequential,
                 new_head: list[str], tv_paths: dict[str, str], normalise: bool = True):
        super().__init__()
        input_shape = tuple(int(v) for v in blueprint.input_shape)
        self.model_name = blueprint.model
        self.body = nn.ModuleDict(body)
        self.head = head
        self.num_classes = blueprint.num_classes
        self.input_shape = input_shape
        self.in_channels = int(input_shape[2])
        # Submodules of the head that were created for this task: apply_init("head") redraws only these,
        # so a pretrained classifier (head "original", or a head kept from an earlier run) survives it.
        self.new_head = list(new_head)
        # "body.block1.features_0" -> "features.0": names the torchvision layer in error messages.
        self.tv_paths = dict(tv_paths)
        self.trainable = {b: True for b in [*self.body.keys(), HEAD]}
        self.fixed_stats: set[str] = set()
        self.normalise = normalise
        mean, std = (IMAGENET_MEAN, IMAGENET_STD) if normalise else ((0.0,) * 3, (1.0,) * 3)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    @property
    def block_names(self) -> list[str]:
        return list(self.body.keys())

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 3, 1, 2)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return (x - self.mean) / self.std if self.normalise else x

    def run_blocks(self, z: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        for block in list(self.body.values())[start:stop]:
            z = block(z)
        return z

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.run_blocks(self.prepare(x)))

    def forward_from(self, z: torch.Tensor, start: int) -> torch.Tensor:
        """Logits from the output of the first ``start`` blocks (a cached frozen prefix)."""
        return self.head(self.run_blocks(z, start))

    def train(self, mode: bool = True):
        super().train(mode)
        if mode:
            for name, block in self.body.items():
                if not self.trainable.get(name, True):
                    block.eval()
                elif name in self.fixed_stats:
                    for m in block.modules():
                        if isinstance(m, nn.modules.batchnorm._BatchNorm):
                            m.eval()
            if not self.trainable.get(HEAD, True):
                self.head.eval()
        return self

    def module_of(self, block: str) -> nn.Module:
        return self.head if block == HEAD else self.body[block]

    def frozen_prefix(self) -> int:
        n = 0
        for name in self.body.keys():
            if self.trainable.get(name, True):
                break
            n += 1
        return n

    def torchvision_name(self, key: str) -> str:
        """``body.block1.features_0.weight`` -> ``features.0.weight`` (or the key itself)."""
        for prefix, path in self.tv_paths.items():
            if key == prefix or key.startswith(prefix + "."):
                return path + key[len(prefix):]
        return key
