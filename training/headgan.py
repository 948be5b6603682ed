"""The HeadGAN family (Doukas et al. 2021; SPEC section 2) in the training loop: its trainer and its step.

Training pairs come from ``dataset.headgan_data.HeadGANDataset`` (reference + driving frame of one video, their
NMFC renders and the driving frame's audio window). One step:

    out = G(x_r, y_r, y_t, a_t)                      image x_hat, warped reference, flow, mask
    D phase:  hinge over scales of D([x, x_hat.detach()], y_t)
              + hinge of D_mouth([mouth(x), mouth(x_hat).detach()], a_t)   -> one backward, step D and D_mouth
    G phase:  VGG19 + L1(x_hat) + L1(warped) + adversarial + feature matching (+ mouth terms)
              through the frozen, unwrapped discriminators                 -> one backward, step G

As in ``training/talking_head.py`` the two phases are separate backward passes: the D update never sees the generator's
objective, and in the G phase the discriminators run outside DDP with their weights frozen, so gradients reach
x_hat without touching (or all-reducing) D. Every term is checked for NaN/Inf before its update.

Validation reconstructs driving frames of the test split from one reference frame and compares with copying the
reference frame itself (what a generator that ignores the driving render would do at best).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from config import Config
from dataset.headgan_data import HeadGANDataset, collate
from dataset.store import StoreError, to_unit_range
from model.headgan import crop_mouth
from model.headgan_loss import HeadGANLoss
from training import distributed
from training.precision import Precision, make_adam
from training.report import image_grid

@dataclass
class HeadGANNetworks:
    """The networks as the step calls them (possibly DDP/compile-wrapped) and the discriminators' plain modules.

    ``mouth_discriminator``, ``mouth_module`` and ``mouth_g`` are None when the config has no mouth discriminator.
    """

    generator: nn.Module
    discriminator: nn.Module
    mouth_discriminator: nn.Module | None
    discriminator_module: nn.Module
    mouth_module: nn.Module | None
    # What the G phase calls: the plain modules (outside DDP), compiled when the run compiles.
    discriminator_g: nn.Module | None = None
    mouth_g: nn.Module | None = None

    def __post_init__(self):
        self.discriminator_g = self.discriminator_g or self.discriminator_module
        self.mouth_g = self.mouth_g or self.mouth_module

    @classmethod
    def from_modules(cls, modules: dict[str, nn.Module]) -> "HeadGANNetworks":
        """Unwrapped networks as ``model.build_networks`` returns them (single process, no compile)."""
        mouth = modules.get("mouth_discriminator")
        return cls(modules["generator"], modules["discriminator"], mouth, modules["discriminator"], mouth)


def build_headgan_optimizers(modules: dict[str, nn.Module], cfg: Config) -> dict[str, torch.optim.Optimizer]:
    """Fused Adam for G, and one for the multi-scale and the mouth discriminator (they step together); build them
    after the networks are on their device."""
    o = cfg.optim
    betas = (o.betas[0], o.betas[1])
    d_params = list(modules["discriminator"].parameters())
    if modules.get("mouth_discriminator") is not None:
        d_params += list(modules["mouth_discriminator"].parameters())
    return {"generator": make_adam(modules["generator"].parameters(), o.lr_generator, betas),
            "discriminator": make_adam(d_params, o.lr_discriminator, betas)}


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
                       precision: Precision) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """One D phase and one G phase on a batch; returns (scalars as detached device tensors, outputs detached).

    ``batch``: "reference", "reference_render", "driving_render", "target" (B, 3, S, S) in [-1, 1], "audio"
    (B, audio_mels, audio_window) or None, optionally "has_audio" (B,) bool (a batch mixing clips with and
    without sound), "mouth" (B, 2) pixel centre (x, y) of the target's mouth. The audio networks run on every
    batch that carries audio features, silent items masked (so DDP sees the same parameters used every step and
    no host read decides whether a batch "has audio").
    """
    target, render = batch["target"], batch["driving_render"]
    audio = batch.get("audio")
    mask = None if audio is None else batch.get("has_audio")
    b = target.shape[0]
    use_mouth = nets.mouth_discriminator is not None and loss.uses_mouth

    with precision.autocast():
        out = nets.generator(batch["reference"], batch["reference_render"], render, audio, mask)
    fake = out["image"]
    if use_mouth:
        size = nets.mouth_module.crop_size
        real_mouth, fake_mouth = crop_mouth(target, batch["mouth"], size), crop_mouth(fake, batch["mouth"], size)

    # D phase: real and detached generated frames in one forward per discriminator.
    with precision.autocast():
        d_real, d_fake = _split(nets.discriminator(torch.cat([target, fake.detach()]), torch.cat([render, render])), b)
        mouth_real = mouth_fake = None
        if use_mouth:
            (mouth_real,), (mouth_fake,) = _split(
                [nets.mouth_discriminator(torch.cat([real_mouth, fake_mouth.detach()]), _double(audio),
                                          _double(mask))], b)
    d_terms = loss.discriminator_terms(d_real, d_fake, mouth_real, mouth_fake)
    optimizers["discriminator"].zero_grad(set_to_none=True)
    d_inf = precision.backward(d_terms, step)
    precision.step(optimizers["discriminator"], d_inf)
    scores = {"score/real": torch.stack([s.detach().mean() for s, _ in d_real]).mean(),
              "score/fake": torch.stack([s.detach().mean() for s, _ in d_fake]).mean()}
    if use_mouth:
        scores["score/mouth_real"] = mouth_real[0].detach().mean()
        scores["score/mouth_fake"] = mouth_fake[0].detach().mean()

    # G phase: through the plain discriminators; the backward pass reaches G's weights only.
    with precision.autocast():
        g_fake, g_real = _split(nets.discriminator_g(torch.cat([fake, target]), torch.cat([render, render])), b)
        mouth_g = mouth_real_features = None
        if use_mouth:
            (mouth_g,), (mouth_r,) = _split([nets.mouth_g(torch.cat([fake_mouth, real_mouth]), _double(audio),
                                                          _double(mask))], b)
            mouth_real_features = [f.detach() for f in mouth_r[1]]
        g_terms = loss({"image": fake.float(), "warped": out["warped"].float()}, target, g_fake,
                       [[f.detach() for f in features] for _, features in g_real], mouth_g, mouth_real_features)
    optimizers["generator"].zero_grad(set_to_none=True)
    g_inf = precision.backward(g_terms, step, inputs=[p for g in optimizers["generator"].param_groups
                                                      for p in g["params"]])
    precision.step(optimizers["generator"], g_inf)
    precision.update()

    stats = {f"loss/{name}": v.detach() for name, v in {**d_terms, **g_terms}.items()}
    stats["loss/d_total"] = torch.stack([v.detach() for v in d_terms.values()]).sum()
    stats["loss/g_total"] = torch.stack([v.detach() for v in g_terms.values()]).sum()
    stats.update(scores)
    return stats, {name: value.detach() for name, value in out.items()}


IMAGES = ("reference", "target", "reference_render", "driving_render")


def headgan_dataset(cfg: Config, split: str, as_uint8: bool = False) -> HeadGANDataset:
    h = cfg.model.headgan
    return HeadGANDataset(cfg.data.root, split, cfg.model.image_size, cfg.train.seed, audio=h.audio,
                          audio_shape=(h.audio_mels, h.audio_window), as_uint8=as_uint8)


def batch_audio(batch: dict, enabled: bool) -> torch.Tensor | None:
    """The audio features the generator gets: None when audio is off, else the batch's features (silent items are
    zeros, masked by ``has_audio`` in the networks; whether any item has sound is not asked of the device)."""
    return batch["audio"] if enabled else None


def prepare_headgan_batch(batch: dict, device: torch.device) -> dict:
    """Moves a batch to the device; uint8 images become [-1, 1] there."""
    out = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
    for key in IMAGES:
        if out[key].dtype == torch.uint8:
            out[key] = to_unit_range(out[key])
    return out


@torch.no_grad()
def validate_headgan(generator: torch.nn.Module, items: list[dict], device: torch.device,
                     audio: bool = True) -> dict[str, float]:
    """L1 of generated driving frames against copying the reference frame (``val/reference_l1``)."""
    was_training = generator.training
    generator.eval()
    generated, copied = [], []
    for item in items:
        batch = prepare_headgan_batch(collate([item]), device)
        out = generator(batch["reference"], batch["reference_render"], batch["driving_render"],
                        batch_audio(batch, audio), batch["has_audio"])
        generated.append(float((out["image"] - batch["target"]).abs().mean()))
        copied.append(float((batch["reference"] - batch["target"]).abs().mean()))
    generator.train(was_training)
    return {"val/l1": float(np.mean(generated)), "val/reference_l1": float(np.mean(copied))}


def headgan_grid(batch: dict, outputs: dict, max_rows: int = 4) -> np.ndarray:
    """Rows of: reference | reference render | driving render | warped reference | generated | real."""
    rows = []
    for i in range(min(max_rows, batch["target"].shape[0])):
        rows.append([batch["reference"][i], batch["reference_render"][i], batch["driving_render"][i],
                     outputs["warped"][i], outputs["image"][i], batch["target"][i]])
    return image_grid(rows)


class HeadGANTrainer:
    """The methods ``training.loop.meta_train`` calls, for HeadGAN (see ``TalkingHeadTrainer``)."""

    image_tag = "train/reference_renders_warped_generated_real"
    averaged = ("generator",)  # the network train.ema_decay averages

    def __init__(self, cfg: Config):
        self.cfg = cfg

    def dataset(self) -> HeadGANDataset:
        dataset = headgan_dataset(self.cfg, "train", as_uint8=True)
        if dataset.missing_face3d:
            print(f"note: {dataset.missing_face3d} train videos have no face3d.npz and are left out "
                  f"(python -m dataset.face3d.extract_mesh {self.cfg.data.root})")
        return dataset

    def configure(self, cfg: Config, dataset: HeadGANDataset) -> Config:
        return cfg

    collate = staticmethod(collate)

    def optimizers(self, nets: dict) -> dict:
        return build_headgan_optimizers(nets, self.cfg)

    def loss(self, content: dict) -> torch.nn.Module:
        return HeadGANLoss(self.cfg.loss, content)

    def wrap(self, nets: dict, info: distributed.DistInfo, dev: torch.device) -> None:
        wrapped = {name: distributed.wrap(net, info, dev) for name, net in nets.items()}
        mouth = nets.get("mouth_discriminator")
        plain = {"discriminator": nets["discriminator"], "mouth": mouth}
        if self.cfg.train.compile:
            backend = self.cfg.train.compile_backend
            wrapped = {name: torch.compile(net, backend=backend) for name, net in wrapped.items()}
            plain = {name: net if net is None else torch.compile(net, backend=backend) for name, net in plain.items()}
        self.networks = HeadGANNetworks(wrapped["generator"], wrapped["discriminator"],
                                        wrapped.get("mouth_discriminator"), nets["discriminator"], mouth,
                                        plain["discriminator"], plain["mouth"])

    def prepare(self, batch: dict, device: torch.device) -> dict:
        out = prepare_headgan_batch(batch, device)
        out["audio"] = batch_audio(out, self.cfg.model.headgan.audio)
        return out

    def step(self, batch: dict, optimizers: dict, loss: torch.nn.Module, step: int,
             precision: Precision) -> tuple[dict, dict]:
        return headgan_train_step(batch, self.networks, optimizers, loss, step, precision)

    def validation_set(self, count: int) -> list[dict]:
        try:
            dataset = headgan_dataset(self.cfg, "test")
        except (StoreError, ValueError):
            return []
        return [dataset[(i % len(dataset), i // len(dataset))] for i in range(count)]

    def validate(self, nets: dict, items: list[dict], dev: torch.device) -> dict[str, float]:
        return validate_headgan(nets["generator"], items, dev, self.cfg.model.headgan.audio)

    def grid(self, batch: dict, outputs: dict) -> np.ndarray:
        return headgan_grid(batch, outputs)
