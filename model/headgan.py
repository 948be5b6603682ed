"""HeadGAN (Doukas et al., ICCV 2021, arXiv 2012.08261): one-shot reenactment from 3D face renders and audio.

Inputs are a reference image x_r of the person, the NMFC render y_r of its 3D face fit, the NMFC render y_t of
the driving face and, optionally, the audio features a_t of the driving frame's window. The generator has two
parts (paper Sec. 3, Fig. 2):

    flow network F       encoder on concat(x_r, y_r), decoder of SPADE residual blocks conditioned on y_t;
                         heads give a dense flow w (2 ch, offsets of grid_sample's [-1, 1] sampling grid) and a
                         mask m (1 ch, sigmoid). The encoder's reference features at every scale l are warped
                         by w (resized to that scale) and multiplied by m: the "visual" features f_l.
    rendering network R  encoder on y_t, decoder whose SPADE residual blocks are conditioned on f_l of the
                         matching scale and whose AdaIN residual blocks are driven by an audio embedding;
                         PixelShuffle upsampling, tanh RGB output.

Both encoders have ``levels`` stride-2 stages with ngf * 2**l channels (capped at max_channels), so scale l of
the flow encoder is what scale l of R's decoder reads: at 256x256 with ngf 32 and 4 levels the scales are
32@256, 64@128, 128@64, 256@32 and 256@16. Every decoder level is an upsampling step (3x3 conv to 4x the
channels, PixelShuffle) followed by its residual blocks; ``bottleneck_blocks`` blocks run at the lowest scale.

The flow head starts at exactly zero, so at initialisation the reference is copied (warped == reference) and
the flow only moves away from the identity as far as the losses ask. The flow is in normalised offsets, so the
same map resized to a coarser scale moves features by the same fraction of the image.

Discriminators (paper Sec. 3.3): ``MultiScaleDiscriminator``, ``d_scales`` conditional PatchGANs (pix2pixHD
style, spectral + instance norm) on concat(image, y_t), scale k on the input average-pooled k times; and
``MouthDiscriminator``, a PatchGAN on a square crop around the mouth whose scores get an audio projection term
(inner product of an audio embedding with the pooled last features), so a mouth that does not match the speech
can be told apart from a mouth that is merely realistic.

Audio features are (B, audio_mels, audio_window) log-mel windows (dataset/audio.py); the paper's official code
uses speech-recognition character probabilities instead (SPEC section 2). Without audio (``audio: false`` or
audio=None at call time) the AdaIN blocks get a learned constant embedding, so clips without sound still train.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from config import HeadGANConfig, ModelConfig
from model.blocks import AdaIN, linear

# Hidden width of a SPADE layer's conditioning branch at most (Park et al. use 128 throughout; narrower feature
# maps use their own width).
SPADE_HIDDEN = 128
# Widest layer of the patch discriminators (pix2pixHD's cap).
D_MAX_CHANNELS = 512
# Stride-2 layers of the mouth discriminator: a 64 px crop (256x256 frames) ends at 8x8 patches, the 16 px
# minimum crop at 2x2.
MOUTH_LAYERS = 3
MIN_MOUTH_SIZE = 16


def _conv(in_ch: int, out_ch: int, kernel: int, sn: bool, stride: int = 1, padding: int | None = None,
          dims: int = 2) -> nn.Module:
    """A 2D (or 1D) convolution, spectrally normalised when asked; padding keeps the size at stride 1."""
    cls = nn.Conv2d if dims == 2 else nn.Conv1d
    layer = cls(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2 if padding is None else padding)
    return spectral_norm(layer) if sn else layer


def channel_table(h: HeadGANConfig) -> list[int]:
    """Channels of encoder scale l = 0 .. levels (scale l is image_size / 2**l): ngf * 2**l, capped."""
    return [min(h.ngf * 2 ** level, h.max_channels) for level in range(h.levels + 1)]


def mouth_crop_size(cfg: ModelConfig) -> int:
    """Side of the mouth crop: mouth_size at 256x256, scaled with image_size, at least 16 px."""
    return max(MIN_MOUTH_SIZE, round(cfg.headgan.mouth_size * cfg.image_size / 256))


def check_headgan_config(cfg: ModelConfig) -> None:
    """Raises ValueError, naming the config key and what to change, for a HeadGAN set-up that cannot be built."""
    h, s = cfg.headgan, cfg.image_size
    for key in ("ngf", "max_channels", "levels", "ndf", "d_layers", "d_scales", "mouth_size"):
        if getattr(h, key) < 1:
            raise ValueError(f"model.headgan.{key} must be at least 1, got {getattr(h, key)}")
    if h.bottleneck_blocks < 0 or h.mouth_ndf < 0:
        raise ValueError("model.headgan.bottleneck_blocks and mouth_ndf cannot be negative "
                         f"(got {h.bottleneck_blocks}, {h.mouth_ndf}); mouth_ndf 0 switches the mouth D off")
    if h.max_channels < h.ngf:
        raise ValueError(f"model.headgan.max_channels ({h.max_channels}) is below ngf ({h.ngf})")
    if s % 2 ** h.levels:
        raise ValueError(f"model.image_size={s} is not divisible by 2**model.headgan.levels = {2 ** h.levels}: "
                         "every encoder level halves the size exactly; pick another image_size or fewer levels")
    coarsest = s // 2 ** (h.d_scales - 1 + h.d_layers)
    if s % 2 ** (h.d_scales - 1) or coarsest < 2:
        raise ValueError(f"model.image_size={s} is too small for model.headgan.d_scales={h.d_scales} x "
                         f"d_layers={h.d_layers}: the coarsest scale's patch grid must be at least 2x2 (instance "
                         f"norm needs more than one position); lower d_layers or d_scales")
    if h.mouth_ndf and mouth_crop_size(cfg) > s:
        raise ValueError(f"the mouth crop ({mouth_crop_size(cfg)} px from model.headgan.mouth_size="
                         f"{h.mouth_size} at 256) does not fit a {s}x{s} image; lower mouth_size or set mouth_ndf 0")
    if h.audio and min(h.audio_mels, h.audio_window) < 1:
        raise ValueError("model.headgan.audio_mels and audio_window must be positive with audio on "
                         f"(got {h.audio_mels}, {h.audio_window})")
    if h.audio_dim < 1:
        raise ValueError(f"model.headgan.audio_dim must be positive, got {h.audio_dim}")


def _check_image(name: str, x: torch.Tensor, size: int, batch: int | None = None) -> None:
    if x.dim() != 4 or x.shape[1] != 3 or x.shape[2:] != (size, size) or (batch is not None and x.shape[0] != batch):
        want = f"({batch if batch is not None else 'B'}, 3, {size}, {size})"
        raise ValueError(f"{name} must have shape {want} (images in [-1, 1] at model.image_size), "
                         f"got {tuple(x.shape)}")


# --------------------------------------------------------------------------------------------------------------
# Warping
# --------------------------------------------------------------------------------------------------------------


def resize_map(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Box-filtered down to a coarser ``size`` (no aliasing at exact factors), bilinear up to a finer one."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if x.shape[-2] >= size[0] and x.shape[-1] >= size[1]:
        return F.adaptive_avg_pool2d(x, size)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def identity_grid(height: int, width: int, like: torch.Tensor) -> torch.Tensor:
    """(1, H, W, 2) grid_sample grid (x, y) of the pixel centres (align_corners=False): sampling it copies."""
    ys = torch.linspace(-1 + 1 / height, 1 - 1 / height, height, device=like.device, dtype=like.dtype)
    xs = torch.linspace(-1 + 1 / width, 1 - 1 / width, width, device=like.device, dtype=like.dtype)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x, grid_y], dim=-1).unsqueeze(0)


def warp(x: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Samples ``x`` at identity + flow (flow resized to x's size first), bilinear, border padding.

    ``flow[:, 0]`` / ``flow[:, 1]`` are the horizontal / vertical offsets of the sampling position in
    grid_sample's normalised coordinates (2 / W per pixel): a constant flow of +2k/W moves content k pixels left.
    Sampling runs in float32 whatever the autocast dtype: a bfloat16 grid would be off by half a pixel at 256 px.
    """
    h, w = x.shape[-2:]
    flow = resize_map(flow.float(), (h, w))
    grid = identity_grid(h, w, flow) + flow.permute(0, 2, 3, 1)
    # Not on any autocast list: with float32 inputs it runs in float32.
    out = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.to(x.dtype)


def crop_mouth(images: torch.Tensor, centres: torch.Tensor, size: int) -> torch.Tensor:
    """(B, C, H, W) images, (B, 2) pixel centres (x, y) -> (B, C, size, size) crops, differentiable in images.

    Sample b's crop covers columns round(x - size/2) ... + size (rows likewise), shifted inwards where it would
    leave the image, so every crop has real pixels only. Integer slicing: no resampling blur.
    """
    b, _, h, w = images.shape
    if size > min(h, w):
        raise ValueError(f"mouth crop of {size} px does not fit {h}x{w} images")
    if centres.shape != (b, 2):
        raise ValueError(f"mouth centres must have shape ({b}, 2) (x, y per image), got {tuple(centres.shape)}")
    half = size / 2
    x0 = (centres[:, 0].float() - half).round().long().clamp(0, w - size)
    y0 = (centres[:, 1].float() - half).round().long().clamp(0, h - size)
    steps = torch.arange(size, device=images.device)
    rows = (y0.to(images.device)[:, None] + steps)[:, :, None]  # B x size x 1
    cols = (x0.to(images.device)[:, None] + steps)[:, None, :]  # B x 1 x size
    batch = torch.arange(b, device=images.device)[:, None, None]
    return images.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2).contiguous()


# --------------------------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------------------------


class SPADE(nn.Module):
    """Spatially-adaptive normalisation (Park et al. 2019): param-free instance norm, then per-pixel
    scale and bias from the conditioning map (resized to the feature size) through conv-ReLU-conv.

    As with ``AdaIN`` the scale is applied as 1 + gamma, so a zero conditioning response is plain instance norm.
    """

    def __init__(self, channels: int, cond_channels: int, hidden: int | None = None):
        super().__init__()
        hidden = hidden or min(channels, SPADE_HIDDEN)
        self.channels, self.cond_channels = channels, cond_channels
        self.shared = nn.Sequential(nn.Conv2d(cond_channels, hidden, 3, padding=1), nn.ReLU())
        self.gamma = nn.Conv2d(hidden, channels, 3, padding=1)
        self.beta = nn.Conv2d(hidden, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = self.shared(resize_map(cond, x.shape[-2:]))
        return F.instance_norm(x) * (1 + self.gamma(h)) + self.beta(h)

    def extra_repr(self) -> str:
        return f"{self.channels}, cond={self.cond_channels}"


class SPADEResBlock(nn.Module):
    """SPADE residual block (Park et al. 2019): SPADE-lrelu-conv3x3 twice, plus identity, or a learned
    SPADE-conv1x1 shortcut when the width changes."""

    def __init__(self, in_ch: int, out_ch: int, cond_channels: int, sn: bool):
        super().__init__()
        mid = min(in_ch, out_ch)
        self.norm1 = SPADE(in_ch, cond_channels)
        self.conv1 = _conv(in_ch, mid, 3, sn)
        self.norm2 = SPADE(mid, cond_channels)
        self.conv2 = _conv(mid, out_ch, 3, sn)
        self.learned_shortcut = in_ch != out_ch
        if self.learned_shortcut:
            self.norm_s = SPADE(in_ch, cond_channels)
            self.conv_s = _conv(in_ch, out_ch, 1, sn)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.leaky_relu(self.norm1(x, cond), 0.2))
        h = self.conv2(F.leaky_relu(self.norm2(h, cond), 0.2))
        shortcut = self.conv_s(self.norm_s(x, cond)) if self.learned_shortcut else x
        return shortcut + h


class AdaINResBlock(nn.Module):
    """Residual block with AdaIN (``model.blocks.AdaIN``) whose scales and biases are a learned linear map of
    the audio embedding: AdaIN-lrelu-conv3x3 twice, plus identity."""

    def __init__(self, channels: int, embed_dim: int, sn: bool):
        super().__init__()
        self.norm1, self.norm2 = AdaIN(channels), AdaIN(channels)
        self.conv1 = _conv(channels, channels, 3, sn)
        self.conv2 = _conv(channels, channels, 3, sn)
        self.affine = linear(embed_dim, self.norm1.num_params + self.norm2.num_params, sn)

    def forward(self, x: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        p1, p2 = self.affine(embedding).chunk(2, dim=1)
        h = self.conv1(F.leaky_relu(self.norm1(x, p1), 0.2))
        h = self.conv2(F.leaky_relu(self.norm2(h, p2), 0.2))
        return x + h


class PixelShuffleUp(nn.Module):
    """2x upsampling: 3x3 conv to 4 * out channels, then PixelShuffle (sub-pixel convolution)."""

    def __init__(self, in_ch: int, out_ch: int, sn: bool):
        super().__init__()
        self.conv = _conv(in_ch, 4 * out_ch, 3, sn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(self.conv(x), 2)


class Encoder(nn.Module):
    """conv3x3-IN-lrelu at full size, then one stride-2 conv-IN-lrelu stage per level; returns every scale."""

    def __init__(self, in_ch: int, channels: list[int], sn: bool):
        super().__init__()
        self.stages = nn.ModuleList()
        previous = in_ch
        for level, ch in enumerate(channels):
            self.stages.append(nn.Sequential(
                _conv(previous, ch, 3, sn, stride=1 if level == 0 else 2, padding=1),
                nn.InstanceNorm2d(ch, affine=True), nn.LeakyReLU(0.2)))
            previous = ch

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)  # scale l: B x channels[l] x S/2**l x S/2**l
        return features


class AudioEncoder(nn.Module):
    """(B, audio_mels, audio_window) log-mel window -> (B, dim): two 1D convolutions over time, mean, linear."""

    def __init__(self, mels: int, window: int, dim: int, sn: bool):
        super().__init__()
        self.mels, self.window = mels, window
        self.convs = nn.Sequential(_conv(mels, dim, 3, sn, dims=1), nn.LeakyReLU(0.2),
                                   _conv(dim, dim, 3, sn, stride=2, padding=1, dims=1), nn.LeakyReLU(0.2))
        self.out = linear(dim, dim, sn)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        if audio.dim() != 3 or audio.shape[1:] != (self.mels, self.window):
            raise ValueError(f"audio features must have shape (B, {self.mels}, {self.window}) "
                             f"(model.headgan.audio_mels x audio_window), got {tuple(audio.shape)}")
        return self.out(self.convs(audio.float()).mean(dim=2))


# --------------------------------------------------------------------------------------------------------------
# Generator
# --------------------------------------------------------------------------------------------------------------


class FlowNetwork(nn.Module):
    """F(x_r, y_r, y_t) -> flow, mask and the reference features warped (and masked) at every scale."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        h, sn = cfg.headgan, cfg.spectral_norm
        chans = channel_table(h)
        self.encoder = Encoder(6, chans, sn)
        self.bottleneck = nn.ModuleList(SPADEResBlock(chans[-1], chans[-1], 3, sn)
                                        for _ in range(h.bottleneck_blocks))
        # Level by level from the bottleneck up: upsample to scale l, then a SPADE block on y_t.
        self.up = nn.ModuleList(PixelShuffleUp(chans[l + 1], chans[l], sn) for l in reversed(range(h.levels)))
        self.decode = nn.ModuleList(SPADEResBlock(chans[l], chans[l], 3, sn) for l in reversed(range(h.levels)))
        # Not spectrally normalised: SN would rescale the zero initialisation away.
        self.flow_head = nn.Conv2d(chans[0], 2, 3, padding=1)
        self.mask_head = nn.Conv2d(chans[0], 1, 3, padding=1)
        nn.init.zeros_(self.flow_head.weight)
        nn.init.zeros_(self.flow_head.bias)

    def forward(self, reference: torch.Tensor, reference_render: torch.Tensor, driving_render: torch.Tensor
                ) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """Returns "flow" (B, 2, S, S), "mask" (B, 1, S, S) and "features": per scale l, the encoder's
        reference features warped by the flow and multiplied by the mask (both resized to scale l)."""
        features = self.encoder(torch.cat([reference, reference_render], dim=1))
        h = features[-1]
        for block in self.bottleneck:
            h = block(h, driving_render)
        for up, block in zip(self.up, self.decode):
            h = block(up(h), driving_render)
        h = F.leaky_relu(h, 0.2)
        flow = self.flow_head(h)
        mask = torch.sigmoid(self.mask_head(h))
        warped = [warp(f, flow) * resize_map(mask, f.shape[-2:]) for f in features]
        return {"flow": flow, "mask": mask, "features": warped}


class RenderingNetwork(nn.Module):
    """R(y_t, f, a_t) -> image: encoder on y_t; per decoder scale a SPADE block on the warped features f_l and an
    AdaIN block on the audio embedding."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        h, sn = cfg.headgan, cfg.spectral_norm
        chans = channel_table(h)
        self.encoder = Encoder(3, chans, sn)
        self.bottleneck_spade = nn.ModuleList(SPADEResBlock(chans[-1], chans[-1], chans[-1], sn)
                                              for _ in range(h.bottleneck_blocks))
        self.bottleneck_adain = nn.ModuleList(AdaINResBlock(chans[-1], h.audio_dim, sn)
                                              for _ in range(h.bottleneck_blocks))
        levels = list(reversed(range(h.levels)))
        self.up = nn.ModuleList(PixelShuffleUp(chans[l + 1], chans[l], sn) for l in levels)
        self.spade = nn.ModuleList(SPADEResBlock(chans[l], chans[l], chans[l], sn) for l in levels)
        self.adain = nn.ModuleList(AdaINResBlock(chans[l], h.audio_dim, sn) for l in levels)
        self.out_conv = _conv(chans[0], 3, 3, sn)

    def forward(self, driving_render: torch.Tensor, features: list[torch.Tensor], audio_embedding: torch.Tensor
                ) -> torch.Tensor:
        h = self.encoder(driving_render)[-1]
        for spade, adain in zip(self.bottleneck_spade, self.bottleneck_adain):
            h = adain(spade(h, features[-1]), audio_embedding)
        for i, (up, spade, adain) in enumerate(zip(self.up, self.spade, self.adain)):
            level = len(self.up) - 1 - i
            h = adain(spade(up(h), features[level]), audio_embedding)
        return torch.tanh(self.out_conv(F.leaky_relu(h, 0.2)))


class HeadGANGenerator(nn.Module):
    """G = F + R of HeadGAN. ``forward(x_r, y_r, y_t, a_t=None)`` -> dict of "image", "warped", "flow", "mask"."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        check_headgan_config(cfg)
        h = cfg.headgan
        self.image_size = cfg.image_size
        self.flow = FlowNetwork(cfg)
        self.render = RenderingNetwork(cfg)
        self.audio_encoder = (AudioEncoder(h.audio_mels, h.audio_window, h.audio_dim, cfg.spectral_norm)
                              if h.audio else None)
        # The embedding the AdaIN blocks get for a silent clip (or with audio switched off).
        self.silent = nn.Parameter(torch.zeros(h.audio_dim))

    def embed_audio(self, audio: torch.Tensor | None, batch: int,
                    audio_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, audio_dim): the audio encoder's embedding, or the learned constant without audio.

        ``audio_mask`` (B,) bool marks the items that have audio in a batch that mixes clips with and without
        sound; the others get the constant. With ``model.headgan.audio`` false any given audio is ignored: the
        network has no audio encoder.
        """
        silent = self.silent.unsqueeze(0).expand(batch, -1)
        if self.audio_encoder is None or audio is None:
            return silent
        if audio.shape[0] != batch:
            raise ValueError(f"audio has {audio.shape[0]} items for a batch of {batch} images")
        embedded = self.audio_encoder(audio)
        if audio_mask is None:
            return embedded
        return torch.where(audio_mask.to(embedded.device).view(-1, 1), embedded, silent.to(embedded.dtype))

    def forward(self, reference: torch.Tensor, reference_render: torch.Tensor, driving_render: torch.Tensor,
                audio: torch.Tensor | None = None, audio_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Images (B, 3, S, S) in [-1, 1], audio (B, audio_mels, audio_window) or None (and optionally which items
        have audio, ``audio_mask`` (B,) bool) -> "image" (B, 3, S, S) in [-1, 1], "warped" (x_r warped by the flow),
        "flow" (B, 2, S, S), "mask" (B, 1, S, S).
        """
        b = reference.shape[0]
        for name, x in (("reference", reference), ("reference_render", reference_render),
                        ("driving_render", driving_render)):
            _check_image(name, x, self.image_size, b)
        flow = self.flow(reference, reference_render, driving_render)
        image = self.render(driving_render, flow["features"], self.embed_audio(audio, b, audio_mask))
        return {"image": image, "warped": warp(reference, flow["flow"]), "flow": flow["flow"], "mask": flow["mask"]}


# --------------------------------------------------------------------------------------------------------------
# Discriminators
# --------------------------------------------------------------------------------------------------------------


class PatchDiscriminator(nn.Module):
    """pix2pixHD-style PatchGAN: ``layers`` stride-2 4x4 convs (ndf * 2**l channels, instance norm after the
    first, leaky ReLU), then a 3x3 conv to one score per patch. Returns (scores, every layer's activations)."""

    def __init__(self, in_ch: int, ndf: int, layers: int, sn: bool):
        super().__init__()
        self.layers = nn.ModuleList()
        previous = in_ch
        for level in range(layers):
            ch = min(ndf * 2 ** level, D_MAX_CHANNELS)
            norm = [nn.InstanceNorm2d(ch)] if level else []
            self.layers.append(nn.Sequential(_conv(previous, ch, 4, sn, stride=2, padding=1), *norm,
                                             nn.LeakyReLU(0.2)))
            previous = ch
        self.out_channels = previous
        self.score = _conv(previous, 1, 3, sn)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        features = []
        for layer in self.layers:
            x = layer(x)
            features.append(x)
        return self.score(x), features  # B x 1 x H/2**layers x W/2**layers


class MultiScaleDiscriminator(nn.Module):
    """``d_scales`` conditional PatchGANs on concat(image, driving render); scale k sees the pair average-pooled
    k times (2x2), so the coarser ones judge larger structures with the same receptive field."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        check_headgan_config(cfg)
        h = cfg.headgan
        self.image_size = cfg.image_size
        self.scales = nn.ModuleList(PatchDiscriminator(6, h.ndf, h.d_layers, cfg.spectral_norm)
                                    for _ in range(h.d_scales))

    def forward(self, image: torch.Tensor, render: torch.Tensor
                ) -> list[tuple[torch.Tensor, list[torch.Tensor]]]:
        """Per scale: (scores (B, 1, h, w), [activations of each stride-2 layer])."""
        _check_image("discriminator image", image, self.image_size)
        _check_image("discriminator render", render, self.image_size, image.shape[0])
        x = torch.cat([image, render], dim=1)
        outputs = []
        for k, scale in enumerate(self.scales):
            if k:
                x = F.avg_pool2d(x, 2)
            outputs.append(scale(x))
        return outputs


class MouthDiscriminator(nn.Module):
    """PatchGAN on mouth crops (``crop_mouth``), plus a projection term <v, P_a e(a_t)> added to every patch
    score: v the crop's mean-pooled last activations, e an audio embedding of its own (not the generator's)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        check_headgan_config(cfg)
        h, sn = cfg.headgan, cfg.spectral_norm
        if h.mouth_ndf < 1:
            raise ValueError("model.headgan.mouth_ndf is 0: the mouth discriminator is switched off")
        self.crop_size = mouth_crop_size(cfg)
        self.trunk = PatchDiscriminator(3, h.mouth_ndf, MOUTH_LAYERS, sn)
        self.audio_encoder = self.audio_projection = None
        if h.audio:
            self.audio_encoder = AudioEncoder(h.audio_mels, h.audio_window, h.audio_dim, sn)
            self.audio_projection = linear(h.audio_dim, self.trunk.out_channels, sn)

    def forward(self, mouth: torch.Tensor, audio: torch.Tensor | None = None, audio_mask: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(B, 3, m, m) crops, audio (B, mels, window) or None -> (scores (B, 1, m/8, m/8), activations).

        ``audio_mask`` (B,) bool: items without sound (False) get no audio projection term."""
        if mouth.dim() != 4 or mouth.shape[1:] != (3, self.crop_size, self.crop_size):
            raise ValueError(f"mouth crops must have shape (B, 3, {self.crop_size}, {self.crop_size}) "
                             f"(crop_mouth(images, centres, {self.crop_size})), got {tuple(mouth.shape)}")
        scores, features = self.trunk(mouth)
        if audio is not None and self.audio_encoder is not None:
            v = features[-1].mean(dim=(2, 3))  # B x C
            projection = (v * self.audio_projection(self.audio_encoder(audio))).sum(dim=1)
            if audio_mask is not None:
                projection = projection * audio_mask.to(projection.device, projection.dtype)
            scores = scores + projection.view(-1, 1, 1, 1)
        return scores, features


def build_headgan(cfg: ModelConfig) -> dict[str, nn.Module]:
    """HeadGAN's networks by name; no "mouth_discriminator" when model.headgan.mouth_ndf is 0."""
    check_headgan_config(cfg)
    nets = {"generator": HeadGANGenerator(cfg), "discriminator": MultiScaleDiscriminator(cfg)}
    if cfg.headgan.mouth_ndf:
        nets["mouth_discriminator"] = MouthDiscriminator(cfg)
    return nets
