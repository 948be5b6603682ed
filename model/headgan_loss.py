"""Losses of HeadGAN (Doukas et al. 2021; SPEC section 2), as named, weighted terms like ``model/loss.py``.

Generator side (one backward pass through the flow and rendering networks):
    content_vgg19           VGG19 perceptual L1, layer factors 1/32 ... 1   (loss.vgg19_weight 10,
                                                                             loss.vgg19_layer_weights)
    pixel_l1                L1 between the generated and the real frame      (loss.pixel_l1_weight)
    warp_l1                 L1 between the reference warped by the flow and the real frame (loss.warp_l1_weight):
                            it gives the flow network a direct signal, not only through the renderer
    adversarial             hinge generator term -D(x_hat), averaged over D's scales   (loss.adversarial_weight)
    feature_matching        L1 between D's activations on real and generated frames, summed over layers and
                            averaged over scales (pix2pixHD)                  (loss.feature_matching_weight)
    mouth_adversarial       -D_mouth(mouth crop of x_hat, audio)             (loss.mouth_adversarial_weight)
    mouth_feature_matching  the mouth D's feature matching                   (loss.feature_matching_weight)
Discriminator side (its own backward pass, on detached generator outputs), unweighted hinge halves:
    d_real, d_fake          averaged over the multi-scale D's scales
    mouth_real, mouth_fake  the mouth discriminator's

A term whose weight is 0 is not computed. ``mouth_adversarial_weight`` 0 switches the whole mouth branch off
in training (no mouth crops, no mouth D update), see ``uses_mouth``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from config import LossConfig
from model.loss import content_losses, feature_matching, hinge_discriminator

# One discriminator's output: (scores, [activations]); the multi-scale D gives a list of them.
DOutput = tuple[torch.Tensor, list[torch.Tensor]]


def _mean(values: list[torch.Tensor]) -> torch.Tensor:
    return sum(values) / len(values)


class HeadGANLoss(nn.Module):
    """Every term of HeadGAN's generator objective and its discriminators' hinge losses, weighted by config."""

    def __init__(self, cfg: LossConfig, content_networks: dict[str, nn.Module]):
        super().__init__()
        self.cfg = cfg
        self.content = content_losses(cfg, content_networks)

    @property
    def uses_mouth(self) -> bool:
        """Whether training crops mouths and runs the mouth discriminator at all."""
        return self.cfg.mouth_adversarial_weight != 0

    def forward(self, outputs: dict[str, torch.Tensor], target: torch.Tensor, d_fake: list[DOutput],
                d_real_features: list[list[torch.Tensor]], mouth_fake: DOutput | None = None,
                mouth_real_features: list[torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Named weighted generator terms.

        ``outputs`` is the generator's dict ("image", "warped"), ``target`` the real driving frame (both in
        [-1, 1]); ``d_fake`` the multi-scale D on (generated frame, driving render), ``d_real_features`` its
        activations on (real frame, driving render), scale by scale; ``mouth_fake`` / ``mouth_real_features``
        the same for the mouth discriminator (None: no mouth terms).
        """
        c = self.cfg
        if (c.adversarial_weight or c.feature_matching_weight) and not d_fake:
            raise ValueError("the adversarial and feature-matching terms need the discriminator's outputs (d_fake); "
                             "set loss.adversarial_weight and loss.feature_matching_weight to 0 to train without D")
        image = outputs["image"]
        terms = {f"content_{arch}": loss(image, target) for arch, loss in self.content.items()}
        if c.pixel_l1_weight:
            terms["pixel_l1"] = c.pixel_l1_weight * F.l1_loss(image, target)
        if c.warp_l1_weight:
            terms["warp_l1"] = c.warp_l1_weight * F.l1_loss(outputs["warped"], target)
        if c.adversarial_weight:
            terms["adversarial"] = -c.adversarial_weight * _mean([scores.mean() for scores, _ in d_fake])
        if c.feature_matching_weight:
            if len(d_fake) != len(d_real_features):
                raise ValueError(f"feature matching got {len(d_real_features)} real and {len(d_fake)} fake scales")
            terms["feature_matching"] = c.feature_matching_weight * _mean(
                [feature_matching(real, fake) for (_, fake), real in zip(d_fake, d_real_features)])
        if mouth_fake is not None:
            if c.mouth_adversarial_weight:
                terms["mouth_adversarial"] = -c.mouth_adversarial_weight * mouth_fake[0].mean()
            if c.feature_matching_weight and mouth_real_features is not None:
                terms["mouth_feature_matching"] = c.feature_matching_weight * feature_matching(
                    mouth_real_features, mouth_fake[1])
        return terms

    def discriminator_terms(self, d_real: list[DOutput], d_fake: list[DOutput], mouth_real: DOutput | None = None,
                            mouth_fake: DOutput | None = None) -> dict[str, torch.Tensor]:
        """Hinge halves: "d_real", "d_fake" averaged over scales; "mouth_real", "mouth_fake" with a mouth D."""
        if len(d_real) != len(d_fake):
            raise ValueError(f"discriminator terms got {len(d_real)} real and {len(d_fake)} fake scales")
        per_scale = [hinge_discriminator(real, fake) for (real, _), (fake, _) in zip(d_real, d_fake)]
        terms = {"d_real": _mean([t["d_real"] for t in per_scale]), "d_fake": _mean([t["d_fake"] for t in per_scale])}
        if (mouth_real is None) != (mouth_fake is None):
            raise ValueError("the mouth discriminator's terms need both its real and its fake output")
        if mouth_real is not None:
            mouth = hinge_discriminator(mouth_real[0], mouth_fake[0])
            terms["mouth_real"], terms["mouth_fake"] = mouth["d_real"], mouth["d_fake"]
        return terms
