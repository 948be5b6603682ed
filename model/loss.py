"""Losses of Zakharov et al. 2019 (Sec. 3.3), as small modules returning named, weighted terms.

Generator side (one backward pass through E and G):
    content     L1 between VGG19 and VGGFace activations of x_hat and x   (weights loss.vgg19_weight, ...;
                per-layer VGG19 factors loss.vgg19_layer_weights)
    adversarial -D(x_hat)                                                   (loss.adversarial_weight)
    feature_matching  L1 between D's block activations on x and x_hat      (loss.feature_matching_weight)
    embedding_match   L_MCH = L1 between e_hat and W_i                     (loss.embedding_match_weight)
    pixel_l1    L1 between x_hat and x (off in the paper; the demo's fallback without VGG weights)
Discriminator side (its own backward pass, on a detached x_hat):
    hinge       max(0, 1 - D(x)) + max(0, 1 + D(x_hat))

Every term is multiplied by its weight here; a term whose weight is 0 is not computed. The dictionaries are
what the training loop logs, and their sum is what it optimises.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from config import LossConfig


def hinge_discriminator(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> dict[str, torch.Tensor]:
    """D's hinge loss, split into its real and fake halves so both can be logged."""
    return {"d_real": F.relu(1.0 - real_scores).mean(), "d_fake": F.relu(1.0 + fake_scores).mean()}


def feature_matching(real_features: list[torch.Tensor], fake_features: list[torch.Tensor]) -> torch.Tensor:
    """Sum over D's blocks of the mean L1 distance; the real side is a fixed target."""
    if len(real_features) != len(fake_features):
        raise ValueError(f"feature matching got {len(real_features)} real and {len(fake_features)} fake maps")
    return sum(F.l1_loss(f, r.detach()) for r, f in zip(real_features, fake_features))


class ContentLoss(nn.Module):
    """Perceptual L1 on one VGG network's activations at the configured layers, summed over layers.

    ``layer_weights`` (one factor per layer; empty or None: all 1) is pix2pixHD's / HeadGAN's 1/32 ... 1, which
    keeps the large early activations from drowning the deeper, more semantic layers.
    """

    def __init__(self, network: nn.Module, layers: list[str], weight: float,
                 layer_weights: list[float] | None = None):
        super().__init__()
        self.network, self.layers, self.weight = network, list(layers), weight
        self.layer_weights = list(layer_weights) if layer_weights else [1.0] * len(self.layers)
        if len(self.layer_weights) != len(self.layers):
            raise ValueError(f"content loss: {len(self.layer_weights)} layer weights for {len(self.layers)} layers "
                             f"{self.layers}")

    def forward(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            real_features = self.network(real, self.layers)
        fake_features = self.network(fake, self.layers)
        return self.weight * sum(w * F.l1_loss(f, r)
                                 for w, f, r in zip(self.layer_weights, fake_features, real_features))


def _warn_loudly(message: str) -> None:
    bar = "!" * 100
    print(f"\n{bar}\n{message}\n{bar}\n", file=sys.stderr, flush=True)


def load_content_networks(cfg: LossConfig) -> dict[str, nn.Module]:
    """Loads the converted VGG19 / VGGFace weights that the config's non-zero content terms need.

    A missing file is an error (with where the weights come from and the conversion command), unless
    ``loss.missing_weights`` is ``pixel_l1``: then that term is dropped with a loud warning and training relies
    on the pixel L1 term.
    """
    from vgg_model.vgg import layer_names, load_vgg

    networks = {}
    for arch, weight, path, layers in (("vgg19", cfg.vgg19_weight, cfg.vgg19_path, cfg.vgg19_layers),
                                       ("vggface", cfg.vggface_weight, cfg.vggface_path, cfg.vggface_layers)):
        if weight == 0:
            continue
        if not Path(path).is_file() and cfg.missing_weights == "pixel_l1":
            _warn_loudly(f"PERCEPTUAL LOSS OFF: {arch} weights not found at {path}. This run trains the "
                         f"{arch} content term as pixel L1 (loss.pixel_l1_weight={cfg.pixel_l1_weight}) instead; "
                         f"results will be blurrier than the paper's. Convert the weights with "
                         f"vgg_model/convert_model.py --arch {arch} ... --out {path} (see README).")
            continue
        # Cut the trunk after the deepest requested layer: relu5_1 skips VGG19's conv5_2..conv5_4.
        order = layer_names(arch)
        unknown = [name for name in layers if name not in order]
        if unknown:
            raise ValueError(f"loss.{arch}_layers: unknown layer(s) {unknown}; {arch} has {order}")
        networks[arch] = load_vgg(path, arch, last_layer=max(layers, key=order.index))
    return networks


def content_losses(cfg: LossConfig, content_networks: dict[str, nn.Module]) -> nn.ModuleDict:
    """One weighted ContentLoss per loaded perceptual network (``load_content_networks``), keyed by its name."""
    losses = nn.ModuleDict()
    for arch, net in content_networks.items():
        if arch == "vgg19":
            losses[arch] = ContentLoss(net, cfg.vgg19_layers, cfg.vgg19_weight, cfg.vgg19_layer_weights)
        else:
            losses[arch] = ContentLoss(net, cfg.vggface_layers, cfg.vggface_weight)
    return losses


class GeneratorLoss(nn.Module):
    """Every term of E and G's objective, weighted by the config; zero-weight terms are skipped."""

    def __init__(self, cfg: LossConfig, content_networks: dict[str, nn.Module]):
        super().__init__()
        self.cfg = cfg
        self.content = content_losses(cfg, content_networks)

    def forward(self, fake: torch.Tensor, real: torch.Tensor, fake_scores: torch.Tensor,
                fake_features: list[torch.Tensor], real_features: list[torch.Tensor],
                e_hat: torch.Tensor | None = None, w_i: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Named weighted terms for generated frames ``fake`` against ``real`` (both in [-1, 1]).

        ``fake_scores``/``fake_features`` are D on (x_hat, y); ``real_features`` D's activations on (x, y).
        ``e_hat`` and ``w_i`` are needed when the embedding-match term is on (meta-learning only).
        """
        c = self.cfg
        terms = {f"content_{arch}": loss(fake, real) for arch, loss in self.content.items()}
        if c.pixel_l1_weight:
            terms["pixel_l1"] = c.pixel_l1_weight * F.l1_loss(fake, real)
        if c.adversarial_weight:
            terms["adversarial"] = -c.adversarial_weight * fake_scores.mean()
        if c.feature_matching_weight:
            terms["feature_matching"] = c.feature_matching_weight * feature_matching(real_features, fake_features)
        if c.embedding_match_weight and e_hat is not None:
            if w_i is None:
                raise ValueError("the embedding-match term needs W_i alongside e_hat")
            terms["embedding_match"] = c.embedding_match_weight * F.l1_loss(e_hat, w_i)
        return terms
