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


def discriminator_phase(discriminator: nn.Module, x: torch.Tensor, y: torch.Tensor, x_hat: torch.Tensor,
                        optimizer: torch.optim.Optimizer, step: int, autocast, **projection) -> dict[str, torch.Tensor]:
    """Hinge loss on real and detached generated frames in one D forward, backward, and D's update.

    ``projection`` selects D's projection vector for both halves: ``video_index`` (B,) rows of W, or ``w``.
    """
    b = x.shape[0]
    doubled = {k: torch.cat([v, v]) for k, v in projection.items()}
    with autocast:
        scores, _ = discriminator(torch.cat([x, x_hat.detach()]), torch.cat([y, y]), **doubled)
    real_scores, fake_scores = scores.float().split(b)
    terms = hinge_discriminator(real_scores, fake_scores)
    check_finite(terms, step)
    optimizer.zero_grad(set_to_none=True)
    sum(terms.values()).backward()
    optimizer.step()
    terms["score_real"], terms["score_fake"] = real_scores.detach().mean(), fake_scores.detach().mean()
    return terms


def generator_phase(discriminator: nn.Module, x: torch.Tensor, y: torch.Tensor, x_hat: torch.Tensor,
                    w: torch.Tensor, generator_loss: GeneratorLoss, optimizer: torch.optim.Optimizer, step: int,
                    autocast, e_hat: torch.Tensor | None = None, w_i: torch.Tensor | None = None
                    ) -> dict[str, torch.Tensor]:
    """The generator's objective through a frozen, unwrapped D (projection ``w`` detached), backward, update.

    One D forward on [x_hat, x] gives the fake scores and both sides' block activations for feature matching.
    """
    b = x.shape[0]
    trunk = [p for name, p in discriminator.named_parameters() if not name.startswith("W.")]
    for p in trunk:
        p.requires_grad_(False)
    try:
        with autocast:
            w = w.detach().expand(b, -1)
            scores, features = discriminator(torch.cat([x_hat, x]), torch.cat([y, y]), w=torch.cat([w, w]))
            fake_features = [f[:b].float() for f in features]
            real_features = [f[b:].detach().float() for f in features]
            terms = generator_loss(x_hat.float(), x, scores[:b].float(), fake_features, real_features,
                                   None if e_hat is None else e_hat.float(), None if w_i is None else w_i.float())
        check_finite(terms, step)
        optimizer.zero_grad(set_to_none=True)
        sum(terms.values()).backward()
    finally:
        for p in trunk:
            p.requires_grad_(True)
    optimizer.step()
    return terms


def summarize_terms(d_terms: dict[str, torch.Tensor], g_terms: dict[str, torch.Tensor]) -> dict[str, float]:
    """The scalars a step logs: every term, both totals and D's mean scores on real and generated frames."""
    stats = {f"loss/{name}": float(v.detach()) for name, v in {**d_terms, **g_terms}.items()
             if not name.startswith("score_")}
    stats["loss/d_total"] = stats["loss/d_real"] + stats["loss/d_fake"]
    stats["loss/g_total"] = sum(float(v.detach()) for v in g_terms.values())
    stats["score/real"], stats["score/fake"] = float(d_terms["score_real"]), float(d_terms["score_fake"])
    return stats


def train_step(batch: dict[str, torch.Tensor], nets: Networks, optimizers: dict[str, torch.optim.Optimizer],
               generator_loss: GeneratorLoss, step: int, amp: str = "none",
               sync_w=None) -> tuple[dict[str, float], torch.Tensor]:
    """One meta-learning step on a batch from MetaDataset; returns (logged scalars, x_hat detached).

    ``sync_w`` (distributed runs) averages W's sparse gradient across processes before its update.
    """
    frames, landmarks, index = batch["frames"], batch["landmarks"], batch["video_index"]
    k = frames.shape[1] - 1
    src_x, src_y = frames[:, :k], landmarks[:, :k]  # B x K x 3 x S x S
    x, y = frames[:, k], landmarks[:, k]  # B x 3 x S x S
    D = nets.discriminator_module
    autocast = autocast_context(x.device, amp)

    with autocast:
        e_hat = nets.embedder(src_x, src_y)  # B x embed_dim
        x_hat = nets.generator(y, e_hat)  # B x 3 x S x S

    # W's gradient accumulates over both phases (hinge, then L_MCH) and is applied once at the end.
    optimizers["projection"].zero_grad(set_to_none=True)
    d_terms = discriminator_phase(nets.discriminator, x, y, x_hat, optimizers["discriminator"], step, autocast,
                                  video_index=index)
    with autocast:
        w_i = D.W(index)
    g_terms = generator_phase(D, x, y, x_hat, w_i, generator_loss, optimizers["generator"], step, autocast,
                              e_hat=e_hat, w_i=w_i)
    if sync_w is not None:
        sync_w(D.W.weight)
    optimizers["projection"].step()
    return summarize_terms(d_terms, g_terms), x_hat.detach()
