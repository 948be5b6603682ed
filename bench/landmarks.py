"""Landmark extraction throughput per backend: frames per second of face detection + 68 points. Prints JSON.

    python bench/landmarks.py --video data/vox2/dev/mp4/id00012/abc/00001.mp4 --backend dlib face_alignment
    python bench/landmarks.py --video outputs/demo/clips --frames 32        # the first video under a folder

``--video`` is a video file, a folder of images, or a folder holding videos somewhere below it (VoxCeleb
layout; the first one in sorted order is used). Frames are decoded once with ``dataset.pipeline.faces
.read_frames`` (not timed); each backend from ``dataset.landmarks.make_detector`` then detects on one frame
untimed (model loading, ``load_s``) and on all frames timed (``fps``). A backend that cannot load (face_alignment
without its downloaded weights, a missing package) is reported as ``{"backend": ..., "error": ...}``.
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

from dataset.landmarks import BACKENDS, DetectorLoadError, make_detector
from dataset.pipeline.faces import read_frames
from dataset.pipeline.videos import IMAGE_SUFFIXES

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")


def resolve_video(path: Path) -> Path:
    """``path`` itself, unless it is a folder without images: then the first video file below it."""
    if not path.is_dir():
        return path
    if any(p.suffix.lower() in IMAGE_SUFFIXES for p in path.iterdir()):
        return path  # a folder of images, read as frames
    videos = sorted(p for p in path.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES)
    if not videos:
        raise FileNotFoundError(f"{path}: no images and no video files ({', '.join(VIDEO_SUFFIXES)}) in it")
    return videos[0]


def measure(backend: str, frames: list[np.ndarray], device: str) -> dict:
    """Load time and frames/s of one backend on ``frames``; an ``error`` entry if the backend cannot load."""
    detector = make_detector(backend, device=device)
    try:
        start = time.perf_counter()
        detector.detect(frames[:1])
        load_s = time.perf_counter() - start
    except DetectorLoadError as err:
        return {"backend": backend, "error": str(err)}
    start = time.perf_counter()
    faces = detector.detect(frames)
    seconds = time.perf_counter() - start
    return {"backend": backend, "device": device, "load_s": round(load_s, 3), "fps": round(len(frames) / seconds, 2),
            "frames_with_face": sum(1 for found in faces if found)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--video", type=Path, required=True, help="video file, folder of images, or folder of videos")
    parser.add_argument("--backend", nargs="+", choices=BACKENDS, default=["dlib"],
                        help="landmark backends to measure (default dlib)")
    parser.add_argument("--device", default="cpu", help="device of the face_alignment backend (default cpu)")
    parser.add_argument("--frames", type=int, default=64, help="frames read, evenly spaced (default 64)")
    args = parser.parse_args(argv)
    if args.frames < 1:
        parser.error("--frames must be at least 1")
    video = resolve_video(args.video)
    frames = read_frames(video, args.frames)
    result = {"video": str(video), "frames": len(frames), "frame_size": list(frames[0].shape[:2]),
              "backends": [measure(backend, frames, args.device) for backend in args.backend]}
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
