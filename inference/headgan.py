"""One-shot HeadGAN reenactment: one reference image of a person, driven by the 3D face and audio of a video.

    person = headgan_person(checkpoint_state, "photo.jpg", landmark_detector, mesh_detector)
    summary = reenact_headgan(person, "driver.mp4", "out.mp4", landmark_detector, mesh_detector)

The reference image is cut like the training data (main face, 68-point landmarks, crop of 1.8x their extent)
and a 3D face is fitted to it (``dataset.face3d.fit.fit_single``: its identity is that image's face shape). The
driver is tracked the same way frame by frame (``inference.video.track_driver``), a 3D face is fitted to the whole
driver video (identity averaged, expression and pose per frame), and ``dataset.face3d.fit.transfer`` puts the
driver's expression and head motion (relative to its first frame) onto the person's identity and pose: the
driver's face shape never reaches the generator. With ``adapt=False`` the driver's own fit is rendered (the
driver is the person). The driver's audio track, when it has one, gives the per-frame audio features.

The output is an H.264 mp4 with one row of three panels per frame: driver crop | driving NMFC render | generated.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from config import Config, config_from_dict
from dataset.landmarks import LandmarkDetector
from dataset.pipeline.faces import main_face_crops, read_frames
from inference.video import H264Writer, to_uint8, track_driver
from training.checkpoint import CheckpointError, inference_weights

class HeadGANInputError(ValueError):
    """The reference image or the driver cannot be used (the message says why)."""


@dataclass
class HeadGANPerson:
    """A person for one-shot reenactment: the generator and one reference crop with its 3D face fit."""

    generator: torch.nn.Module
    cfg: Config
    reference: torch.Tensor          # (1, 3, S, S) in [-1, 1]
    reference_render: torch.Tensor   # (1, 3, S, S) in [-1, 1]
    fit: object                      # dataset.face3d.fit.FaceFit with one frame
    identity: str = ""

    @property
    def image_size(self) -> int:
        return self.cfg.model.image_size

    @property
    def device(self) -> torch.device:
        return self.reference.device

    @torch.no_grad()
    def generate(self, renders: torch.Tensor, audio: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """Driving renders (N, 3, S, S) in [-1, 1] (+ audio (N, mels, window) or None) -> generator outputs."""
        n = renders.shape[0]
        return self.generator(self.reference.expand(n, -1, -1, -1), self.reference_render.expand(n, -1, -1, -1),
                              renders.to(self.device), None if audio is None else audio.to(self.device))


def to_tensor(images: np.ndarray | list[np.ndarray]) -> torch.Tensor:
    """RGB uint8 (N, S, S, 3) -> float (N, 3, S, S) in [-1, 1]."""
    stacked = torch.from_numpy(np.ascontiguousarray(np.stack(list(images))))
    return stacked.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def generator_from_state(state: dict, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, Config]:
    """The HeadGAN generator of a meta-training checkpoint (already read with weights_only), in eval mode; its
    moving-average weights when the run kept them (``train.ema_decay``)."""
    from model import build_networks

    cfg = config_from_dict(state["config"])
    if cfg.model.family != "headgan":
        raise CheckpointError(f"the checkpoint is a {cfg.model.family!r} model, not HeadGAN")
    nets = build_networks(cfg.model)
    nets["generator"].load_state_dict(inference_weights(state)["generator"])
    return nets["generator"].to(device).eval(), cfg


def reference_crop(path: str | Path, detector: LandmarkDetector, size: int, frame: int = 0,
                   scale: float = 1.8) -> np.ndarray:
    """The main face of an image file (or of frame ``frame`` of a video / image folder), cut as in training."""
    images = read_frames(path)
    if not 0 <= frame < len(images):
        raise HeadGANInputError(f"{path} has {len(images)} frames; asked for reference frame {frame}")
    try:
        crops, _, _ = main_face_crops(images[frame:frame + 1], detector, size, scale, f"{path} (reference)")
    except ValueError as err:
        raise HeadGANInputError(str(err)) from None
    return crops[0]


def headgan_person(state: dict, person: str | Path, detector: LandmarkDetector, mesh_detector,
                   device: str | torch.device = "cpu", frame: int = 0) -> HeadGANPerson:
    """A HeadGAN person from one reference image (see ``reference_crop``) and a checkpoint state."""
    from dataset.face3d.fit import fit_single
    from dataset.face3d.render import render_nmfc

    generator, cfg = generator_from_state(state, device)
    size = cfg.model.image_size
    crop = reference_crop(person, detector, size, frame)
    mesh = mesh_detector.detect([crop])[0]
    if mesh is None:
        raise HeadGANInputError(f"{person}: the 3D face backend found no face mesh in the reference crop")
    fit = fit_single(mesh)
    render = render_nmfc(fit.vertices()[0], size)
    tensors = to_tensor([crop, render]).to(device)
    return HeadGANPerson(generator, cfg, tensors[:1], tensors[1:], fit, identity=Path(person).stem)


def driver_fit(crops: list[np.ndarray], mesh_detector, chunk_size: int = 32, progress: bool = False):
    """The 3D face fit of a tracked driver (frames without a mesh hold the nearest valid frame's pose)."""
    from dataset.face3d.fit import fit_video
    from dataset.face3d.mesh import NUM_VERTICES

    meshes = np.full((len(crops), NUM_VERTICES, 3), np.nan, np.float32)
    with tqdm(total=len(crops), desc="driver 3D faces", unit="frame", disable=not progress,
              dynamic_ncols=True) as bar:
        for begin in range(0, len(crops), chunk_size):
            for i, mesh in enumerate(mesh_detector.detect(crops[begin:begin + chunk_size])):
                if mesh is not None:
                    meshes[begin + i] = mesh
            bar.update(len(crops[begin:begin + chunk_size]))
    if np.isnan(meshes).all():
        raise HeadGANInputError("the 3D face backend found no face mesh in any driver frame")
    return fit_video(meshes)


def reenact_headgan(person: HeadGANPerson, driver_path: str | Path, out_path: str | Path,
                    detector: LandmarkDetector, mesh_detector, adapt: bool = True, audio: bool = True,
                    batch_size: int = 16, progress: bool = True) -> dict:
    """Drives ``person`` with the 3D face (and audio) of ``driver_path``; writes ``out_path``; returns a summary."""
    from dataset.audio import video_audio_features
    from dataset.face3d.fit import transfer
    from dataset.face3d.render import render_nmfc

    start = time.perf_counter()
    size = person.image_size
    track = track_driver(driver_path, detector, size, progress=progress)
    fit = driver_fit(track.crops, mesh_detector, progress=progress)
    vertices = transfer(person.fit, fit) if adapt else fit.vertices()
    features = None
    if audio and person.cfg.model.headgan.audio:
        features = video_audio_features(driver_path, fps=track.fps, num_frames=len(track.crops))
        if features is not None:
            features = torch.from_numpy(np.asarray(features, np.float32))
    with H264Writer(out_path, fps=track.fps, audio_from=driver_path) as writer, \
            tqdm(total=len(vertices), desc="reenact (headgan)", unit="frame", disable=not progress,
                 dynamic_ncols=True) as bar:
        for begin in range(0, len(vertices), batch_size):
            end = min(begin + batch_size, len(vertices))
            renders = np.stack([render_nmfc(v, size) for v in vertices[begin:end]])
            generated = person.generate(to_tensor(renders), None if features is None else features[begin:end])
            images = to_uint8(generated["image"])
            for crop, render, frame in zip(track.crops[begin:end], renders, images):
                writer.write(np.concatenate([crop, render, frame], axis=1))
            bar.update(end - begin)
    return {"out": str(out_path), "frames": writer.frames_written, "fps": track.fps,
            "size": list(writer.video_size), "no_face_frames": track.missing,
            "no_mesh_frames": int((~np.asarray(fit.valid)).sum()), "adapted": adapt,
            "audio": features is not None, "identity": person.identity,
            "seconds": round(time.perf_counter() - start, 2)}
