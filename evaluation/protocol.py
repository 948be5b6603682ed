"""What evaluate.py generates, for both model families and both kinds of reenactment.

A ``Video`` is one stored test video at the model's resolution.  A family's ``Side`` turns a person video (its
T shot frames) into a person and renders frames for it:

* ``self_sample``: the person's own held-out frames, from their own landmarks (talking heads) or their own 3D
  face fit and audio (HeadGAN): the paper's quantitative protocol, with ground truth;
* ``cross_sample``: the driver video's frames, with the driver's motion moved onto the person: the landmark
  adaptation of ``inference.adapt`` (talking heads) or ``dataset.face3d.fit.transfer`` with the driver's audio
  (HeadGAN), exactly as ``reenact.py`` drives a person.

Generated frames stay float tensors from the generator to the metrics (never through a video codec); the mp4s
evaluate.py writes are for looking at only.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from dataset.pipeline.videos import evenly_spaced
from dataset.store import FewShotDataset, read_frames, read_points, to_images_tensor


def split_video(count: int, shots: int, holdout: int) -> tuple[list[int], list[int]]:
    """Hold-out frames (evenly spaced, at most ``count - 1``), then T shot frames evenly spaced among the others
    (fewer when fewer remain: the caller records how many it got)."""
    if shots < 1 or holdout < 1 or count < 2:
        raise ValueError(f"split_video needs shots >= 1, holdout >= 1 and 2 frames, got {shots}, {holdout}, {count}")
    held = evenly_spaced(count, min(holdout, count - 1))
    rest = [i for i in range(count) if i not in set(held)]
    return [rest[i] for i in evenly_spaced(len(rest), min(shots, len(rest)))], held


@dataclass
class Video:
    """One stored video at the model's size: crops (RGB uint8), their 68 landmarks, and where it lives."""

    entry: dict
    folder: Path
    crops: list[np.ndarray]
    points: np.ndarray        # (N, 68, 2) float32, model-size pixels
    stored_size: int

    @property
    def name(self) -> str:
        return f"{self.entry['identity']}/{self.entry['video']}"

    def tensor(self, indices) -> torch.Tensor:
        return to_images_tensor([self.crops[i] for i in indices])


def load_video(root: Path, entry: dict, encoding: str, size: int) -> Video:
    folder = root / entry["path"]
    frames = read_frames(folder, encoding, list(range(entry["frames"])))
    stored = frames[0].shape[0]
    crops = [cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA) if stored != size else f for f in frames]
    # Pixel centres map as in cv2.resize.
    points = (read_points(folder).astype(np.float64) + 0.5) * (size / stored) - 0.5
    return Video(entry, folder, crops, points.astype(np.float32), stored)


@dataclass
class Sample:
    """Generated frames and everything their metrics need; points in model-size pixels."""

    generated: torch.Tensor            # (N, 3, S, S) in [-1, 1]
    driving_panel: torch.Tensor        # (N, 3, S, S): the landmark image or NMFC render that drove each frame
    driving_points: np.ndarray         # (N, 68, 2) landmarks, or (N, V, 3) mesh vertices (HeadGAN cross)
    alignment_points68: np.ndarray | None   # (N, 68, 2) to align generated frames for CSIM, or None (mesh)
    reference: torch.Tensor            # (3, S, S): a shot frame (talking heads) or the reference image (HeadGAN)
    train_frames: int


class TalkingHeadSide:
    """Few-shot talking heads: the person from T frames, fine-tuned or feed-forward (paper Sec. 3.4)."""

    family = "talking_head"
    driving = "landmarks"

    def __init__(self, state: dict, cfg, mode: str, device: str):
        self.state, self.cfg, self.mode, self.device = state, cfg, mode, device

    def _person(self, video: Video, train_idx: list[int]):
        from training.finetune import finetune
        from training.person import networks_from_state, person_from_frames

        crops, points = [video.crops[i] for i in train_idx], video.points[train_idx]
        if self.mode == "feedforward":
            return person_from_frames(self.state, crops, points, self.device)
        nets, _ = networks_from_state(self.state)
        train = FewShotDataset(crops, points, image_size=self.cfg.model.image_size,
                               landmark_thickness=self.cfg.data.landmark_thickness, seed=self.cfg.train.seed)
        person, _ = finetune(nets, self.cfg, train, device=self.device, progress=False)
        return person

    def _render(self, person, points: np.ndarray, train_idx: list[int], video: Video) -> Sample:
        panel = person.draw(points)
        return Sample(person.generate(panel), panel, np.asarray(points, np.float64), np.asarray(points),
                      video.tensor(train_idx[:1])[0], len(train_idx))

    def self_sample(self, video: Video, train_idx: list[int], held_idx: list[int]) -> Sample:
        return self._render(self._person(video, train_idx), video.points[held_idx], train_idx, video)

    def cross_sample(self, person_video: Video, train_idx: list[int], driver: Video, frames: list[int]) -> Sample:
        from inference.adapt import adapt_landmarks

        person = self._person(person_video, train_idx)
        adapted = adapt_landmarks(driver.points[frames], person.reference_points)
        return self._render(person, adapted, train_idx, person_video)


class HeadGANSide:
    """HeadGAN, one-shot: the first shot frame is the reference image; frames come from 3D face renders and
    audio features of the store (``face3d.npz``, ``audio.npy``)."""

    family = "headgan"
    driving = "mesh"

    def __init__(self, state: dict, cfg, device: str):
        from inference.headgan import generator_from_state

        self.generator, _ = generator_from_state(state, device)
        self.cfg, self.device = cfg, device

    def _fit(self, video: Video):
        from dataset.face3d.fit import read_face3d

        return read_face3d(video.folder).resized(self.cfg.model.image_size / video.stored_size)

    def _audio(self, video: Video, indices: list[int]) -> torch.Tensor | None:
        from dataset.audio import read_audio_features

        features = read_audio_features(video.folder) if self.cfg.model.headgan.audio else None
        return None if features is None else torch.from_numpy(np.asarray(features[indices], np.float32))

    @torch.no_grad()
    def _render(self, video: Video, reference: int, reference_vertices: np.ndarray, vertices: np.ndarray,
                audio: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        from dataset.face3d.render import render_nmfc
        from inference.headgan import to_tensor

        size = self.cfg.model.image_size
        renders = to_tensor([render_nmfc(v, size) for v in [reference_vertices, *vertices]])
        n = len(vertices)
        image = video.tensor([reference]).expand(n, -1, -1, -1)
        out = self.generator(image.to(self.device), renders[:1].expand(n, -1, -1, -1).to(self.device),
                             renders[1:].to(self.device), None if audio is None else audio.to(self.device))
        return renders[1:], out["image"].cpu()

    def self_sample(self, video: Video, train_idx: list[int], held_idx: list[int]) -> Sample:
        fit, reference = self._fit(video), train_idx[0]
        panel, generated = self._render(video, reference, fit.vertices([reference])[0], fit.vertices(held_idx),
                                        self._audio(video, held_idx))
        return Sample(generated, panel, video.points[held_idx].astype(np.float64), video.points[held_idx],
                      video.tensor([reference])[0], 1)

    def cross_sample(self, person_video: Video, train_idx: list[int], driver: Video, frames: list[int]) -> Sample:
        from dataset.face3d.fit import fit_single, transfer

        reference = train_idx[0]
        reference_vertices = self._fit(person_video).vertices([reference])[0]
        # One-shot, as reenact.py: the person's identity is the reference image's face alone.
        driver_fit = self._fit(driver)
        vertices = transfer(fit_single(reference_vertices), _frames_of(driver_fit, frames))
        panel, generated = self._render(person_video, reference, reference_vertices, vertices,
                                        self._audio(driver, frames))
        return Sample(generated, panel, vertices.astype(np.float64), None, person_video.tensor([reference])[0], 1)


def _frames_of(fit, frames: list[int]):
    """The fit restricted to ``frames`` (the driver's motion is then relative to the first of them)."""
    import dataclasses

    index = np.asarray(frames)
    return dataclasses.replace(fit, expression=fit.expression[index], scale=fit.scale[index],
                               rotation=fit.rotation[index], translation=fit.translation[index],
                               valid=fit.valid[index])
