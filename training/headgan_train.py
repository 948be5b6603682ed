"""HeadGAN's side of the meta-training loop (training/meta.py is family-agnostic; this is its HeadGAN trainer).

Training pairs come from ``dataset.headgan_data.HeadGANDataset`` (reference + driving frame of one video, their
NMFC renders and the driving frame's audio window); one step is ``training.headgan_step.headgan_train_step``
(D phase on detached outputs, then G phase through frozen discriminators). Validation reconstructs driving frames
of the test split from one reference frame and compares with copying the reference frame itself (what a
generator that ignores the driving render would do at best).
"""
from __future__ import annotations

import numpy as np
import torch

from config import Config
from dataset.headgan_data import HeadGANDataset, collate
from dataset.store import StoreError, to_unit_range
from model.headgan_loss import HeadGANLoss
from training import distributed
from training.headgan_step import HeadGANNetworks, build_headgan_optimizers, headgan_train_step
from training.report import image_grid

IMAGES = ("reference", "target", "reference_render", "driving_render")


def headgan_dataset(cfg: Config, split: str, as_uint8: bool = False) -> HeadGANDataset:
    h = cfg.model.headgan
    return HeadGANDataset(cfg.data.root, split, cfg.model.image_size, cfg.train.seed, audio=h.audio,
                          audio_shape=(h.audio_mels, h.audio_window), as_uint8=as_uint8)


def batch_audio(batch: dict, enabled: bool) -> torch.Tensor | None:
    """The audio features the generator gets: None when audio is off or no item of the batch has audio."""
    if not enabled or not bool(batch["has_audio"].any()):
        return None
    return batch["audio"]


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
    """The methods ``training.meta.meta_train`` calls, for HeadGAN (see ``TalkingHeadTrainer``)."""

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
        if self.cfg.train.compile:
            wrapped = {name: torch.compile(net) for name, net in wrapped.items()}
        mouth = nets.get("mouth_discriminator")
        self.networks = HeadGANNetworks(wrapped["generator"], wrapped["discriminator"],
                                        wrapped.get("mouth_discriminator"), nets["discriminator"], mouth)

    def prepare(self, batch: dict, device: torch.device) -> dict:
        out = prepare_headgan_batch(batch, device)
        out["audio"] = batch_audio(out, self.cfg.model.headgan.audio)
        return out

    def step(self, batch: dict, optimizers: dict, loss: torch.nn.Module, step: int) -> tuple[dict, dict]:
        return headgan_train_step(batch, self.networks, optimizers, loss, step, self.cfg.train.amp)

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
