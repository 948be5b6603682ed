"""One training step of HeadGAN (Doukas et al. 2021; SPEC section 2): a D phase, then a G phase.

    out = G(x_r, y_r, y_t, a_t)                      image x_hat, warped reference, flow, mask
    D phase:  hinge over scales of D([x, x_hat.detach()], y_t)
              + hinge of D_mouth([mouth(x), mouth(x_hat).detach()], a_t)   -> one backward, step D and D_mouth
    G phase:  VGG19 + L1(x_hat) + L1(warped) + adversarial + feature matching (+ mouth terms)
              through the frozen, unwrapped discriminators                 -> one backward, step G

As in ``training/step.py`` the two phases are separate backward passes: the D update never sees the generator's
objective, and in the G phase the discriminators run outside DDP with their weights frozen, so gradients reach
x_hat without touching (or all-reducing) D. Every term is checked for NaN/Inf before its update.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from config import Config
from model.headgan import crop_mouth
from model.headgan_loss import HeadGANLoss
from training.step import NonFiniteLossError, autocast_context, check_finite

__all__ = ["HeadGANNetworks", "NonFiniteLossError", "build_headgan_optimizers", "headgan_train_step"]


@dataclass
class HeadGANNetworks:
    """The networks as the step calls them (possibly DDP/compile-wrapped) and the discriminators' plain modules.

    ``mouth_discriminator`` and ``mouth_module`` are None when the config has no mouth discriminator.
    """

    generator: nn.Module
    discriminator: nn.Module
    mouth_discriminator: nn.Module | None
    discriminator_module: nn.Module
    mouth_module: nn.Module | None

    @classmethod
    def from_modules(cls, modules: dict[str, nn.Module]) -> "HeadGANNetworks":
        """Unwrapped networks as ``model.build_networks`` returns them (single process, no compile)."""
        mouth = modules.get("mouth_discriminator")
        return cls(modules["generator"], modules["discriminator"], mouth, modules["discriminator"], mouth)


def build_headgan_optimizers(modules: dict[str, nn.Module], cfg: Config) -> dict[str, torch.optim.Optimizer]:
    """Adam for G, and one Adam for the multi-scale and the mouth discriminator (they step together)."""
    o = cfg.optim
    betas = (o.betas[0], o.betas[1])
    d_params = list(modules["discriminator"].parameters())
    if modules.get("mouth_discriminator") is not None:
        d_params += list(modules["mouth_discriminator"].parameters())
    return {"generator": torch.optim.Adam(modules["generator"].parameters(), lr=o.lr_generator, betas=betas),
            "discriminator": torch.optim.Adam(d_params, lr=o.lr_discriminator, betas=betas)}


def _split(outputs: list[tuple[torch.Tensor, list[torch.Tensor]]], b: int
           ) -> tuple[list[tuple[torch.Tensor, list[torch.Tensor]]], list[tuple[torch.Tensor, list[torch.Tensor]]]]:
    """Per-scale outputs on a [first; second] batch of 2b -> (first half's, second half's), in float."""
    first, second = [], []
    for scores, features in outputs:
        a, z = scores.float().split(b)
        first.append((a, [f[:b].float() for f in features]))
        second.append((z, [f[b:].float() for f in features]))
    return first, second


def _double(audio: torch.Tensor | None) -> torch.Tensor | None:
    return None if audio is None else torch.cat([audio, audio])


def headgan_train_step(batch: dict[str, torch.Tensor | None], nets: HeadGANNetworks,
                       optimizers: dict[str, torch.optim.Optimizer], loss: HeadGANLoss, step: int,
                       amp: str = "none") -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """One D phase and one G phase on a batch; returns (logged scalars, the generator's outputs detached).

    ``batch``: "reference", "reference_render", "driving_render", "target" (B, 3, S, S) in [-1, 1], "audio"
    (B, audio_mels, audio_window) or None, optionally "has_audio" (B,) bool (a batch mixing clips with and
    without sound), "mouth" (B, 2) pixel centre (x, y) of the target's mouth.
    """
    target, render = batch["target"], batch["driving_render"]
    audio = batch.get("audio")
    b = target.shape[0]
    autocast = autocast_context(target.device, amp)
    use_mouth = nets.mouth_discriminator is not None and loss.uses_mouth

    with autocast:
        out = nets.generator(batch["reference"], batch["reference_render"], render, audio,
                             None if audio is None else batch.get("has_audio"))
    fake = out["image"]
    if use_mouth:
        size = nets.mouth_module.crop_size
        real_mouth, fake_mouth = crop_mouth(target, batch["mouth"], size), crop_mouth(fake, batch["mouth"], size)

    # D phase: real and detached generated frames in one forward per discriminator.
    with autocast:
        d_real, d_fake = _split(nets.discriminator(torch.cat([target, fake.detach()]), torch.cat([render, render])), b)
        mouth_real = mouth_fake = None
        if use_mouth:
            (mouth_real,), (mouth_fake,) = _split(
                [nets.mouth_discriminator(torch.cat([real_mouth, fake_mouth.detach()]), _double(audio))], b)
    d_terms = loss.discriminator_terms(d_real, d_fake, mouth_real, mouth_fake)
    check_finite(d_terms, step)
    optimizers["discriminator"].zero_grad(set_to_none=True)
    sum(d_terms.values()).backward()
    optimizers["discriminator"].step()
    scores = {"score/real": float(sum(s.detach().mean() for s, _ in d_real) / len(d_real)),
              "score/fake": float(sum(s.detach().mean() for s, _ in d_fake) / len(d_fake))}
    if use_mouth:
        scores["score/mouth_real"] = float(mouth_real[0].detach().mean())
        scores["score/mouth_fake"] = float(mouth_fake[0].detach().mean())

    # G phase: through the plain discriminators with their weights frozen.
    frozen = [p for m in (nets.discriminator_module, nets.mouth_module if use_mouth else None) if m is not None
              for p in m.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        with autocast:
            g_fake, g_real = _split(nets.discriminator_module(torch.cat([fake, target]),
                                                              torch.cat([render, render])), b)
            mouth_g = mouth_real_features = None
            if use_mouth:
                (mouth_g,), (mouth_r,) = _split([nets.mouth_module(torch.cat([fake_mouth, real_mouth]),
                                                                   _double(audio))], b)
                mouth_real_features = [f.detach() for f in mouth_r[1]]
            g_terms = loss({"image": fake.float(), "warped": out["warped"].float()}, target, g_fake,
                           [[f.detach() for f in features] for _, features in g_real], mouth_g, mouth_real_features)
        check_finite(g_terms, step)
        optimizers["generator"].zero_grad(set_to_none=True)
        sum(g_terms.values()).backward()
    finally:
        for p in frozen:
            p.requires_grad_(True)
    optimizers["generator"].step()

    stats = {f"loss/{name}": float(v.detach()) for name, v in {**d_terms, **g_terms}.items()}
    stats["loss/d_total"] = sum(float(v.detach()) for v in d_terms.values())
    stats["loss/g_total"] = sum(float(v.detach()) for v in g_terms.values())
    stats.update(scores)
    return stats, {name: value.detach() for name, value in out.items()}
