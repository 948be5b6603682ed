"""Resumable, shardable, parallel per-video runs shared by every preprocessing command.

A command is a function ``work(unit) -> dict`` applied to every video of its input. ``run_videos`` owns the
rest, identically for all commands:

- ``--shard i/n`` keeps the videos whose stable hash of ``identity/video`` falls in shard i. The hash does not
  depend on what else a machine sees, so n machines listing the same tree split it exactly once.
- ``--workers N`` runs N spawned processes. Spawn, not fork: a forked child of a process holding threads
  (OpenCV, OpenMP) or a CUDA context can deadlock. A worker that dies outright (a segfault in a decoder, the
  out-of-memory killer) fails only the video it was on: the pool is rebuilt and the run goes on.
- An exception raised for one video is caught, recorded with the reason in the failure report (one JSON line
  per video, written as it happens), and the run goes on. A failed video leaves no output, so a rerun retries it.
- Resuming is the commands' part: each writes a video's output under a staging name and renames it into place
  (``output.staged_dir``), so a video either has complete output or none, and returns ``status="skipped"`` when its
  output already exists.

``work`` returns ``{"key": ..., "status": "done" | "skipped", "stats": {name: int}}``; the stats of all
videos are summed into the run's summary.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import json
import multiprocessing
import os
import signal
import sys
import threading
import time
import traceback
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import cv2
from tqdm import tqdm

from dataset.pipeline.videos import VideoUnit, in_shard  # noqa: F401  (in_shard: part of this module's API)

Shard = tuple[int, int]


# ----------------------------------------------------------------------------------------------------------------
# Command-line options shared by every command
# ----------------------------------------------------------------------------------------------------------------


def parse_shard(text: str) -> Shard:
    """``"1/4"`` -> ``(1, 4)``; an argparse ``type``."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard expects i/n such as 0/4, got {text!r}") from None
    if count < 1 or not 0 <= index < count:
        raise argparse.ArgumentTypeError(f"--shard {text}: need 0 <= i < n")
    return index, count


def bounded(kind: type, low: float | None = None, high: float | None = None, *, above: float | None = None):
    """An argparse ``type`` that converts with ``kind`` and refuses values outside ``[low, high]`` (or not
    strictly ``above``): an option out of range must stop the command before it writes anything, not fail every
    video or store garbage."""
    def convert(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind.__name__}, got {text!r}") from None
        if value != value or (low is not None and value < low) or (high is not None and value > high) \
                or (above is not None and value <= above):
            bounds = [f"> {above}" if above is not None else f">= {low}" if low is not None else "",
                      f"<= {high}" if high is not None else ""]
            raise argparse.ArgumentTypeError(f"{text} is out of range (must be {' and '.join(b for b in bounds if b)})")
        return value
    convert.__name__ = kind.__name__  # argparse names the type in its messages
    return convert


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds ``--workers``, ``--shard`` and ``--video-depth``."""
    parser.add_argument("--workers", type=bounded(int, 1), default=1,
                        help="worker processes, one video at a time each (default 1: run in this process)")
    parser.add_argument("--shard", type=parse_shard, default=None, metavar="I/N",
                        help="process only shard I of N (stable hash of identity/video); run I=0..N-1 on "
                             "N machines to cover every video exactly once")
    parser.add_argument("--video-depth", type=bounded(int, 2), default=2, metavar="D",
                        help="path depth of a video folder under --root: 2 for idNNNNN/VIDEO_ID (default), "
                             "3 for layouts with one folder in between such as NAME/1.6/VIDEO_ID")


def shard_suffix(shard: Shard | None) -> str:
    """File-name suffix that keeps the reports of concurrent shards apart: ``""`` or ``".shard-1-of-4"``."""
    return "" if shard is None else f".shard-{shard[0]}-of-{shard[1]}"


# ----------------------------------------------------------------------------------------------------------------
# Running a command over videos
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class RunSummary:
    """What a run did: videos per status, summed per-video stats, and the failures with their reasons."""

    counts: Counter = field(default_factory=Counter)
    totals: Counter = field(default_factory=Counter)
    failures: list[dict] = field(default_factory=list)
    # Paths the listing of the input could not read (``VideoScan.problems``): what they hold was not processed.
    unlisted: list[str] = field(default_factory=list)

    def add(self, result: dict) -> None:
        self.counts[result["status"]] += 1
        self.totals.update(result.get("stats", {}))
        if result["status"] == "failed":
            self.failures.append(result)

    def format(self) -> str:
        lines = [f"videos: {self.counts['done']} done, {self.counts['skipped']} skipped (already done), "
                 f"{self.counts['failed']} failed"]
        if self.unlisted:
            lines.append(f"  NOT LISTED ({len(self.unlisted)} paths of the input could not be read):")
            lines += [f"    {problem}" for problem in self.unlisted[:20]]
        lines += [f"  {name}: {value}" for name, value in sorted(self.totals.items())]
        lines += [f"  FAILED {f['key']}: {f['error']}" for f in self.failures[:20]]
        if len(self.failures) > 20:
            lines.append(f"  ... and {len(self.failures) - 20} more failures")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"counts": dict(self.counts), "totals": dict(self.totals),
                "failures": [f["key"] for f in self.failures], "unlisted": list(self.unlisted)}


def _failure(unit: VideoUnit, error: str, trace: str = "") -> dict:
    return {"key": unit.key, "status": "failed", "error": error, "traceback": trace}


def _call(work: Callable[[VideoUnit], dict], unit: VideoUnit) -> dict:
    """Runs ``work`` on one video; an exception becomes a failure record instead of stopping the run."""
    try:
        result = work(unit)
    except Exception as err:  # one bad video must never stop a run: record it and go on
        return _failure(unit, f"{type(err).__name__}: {err}", traceback.format_exc(limit=-3))
    result.setdefault("key", unit.key)
    return result


def _die_with_parent(parent: int) -> None:
    """Ends this worker process as soon as ``parent`` (the command's main process) is gone.

    A pool's workers only leave when the pool tells them to; after a ``kill -9`` of the main process nobody
    does, and they (and the resource tracker, which waits for every holder of its pipe) would run for good,
    keeping a GPU's memory with face_alignment. On Linux the kernel sends SIGKILL on the parent's death
    (``PR_SET_PDEATHSIG``); a watchdog thread that notices the re-parenting covers other systems, and the
    instant between the fork and the prctl call."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent:
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()


def _init_worker(parent: int, initializer: Callable | None, initargs: tuple) -> None:
    _die_with_parent(parent)
    # Each worker handles one video at a time on its own core: library thread pools would only oversubscribe.
    cv2.setNumThreads(1)
    if initializer is not None:
        initializer(*initargs)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


def _iterate_parallel(units: Sequence[VideoUnit], work: Callable, workers: int, initializer: Callable | None,
                      initargs: tuple) -> Iterator[dict]:
    """Results of ``work`` over ``units`` from a spawned pool, rebuilt whenever a worker process dies.

    The videos in flight when a worker died are suspects: each is retried alone in a fresh pool, so a crash
    fails exactly the video that causes it and the innocent ones complete.
    """
    context = multiprocessing.get_context("spawn")
    pending, suspects = list(reversed(units)), []
    while pending or suspects:
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                                 initargs=(os.getpid(), initializer, initargs)) as pool:
            in_flight, alone = {}, False
            try:
                while pending or suspects or in_flight:
                    if suspects and not in_flight:
                        in_flight[pool.submit(_call, work, suspects[-1])] = suspects[-1]
                        suspects.pop()
                        alone = True
                    # A bounded number in flight, so that a dead worker makes few suspects.
                    while not suspects and pending and len(in_flight) < 2 * workers:
                        in_flight[pool.submit(_call, work, pending[-1])] = pending[-1]
                        pending.pop()
                        alone = False
                    finished, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                    for future in finished:
                        result = future.result()
                        del in_flight[future]
                        yield result
            except BrokenProcessPool:
                if alone:
                    yield _failure(next(iter(in_flight.values())),
                                   "the worker process died on this video (crash or out of memory)")
                else:
                    suspects += in_flight.values()


def run_videos(units: Sequence[VideoUnit], work: Callable[[VideoUnit], dict], *, workers: int = 1,
               shard: Shard | None = None, failures_path: Path | None = None, desc: str = "videos",
               initializer: Callable | None = None, initargs: tuple = (),
               on_result: Callable[[dict], None] | None = None, unlisted: Sequence[str] = ()) -> RunSummary:
    """Applies ``work`` to the videos of ``units`` in ``shard``, with a progress bar; returns the summary.

    ``work``, ``initializer`` and ``initargs`` must be picklable (module-level functions, ``functools.partial``)
    when ``workers > 1``. ``initializer`` runs once per worker process, e.g. to load a detector. Failures are
    appended to ``failures_path`` (rewritten at the start of each run, so it lists this run's failures) as JSON
    lines ``{"key", "error", "traceback"}``. ``on_result`` sees every result in the main process. ``unlisted``
    are the listing's problems (``VideoScan.problems``): they go into the summary and the failure report too.
    """
    selected = [u for u in units if in_shard(u.key, shard)]
    summary = RunSummary(unlisted=list(unlisted))
    if failures_path is not None:
        Path(failures_path).parent.mkdir(parents=True, exist_ok=True)
    with open(failures_path, "w") if failures_path is not None else contextlib.nullcontext() as failure_file:
        for problem in summary.unlisted:
            print(f"warning: {problem}", file=sys.stderr)
            if failure_file is not None:
                path, _, reason = problem.partition(": ")
                failure_file.write(json.dumps({"key": path, "error": reason, "traceback": ""}) + "\n")
        if workers > 1 and len(selected) > 1:
            results = _iterate_parallel(selected, work, min(workers, len(selected)), initializer, initargs)
        else:
            if initializer is not None:
                initializer(*initargs)
            results = (_call(work, unit) for unit in selected)
        bar = tqdm(results, total=len(selected), desc=desc, unit="video", dynamic_ncols=True)
        for result in bar:
            summary.add(result)
            if result["status"] == "failed" and failure_file is not None:
                failure_file.write(json.dumps({k: result[k] for k in ("key", "error", "traceback")}) + "\n")
                failure_file.flush()
            if on_result is not None:
                on_result(result)
            bar.set_postfix(done=summary.counts["done"], skipped=summary.counts["skipped"],
                            failed=summary.counts["failed"], refresh=False)
    return summary
