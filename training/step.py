"""One meta-learning step of Zakharov et al. 2019 (Sec. 3.3): a D phase, then an E+G phase.

    e_hat = E(sources), x_hat = G(y_target, e_hat)
    D phase:  hinge(D(x, y, i), D(x_hat.detach(), y, i))        -> step D's trunk, w0, b
    G phase:  content + adversarial + feature matching + L_MCH   -> step E and G
    then W (rows i only) steps once with the sum of its hinge and L_MCH gradients.

The two phases are separate backward passes: the D update never sees the generator's objective and the G
update never moves D. In the G phase D runs unwrapped (outside DDP) with its trunk frozen, so gradients flow
through it to x_hat without touching, or all-reducing, D's weights. Its adversarial score uses a detached W_i,
so W learns only from the hinge loss and from L_MCH, as in the paper.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
from torch import nn

from config import Config
from model.loss import GeneratorLoss, hinge_discriminator


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or Inf; the run stops before the bad update is applied."""


@dataclass
class Networks:
    """The networks as the step calls them (possibly DDP/compile-wrapped) and D's plain module."""

    embedder: nn.Module
    generator: nn.Module
    discriminator: nn.Module
    discriminator_module: nn.Module


def build_optimizers(embedder: nn.Module, generator: nn.Module, discriminator: nn.Module,
                     cfg: Config) -> dict[str, torch.optim.Optimizer]:
    """Adam for E+G and for D's trunk (TTUR learning rates); W gets SparseAdam when its gradient is sparse."""
    o = cfg.optim
    betas = (o.betas[0], o.betas[1])
    trunk = [p for name, p in discriminator.named_parameters() if not name.startswith("W.")]
    w_opt = torch.optim.SparseAdam if discriminator.W.sparse else torch.optim.Adam
    return {
        "generator": torch.optim.Adam([{"params": embedder.parameters(), "lr": o.lr_embedder},
                                       {"params": generator.parameters(), "lr": o.lr_generator}], betas=betas),
        "discriminator": torch.optim.Adam(trunk, lr=o.lr_discriminator, betas=betas),
        "projection": w_opt([discriminator.W.weight], lr=o.lr_discriminator, betas=betas),
    }


def check_finite(terms: dict[str, torch.Tensor], step: int) -> None:
    for name, value in terms.items():
        v = float(value.detach())
        if not math.isfinite(v):
            raise NonFiniteLossError(f"loss term '{name}' is {v} at step {step}; stopping before the update. "
                                     "The run's last checkpoint is untouched.")


def autocast_context(device: torch.device, amp: str):
    if amp == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train_step(batch: dict[str, torch.Tensor], nets: Networks, optimizers: dict[str, torch.optim.Optimizer],
               generator_loss: GeneratorLoss, step: int, amp: str = "none",
               sync_w=None) -> tuple[dict[str, float], torch.Tensor]:
    """Runs one step on a batch from MetaDataset; returns (logged scalars, x_hat detached).

    ``sync_w`` (distributed runs) averages W's sparse gradient across processes before its update.
    """
    frames, landmarks, index = batch["frames"], batch["landmarks"], batch["video_index"]
    k = frames.shape[1] - 1
    src_x, src_y = frames[:, :k], landmarks[:, :k]  # B x K x 3 x S x S
    x, y = frames[:, k], landmarks[:, k]  # B x 3 x S x S
    b = x.shape[0]
    D = nets.discriminator_module
    autocast = autocast_context(x.device, amp)

    with autocast:
        e_hat = nets.embedder(src_x, src_y)  # B x embed_dim
        x_hat = nets.generator(y, e_hat)  # B x 3 x S x S

    # D phase: real and detached fake in one forward (one DDP forward per backward).
    with autocast:
        scores, _ = nets.discriminator(torch.cat([x, x_hat.detach()]), torch.cat([y, y]), torch.cat([index, index]))
    real_scores, fake_scores = scores.float().split(b)
    d_terms = hinge_discriminator(real_scores, fake_scores)
    check_finite(d_terms, step)
    optimizers["discriminator"].zero_grad(set_to_none=True)
    optimizers["projection"].zero_grad(set_to_none=True)
    sum(d_terms.values()).backward()
    optimizers["discriminator"].step()

    # G phase: D frozen and unwrapped; one forward gives the fake scores and both sides' features.
    trunk = [p for name, p in D.named_parameters() if not name.startswith("W.")]
    for p in trunk:
        p.requires_grad_(False)
    try:
        with autocast:
            w_i = D.W(index)
            scores_g, features = D(torch.cat([x_hat, x]), torch.cat([y, y]), w=torch.cat([w_i, w_i]).detach())
            fake_features = [f[:b].float() for f in features]
            real_features = [f[b:].detach().float() for f in features]
            g_terms = generator_loss(x_hat.float(), x, scores_g[:b].float(), fake_features, real_features,
                                     e_hat.float(), w_i.float())
        check_finite(g_terms, step)
        optimizers["generator"].zero_grad(set_to_none=True)
        sum(g_terms.values()).backward()
    finally:
        for p in trunk:
            p.requires_grad_(True)
    optimizers["generator"].step()
    if sync_w is not None:
        sync_w(D.W.weight)
    optimizers["projection"].step()

    stats = {f"loss/{name}": float(v.detach()) for name, v in {**d_terms, **g_terms}.items()}
    stats["loss/d_total"] = stats["loss/d_real"] + stats["loss/d_fake"]
    stats["loss/g_total"] = sum(float(v.detach()) for v in g_terms.values())
    stats["score/real"] = float(real_scores.detach().mean())
    stats["score/fake"] = float(fake_scores.detach().mean())
    return stats, x_hat.detach()
