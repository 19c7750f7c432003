"""Shared trunks of realistic size for the strategy benchmark, in plain ``torch.nn``.

- ``resnet18``: the ResNet-18 convolutional trunk (He et al., 2016) without its classifier,
  11,176,512 parameters, image in, 512 features out.
- ``vit-s``: a ViT-S/16 encoder (Dosovitskiy et al., 2021; 12 pre-norm blocks, width 384,
  6 heads, MLP 1536), ≈ 21.7 M parameters (the position table grows with the image), image in,
  the class token's 384 features out.
- ``mlp``: a tiny two-layer perceptron for tests.
"""

from __future__ import annotations

import torch
from torch import nn


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + self.down(x))


class ResNet18Trunk(nn.Module):
    """(B, 3, H, W) → (B, 512)."""

    features = 512

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(3, 64, 7, 2, 3, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1),
        ]
        cin = 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [_BasicBlock(cin, cout, stride), _BasicBlock(cout, cout, 1)]
            cin = cout
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.body(x)
        return out


class ViTSmallTrunk(nn.Module):
    """(B, 3, H, W) → (B, 384), patch 16."""

    features = 384

    def __init__(self, image: int = 224) -> None:
        super().__init__()
        if image % 16:
            raise ValueError(f"image must be a multiple of 16, got {image}")
        d = self.features
        self.patch = nn.Conv2d(3, d, 16, 16)
        self.cls = nn.Parameter(torch.zeros(1, 1, d))
        self.pos = nn.Parameter(torch.randn(1, (image // 16) ** 2 + 1, d) * 0.02)
        layer = nn.TransformerEncoderLayer(
            d, 6, 4 * d, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(layer, 12, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls.expand(x.shape[0], -1, -1), tokens], dim=1) + self.pos
        out: torch.Tensor = self.norm(self.blocks(tokens))[:, 0]
        return out


class MLPTrunk(nn.Module):
    """(B, 32) → (B, 64); for tests."""

    features = 64

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.body(x)
        return out


TRUNKS = ("resnet18", "vit-s", "mlp")


def make_trunk(name: str, image: int) -> tuple[nn.Module, int]:
    """The trunk and its number of output features."""
    if name == "resnet18":
        return ResNet18Trunk(), ResNet18Trunk.features
    if name == "vit-s":
        return ViTSmallTrunk(image), ViTSmallTrunk.features
    if name == "mlp":
        return MLPTrunk(), MLPTrunk.features
    raise ValueError(f"trunk must be one of {TRUNKS}, got {name!r}")


def synthetic_batch(
    name: str, batch: int, image: int, T: int, device: torch.device, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs for the trunk and (B, T) regression targets."""
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, 32) if name == "mlp" else (batch, 3, image, image)
    x = torch.randn(*shape, generator=gen)
    y = torch.randn(batch, T, generator=gen)
    return x.to(device), y.to(device)
