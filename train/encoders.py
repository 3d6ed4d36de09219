"""Encoder registry: ResNets for multispectral input written in plain torch, plus tiny test architectures.

Every encoder takes ``in_chans`` (2 for Sentinel-1 VV/VH, 12 for Sentinel-2) in its first convolution and splits
``forward_features`` (a spatial feature map [N, F, h, w]) from ``forward_head`` (global average pool -> [N, F]),
as timm does (STYLE.md #6). No torchvision: it does not import against the CPU torch build used here, and no
pretrained ImageNet weights exist for 12-band input anyway.

Registered names: ``tiny`` (two convolutions, runs in milliseconds, for tests), ``resnet10_micro`` (one basic
block per stage at 1/8 width: the embedded default that trains in minutes on 2 CPU cores), ``resnet18_narrow``
(ResNet-18 at 1/4 width), ``resnet18``, ``resnet50``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

_REGISTRY: dict[str, Callable[[int], Encoder]] = {}


def register_encoder(name: str) -> Callable[[Callable[[int], Encoder]], Callable[[int], Encoder]]:
    """Decorator adding an ``in_chans -> Encoder`` factory to the registry under ``name``."""

    def deco(fn: Callable[[int], Encoder]) -> Callable[[int], Encoder]:
        if name in _REGISTRY:
            raise ValueError(f"encoder {name!r} registered twice")
        _REGISTRY[name] = fn
        return fn

    return deco


def list_encoders() -> list[str]:
    """Names accepted by :func:`create_encoder`."""
    return sorted(_REGISTRY)


def create_encoder(name: str, in_chans: int) -> Encoder:
    """Build a registered encoder for ``in_chans`` input bands."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown architecture {name!r}; choose one of {list_encoders()}")
    if in_chans < 1:
        raise ValueError(f"in_chans must be >= 1, got {in_chans}")
    return _REGISTRY[name](in_chans)


class Encoder(nn.Module):
    """Base class: ``forward(x) = forward_head(forward_features(x))`` and ``num_features`` channels out."""

    num_features: int

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor:
        """Global average pool [N, F, h, w] -> [N, F]."""
        return feats.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, width: int, stride: int = 1):
        super().__init__()
        cout = width * self.expansion
        self.conv1 = _conv_bn(cin, width, 3, stride)
        self.conv2 = _conv_bn(width, cout, 3)
        self.down = _conv_bn(cin, cout, 1, stride) if stride != 1 or cin != cout else nn.Identity()
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv2(self.act(self.conv1(x))) + self.down(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int = 1):
        super().__init__()
        cout = width * self.expansion
        self.conv1 = _conv_bn(cin, width, 1)
        self.conv2 = _conv_bn(width, width, 3, stride)  # stride on the 3x3 (ResNet v1.5)
        self.conv3 = _conv_bn(width, cout, 1)
        self.down = _conv_bn(cin, cout, 1, stride) if stride != 1 or cin != cout else nn.Identity()
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.conv1(x))
        y = self.act(self.conv2(y))
        return self.act(self.conv3(y) + self.down(x))


class ResNet(Encoder):
    """ResNet (He et al. 2016, v1.5) with an ``in_chans``-band stem.

    Args:
        block: :class:`BasicBlock` or :class:`Bottleneck`.
        layers: Blocks per stage, e.g. (2, 2, 2, 2) for ResNet-18.
        in_chans: Input bands.
        base_width: Width of the first stage (64 in the paper; 16 for the narrow CPU variant).
        small_stem: 3x3 stride-1 stem without max-pool, for small patches where the usual stride-4 stem throws
            away most of the 10 m pixels.
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: tuple[int, ...],
        in_chans: int,
        base_width: int = 64,
        small_stem: bool = False,
    ):
        super().__init__()
        if small_stem:
            self.stem = nn.Sequential(_conv_bn(in_chans, base_width, 3, 1), nn.ReLU(inplace=True))
        else:
            self.stem = nn.Sequential(
                _conv_bn(in_chans, base_width, 7, 2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)
            )
        stages = []
        cin = base_width
        for i, n in enumerate(layers):
            width = base_width * 2**i
            blocks = []
            for j in range(n):
                blocks.append(block(cin, width, stride=2 if (j == 0 and i > 0) else 1))
                cin = width * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.num_features = cin
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        # Zero-init the last BN of each residual branch so every block starts as identity (Goyal et al. 2017).
        for m in self.modules():
            if isinstance(m, (BasicBlock, Bottleneck)):
                last = m.conv3 if isinstance(m, Bottleneck) else m.conv2
                bn = last[1]
                assert isinstance(bn, nn.BatchNorm2d)
                nn.init.zeros_(bn.weight)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))


class TinyEncoder(Encoder):
    """Two strided 3x3 convolutions (8 and 16 channels): real code paths in milliseconds, for tests."""

    def __init__(self, in_chans: int, width: int = 16):
        super().__init__()
        self.body = nn.Sequential(
            _conv_bn(in_chans, width // 2, 3, 2),
            nn.ReLU(inplace=True),
            _conv_bn(width // 2, width, 3, 2),
            nn.ReLU(inplace=True),
        )
        self.num_features = width

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


@register_encoder("tiny")
def tiny(in_chans: int) -> Encoder:
    return TinyEncoder(in_chans)


@register_encoder("resnet10_micro")
def resnet10_micro(in_chans: int) -> Encoder:
    return ResNet(BasicBlock, (1, 1, 1, 1), in_chans, base_width=8)


@register_encoder("resnet18_narrow")
def resnet18_narrow(in_chans: int) -> Encoder:
    return ResNet(BasicBlock, (2, 2, 2, 2), in_chans, base_width=16)


@register_encoder("resnet18")
def resnet18(in_chans: int) -> Encoder:
    return ResNet(BasicBlock, (2, 2, 2, 2), in_chans)


@register_encoder("resnet50")
def resnet50(in_chans: int) -> Encoder:
    return ResNet(Bottleneck, (3, 4, 6, 3), in_chans)
