"""End-to-end reenactment latency at batch 1: the whole live pipeline per frame, per family and runtime. JSON.

    python bench/latency.py                                            # both families, demo presets, CPU
    python bench/latency.py --size 256 --frames 48 --runtimes torch onnx
    python bench/latency.py --family headgan --device cuda --size 256 --runtimes torch compiled
    python bench/latency.py --video my_face.mp4 --family talking_head

What runs is ``inference.live.run_live`` on a video file, through the same OpenCV capture as a camera, without a
window, recording the panels as H.264 (``--no-encode`` leaves that out): per frame capture, face detection and
68 landmarks (dlib on the CPU, or ``--backend face_alignment``), crop, [HeadGAN: MediaPipe 3D face of the crop],
adaptation (landmark adaptation / expression transfer), drawing (landmark image / NMFC render), generation at
batch 1, composing the panels and encoding. The result holds, per family and runtime, the whole pipeline's
frames/s and median ms per frame, the median ms of every stage, and the generator alone (``generator_fps``,
from its stage time): the pipeline is what a user sees, the generator is what an export or a GPU speeds up.

Runtimes: ``torch`` (the person's own networks, what reenact.py runs), ``compiled`` (``torch.compile`` of the
exported frame model: psi or the reference features folded in, spectral norm folded), ``onnx`` (the person
exported with ``inference.export`` and run by onnxruntime). The networks have random weights (a forward pass
costs the same whatever the weights): talking heads with psi = P e for a random e and the driver's own mean
landmarks as the person's face; HeadGAN with the driver video's first frame as the reference image. The first
``--warmup`` frames are left out of the medians (for ``compiled`` they include the compilation). Without
``--video`` a demo clip is made (``dataset.demo``, 256x256 frames, a face in every frame).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from config import ConfigError, load_config, to_dict
from dataset.landmarks import BACKENDS, make_detector
from inference.live import RUNTIMES, run_live
from model.headgan import check_headgan_config
from utils.cli import ArgumentError, check_at_least, check_device

PRESETS = {"talking_head": "demo", "headgan": "headgan_demo"}


def demo_video(folder: Path, size: int = 256, frames: int = 48) -> Path:
    """One demo clip (a real face photo animated along moving landmarks) at ``size`` x ``size``."""
    from dataset.demo import build_demo_dataset

    with contextlib.redirect_stdout(sys.stderr):  # its summary line would break the JSON on stdout
        root = build_demo_dataset(folder, identities=1, clips_per_identity=1, frames=frames, size=size, seed=0)
    return next(root.rglob("*.mp4"))


def random_person(family: str, cfg, video: Path, detector, mesh_detector, device: torch.device):
    """A random-weight person of ``family`` for ``video`` (see the module docstring)."""
    from bench.inference import random_headgan_generator
    from bench.inference import random_person as random_talking_head

    if family == "headgan":
        from inference.headgan import headgan_person

        generator = random_headgan_generator(cfg, torch.device("cpu"))
        state = {"config": to_dict(cfg), "networks": {"generator": generator.state_dict()}}
        return headgan_person(state, video, detector, mesh_detector, device)
    from dataset.pipeline.faces import read_face_crops

    person = random_talking_head(cfg, device)
    person.reference_points = read_face_crops(video, detector, cfg.model.image_size, max_frames=8)[1].mean(axis=0)
    return person


def measure(person, runtime: str, video: Path, detector, mesh_detector, frames: int, warmup: int,
            encode: bool, folder: Path, threads: int = 0) -> dict:
    """One run of the live pipeline; its summary with the generator's own rate added."""
    if runtime == "onnx":
        from inference.export import export_onnx, load_onnx_person

        path = folder / f"{person.identity or 'person'}-{type(person).__name__}.onnx"
        exported = export_onnx(person, path)
        person = load_onnx_person(path, person.device, threads)
    summary = run_live(person, video, detector, mesh_detector, runtime=runtime,
                       out=folder / f"{runtime}.mp4" if encode else None, window=False,
                       max_frames=frames + warmup, warmup=warmup)
    timing = summary["timing"]
    generate_ms = timing["stage_ms"].get("generate")
    result = {"runtime": runtime, "pipeline_fps": timing["fps"], "frame_ms": timing["frame_ms"],
              "stage_ms": timing["stage_ms"], "frames_timed": timing["frames"],
              "generator_fps": round(1000 / generate_ms, 2) if generate_ms else None,
              "frames_with_face": summary["frames_with_face"]}
    if runtime == "onnx":
        result["onnx_max_abs_diff"] = exported["max_abs_diff"]
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--family", choices=(*PRESETS, "both"), default="both")
    parser.add_argument("--size", type=int, default=64, help="model.image_size of both presets (default 64)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for both presets (repeatable)")
    parser.add_argument("--runtimes", nargs="+", choices=RUNTIMES, default=list(RUNTIMES))
    parser.add_argument("--video", type=Path, help="driver video (default: a 256x256 demo clip)")
    parser.add_argument("--frames", type=int, default=32, help="timed frames per run (default 32)")
    parser.add_argument("--warmup", type=int, default=4, help="untimed frames first (default 4)")
    parser.add_argument("--backend", choices=BACKENDS, default="dlib", help="landmark detector (default dlib)")
    parser.add_argument("--device", default="cpu", help="torch device of the networks (default cpu)")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads of torch and onnxruntime, 0 for their own choice (default 1: on a shared "
                        "machine more threads than free cores make every op wait for the slowest)")
    parser.add_argument("--no-encode", action="store_true", help="leave H.264 encoding out of the pipeline")
    args = parser.parse_args(argv)
    try:
        check_at_least({"--size": args.size, "--frames": args.frames}, 1)
        check_at_least({"--warmup": args.warmup, "--threads": args.threads}, 0)
        device = check_device(args.device)
        if args.video is not None and not args.video.is_file():
            raise ArgumentError(f"--video {args.video} is not a video file")
        families = list(PRESETS) if args.family == "both" else [args.family]
        configs = {f: load_config(PRESETS[f], [f"model.image_size={args.size}", *args.overrides]) for f in families}
        if "headgan" in configs:
            check_headgan_config(configs["headgan"].model)
    except (ArgumentError, ConfigError, ValueError) as err:  # ValueError: a HeadGAN size it cannot build
        parser.exit(2, f"error: {err}\n")
    previous_threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        result = run(args, configs, device)
    finally:
        torch.set_num_threads(previous_threads)  # main() may run inside a longer process (the tests)
    print(json.dumps(result, indent=1))
    return result


def run(args: argparse.Namespace, configs: dict, device: torch.device) -> dict:
    """Every family and runtime of the arguments; the JSON ``main`` prints."""
    detector = make_detector(args.backend, device=str(device))
    result = {"device": str(device), "image_size": args.size, "batch_size": 1, "backend": args.backend,
              "threads": torch.get_num_threads(), "encode": not args.no_encode, "families": {}}
    with tempfile.TemporaryDirectory(prefix="latency-") as tmp:
        folder = Path(tmp)
        video = args.video or demo_video(folder / "clip", frames=args.frames + args.warmup)
        result["video"] = str(args.video) if args.video else "demo clip (dataset.demo, 256x256)"
        for family, cfg in configs.items():
            mesh_detector = None
            if family == "headgan":
                from dataset.face3d.backends import make_mesh_detector

                mesh_detector = make_mesh_detector("mediapipe")
            person = random_person(family, cfg, video, detector, mesh_detector, device)
            runs = []
            for runtime in args.runtimes:
                start = time.perf_counter()
                runs.append({**measure(person, runtime, video, detector, mesh_detector, args.frames, args.warmup,
                                       not args.no_encode, folder, args.threads),
                             "wall_s": round(time.perf_counter() - start, 1)})
            result["families"][family] = {"config": cfg.name, "runs": runs}
    return result


if __name__ == "__main__":
    main()
