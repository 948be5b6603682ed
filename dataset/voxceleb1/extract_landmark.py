"""Detects faces and 68 landmarks, crops the main face, and writes the training dataset (``dataset/store.py``).

    python dataset/voxceleb1/extract_landmark.py --root data/vox1_frames --out data/vox1_store \\
        --backend face_alignment --device cuda --batch-size 64 --workers 2
    python dataset/voxceleb1/extract_landmark.py --root data/vox2/dev/mp4 --out data/vox2_store \\
        --backend dlib --workers 16 --shard 3/8          # then, once every shard is done:
    python -m dataset.store index data/vox2_store --test-identities vox2_test_ids.txt

Input, per video folder ``ROOT/IDENTITY/VIDEO_ID`` (see ``--video-depth`` for other depths):

- the frame folders written by ``dataset/voxceleb2/extract_frames.py`` or ``dataset/voxceleb1/sample_frame.py``
  (or VoxCeleb1's own nested frame folders): every image below the video folder, in path order;
- or VoxCeleb2's clips ``NNNNN.mp4`` directly, which saves the intermediate frame folders.

Either way at most ``--frames-per-video`` evenly spaced frames are used (default 32; 0 = all).

Per video, all its frames go to the detector in one call (``face_alignment`` stacks them into GPU batches of
``--batch-size``). Per frame the face that continues the video's main face is kept (``dataset/pipeline/faces.py``:
overlap with the last kept face, else the largest and most central one); frames without a face are dropped and
counted. A square of ``--scale`` x the landmarks' extent is cut around the face and resized to ``--size``.

Videos with fewer than ``--min-frames`` usable frames (default 9 = K+1 for meta-learning with K=8) are stored
anyway, since fine-tuning can use fewer, and are listed in the summary; the training Dataset skips videos too
short for its K. At the end the index is rebuilt with the train/test split by identity.

Resuming and sharding: a video's store folder appears only when complete; a rerun skips finished videos and
redoes the rest. Failures (unreadable video, detector error) go to ``OUT/failures.jsonl`` with the reason, and
the run summary to ``OUT/summary.json`` (``.shard-i-of-n`` added when sharded).
"""
from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from dataset import store
from dataset.landmarks import BACKENDS, DetectorLoadError, LandmarkDetector, make_detector
from dataset.pipeline.faces import DETECT_MAX_SIDE, choose_main_faces, crop_faces, detect_faces
from dataset.pipeline.output import atomic_write_json
from dataset.pipeline.runner import RunSummary, add_run_arguments, bounded, run_videos, shard_suffix
from dataset.pipeline.videos import VideoUnit, sample_frames, scan_videos

# One detector per process, set by the run's initializer. Detectors pickle as their settings only, so each
# worker process loads its own models once, and nothing large travels with each video.
_detector: LandmarkDetector | None = None


def set_detector(detector: LandmarkDetector) -> None:
    global _detector
    _detector = detector


def ready_detector(backend: str, device: str, batch_size: int) -> LandmarkDetector:
    """The detector, with its models loaded: missing packages or weights stop the run here, not once per video."""
    detector = make_detector(backend, device=device, batch_size=batch_size)
    detector.detect([np.zeros((32, 32, 3), np.uint8)])
    return detector


def process_video(unit: VideoUnit, *, out: Path, info: dict, frames_per_video: int, scale: float,
                  min_frames: int, max_detect_side: int = DETECT_MAX_SIDE) -> dict:
    """Detects, tracks, crops and stores one video (the work function of the run)."""
    if (store.video_dir(out, unit.identity, unit.video) / store.META_FILE).is_file():
        return {"status": "skipped"}
    sampled = sample_frames(unit, frames_per_video)
    if not sampled.frames:
        raise ValueError("no readable frame: " + "; ".join(sampled.problems or ["no images or clips"]))
    names = [name for name, _ in sampled.frames]
    images = [image for _, image in sampled.frames]
    detections = detect_faces(_detector, images, max_detect_side)
    main_faces = choose_main_faces(detections, [image.shape for image in images])
    kept = [i for i, face in enumerate(main_faces) if face is not None]
    crops, points = crop_faces([images[i] for i in kept], [main_faces[i] for i in kept], info["image_size"], scale)
    meta = {
        "sources": [names[i] for i in kept],
        "boxes": [list(main_faces[i].box) for i in kept],
        "scores": [main_faces[i].score for i in kept],
        "faces_found": [len(detections[i]) for i in kept],
        "dropped_no_face": [names[i] for i, face in enumerate(main_faces) if face is None],
        "problems": sampled.problems,
    }
    store.write_video(out, info, unit.identity, unit.video, crops, points, meta)
    stats = {
        "frames_read": len(images),
        "frames_kept": len(kept),
        "frames_dropped_no_face": len(images) - len(kept),
        "frames_with_several_faces": sum(len(faces) > 1 for faces in detections),
        "unreadable_clips_or_frames": len(sampled.problems),
        "videos_without_usable_frame": int(not kept),
        f"videos_below_{min_frames}_frames": int(0 < len(kept) < min_frames),
    }
    return {"status": "done", "stats": stats}


def extract_landmarks(root: Path, out: Path, *, backend: str = "dlib", device: str = "cpu", size: int = 256,
                      batch_size: int = 32, frames_per_video: int = 32, scale: float = 1.8,
                      encoding: str = "jpeg", quality: int = 95, min_frames: int = 9,
                      test_identities: set[str] | None = None, test_fraction: float = store.DEFAULT_TEST_FRACTION,
                      workers: int = 1, shard=None, video_depth: int = 2,
                      max_detect_side: int = DETECT_MAX_SIDE) -> RunSummary:
    """Writes (or completes) the store ``out`` from the videos of ``root``; returns the run summary."""
    out = Path(out)
    if not scale > 0 or max_detect_side < 1 or frames_per_video < 0:
        raise ValueError(f"need scale > 0, max_detect_side >= 1 and frames_per_video >= 0; got {scale}, "
                         f"{max_detect_side} and {frames_per_video}")
    info = store.open_store_for_writing(out, size, encoding, quality)
    scan = scan_videos(root, video_depth, shard)
    units = [u for u in scan.units if u.images or u.clips]
    detector = ready_detector(backend, device, batch_size)
    work = functools.partial(process_video, out=out, info=info, frames_per_video=frames_per_video, scale=scale,
                             min_frames=min_frames, max_detect_side=max_detect_side)
    summary = run_videos(units, work, workers=workers, shard=shard, desc=f"landmarks ({backend})",
                         failures_path=out / f"failures{shard_suffix(shard)}.jsonl",
                         initializer=set_detector, initargs=(detector,), unlisted=scan.problems)
    index = store.build_index(out, test_identities, test_fraction)
    # From the index, so that videos finished by earlier runs or other shards are listed too.
    short = [f"{e['identity']}/{e['video']} ({e['frames']} frames)" for e in index["videos"]
             if e["frames"] < min_frames]
    atomic_write_json(out / f"summary{shard_suffix(shard)}.json",
                      {**summary.to_dict(), f"videos_below_{min_frames}_frames": short})
    print(summary.format())
    if short:
        print(f"videos in the store with fewer than {min_frames} frames: {', '.join(short[:10])}"
              + (" ..." if len(short) > 10 else ""))
    print(store.describe_index(index))
    return summary


def main(argv: list[str] | None = None) -> RunSummary:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--root", type=Path, required=True,
                        help="frame folders idNNNNN/VIDEO_ID/*.jpg, or clips idNNNNN/VIDEO_ID/*.mp4")
    parser.add_argument("--out", type=Path, required=True, help="dataset store to write or complete")
    parser.add_argument("--backend", choices=BACKENDS, default="face_alignment",
                        help="landmark detector: face_alignment (the paper's, GPU) or dlib (CPU, offline)")
    parser.add_argument("--device", default="cpu", help="device of the face_alignment backend (cpu, cuda, cuda:1)")
    parser.add_argument("--batch-size", type=bounded(int, 1), default=32, help="frames per face_alignment GPU batch")
    parser.add_argument("--size", type=bounded(int, store.MIN_IMAGE_SIZE), default=256,
                        help="side of the stored square crops (default 256)")
    parser.add_argument("--scale", type=bounded(float, high=10.0, above=0.0), default=1.8,
                        help="crop side / extent of the landmarks (default 1.8: forehead and chin fit)")
    parser.add_argument("--frames-per-video", type=bounded(int, 0), default=32,
                        help="evenly spaced frames per video (default 32; 0 = all)")
    parser.add_argument("--max-detect-side", type=bounded(int, 64), default=DETECT_MAX_SIDE,
                        help="the detector sees frames shrunk to at most this many pixels a side; crops are cut "
                             f"from the full frame (default {DETECT_MAX_SIDE})")
    parser.add_argument("--min-frames", type=bounded(int, 0), default=9,
                        help="report videos with fewer usable frames (they are stored anyway; default 9 = K+1)")
    parser.add_argument("--encoding", choices=store.ENCODINGS, default="jpeg",
                        help="frame storage: jpeg (~10x smaller) or raw uint8 (faster to read)")
    parser.add_argument("--quality", type=bounded(int, 1, 100), default=95, help="JPEG quality (default 95)")
    store.add_split_arguments(parser)
    add_run_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return extract_landmarks(
            args.root, args.out, backend=args.backend, device=args.device, size=args.size,
            batch_size=args.batch_size, frames_per_video=args.frames_per_video, scale=args.scale,
            encoding=args.encoding, quality=args.quality, min_frames=args.min_frames,
            test_identities=store.parse_identities(args.test_identities) if args.test_identities else None,
            test_fraction=args.test_fraction, workers=args.workers, shard=args.shard, video_depth=args.video_depth,
            max_detect_side=args.max_detect_side)
    except (DetectorLoadError, store.StoreError, FileNotFoundError) as err:
        parser.exit(2, f"error: {err}\n")


if __name__ == "__main__":
    main()
