"""Rendering throughput of a Person: generator frames per second from landmark images, batch 1 and batched.

    python bench/inference.py --config demo                          # random-weight G of the preset, CPU
    python bench/inference.py --config vox2 --device cuda --batch-sizes 1 8 32 --frames 256
    python bench/inference.py --person outputs/demo/person.pt         # a fine-tuned person file
    python bench/inference.py --config headgan_demo                  # HeadGAN: G fps and NMFC render time
    python bench/inference.py --config headgan --device cuda --batch-sizes 1 8 32 --frames 256

Without ``--person`` the generator is built from the config with random weights and psi = P e for a random
embedding e: the cost of a forward pass does not depend on the weights. Timings cover ``Person.generate``
(landmark images to the device, G with psi, frames back to the CPU): the median of ``--repeats`` passes after
one untimed warm-up pass per batch size. Drawing the landmark images is measured separately (``drawing_fps``)
on synthetic 68-point faces, since a reenactment draws every driving frame once on the CPU.

HeadGAN (``model.family: headgan``) is measured the same way for one-shot reenactment: a random-weight
generator and one fixed reference image with its NMFC render; per chunk the driving renders (and audio windows)
go to the device, G runs on them with the reference repeated, and the images come back to the CPU. The driving
renders are made first, with ``dataset.face3d.render.render_nmfc`` on the mean face
(``dataset.face3d.mesh.mean_face``) posed into the image with a head motion of about 10 degrees per axis, and
that CPU cost, paid once per driving frame, is reported apart (``nmfc_render``: median ms per frame and fps).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from config import Config, ConfigError, add_config_arguments, config_from_args, to_dict
from dataset.landmarks import NUM_POINTS
from dataset.store import scaled_thickness, to_unit_range
from model import build_networks
from model.headgan import check_headgan_config
from training.person import Person, load_person


def random_person(cfg: Config, device: torch.device, seed: int = 0) -> Person:
    """G of the config with random weights, in eval mode, and psi = P e for a random embedding e."""
    torch.manual_seed(seed)
    generator = build_networks(cfg.model)["generator"].to(device).eval()
    with torch.no_grad():
        psi = generator.project(torch.randn(1, cfg.model.embed_dim, device=device))[0]
    size = cfg.model.image_size
    return Person(generator, psi, synthetic_points(1, size)[0], size,
                  scaled_thickness(cfg.data.landmark_thickness, size), identity="random",
                  model_config=to_dict(cfg)["model"])


def synthetic_points(frames: int, size: int, seed: int = 0) -> np.ndarray:
    """(frames, 68, 2) face-sized point sets: an oval of 68 points, jittered per frame like a moving face."""
    rng = np.random.default_rng(seed)
    angles = np.linspace(0, 2 * np.pi, NUM_POINTS, endpoint=False)
    oval = np.stack([0.5 + 0.3 * np.cos(angles), 0.55 + 0.35 * np.sin(angles)], axis=1) * size
    jitter = rng.normal(0, 0.01 * size, (frames, NUM_POINTS, 2))
    return (oval + jitter).astype(np.float32)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def generator_fps(person: Person, landmarks: torch.Tensor, batch_size: int, repeats: int) -> float:
    """Frames per second of ``Person.generate`` on ``landmarks`` in chunks of ``batch_size``, after a warm-up.

    The median of ``repeats`` passes, so that one pass slowed by another process does not decide the number.
    """
    person.generate(landmarks[:batch_size], batch_size)
    rates = []
    for _ in range(repeats):
        _sync(person.device)
        start = time.perf_counter()
        person.generate(landmarks, batch_size)
        _sync(person.device)
        rates.append(landmarks.shape[0] / (time.perf_counter() - start))
    return float(np.median(rates))


def drawing_fps(person: Person, points: np.ndarray) -> float:
    """Landmark images per second drawn by ``Person.draw`` (polylines on the CPU, converted to a tensor)."""
    person.draw(points[:1])
    start = time.perf_counter()
    person.draw(points)
    return len(points) / (time.perf_counter() - start)


# ----------------------------------------------------------------------------------------------------------------
# HeadGAN
# ----------------------------------------------------------------------------------------------------------------

# Pixels per canonical unit of the mean face (RMS radius 1, about 2.7 units wide) as a fraction of the image
# side: the face then spans about 0.55 of the crop, as in the 1.8x landmark-extent crops of the store.
FACE_SCALE = 0.2
# Standard deviation of the per-frame head rotation (yaw, pitch, roll), in degrees.
HEAD_MOTION_DEGREES = 10.0


def _rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """3x3 rotation (radians) about the canonical y (yaw), x (pitch) and z (roll) axes, applied in that order."""
    cy, sy, cp, sp, cr, sr = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch), np.cos(roll), np.sin(roll)
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    return rz @ rx @ ry


def posed_mean_faces(frames: int, size: int, seed: int = 0) -> np.ndarray:
    """float32 (frames, 468, 3) pixel vertices: the mean face, centred in an S x S image and turned per frame.

    Frame 0 is frontal (the reference); the others are rotated by normal angles of HEAD_MOTION_DEGREES.
    """
    from dataset.face3d.mesh import mean_face

    rng = np.random.default_rng(seed)
    angles = np.radians(rng.normal(0.0, HEAD_MOTION_DEGREES, (frames, 3)))
    angles[0] = 0.0
    centre = np.array([size / 2 - 0.5, size / 2 - 0.5, 0.0])
    face = mean_face().astype(np.float64)
    return np.stack([FACE_SCALE * size * face @ _rotation(*a).T + centre for a in angles]).astype(np.float32)


def nmfc_renders(vertices: np.ndarray, size: int) -> tuple[np.ndarray, list[float]]:
    """uint8 (N, S, S, 3) NMFC renders of posed faces and the seconds each took (after one untimed render)."""
    from dataset.face3d.render import render_nmfc

    render_nmfc(vertices[0], size)
    images, seconds = [], []
    for v in vertices:
        start = time.perf_counter()
        images.append(render_nmfc(v, size))
        seconds.append(time.perf_counter() - start)
    return np.stack(images), seconds


def random_headgan_generator(cfg: Config, device: torch.device, seed: int = 0) -> torch.nn.Module:
    """HeadGAN's generator of the config with random weights, in eval mode, on ``device``."""
    torch.manual_seed(seed)
    return build_networks(cfg.model)["generator"].to(device).eval()


@torch.no_grad()
def headgan_generate(generator: torch.nn.Module, reference: torch.Tensor, reference_render: torch.Tensor,
                     renders: torch.Tensor, audio: torch.Tensor | None, batch_size: int) -> torch.Tensor:
    """One-shot reenactment of (N, 3, S, S) driving renders in [-1, 1] in chunks -> frames on the CPU.

    ``reference`` and ``reference_render``: (1, 3, S, S) on the generator's device; ``audio`` (N, mels, window)
    on the CPU, or None.
    """
    device = reference.device
    outputs = []
    for start in range(0, renders.shape[0], batch_size):
        chunk = renders[start:start + batch_size].to(device)
        n = chunk.shape[0]
        window = None if audio is None else audio[start:start + n].to(device)
        out = generator(reference.expand(n, -1, -1, -1), reference_render.expand(n, -1, -1, -1), chunk, window)
        outputs.append(out["image"].cpu())
    return torch.cat(outputs)


def headgan_fps(generator: torch.nn.Module, reference: torch.Tensor, reference_render: torch.Tensor,
                renders: torch.Tensor, audio: torch.Tensor | None, batch_size: int, repeats: int) -> float:
    """Frames per second of ``headgan_generate`` in chunks of ``batch_size``: median of ``repeats`` passes."""
    device = reference.device
    headgan_generate(generator, reference, reference_render, renders[:batch_size],
                     None if audio is None else audio[:batch_size], batch_size)
    rates = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        headgan_generate(generator, reference, reference_render, renders, audio, batch_size)
        _sync(device)
        rates.append(renders.shape[0] / (time.perf_counter() - start))
    return float(np.median(rates))


def headgan_benchmark(cfg: Config, device: torch.device, batch_sizes: list[int], frames: int,
                      repeats: int) -> dict:
    """The JSON of a HeadGAN run: generator fps per batch size and the NMFC render time per frame."""
    from dataset.face3d.mesh import triangles

    generator = random_headgan_generator(cfg, device)
    size, h = cfg.model.image_size, cfg.model.headgan
    # One more face than driving frames: frame 0, frontal, is the reference's render.
    images, seconds = nmfc_renders(posed_mean_faces(frames + 1, size), size)
    renders = to_unit_range(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous())
    g = torch.Generator().manual_seed(0)
    reference = torch.rand(1, 3, size, size, generator=g).mul(2).sub(1).to(device)
    audio = torch.randn(frames, h.audio_mels, h.audio_window, generator=g) - 4.0 if h.audio else None
    return {
        "family": "headgan", "person": f"random weights and reference image, config {cfg.name}",
        "device": str(device), "image_size": size, "frames": frames, "repeats": repeats, "audio": h.audio,
        "generator_params": sum(p.numel() for p in generator.parameters()),
        "generator_fps": {str(b): round(headgan_fps(generator, reference, renders[:1].to(device), renders[1:],
                                                    audio, b, repeats), 2)
                          for b in batch_sizes},
        "nmfc_render": {"renderer": "dataset.face3d.render.render_nmfc (NumPy, one CPU thread)",
                        "triangles": int(triangles().shape[0]), "frames": len(seconds),
                        "ms_per_frame": round(1000 * float(np.median(seconds)), 3),
                        "fps": round(len(seconds) / sum(seconds), 1)},
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_config_arguments(parser, default="demo")
    parser.add_argument("--person", type=Path, default=None,
                        help="person file (finetune.py) to render instead of a random-weight generator")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32],
                        help="generator batch sizes to measure (default 1 8 32)")
    parser.add_argument("--frames", type=int, default=64, help="frames rendered per measurement (default 64)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per batch size, median (default 3)")
    args = parser.parse_args(argv)
    if min(args.frames, args.repeats, *args.batch_sizes) < 1:
        parser.error("--frames, --repeats and every --batch-sizes value must be at least 1")
    device = torch.device(args.device)
    if args.person is not None:
        person, source = load_person(args.person, device), str(args.person)
    else:
        try:
            cfg = config_from_args(args)
            if cfg.model.family == "headgan":
                check_headgan_config(cfg.model)
        except (ConfigError, ValueError) as err:  # ValueError: a HeadGAN set-up that cannot be built
            parser.exit(2, f"error: {err}\n")
        if cfg.model.family == "headgan":
            result = headgan_benchmark(cfg, device, args.batch_sizes, args.frames, args.repeats)
            print(json.dumps(result, indent=1))
            return result
        person, source = random_person(cfg, device), f"random weights, config {cfg.name}"
    points = synthetic_points(args.frames, person.image_size)
    landmarks = person.draw(points)
    result = {
        "family": "talking_head",
        "person": source, "device": str(device), "image_size": person.image_size, "frames": args.frames,
        "repeats": args.repeats,
        "generator_params": sum(p.numel() for p in person.generator.parameters()),
        "generator_fps": {str(b): round(generator_fps(person, landmarks, b, args.repeats), 2)
                          for b in args.batch_sizes},
        "drawing_fps": round(drawing_fps(person, points), 1),
    }
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
