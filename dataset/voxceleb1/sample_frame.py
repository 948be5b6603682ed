"""Samples N evenly spaced frames per VoxCeleb1 video from its pre-extracted frame folders.

    python dataset/voxceleb1/sample_frame.py --root data/vox1/frames --out data/vox1_frames \\
        --frames-per-video 32 --workers 4 [--shard 0/4] [--video-depth 3]

Input: every image under a video folder belongs to that video, however it is nested (``idNNNNN/VIDEO_ID/
<utterance>/<frame>.jpg``, or ``VIDEO_ID/<frame>.jpg``); the images are ordered by their path with numbers
compared as numbers. Layouts with a folder between identity and video (``NAME/1.6/VIDEO_ID/...``) need
``--video-depth 3``. Output: the layout of ``dataset/voxceleb2/extract_frames.py``, ``OUT/idNNNNN/VIDEO_ID/
0000.jpg ...`` plus ``frames.json`` mapping each file to the original image. Files are copied byte for byte
(no re-encoding), so they keep their format.

A video's folder appears only when complete; a rerun skips existing folders and redoes unfinished ones.
Failures are listed in ``OUT/failures.jsonl``.
"""
from __future__ import annotations

import argparse
import functools
import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from dataset.pipeline.output import write_frame_folder
from dataset.pipeline.runner import RunSummary, add_run_arguments, bounded, run_videos, shard_suffix
from dataset.pipeline.videos import VideoUnit, evenly_spaced, scan_videos


def sample_video(unit: VideoUnit, *, out: Path, frames_per_video: int) -> dict:
    """Copies the sampled images of one video (the work function of the run)."""
    final = out / unit.identity / unit.video
    if final.is_dir():
        return {"status": "skipped"}
    chosen = [unit.images[i] for i in evenly_spaced(len(unit.images), frames_per_video)]
    files = []
    for relative in chosen:
        data = unit.path(relative).read_bytes()
        if not data:
            raise ValueError(f"empty image file {relative}")
        files.append((data, os.path.splitext(relative)[1].lower(), unit.inner(relative)))
    write_frame_folder(final, files)
    return {"status": "done", "stats": {"frames_written": len(files), "frames_available": len(unit.images)}}


def sample_frame(root: Path, out: Path, frames_per_video: int = 32, *, workers: int = 1, shard=None,
                 video_depth: int = 2) -> RunSummary:
    """Runs the sampling over every video of ``root`` (in ``shard``); returns the summary."""
    out = Path(out)
    if frames_per_video < 0:
        raise ValueError(f"frames_per_video must be at least 0, got {frames_per_video}")
    scan = scan_videos(root, video_depth, shard)
    units = [u for u in scan.units if u.images]
    work = functools.partial(sample_video, out=out, frames_per_video=frames_per_video)
    summary = run_videos(units, work, workers=workers, shard=shard, desc="sampling frames",
                         failures_path=out / f"failures{shard_suffix(shard)}.jsonl", unlisted=scan.problems)
    print(summary.format())
    return summary


def main(argv: list[str] | None = None) -> RunSummary:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--root", type=Path, required=True, help="folder holding idNNNNN/VIDEO_ID/.../*.jpg")
    parser.add_argument("--out", type=Path, required=True, help="output folder for idNNNNN/VIDEO_ID/NNNN.jpg")
    parser.add_argument("--frames-per-video", type=bounded(int, 0), default=32,
                        help="evenly spaced frames per video (default 32; 0 = every frame)")
    add_run_arguments(parser)
    args = parser.parse_args(argv)
    return sample_frame(args.root, args.out, args.frames_per_video, workers=args.workers, shard=args.shard,
                        video_depth=args.video_depth)


if __name__ == "__main__":
    main()
