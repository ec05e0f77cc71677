"""CPU-sized members of the VGG and ResNet families, built from torchvision's own classes.

They keep the block structure of their big relatives (five VGG blocks ending
in a max-pool; a ResNet stem and four residual stages of ``BasicBlock``) so a
strategy means the same layers on them, but train in seconds at 32x32.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet
from torchvision.models.vgg import VGG, make_layers

# Keras VGG16's layout (2, 2, 3, 3, 3 convs per block) with few channels.
VGG_SMALL_CFG = [8, 8, "M", 16, 16, "M", 32, 32, 32, "M", 32, 32, 32, "M", 32, 32, 32, "M"]
VGG_SMALL_HIDDEN = 64
RESNET_SMALL_WIDTHS = (8, 16, 32, 64)


def vgg_small(num_classes: int = 1000) -> VGG:
    # VGG.__init__ always allocates a 25088x4096 classifier; building it on the meta
    # device costs nothing, and every part is replaced by a real small one below.
    with torch.device("meta"):
        model = VGG(nn.Sequential(), num_classes=num_classes, init_weights=False)
    model.features = make_layers(VGG_SMALL_CFG, batch_norm=False)
    model.avgpool = nn.AdaptiveAvgPool2d((1, 1))
    width = VGG_SMALL_CFG[-2]
    model.classifier = nn.Sequential(
        nn.Linear(width, VGG_SMALL_HIDDEN), nn.ReLU(True), nn.Dropout(),
        nn.Linear(VGG_SMALL_HIDDEN, VGG_SMALL_HIDDEN), nn.ReLU(True), nn.Dropout(),
        nn.Linear(VGG_SMALL_HIDDEN, num_classes),
    )
    # torchvision's own VGG initialisation for the convs, so the small model starts like the big ones. The
    # hidden Linears take Keras's Dense default, Glorot uniform, as keras_backend's vgg_small does: with
    # torchvision's N(0, 0.01) at this width the classifier shrinks the signal ~100x and pretraining on
    # digits 0-4 reached 0.69 instead of 0.96 (6 epochs, He-initialised convs). The last one is N(0, 0.01).
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
    nn.init.normal_(model.classifier[-1].weight, 0, 0.01)
    return model


class SmallResNet(ResNet):
    """torchvision's ResNet with configurable stage widths (the original hard-codes 64..512).

    Only ``__init__`` differs; ``_make_layer``, ``BasicBlock`` and ``forward`` are torchvision's.
    """

    def __init__(self, widths=RESNET_SMALL_WIDTHS, layers=(1, 1, 1, 1), num_classes: int = 1000):
        nn.Module.__init__(self)
        self._norm_layer = nn.BatchNorm2d
        self.inplanes = widths[0]
        self.dilation = 1
        self.groups = 1
        self.base_width = 64
        self.conv1 = nn.Conv2d(3, widths[0], kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(BasicBlock, widths[0], layers[0])
        self.layer2 = self._make_layer(BasicBlock, widths[1], layers[1], stride=2)
        self.layer3 = self._make_layer(BasicBlock, widths[2], layers[2], stride=2)
        self.layer4 = self._make_layer(BasicBlock, widths[3], layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(widths[3] * BasicBlock.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)


def resnet_small(num_classes: int = 1000) -> SmallResNet:
    return SmallResNet(num_classes=num_classes)


BUILDERS = {"vgg_small": vgg_small, "resnet_small": resnet_small}
