"""Embedder E(x, y) of Zakharov et al. 2019 (Sec. 3.2): frames and their landmark images -> e_hat."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from config import ModelConfig
from model.blocks import build_layers, run_blocks


class Embedder(nn.Module):
    """Maps each (frame, landmark image) pair to a vector, then averages over the K frames of a video.

    Residual down blocks (no normalisation) and self-attention from the config table, then ReLU and global
    sum pooling, as in BigGAN's discriminator trunk.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.blocks, channels, _ = build_layers(
            cfg.embedder.layers, 3 + cfg.landmark_channels, cfg.image_size, cfg.spectral_norm,
            "model.embedder.layers")
        if channels != cfg.embed_dim:
            raise ValueError(f"model.embedder.layers ends with {channels} channels but model.embed_dim is "
                             f"{cfg.embed_dim}: the last block's width is the embedding size")

    def embed(self, frames: torch.Tensor, landmarks: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) frames and landmark images -> (N, embed_dim) per-frame embeddings e_i."""
        h, _ = run_blocks(self.blocks, torch.cat([frames, landmarks], dim=1))
        return F.relu(h).sum(dim=(2, 3))

    def forward(self, frames: torch.Tensor, landmarks: torch.Tensor) -> torch.Tensor:
        """(B, K, 3, S, S) sources of one video each -> e_hat (B, embed_dim), the mean of the K embeddings."""
        b, k = frames.shape[:2]
        e = self.embed(frames.flatten(0, 1), landmarks.flatten(0, 1))  # (B*K) x D
        return e.view(b, k, -1).mean(dim=1)
