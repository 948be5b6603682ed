"""Extracts N evenly spaced frames per VoxCeleb2 video, spread over all the clips of the video.

    python dataset/voxceleb2/extract_frames.py --root data/vox2/dev/mp4 --out data/vox2_frames \\
        --frames-per-video 32 --workers 8 [--shard 0/4]

Input: ``ROOT/idNNNNN/VIDEO_ID/NNNNN.mp4`` (several clips per video). Output, one folder per video:
``OUT/idNNNNN/VIDEO_ID/0000.jpg ...`` plus ``frames.json`` mapping each image to its clip and frame number. The
frames are spread over the video as if its clips were played one after another, in proportion to their lengths.

This step is optional: ``dataset/voxceleb1/extract_landmark.py`` also reads the clips directly. It is useful to
look at the frames, or to decode the videos on other machines than the ones running the detector.

A video's folder appears only when complete; a rerun skips existing folders and redoes unfinished ones.
Videos that fail (no readable frame) are listed in ``OUT/failures.jsonl`` with the reason; unreadable clips of an
otherwise good video are skipped and counted.
"""
from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from dataset.pipeline.output import encode_image, write_frame_folder
from dataset.pipeline.runner import RunSummary, add_run_arguments, bounded, run_videos, shard_suffix
from dataset.pipeline.videos import VideoUnit, sample_frames, scan_videos


def extract_video(unit: VideoUnit, *, out: Path, frames_per_video: int, suffix: str, quality: int) -> dict:
    """Writes the sampled frames of one video (the work function of the run)."""
    final = out / unit.identity / unit.video
    if final.is_dir():
        return {"status": "skipped"}
    sampled = sample_frames(unit, frames_per_video)
    if not sampled.frames:
        raise ValueError("no readable frame: " + "; ".join(sampled.problems or ["no clips"]))
    files = [(encode_image(image, suffix, quality), suffix, name) for name, image in sampled.frames]
    write_frame_folder(final, files)
    return {"status": "done", "stats": {"frames_written": len(files), "unreadable_clips_or_frames":
                                        len(sampled.problems)}}


def extract_frames(root: Path, out: Path, frames_per_video: int = 32, *, image_format: str = "jpg",
                   quality: int = 95, workers: int = 1, shard=None, video_depth: int = 2) -> RunSummary:
    """Runs the extraction over every video of ``root`` (in ``shard``); returns the summary."""
    out = Path(out)
    if frames_per_video < 0 or not 1 <= quality <= 100:
        raise ValueError(f"need frames_per_video >= 0 and 1 <= quality <= 100, got {frames_per_video}, {quality}")
    scan = scan_videos(root, video_depth, shard)
    units = [u for u in scan.units if u.clips]
    work = functools.partial(extract_video, out=out, frames_per_video=frames_per_video, suffix=f".{image_format}",
                             quality=quality)
    summary = run_videos(units, work, workers=workers, shard=shard, desc="extracting frames",
                         failures_path=out / f"failures{shard_suffix(shard)}.jsonl", unlisted=scan.problems)
    print(summary.format())
    return summary


def main(argv: list[str] | None = None) -> RunSummary:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--root", type=Path, required=True, help="folder holding idNNNNN/VIDEO_ID/NNNNN.mp4")
    parser.add_argument("--out", type=Path, required=True, help="output folder for idNNNNN/VIDEO_ID/NNNN.jpg")
    parser.add_argument("--frames-per-video", type=bounded(int, 0), default=32,
                        help="evenly spaced frames per video, over all its clips (default 32; 0 = every frame)")
    parser.add_argument("--format", dest="image_format", choices=["jpg", "png"], default="jpg",
                        help="image format of the written frames (default jpg)")
    parser.add_argument("--quality", type=bounded(int, 1, 100), default=95, help="JPEG quality (default 95)")
    add_run_arguments(parser)
    args = parser.parse_args(argv)
    return extract_frames(args.root, args.out, args.frames_per_video, image_format=args.image_format,
                          quality=args.quality, workers=args.workers, shard=args.shard,
                          video_depth=args.video_depth)


if __name__ == "__main__":
    main()
