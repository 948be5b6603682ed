"""A person the generator can render: G plus its AdaIN parameters psi (paper Sec. 3.4), saved as a small file.

Two ways to get one:
  * fine-tuning (training/finetune.py): G and psi' trained on the person's T frames, saved with ``save_person``;
  * feed-forward (``person_from_frames``): a meta-training checkpoint's E averages the person's frames into
    e_hat and psi = P e_hat, no training.

A person file holds only G's weights, psi, the person's typical landmarks (for cross-person landmark
adaptation) and the model config, and loads with ``weights_only=True``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from config import config_from_dict, to_dict
from dataset.landmarks import draw_landmarks
from dataset.store import scaled_thickness, to_images_tensor
from model import build_networks
from training import checkpoint as ckpt


@dataclass
class Person:
    """G in eval mode with the person's psi; renders frames from landmark images."""

    generator: nn.Module
    psi: torch.Tensor  # (num_adain_params,)
    reference_points: np.ndarray  # (68, 2) mean landmarks of the person's frames, crop pixels at image_size
    image_size: int
    landmark_thickness: int  # already scaled to image_size
    identity: str = ""
    model_config: dict | None = None  # the ``model`` section G was built from (what an export rebuilds it with)

    @property
    def device(self) -> torch.device:
        return self.psi.device

    def draw(self, points: np.ndarray) -> torch.Tensor:
        """(N, 68, 2) landmarks -> (N, 3, S, S) landmark images in [-1, 1], drawn as in training."""
        images = [draw_landmarks(p, self.image_size, self.landmark_thickness) for p in np.asarray(points)]
        return to_images_tensor(images)

    @torch.no_grad()
    def generate(self, landmarks: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
        """(N, 3, S, S) landmark images in [-1, 1] -> (N, 3, S, S) frames in [-1, 1] (on the CPU)."""
        outputs = []
        for chunk in landmarks.split(batch_size):
            outputs.append(self.generator(chunk.to(self.device), psi=self.psi).cpu())
        return torch.cat(outputs) if outputs else landmarks.new_zeros((0, 3, self.image_size, self.image_size))


def save_person(path: str | Path, person: Person, model_config: dict, thickness_at_256: int) -> Path:
    """Writes a person file (atomically)."""
    return ckpt.save_checkpoint(path, {
        "kind": "person", "model": model_config, "generator": person.generator.state_dict(),
        "psi": person.psi.detach().cpu(), "reference_points": torch.from_numpy(person.reference_points),
        "landmark_thickness": thickness_at_256, "identity": person.identity,
    })


def load_person(path: str | Path, device: str | torch.device = "cpu") -> Person:
    """Reads a person file written by finetune.py."""
    state = ckpt.load_checkpoint(path, kind="person")
    cfg = config_from_dict({"model": state["model"]})
    generator = build_networks(cfg.model)["generator"]
    # Shapes only: the config is the file's own, so only its weights can disagree with it.
    ckpt.check_architecture({}, {}, {"generator": state["generator"]}, {"generator": generator}, str(path))
    generator.load_state_dict(state["generator"])
    size = cfg.model.image_size
    return Person(generator.to(device).eval(), state["psi"].to(device), state["reference_points"].numpy(),
                  size, scaled_thickness(state["landmark_thickness"], size), state["identity"], state["model"])


def networks_from_state(state: dict, source: str = "checkpoint") -> tuple[dict[str, nn.Module], object]:
    """Fresh networks (CPU, eval) with the weights of an already-read meta-training checkpoint, and its config.

    E and G get the run's moving averages when it kept them (``train.ema_decay``), D its last weights.

    Callers that need several independent copies (one fine-tuning per evaluated video) read the file once and
    call this per copy.
    """
    cfg = config_from_dict(state["config"])
    nets = build_networks(cfg.model)
    weights = ckpt.inference_weights(state)
    ckpt.check_architecture(state["config"]["model"], to_dict(cfg)["model"], weights, nets, source)
    for name, net in nets.items():
        net.load_state_dict(weights[name])
        net.eval()
    return nets, cfg


def load_meta_checkpoint(path: str | Path) -> tuple[dict, dict[str, nn.Module], object]:
    """A meta-training checkpoint's state, its networks with weights loaded (CPU, eval) and its config."""
    state = ckpt.load_checkpoint(path, kind="meta_train")
    nets, cfg = networks_from_state(state, str(path))
    return state, nets, cfg


@torch.no_grad()
def embed_person(embedder: nn.Module, frames: torch.Tensor, landmarks: torch.Tensor,
                 batch_size: int = 16) -> torch.Tensor:
    """e_NEW: the mean embedding of T frames (T, 3, S, S) and their landmark images, computed in chunks."""
    total = sum(embedder.embed(f, y).sum(0) for f, y in zip(frames.split(batch_size), landmarks.split(batch_size)))
    return total / frames.shape[0]


def person_from_frames(checkpoint: str | Path | dict, crops: list[np.ndarray], points: np.ndarray,
                       device: str | torch.device = "cpu", identity: str = "") -> Person:
    """Feed-forward mode: psi = P E(frames) from a meta-training checkpoint (a path, or its already-read state),
    no fine-tuning."""
    if isinstance(checkpoint, dict):
        nets, cfg = networks_from_state(checkpoint)
    else:
        _, nets, cfg = load_meta_checkpoint(checkpoint)
    size = cfg.model.image_size
    thickness = scaled_thickness(cfg.data.landmark_thickness, size)
    points = np.asarray(points, np.float32)
    if crops[0].shape[0] != size:
        raise ValueError(f"face crops are {crops[0].shape[0]}px but the checkpoint's model is {size}px")
    frames = to_images_tensor(crops)
    landmarks = to_images_tensor([draw_landmarks(p, size, thickness) for p in points])
    e_hat = embed_person(nets["embedder"], frames, landmarks)
    generator = nets["generator"].to(device)
    psi = generator.project(e_hat.unsqueeze(0).to(device))[0]
    return Person(generator, psi, points.mean(axis=0), size, thickness, identity, to_dict(cfg)["model"])
