"""Finds corrupted clips in a VoxCeleb2-style tree ``ROOT/idNNNNN/VIDEO_ID/NNNNN.mp4``; never deletes anything.

    python dataset/voxceleb2/clean_data.py --root data/vox2/dev/mp4 --report data/vox2_clean.json --workers 8
    python dataset/voxceleb2/clean_data.py --root data/vox2/dev/mp4 --report data/vox2_clean.json \\
        --quarantine data/vox2_quarantine

Every frame of every clip is decoded with cv2.VideoCapture. A clip is bad when it cannot be opened (a
truncated mp4 usually loses its index, the ``moov`` atom), has no frames, or decodes fewer frames than its
container claims (CAP_PROP_FRAME_COUNT; a truncated file with its index at the front, or decode errors part-way).

By default the bad clips are only listed, in the summary and in ``--report`` (JSON). ``--quarantine DIR`` moves
them to DIR under the same relative path (never overwriting: a name taken there gets a ``.1``, ``.2`` ...).

Resuming: each checked video is appended to ``<report>.journal.jsonl`` as soon as it is done, with the resolved
root it was found under; a rerun on the same root skips the videos found there (delete the journal to check
everything again) and rebuilds the report from it. A rerun with ``--quarantine`` after a listing run moves the
clips listed before without decoding them again. Records of another root are never taken for this one's: two
trees with the same identity and video names (dev and test, or a copy) share a report name safely.
"""
from __future__ import annotations

import argparse
import functools
import json
import shutil
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import cv2

from dataset.pipeline.output import atomic_write_json
from dataset.pipeline.runner import add_run_arguments, bounded, run_videos, shard_suffix
from dataset.pipeline.videos import VideoUnit, scan_videos, unreadable_reason


def check_clip(path: Path, max_missing_frames: int = 0) -> dict:
    """Decodes every frame of one clip; returns ``{"ok", "reason", "claimed", "decoded"}``."""
    unreadable = unreadable_reason(path)
    if unreadable:
        return {"ok": False, "reason": f"cannot read the file ({unreadable})", "claimed": 0, "decoded": 0}
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            return {"ok": False, "reason": "cannot open (not a video, or truncated: container index missing)",
                    "claimed": 0, "decoded": 0}
        claimed = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        decoded, shape = 0, None
        while True:
            ok, frame = capture.read()
            if not ok or frame is None:
                break
            if shape is not None and frame.shape != shape:
                return {"ok": False, "reason": f"frame {decoded} has shape {frame.shape}, earlier frames {shape}",
                        "claimed": claimed, "decoded": decoded}
            shape = frame.shape
            decoded += 1
    finally:
        capture.release()
    if decoded == 0:
        reason = "no frames decoded"
    elif decoded < claimed - max_missing_frames:
        reason = f"decoded {decoded} of {claimed} frames (truncated, or decode errors part-way)"
    else:
        reason = ""
    return {"ok": not reason, "reason": reason, "claimed": claimed, "decoded": decoded}


def check_video(unit: VideoUnit, max_missing_frames: int = 0) -> dict:
    """Checks every clip of one video (the work function of the run)."""
    clips = [{"clip": relative, **check_clip(unit.path(relative), max_missing_frames)} for relative in unit.clips]
    bad = sum(not c["ok"] for c in clips)
    return {"key": unit.key, "status": "done", "clips": clips, "stats": {"clips_checked": len(clips),
                                                                         "bad_clips": bad}}


def read_journal(path: Path, root: str) -> tuple[dict[str, dict], dict[str, str]]:
    """Checked videos by key, and the moves already made (clip -> destination), of ``root`` (resolved) only.

    A run killed while appending leaves at most its last line cut short; such a line is ignored. Records without
    a root (journals of earlier versions) cannot be told apart and are ignored too: those videos are checked
    again.
    """
    checked, moved = {}, {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not isinstance(record, dict) or record.get("root") != root:
                continue
            if "moved" in record:
                moved[record["moved"]] = record["to"]
            else:
                checked[record["key"]] = record
    return checked, moved


def _free_destination(path: Path) -> Path:
    candidate, n = path, 0
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}.{n}")
    return candidate


def quarantine_clips(root: Path, quarantine: Path, clips: list[str], journal, journal_root: str) -> dict[str, str]:
    """Moves the clips (relative to root) that are still in place to ``quarantine``; returns clip -> destination."""
    moved = {}
    for relative in clips:
        source = root / relative
        if not source.exists():
            continue
        destination = _free_destination(quarantine / relative)
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(source), str(destination))
        moved[relative] = str(destination)
        journal.write(json.dumps({"root": journal_root, "moved": relative, "to": str(destination)}) + "\n")
        journal.flush()
    return moved


def clean(root: Path, report: Path, quarantine: Path | None = None, *, workers: int = 1, shard=None,
          video_depth: int = 2, max_missing_frames: int = 0) -> dict:
    """Checks the clips under ``root``, writes ``report`` and returns it (a dict)."""
    root, report = Path(root), Path(report)
    journal_path = report.with_name(report.name + ".journal.jsonl")
    resolved = str(root.resolve())
    checked, moved = read_journal(journal_path, resolved)
    scan = scan_videos(root, video_depth, shard)
    units = [u for u in scan.units if u.clips]
    todo = [u for u in units if u.key not in checked]
    report.parent.mkdir(parents=True, exist_ok=True)
    with open(journal_path, "a") as journal:
        def record(result: dict) -> None:
            if result["status"] == "done":
                checked[result["key"]] = result
                journal.write(json.dumps({"root": resolved, **result}) + "\n")
                journal.flush()

        summary = run_videos(todo, functools.partial(check_video, max_missing_frames=max_missing_frames),
                             workers=workers, desc="checking clips", on_result=record,
                             failures_path=report.with_name(report.stem + ".failures.jsonl"), unlisted=scan.problems)
        bad = [clip for video in checked.values() for clip in video["clips"] if not clip["ok"]]
        if quarantine is not None:
            moved.update(quarantine_clips(root, Path(quarantine), [c["clip"] for c in bad], journal, resolved))
    summary.counts["skipped"] += len(units) - len(todo)
    result = {
        "root": str(root),
        "checked_videos": len(checked),
        "checked_clips": sum(len(v["clips"]) for v in checked.values()),
        "bad_clips": [{**clip, "quarantined_to": moved.get(clip["clip"])} for clip in bad],
        "failed_videos": [{"key": f["key"], "error": f["error"]} for f in summary.failures],
        "unlisted": scan.problems,
        "run": summary.to_dict(),
    }
    atomic_write_json(report, result)
    print(summary.format())
    print(f"bad clips: {len(bad)} of {result['checked_clips']} checked"
          + (f", {sum(c['clip'] in moved for c in bad)} in quarantine at {quarantine}" if quarantine else ""))
    for clip in bad[:20]:
        print(f"  {clip['clip']}: {clip['reason']}")
    print(f"report: {report}")
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--root", type=Path, required=True, help="folder holding idNNNNN/VIDEO_ID/NNNNN.mp4")
    parser.add_argument("--report", type=Path, default=Path("clean_report.json"),
                        help="JSON report to write (default clean_report.json; a shard adds .shard-i-of-n)")
    parser.add_argument("--quarantine", type=Path, default=None,
                        help="move bad clips here, keeping their relative paths (default: only list them)")
    parser.add_argument("--max-missing-frames", type=bounded(int, 0), default=0,
                        help="frames a clip may decode fewer than its container claims and still pass (default 0)")
    add_run_arguments(parser)
    args = parser.parse_args(argv)
    report = args.report
    if args.shard is not None:
        report = report.with_name(report.stem + shard_suffix(args.shard) + report.suffix)
    return clean(args.root, report, args.quarantine, workers=args.workers, shard=args.shard,
                 video_depth=args.video_depth, max_missing_frames=args.max_missing_frames)


if __name__ == "__main__":
    main()
