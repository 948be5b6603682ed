"""Costs of the data layer at VoxCeleb2 scale, on a synthetic store and clip tree of that size. Prints JSON.

    python bench/index_scale.py --work /tmp/vox2_scale                      # 145,569 videos, 1.1M clips
    python bench/index_scale.py --work /tmp/small --videos 10000 --clips 75000

Builds under ``--work`` (resumable, reused by later runs): a store ``store/`` with one ``meta.json`` per video (32
frames, with the provenance fields extract_landmark.py writes, ~2.5 KB each) and a VoxCeleb2-style tree ``mp4/``
of empty clip files (``idNNNNN/VIDEO/NNNNN.mp4``, the clips spread over the videos). Then measures:

- ``build_index_s``: ``dataset.store.build_index`` (threads 16, and 1 for comparison), ``index_mb`` its size;
- ``load_index_s``, ``meta_dataset_init_s``: parsing index.json, and a ``MetaDataset`` over it;
- ``from_store_first_s`` / ``from_store_next_ms``: the index lookup of ``FewShotDataset.from_store`` (first call
  parses the index, later calls reuse it), measured through ``dataset.store.lookup_video``;
- ``worker_mb``: memory a DataLoader worker gains for the dataset's video table, forked and spawned, after it
  has read every row (private bytes from /proc/PID/smaps_rollup), against the list of tuples it replaced;
- ``scan_full_s`` / ``scan_shard_s``: ``scan_videos`` of the clip tree, whole and one shard of 8.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import pickle
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dataset import store
from dataset.pipeline.videos import scan_videos

FRAMES = 32


def _video_names(videos: int) -> list[tuple[str, str]]:
    # VoxCeleb2 dev: 5,994 identities, ~24 videos each.
    identities = max(1, round(videos / 24.3))
    return [(f"id{n % identities:05d}", f"v{n:07d}") for n in range(videos)]


def build_store(work: Path, videos: int) -> Path:
    """The synthetic store (resumable: a video folder already there is kept)."""
    root = work / "store"
    store.open_store_for_writing(root, 256)
    meta = {"frames": FRAMES, "sources": [f"{i:05d}/00{i:03d}" for i in range(FRAMES)],
            "boxes": [[40.5, 30.25, 180.75, 190.5]] * FRAMES, "scores": [0.99] * FRAMES,
            "faces_found": [1] * FRAMES, "dropped_no_face": [], "problems": []}
    for identity, video in _video_names(videos):
        path = root / store.VIDEOS_DIR / identity / video / store.META_FILE
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"identity": identity, "video": video, **meta}))
    return root


def build_tree(work: Path, videos: int, clips: int) -> Path:
    """The synthetic clip tree of empty files (resumable)."""
    tree = work / "mp4"
    for n, (identity, video) in enumerate(_video_names(videos)):
        folder = tree / identity / video
        folder.mkdir(parents=True, exist_ok=True)
        for clip in range(clips // videos + (n < clips % videos)):
            (folder / f"{clip + 1:05d}.mp4").touch()
    return tree


def _private_mb() -> float:
    fields = {}
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines()[1:]:
        name, value = line.split(":")
        fields[name] = int(value.split()[0])
    return (fields["Private_Clean"] + fields["Private_Dirty"]) / 1024


def _touch_rows(table, queue) -> None:
    before = _private_mb()
    for i in range(len(table)):
        table[i]
    queue.put(_private_mb() - before)


def _touch_pickled(blob: bytes, queue) -> None:
    before = _private_mb()
    table = pickle.loads(blob)
    for i in range(len(table)):
        table[i]
    queue.put(_private_mb() - before)


def worker_memory(table) -> dict:
    """Private MB a forked worker gains reading every row, and a spawned one unpickling the table and reading it."""
    out = {}
    fork, spawn = multiprocessing.get_context("fork"), multiprocessing.get_context("spawn")
    queue = fork.Queue()
    process = fork.Process(target=_touch_rows, args=(table, queue))
    process.start()
    out["fork"] = round(queue.get(), 1)
    process.join()
    queue = spawn.Queue()
    process = spawn.Process(target=_touch_pickled, args=(pickle.dumps(table), queue))
    process.start()
    out["spawn"] = round(queue.get(), 1)
    process.join()
    out["pickled_mb"] = round(len(pickle.dumps(table)) / 2 ** 20, 1)
    return out


def timed(function, *args, **kwargs):
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, round(time.perf_counter() - start, 3)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="folder for the synthetic store and clip tree")
    parser.add_argument("--videos", type=int, default=145_569, help="videos (default: VoxCeleb2 dev, 145,569)")
    parser.add_argument("--clips", type=int, default=1_092_009, help="clips (default: VoxCeleb2 dev, 1,092,009)")
    args = parser.parse_args(argv)
    root, build_s = timed(build_store, args.work, args.videos)
    result = {"videos": args.videos, "clips": args.clips, "synthetic_store_s": build_s}
    os.sync()
    _, result["build_index_s_threads_1"] = timed(store.build_index, root, threads=1)
    index, result["build_index_s"] = timed(store.build_index, root, threads=16)
    result["index_mb"] = round((root / store.INDEX_FILE).stat().st_size / 2 ** 20, 1)
    _, result["load_index_s"] = timed(store.load_index, root)
    dataset, result["meta_dataset_init_s"] = timed(store.MetaDataset, root, "train", 8)
    key = f"{index['videos'][-1]['identity']}/{index['videos'][-1]['video']}"
    _, result["from_store_first_s"] = timed(store.lookup_video, root, key)
    start = time.perf_counter()
    for entry in index["videos"][:50]:
        store.lookup_video(root, f"{entry['identity']}/{entry['video']}")
    result["from_store_next_ms"] = round(1000 * (time.perf_counter() - start) / 50, 3)
    tuples = [(e["path"], e["frames"], e["video_index"], e["identity"]) for e in index["videos"]
              if e["split"] == "train"]
    del index
    result["worker_mb"] = {"video_table": worker_memory(dataset.videos), "list_of_tuples": worker_memory(tuples)}
    print(json.dumps(result), flush=True)  # the store's figures, before the slower clip tree
    tree, result["synthetic_tree_s"] = timed(build_tree, args.work, args.videos, args.clips)
    os.sync()
    scan, result["scan_full_s"] = timed(scan_videos, tree)
    result["scan_full_clips"] = sum(len(u.clips) for u in scan.units)
    shard, result["scan_shard_s"] = timed(scan_videos, tree, 2, (0, 8))
    result["scan_shard_videos"] = len(shard.units)
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
