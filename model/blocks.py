"""The block vocabulary shared by the talking-head networks, and the layer-table parser that assembles them.

Tokens (Zakharov et al. 2019, Sec. 3.2 and its reimplementations):

    D<c>   residual down block, BigGAN discriminator style (pre-activation, no normalisation, 2x avg-pool)
    U<c>   residual up block, BigGAN generator style with its BatchNorm replaced by AdaIN (2x nearest upsampling)
    B<c>   residual block with instance norm (Johnson et al. 2016)
    BA<c>  the same residual block with AdaIN
    R<c>   the same residual block without normalisation (D's extra block at 4x4)
    I      instance norm with a learned affine
    A      self-attention (SAGAN; keys and values pooled 2x as in BigGAN)
    X*n    token X repeated n times, e.g. BA512*4

Every convolution goes through ``conv()``, which applies spectral normalisation when asked. AdaIN layers take
their scales and biases from a slice of psi = P e_hat (model/generator.py); a block reports how many psi entries
it consumes in ``adain_params`` and receives them as an explicit argument, so the networks hold no hidden state
between calls.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from config import parse_layer_table


def conv(in_ch: int, out_ch: int, kernel: int, sn: bool) -> nn.Conv2d:
    layer = nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2)
    return spectral_norm(layer) if sn else layer


def linear(in_features: int, out_features: int, sn: bool) -> nn.Linear:
    layer = nn.Linear(in_features, out_features)
    return spectral_norm(layer) if sn else layer


class AdaIN(nn.Module):
    """Adaptive instance norm (Huang & Belongie 2017): per-sample scale and bias from psi.

    ``params`` is (B, 2C): scales then biases. The scale is applied as 1 + s so that psi = 0 is the identity:
    with a freshly initialised P the generator starts from plain instance norm instead of collapsing every
    channel towards zero.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels
        self.num_params = 2 * channels

    def forward(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        scale, bias = params.unsqueeze(-1).unsqueeze(-1).chunk(2, dim=1)  # Bx(C)x1x1 each
        return F.instance_norm(x) * (1 + scale) + bias

    def extra_repr(self) -> str:
        return str(self.channels)


class _Norm(nn.Module):
    """Instance norm, AdaIN or nothing, behind one call signature ``(x, params)``."""

    def __init__(self, kind: str, channels: int):
        super().__init__()
        self.kind = kind
        self.num_params = 0
        if kind == "instance":
            self.norm = nn.InstanceNorm2d(channels, affine=True)
        elif kind == "adain":
            self.norm = AdaIN(channels)
            self.num_params = self.norm.num_params
        else:
            self.norm = nn.Identity()

    def forward(self, x: torch.Tensor, params: torch.Tensor | None) -> torch.Tensor:
        return self.norm(x, params) if self.kind == "adain" else self.norm(x)


class Block(nn.Module):
    """Base class: ``forward(x, params)`` where ``params`` is this block's (B, adain_params) slice of psi."""

    token = ""
    adain_params = 0
    scale = 1  # spatial size multiplier
    residual = False  # whether D's feature matching reads this block's output

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.in_ch, self.out_ch = in_ch, out_ch

    def extra_repr(self) -> str:
        return f"{self.token} {self.in_ch}->{self.out_ch}"


class ResDown(Block):
    """D: relu -> conv3x3 -> relu -> conv3x3 -> avgpool, plus conv1x1 -> avgpool shortcut (BigGAN D block).

    The first block of a network skips the leading ReLU: its input is an image, not an activation.
    """

    token, scale, residual = "D", 0.5, True

    def __init__(self, in_ch: int, out_ch: int, sn: bool, preactivation: bool = True):
        super().__init__(in_ch, out_ch)
        self.preactivation = preactivation
        self.conv1 = conv(in_ch, out_ch, 3, sn)
        self.conv2 = conv(out_ch, out_ch, 3, sn)
        self.shortcut = conv(in_ch, out_ch, 1, sn)

    def forward(self, x: torch.Tensor, params: torch.Tensor | None = None) -> torch.Tensor:
        h = F.relu(x) if self.preactivation else x
        h = self.conv2(F.relu(self.conv1(h)))
        return F.avg_pool2d(h, 2) + F.avg_pool2d(self.shortcut(x), 2)


class ResUp(Block):
    """U: AdaIN -> relu -> up2 -> conv3x3 -> AdaIN -> relu -> conv3x3, plus up2 -> conv1x1 shortcut."""

    token, scale, residual = "U", 2, True

    def __init__(self, in_ch: int, out_ch: int, sn: bool):
        super().__init__(in_ch, out_ch)
        self.norm1 = AdaIN(in_ch)
        self.conv1 = conv(in_ch, out_ch, 3, sn)
        self.norm2 = AdaIN(out_ch)
        self.conv2 = conv(out_ch, out_ch, 3, sn)
        self.shortcut = conv(in_ch, out_ch, 1, sn)
        self.adain_params = self.norm1.num_params + self.norm2.num_params

    def forward(self, x: torch.Tensor, params: torch.Tensor | None = None) -> torch.Tensor:
        p1, p2 = params.split([self.norm1.num_params, self.norm2.num_params], dim=1)
        h = F.interpolate(F.relu(self.norm1(x, p1)), scale_factor=2, mode="nearest")
        h = self.conv2(F.relu(self.norm2(self.conv1(h), p2)))
        return h + self.shortcut(F.interpolate(x, scale_factor=2, mode="nearest"))


class ResBlock(Block):
    """B / BA / R: norm -> relu -> conv3x3 -> norm -> relu -> conv3x3, plus identity (or 1x1 if widths differ)."""

    residual = True

    def __init__(self, in_ch: int, out_ch: int, sn: bool, norm: str):
        super().__init__(in_ch, out_ch)
        self.token = {"instance": "B", "adain": "BA", "none": "R"}[norm]
        self.norm1 = _Norm(norm, in_ch)
        self.conv1 = conv(in_ch, out_ch, 3, sn)
        self.norm2 = _Norm(norm, out_ch)
        self.conv2 = conv(out_ch, out_ch, 3, sn)
        self.shortcut = conv(in_ch, out_ch, 1, sn) if in_ch != out_ch else nn.Identity()
        self.adain_params = self.norm1.num_params + self.norm2.num_params

    def forward(self, x: torch.Tensor, params: torch.Tensor | None = None) -> torch.Tensor:
        p1 = p2 = None
        if self.adain_params:
            p1, p2 = params.split([self.norm1.num_params, self.norm2.num_params], dim=1)
        h = self.conv1(F.relu(self.norm1(x, p1)))
        h = self.conv2(F.relu(self.norm2(h, p2)))
        return h + self.shortcut(x)


class InstanceNorm(Block):
    """I: instance norm with learned affine (the generator's non-adaptive down path)."""

    token = "I"

    def __init__(self, channels: int):
        super().__init__(channels, channels)
        self.norm = nn.InstanceNorm2d(channels, affine=True)

    def forward(self, x: torch.Tensor, params: torch.Tensor | None = None) -> torch.Tensor:
        return self.norm(x)


class SelfAttention(Block):
    """A: SAGAN self-attention (Zhang et al. 2019) with BigGAN's 2x-pooled keys/values and C/8, C/2 widths.

    out = x + gamma * o(softmax(theta(x)^T phi(x)) g(x)), gamma starting at 0 so the block begins as the
    identity. Runs through scaled_dot_product_attention (scale 1, as SAGAN) for fused kernels on GPU.
    """

    token = "A"

    def __init__(self, channels: int, sn: bool):
        super().__init__(channels, channels)
        if channels < 8:
            raise ValueError(f"self-attention needs at least 8 channels, got {channels}")
        self.theta = conv(channels, channels // 8, 1, sn)
        self.phi = conv(channels, channels // 8, 1, sn)
        self.g = conv(channels, channels // 2, 1, sn)
        self.o = conv(channels // 2, channels, 1, sn)
        self.gamma = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor, params: torch.Tensor | None = None) -> torch.Tensor:
        b, c, h, w = x.shape
        q = self.theta(x).flatten(2).transpose(1, 2)  # B x HW x C/8
        k = F.max_pool2d(self.phi(x), 2).flatten(2).transpose(1, 2)  # B x HW/4 x C/8
        v = F.max_pool2d(self.g(x), 2).flatten(2).transpose(1, 2)  # B x HW/4 x C/2
        attn = F.scaled_dot_product_attention(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1), scale=1.0)
        attn = attn.squeeze(1).transpose(1, 2).reshape(b, c // 2, h, w)
        return x + self.gamma * self.o(attn)


# --------------------------------------------------------------------------------------------------------------
# Layer tables
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerSpec:
    kind: str
    channels: int | None


def parse_layers(tokens: list[str], key: str) -> list[LayerSpec]:
    """Expands a config layer table (``["D64", "A", "BA512*4"]``) into specs; errors name the config key."""
    return [LayerSpec(kind, width) for _, kind, width in parse_layer_table(tokens, key)]


def build_layers(tokens: list[str], in_channels: int, image_size: int, sn: bool, key: str
                 ) -> tuple[nn.ModuleList, int, int]:
    """Assembles a table into blocks; returns (blocks, output channels, output spatial size)."""
    blocks = nn.ModuleList()
    channels, size = in_channels, image_size
    for i, spec in enumerate(parse_layers(tokens, key)):
        if spec.kind == "D":
            if size % 2:
                raise ValueError(f"{key}: block {i} (D) cannot halve an odd size {size}; "
                                 "check model.image_size against the number of D blocks")
            block = ResDown(channels, spec.channels, sn, preactivation=len(blocks) > 0)
        elif spec.kind == "U":
            block = ResUp(channels, spec.channels, sn)
        elif spec.kind in ("B", "BA", "R"):
            block = ResBlock(channels, spec.channels, sn, {"B": "instance", "BA": "adain", "R": "none"}[spec.kind])
        elif spec.kind == "I":
            block = InstanceNorm(channels)
        else:
            if size < 2:
                raise ValueError(f"{key}: self-attention at block {i} needs a spatial size of at least 2")
            block = SelfAttention(channels, sn)
        channels = block.out_ch
        size = int(size * block.scale)
        blocks.append(block)
    return blocks, channels, size


def run_blocks(blocks: nn.ModuleList, x: torch.Tensor, psi: torch.Tensor | None = None,
               collect: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Applies blocks in order, handing each AdaIN block its consecutive slice of psi.

    With ``collect`` the outputs of the residual blocks are returned too (D's feature-matching activations).
    """
    offset, features = 0, []
    for block in blocks:
        params = None
        if block.adain_params:
            params = psi[:, offset:offset + block.adain_params]
            offset += block.adain_params
        x = block(x, params)
        if collect and block.residual:
            features.append(x)
    return x, features
