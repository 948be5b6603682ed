"""Projection discriminator D(x, y, i) of Zakharov et al. 2019 (Sec. 3.2)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from config import ModelConfig
from model.blocks import build_layers, run_blocks


class Discriminator(nn.Module):
    """Realism score r = v . (W_i + w0) + b of a (frame, landmark image) pair for training video i.

    v is the ReLU + sum-pooled output of a residual trunk (E's layout plus an extra block at the lowest
    resolution). W holds one row per training video; it is an embedding whose gradient is sparse by default,
    so an optimiser step touches only the rows of the videos in the batch (VoxCeleb2 has ~150k videos).
    For fine-tuning (Sec. 3.4) pass ``w`` (the trainable w' = w0 + e_NEW replacing W_i + w0 is built by the
    caller as ``w = w' - w0``, so the score keeps this one formula).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        dcfg = cfg.discriminator
        self.blocks, channels, _ = build_layers(
            dcfg.layers, 3 + cfg.landmark_channels, cfg.image_size, cfg.spectral_norm,
            "model.discriminator.layers")
        if channels != cfg.embed_dim:
            raise ValueError(f"model.discriminator.layers ends with {channels} channels but model.embed_dim "
                             f"is {cfg.embed_dim}: v and W_i must have the same size")
        if dcfg.num_videos < 1:
            raise ValueError(f"model.discriminator.num_videos must be positive, got {dcfg.num_videos}")
        self.W = nn.Embedding(dcfg.num_videos, cfg.embed_dim, sparse=dcfg.sparse_w)
        self.w0 = nn.Parameter(torch.zeros(cfg.embed_dim))
        self.b = nn.Parameter(torch.zeros(()))

    def forward(self, frames: torch.Tensor, landmarks: torch.Tensor, video_index: torch.Tensor | None = None,
                w: torch.Tensor | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Returns (scores (B,), activations of every residual block for feature matching).

        Give ``video_index`` (B,) rows of W, or ``w`` (embed_dim,) / (B, embed_dim) to use instead of W_i.
        """
        h, features = run_blocks(self.blocks, torch.cat([frames, landmarks], dim=1), collect=True)
        v = F.relu(h).sum(dim=(2, 3))  # B x embed_dim
        if w is None:
            if video_index is None:
                raise ValueError("Discriminator.forward needs video_index or w")
            w = self.W(video_index)
        return (v * (w + self.w0)).sum(dim=1) + self.b, features
