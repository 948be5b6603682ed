"""Training-data throughput: meta-learning episodes per second read from a dataset store. Prints JSON.

    python bench/dataloader.py --data data/vox2_store --workers 4 --k 8 --size 256

Measures, on the ``MetaDataset`` of the train split (falling back to test when train is empty):

- ``per_worker_samples_per_s``: episodes (K+1 frames + landmark images) per second in one process, i.e. what
  one DataLoader worker delivers (``_uint8``: with ``as_uint8=True``); ``per_sample_ms`` splits one episode
  into reading + decoding the frames and drawing the landmark images;
- ``total_samples_per_s``: a DataLoader with ``--workers`` processes and ``--batch-size``, after its first batch
  (process start-up is not throughput), sampling with replacement so that a small store has no epoch ends;
  ``total_samples_per_s_uint8`` the same with ``as_uint8=True`` (a quarter of the bytes through shared memory).

Compare with the training step's appetite: a 256x256, K=8 meta-learning step costs about 1.56 TFLOP per episode
(../shared/SPEC.md), so one GPU at a realistic 200 TFLOP/s consumes about 130 episodes/s.
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
from torch.utils.data import DataLoader, RandomSampler

from dataset.landmarks import draw_landmarks
from dataset.store import MetaDataset, StoreError, read_frames, read_points


def _dataset(args: argparse.Namespace, as_uint8: bool = False) -> MetaDataset:
    options = dict(k_shots=args.k, image_size=args.size, seed=0, as_uint8=as_uint8)
    try:
        return MetaDataset(args.data, "train", **options)
    except StoreError:
        return MetaDataset(args.data, "test", **options)


def per_sample_ms(dataset: MetaDataset, samples: int) -> dict:
    """Milliseconds per episode spent reading + decoding frames and drawing landmark images."""
    rng = np.random.default_rng(0)
    read = draw = 0.0
    for n in range(samples):
        path, count, _, _ = dataset.videos[n % len(dataset)]
        chosen = rng.choice(count, dataset.k_shots + 1, replace=False)
        start = time.perf_counter()
        read_frames(dataset.root / path, dataset.encoding, chosen)
        points = read_points(dataset.root / path)[chosen] * (dataset.image_size / dataset.stored_size)
        middle = time.perf_counter()
        for p in points:
            draw_landmarks(p, dataset.image_size, dataset.thickness)
        draw += time.perf_counter() - middle
        read += middle - start
    return {"read_and_decode": 1000 * read / samples, "draw_landmarks": 1000 * draw / samples}


def single_process(dataset: MetaDataset, seconds: float) -> float:
    dataset[0]
    start, n = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        dataset[n % len(dataset)]
        n += 1
    return n / (time.perf_counter() - start)


def with_loader(dataset: MetaDataset, workers: int, batch_size: int, seconds: float) -> float:
    sampler = RandomSampler(dataset, replacement=True, num_samples=1 << 30,
                            generator=torch.Generator().manual_seed(0))
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers)
    n, start = 0, None
    for batch in loader:
        if start is None:  # the first batch pays for starting the workers
            start = time.perf_counter()
            continue
        n += len(batch["video_index"])
        if time.perf_counter() - start >= seconds:
            break
    return n / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="dataset store")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes (default 2)")
    parser.add_argument("--k", type=int, default=8, help="K source frames per episode (default 8)")
    parser.add_argument("--size", type=int, default=256, help="image size of the episodes (default 256)")
    parser.add_argument("--batch-size", type=int, default=8, help="episodes per batch (default 8)")
    parser.add_argument("--seconds", type=float, default=10.0, help="measuring time per measurement (default 10)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    dataset = _dataset(args)
    result = {
        "data": str(args.data), "split": dataset.split, "videos": len(dataset), "encoding": dataset.encoding,
        "stored_size": dataset.stored_size, "size": dataset.image_size, "k": args.k,
        "per_sample_ms": {k: round(v, 2) for k, v in per_sample_ms(dataset, 50).items()},
        "per_worker_samples_per_s": round(single_process(dataset, args.seconds), 1),
        "per_worker_samples_per_s_uint8": round(single_process(_dataset(args, as_uint8=True), args.seconds), 1),
        "workers": args.workers, "batch_size": args.batch_size,
        "total_samples_per_s": round(with_loader(dataset, args.workers, args.batch_size, args.seconds), 1),
        "total_samples_per_s_uint8": round(with_loader(_dataset(args, as_uint8=True), args.workers,
                                                       args.batch_size, args.seconds), 1),
    }
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
