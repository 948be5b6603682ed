"""Rendering throughput of a Person: generator frames per second from landmark images, batch 1 and batched.

    python bench/inference.py --config demo                          # random-weight G of the preset, CPU
    python bench/inference.py --config vox2 --device cuda --batch-sizes 1 8 32 --frames 256
    python bench/inference.py --person outputs/demo/person.pt         # a fine-tuned person file

Without ``--person`` the generator is built from the config with random weights and psi = P e for a random
embedding e: the cost of a forward pass does not depend on the weights. Timings cover ``Person.generate``
(landmark images to the device, G with psi, frames back to the CPU): the median of ``--repeats`` passes after
one untimed warm-up pass per batch size. Drawing the landmark images is measured separately (``drawing_fps``)
on synthetic 68-point faces, since a reenactment draws every driving frame once on the CPU.
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

from config import Config, ConfigError, add_config_arguments, config_from_args
from dataset.landmarks import NUM_POINTS
from dataset.store import scaled_thickness
from model import build_networks
from training.person import Person, load_person


def random_person(cfg: Config, device: torch.device, seed: int = 0) -> Person:
    """G of the config with random weights, in eval mode, and psi = P e for a random embedding e."""
    torch.manual_seed(seed)
    generator = build_networks(cfg.model)["generator"].to(device).eval()
    with torch.no_grad():
        psi = generator.project(torch.randn(1, cfg.model.embed_dim, device=device))[0]
    size = cfg.model.image_size
    return Person(generator, psi, synthetic_points(1, size)[0], size,
                  scaled_thickness(cfg.data.landmark_thickness, size), identity="random")


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
        except ConfigError as err:
            parser.exit(2, f"error: {err}\n")
        person, source = random_person(cfg, device), f"random weights, config {cfg.name}"
    points = synthetic_points(args.frames, person.image_size)
    landmarks = person.draw(points)
    result = {
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
