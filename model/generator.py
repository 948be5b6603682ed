"""Generator G(y, e_hat) of Zakharov et al. 2019 (Sec. 3.2): landmark image -> frame of the embedded person."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from config import ModelConfig
from model.blocks import AdaIN, build_layers, conv, linear, run_blocks


class Generator(nn.Module):
    """Image-to-image network on the target landmark image y, personalised through AdaIN.

    Every AdaIN scale and bias comes from psi = P e_hat, one learned projection P of the embedding
    (``self.projection``). Fine-tuning (Sec. 3.4) replaces P e_hat by a trainable psi' passed as ``psi``.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.blocks, channels, size = build_layers(
            cfg.generator.layers, cfg.landmark_channels, cfg.image_size, cfg.spectral_norm,
            "model.generator.layers")
        if size != cfg.image_size:
            raise ValueError(f"model.generator.layers maps {cfg.image_size}x{cfg.image_size} to {size}x{size}: "
                             "a generator needs as many U blocks as D blocks")
        self.out_norm = AdaIN(channels)
        self.out_conv = conv(channels, 3, 3, cfg.spectral_norm)
        # psi layout: every AdaIN block in table order, then the output AdaIN.
        self.num_adain_params = sum(b.adain_params for b in self.blocks) + self.out_norm.num_params
        self.projection = linear(cfg.embed_dim, self.num_adain_params, cfg.spectral_norm)  # P

    def project(self, e_hat: torch.Tensor) -> torch.Tensor:
        """psi = P e_hat: (B, embed_dim) -> (B, num_adain_params)."""
        return self.projection(e_hat)

    def forward(self, landmarks: torch.Tensor, e_hat: torch.Tensor | None = None,
                psi: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 3, S, S) landmark images -> (B, 3, S, S) frames in [-1, 1]; give e_hat, or psi directly.

        A psi of shape (num_adain_params,) or (1, num_adain_params) is shared across the batch.
        """
        if psi is None:
            if e_hat is None:
                raise ValueError("Generator.forward needs e_hat or psi")
            psi = self.project(e_hat)
        psi = psi.reshape(-1, self.num_adain_params).expand(landmarks.shape[0], -1)
        h, _ = run_blocks(self.blocks, landmarks, psi)
        h = F.relu(self.out_norm(h, psi[:, -self.out_norm.num_params:]))
        return torch.tanh(self.out_conv(h))
