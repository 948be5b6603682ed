"""Adds HeadGAN's 3D faces to an existing store: a dense mesh per stored crop, fitted per video into face3d.npz.

    python -m dataset.face3d.extract_mesh data/vox2_store                      # MediaPipe on CPU, one process
    python -m dataset.face3d.extract_mesh data/vox2_store --workers 16 --shard 3/8

Input: a store written by ``dataset/voxceleb1/extract_landmark.py`` (its ``index.json`` lists the videos). Per
video, every stored crop goes through the mesh detector (``backends.py``), the meshes are fitted into identity,
expression and pose (``fit.fit_video``), and ``face3d.npz`` is written into the video's folder
(``fit.write_face3d``; about 3 KB a frame). Crops in which the detector finds no face keep zero expression
and the pose of the nearest frame with one, and are counted; a video without any face fails. Reading,
detection, fitting and writing took 7.4 ms a frame on one core of the development machine (256x256 demo
store, 142 frames; MediaPipe alone 3.2-3.4 ms a frame).

Resuming and sharding as in every preprocessing command (``dataset/pipeline/runner.py``): a video with a
``face3d.npz`` is skipped (``--overwrite`` redoes it; the file is replaced atomically), ``--shard i/n`` splits
the videos by the same hash of ``identity/video`` as the landmark extraction, and a failing video (an
unreadable frame, no face at all) is recorded with the reason in ``STORE/face3d_failures.jsonl`` while the run
goes on; the summary goes to ``STORE/face3d_summary.json`` (``.shard-i-of-n`` added when sharded).
"""
from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path

import numpy as np

from dataset import store
from dataset.face3d import mesh
from dataset.face3d.backends import MESH_BACKENDS, MeshDetector, make_mesh_detector
from dataset.face3d.fit import FACE3D_FILE, fit_video, write_face3d
from dataset.landmarks import DetectorLoadError
from dataset.pipeline.output import atomic_write_json
from dataset.pipeline.runner import RunSummary, Shard, parse_shard, run_videos, shard_suffix
from dataset.pipeline.videos import VideoUnit

# Frames read and detected at a time: bounds memory for long videos stored with all their frames.
CHUNK_FRAMES = 64

# One detector per process, set by the run's initializer (detectors pickle as their settings only).
_detector: MeshDetector | None = None


def set_detector(detector: MeshDetector) -> None:
    global _detector
    _detector = detector


def ready_detector(backend: str) -> MeshDetector:
    """The detector with its model loaded, so that a missing package stops the run here, not once per video."""
    detector = make_mesh_detector(backend)
    if detector.topology != mesh.TOPOLOGY:
        raise DetectorLoadError(f"backend {backend!r} returns {detector.topology} meshes, but this code only has "
                                f"the {mesh.TOPOLOGY} asset; add the topology's asset first (see backends.py)")
    detector.detect([np.zeros((32, 32, 3), np.uint8)])
    return detector


def process_video(unit: VideoUnit, *, root: Path, encoding: str, backend: str, overwrite: bool) -> dict:
    """Detects, fits and stores the 3D faces of one stored video (the work function of the run)."""
    folder = store.video_dir(root, unit.identity, unit.video)
    if (folder / FACE3D_FILE).is_file() and not overwrite:
        return {"status": "skipped"}
    frames = json.loads((folder / store.META_FILE).read_text())["frames"]
    meshes = np.full((frames, _detector.num_vertices, 3), np.nan, np.float32)
    for start in range(0, frames, CHUNK_FRAMES):
        indices = range(start, min(start + CHUNK_FRAMES, frames))
        for index, found in zip(indices, _detector.detect(store.read_frames(folder, encoding, indices))):
            if found is not None:
                meshes[index] = found
    missing = np.flatnonzero(~np.isfinite(meshes).all(axis=(1, 2)))
    fitted = fit_video(meshes)
    write_face3d(folder, fitted, {"backend": backend, "topology": _detector.topology,
                                  "frames_without_mesh": missing.tolist()})
    return {"status": "done", "stats": {"frames": frames, "frames_without_mesh": len(missing)}}


def extract_meshes(store_root: Path, backend: str = "mediapipe", workers: int = 1, shard: Shard | None = None,
                   overwrite: bool = False) -> RunSummary:
    """Writes ``face3d.npz`` for every video of the store at ``store_root`` (see the module docstring)."""
    root = Path(store_root)
    info = store.read_store_info(root)
    if backend not in MESH_BACKENDS:
        raise ValueError(f"unknown mesh backend {backend!r}; valid backends: {', '.join(MESH_BACKENDS)}")
    units = store.indexed_units(root)
    detector = ready_detector(backend)
    work = functools.partial(process_video, root=root, encoding=info["encoding"], backend=backend,
                             overwrite=overwrite)
    summary = run_videos(units, work, workers=workers, shard=shard, desc=f"3D faces ({backend})",
                         failures_path=root / f"face3d_failures{shard_suffix(shard)}.jsonl",
                         initializer=set_detector, initargs=(detector,))
    atomic_write_json(root / f"face3d_summary{shard_suffix(shard)}.json", summary.to_dict())
    print(summary.format())
    return summary


def main(argv: list[str] | None = None) -> RunSummary:
    parser = argparse.ArgumentParser(prog="python -m dataset.face3d.extract_mesh",
                                     description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("store", type=Path, metavar="STORE", help="a store written by extract_landmark.py")
    parser.add_argument("--backend", choices=sorted(MESH_BACKENDS), default="mediapipe",
                        help="mesh detector (default mediapipe: MediaPipe Face Mesh, CPU, offline)")
    parser.add_argument("--workers", type=int, default=1,
                        help="worker processes, one video at a time each (default 1: run in this process)")
    parser.add_argument("--shard", type=parse_shard, default=None, metavar="I/N",
                        help="process only shard I of N (stable hash of identity/video)")
    parser.add_argument("--overwrite", action="store_true", help="redo videos that already have face3d.npz")
    args = parser.parse_args(argv)
    try:
        return extract_meshes(args.store, backend=args.backend, workers=args.workers, shard=args.shard,
                              overwrite=args.overwrite)
    except (DetectorLoadError, store.StoreError) as err:
        parser.exit(2, f"error: {err}\n")


if __name__ == "__main__":
    main()
