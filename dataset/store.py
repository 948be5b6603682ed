"""The training dataset: face crops and their 68 landmarks per video, indexed for O(1) sample reads.

Written by ``dataset/voxceleb1/extract_landmark.py``; read by ``MetaDataset`` (meta-learning episodes) and
``FewShotDataset`` (fine-tuning on one person). Layout of a store ``ROOT``::

    ROOT/store.json                      {"format", "version", "image_size", "encoding", "quality"}
    ROOT/index.json                      one entry per video: identity, video, path, frames, split, video_index
    ROOT/videos/IDENTITY/VIDEO/
        points.npy                       float32 (N, 68, 2) landmarks, pixel coordinates of the stored crop
        frames.bin + offsets.npy         encoding "jpeg": the N crops as JPEG files back to back, and int64
                                         (N + 1,) byte offsets (frame i is bytes offsets[i]:offsets[i+1])
        frames.npy                       encoding "raw": uint8 (N, S, S, 3) RGB, memory-mapped when read
        meta.json                        provenance: source frame names, boxes, scores, dropped frames

Why this design:

* One folder per video, filled under a hidden staging name and renamed into place, is what makes
  preprocessing resumable and shardable: a video folder exists only when complete, and no shared file is
  appended to by concurrent workers or machines.
* ``index.json`` is rebuilt from the video folders at the end of a run (or with ``python -m dataset.store
  index ROOT`` after all shards finished) and written atomically. A loader reads it once; a sample then costs
  opening three small files of one video and reading K+1 byte ranges, never a folder scan.
* Nothing is held open: each ``__getitem__`` opens what it reads, so the datasets pickle small and any number
  of DataLoader workers read the store concurrently.
* JPEG (quality 95) is the default encoding: about 9x smaller than raw pixels (demo store at 256x256: 21 KB
  against 196 KB a frame), so VoxCeleb2 (145k videos x 32 frames) takes about 100 GB instead of 900 GB.
  Decoding costs CPU. Measured with ``bench/dataloader.py`` on the 2-core development machine, 256x256, K=8:
  reading + decoding an episode's 9 frames takes about 4 ms as JPEG and 0.6 ms raw, drawing its 9 landmark
  images 0.35 ms; one worker makes about 130 episodes/s from JPEG and 210 from raw (200 and 360 with
  ``as_uint8``); a DataLoader with 2 workers delivers 100 (JPEG) and 110 (raw) float episodes/s, or 245 and 320
  with ``as_uint8``: moving the 14 MB float32 episodes through shared memory costs more than decoding. A GPU
  step consumes on the order of 100-250 episodes/s on one H100 (1.56 TFLOP each, at 20-40% of the bf16 peak),
  so 2-4 JPEG workers per GPU keep up and the 9x disk saving wins. ``--encoding raw`` is there for small
  stores on fast disks.

Splits are by identity, so that no person is in both: an identity is in the test split if it is listed in
``test_identities`` (e.g. VoxCeleb's own test identities, one per line), or, without such a list, if the
SHA-1 of its name falls in the first ``test_fraction`` of the hash range (deterministic, and stable when videos
are added). ``video_index`` numbers the videos of each split 0..n-1 in (identity, video) order; for the train
split it is the row of the discriminator's embedding matrix W (paper Sec. 3.2), so W and the index belong
together: rebuilding the index with more videos renumbers the rows.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from dataset.landmarks import draw_landmarks, flip_landmarks
from dataset.pipeline.output import atomic_write_json, atomic_write_text, encode_image, staged_dir

STORE_FORMAT = "talking-head-store"
STORE_VERSION = 1
ENCODINGS = ("jpeg", "raw")
VIDEOS_DIR = "videos"
INDEX_FILE = "index.json"
INFO_FILE = "store.json"
META_FILE = "meta.json"
DEFAULT_TEST_FRACTION = 0.05


class StoreError(ValueError):
    """A store is missing, of another format, or does not match the options it is opened or extended with."""


# ----------------------------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------------------------


def open_store_for_writing(root: Path, image_size: int, encoding: str = "jpeg", quality: int = 95) -> dict:
    """Creates ``root/store.json``, or checks that an existing store has the same image size and encoding."""
    if encoding not in ENCODINGS:
        raise StoreError(f"unknown encoding {encoding!r}; valid encodings: {', '.join(ENCODINGS)}")
    info = {"format": STORE_FORMAT, "version": STORE_VERSION, "image_size": image_size, "encoding": encoding,
            "quality": quality}
    path = Path(root) / INFO_FILE
    if path.is_file():
        existing = read_store_info(root)
        for key in ("image_size", "encoding"):
            if existing[key] != info[key]:
                raise StoreError(f"{root} holds a store with {key}={existing[key]!r}, asked for {info[key]!r}; "
                                 "write to another folder or pass the store's own setting")
        return existing
    atomic_write_json(path, info)
    return info


def read_store_info(root: Path) -> dict:
    path = Path(root) / INFO_FILE
    if not path.is_file():
        raise StoreError(f"{root} is not a dataset store (no {INFO_FILE}); write one with "
                         "dataset/voxceleb1/extract_landmark.py")
    info = json.loads(path.read_text())
    if info.get("format") != STORE_FORMAT or info.get("version") != STORE_VERSION:
        raise StoreError(f"{path}: unsupported store format {info.get('format')!r} "
                         f"version {info.get('version')!r} (this code reads version {STORE_VERSION})")
    return info


def video_dir(root: Path, identity: str, video: str) -> Path:
    return Path(root) / VIDEOS_DIR / identity / video


def write_video(root: Path, info: dict, identity: str, video: str, frames: Sequence[np.ndarray],
                points: np.ndarray, meta: dict) -> Path:
    """Writes one video's crops (RGB uint8 SxSx3) and points ((N, 68, 2)) atomically; returns its folder.

    A video with no frame is written too (``frames: 0``), so that a rerun knows it was done.
    """
    size = info["image_size"]
    points = np.asarray(points, np.float32).reshape(-1, 68, 2)
    if len(frames) != len(points) or any(f.shape != (size, size, 3) or f.dtype != np.uint8 for f in frames):
        raise ValueError(f"expected {len(points)} uint8 {size}x{size}x3 frames matching the points")
    final = video_dir(root, identity, video)
    with staged_dir(final) as staging:
        if info["encoding"] == "jpeg":
            blobs = [encode_image(frame, ".jpg", info["quality"]) for frame in frames]
            np.save(staging / "offsets.npy", np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64))
            (staging / "frames.bin").write_bytes(b"".join(blobs))
        else:
            stacked = np.stack(frames) if len(frames) else np.zeros((0, size, size, 3), np.uint8)
            np.save(staging / "frames.npy", stacked)
        np.save(staging / "points.npy", points)
        meta = {"identity": identity, "video": video, "frames": len(frames), **meta}
        (staging / META_FILE).write_text(json.dumps(meta, indent=1) + "\n")
    return final


# ----------------------------------------------------------------------------------------------------------------
# Index and splits
# ----------------------------------------------------------------------------------------------------------------


def identity_split(identity: str, test_identities: set[str] | None = None,
                   test_fraction: float = DEFAULT_TEST_FRACTION) -> str:
    """"train" or "test" for an identity (see the module docstring)."""
    if test_identities is not None:
        return "test" if identity in test_identities else "train"
    position = int.from_bytes(hashlib.sha1(identity.encode("utf-8")).digest()[:8], "big") / 2.0 ** 64
    return "test" if position < test_fraction else "train"


def parse_identities(text: str) -> set[str]:
    """Identities from a file (one per line; the first comma- or space-separated field; # comments) or from a
    comma-separated list. VoxCeleb's test identities: ``grep test vox2_meta.csv | cut -d, -f1``."""
    path = Path(text)
    lines = path.read_text().splitlines() if path.is_file() else text.split(",")
    identities = set()
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line:
            identities.add(line.replace(",", " ").split()[0])
    return identities


def build_index(root: Path, test_identities: set[str] | None = None,
                test_fraction: float = DEFAULT_TEST_FRACTION) -> dict:
    """Scans the video folders of a store and writes ``index.json`` atomically; returns the index.

    Videos without frames are left out. ``video_index`` numbers each split's videos in (identity, video) order.
    """
    root = Path(root)
    info = read_store_info(root)
    entries = []
    videos = root / VIDEOS_DIR
    for identity in sorted(os.listdir(videos)) if videos.is_dir() else []:
        if identity.startswith(".") or not (videos / identity).is_dir():
            continue
        for video in sorted(os.listdir(videos / identity)):
            meta_path = videos / identity / video / META_FILE
            if video.startswith(".") or not meta_path.is_file():
                continue
            frames = json.loads(meta_path.read_text())["frames"]
            if frames > 0:
                entries.append({"identity": identity, "video": video, "path": f"{VIDEOS_DIR}/{identity}/{video}",
                                "frames": frames, "split": identity_split(identity, test_identities, test_fraction)})
    counters = {"train": 0, "test": 0}
    for entry in entries:
        entry["video_index"] = counters[entry["split"]]
        counters[entry["split"]] += 1
    header = {"format": STORE_FORMAT, "version": STORE_VERSION, "image_size": info["image_size"],
              "encoding": info["encoding"],
              "split": {"test_identities": sorted(test_identities) if test_identities is not None else None,
                        "test_fraction": None if test_identities is not None else test_fraction},
              "num_videos": counters,
              "num_identities": {s: len({e["identity"] for e in entries if e["split"] == s}) for s in counters}}
    # One video per line keeps a 150k-video index readable with grep and diff.
    body = ",\n".join(json.dumps(entry) for entry in entries)
    text = json.dumps(header)[:-1] + ', "videos": [\n' + body + "\n]}\n"
    atomic_write_text(root / INDEX_FILE, text)
    return {**header, "videos": entries}


def indexed_units(root: Path, units_root: Path | None = None) -> list:
    """The videos of ``root``'s index as pipeline units (``dataset.pipeline.videos.VideoUnit``) rooted at
    ``units_root`` (default: the store itself): what commands that add files to a store's videos iterate over."""
    from dataset.pipeline.videos import VideoUnit

    base = str(units_root if units_root is not None else root)
    return [VideoUnit(entry["identity"], entry["video"], base) for entry in load_index(root)["videos"]]


def load_index(root: Path) -> dict:
    path = Path(root) / INDEX_FILE
    if not path.is_file():
        raise StoreError(f"{root} has no {INDEX_FILE}; build it with: python -m dataset.store index {root}")
    index = json.loads(path.read_text())
    if index.get("format") != STORE_FORMAT or index.get("version") != STORE_VERSION:
        raise StoreError(f"{path}: unsupported index format/version")
    return index


# ----------------------------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------------------------


def read_points(folder: Path) -> np.ndarray:
    return np.load(Path(folder) / "points.npy")


def read_frames(folder: Path, encoding: str, indices: Sequence[int]) -> list[np.ndarray]:
    """Frames ``indices`` of one stored video as RGB uint8 SxSx3 arrays (one open file, one read per frame)."""
    folder = Path(folder)
    if encoding == "raw":
        frames = np.load(folder / "frames.npy", mmap_mode="r")
        return [np.array(frames[i]) for i in indices]
    offsets = np.load(folder / "offsets.npy")
    out = []
    with open(folder / "frames.bin", "rb") as f:
        for i in indices:
            f.seek(int(offsets[i]))
            data = np.frombuffer(f.read(int(offsets[i + 1] - offsets[i])), np.uint8)
            image = cv2.imdecode(data, cv2.IMREAD_COLOR)
            if image is None:
                raise StoreError(f"{folder}: frame {i} does not decode")
            out.append(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
    return out


def resize_sample(frames: list[np.ndarray], points: np.ndarray, size: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Frames resized to ``size`` and points moved with them (pixel centres map as in ``cv2.resize``)."""
    stored = frames[0].shape[0] if frames else size
    if stored == size:
        return frames, points
    interpolation = cv2.INTER_AREA if size < stored else cv2.INTER_LINEAR
    frames = [cv2.resize(frame, (size, size), interpolation=interpolation) for frame in frames]
    return frames, ((points + 0.5) * (size / stored) - 0.5).astype(np.float32)


def scaled_thickness(thickness: int, size: int) -> int:
    """Landmark line width at ``size``, for a width given at 256x256 (as ``DataConfig.landmark_thickness``)."""
    return max(1, int(round(thickness * size / 256)))


def to_images_tensor(images: Sequence[np.ndarray], as_uint8: bool = False) -> torch.Tensor:
    """RGB uint8 HxWx3 images -> float tensor (N, 3, H, W) in [-1, 1] (or uint8 0..255 with ``as_uint8``)."""
    stacked = torch.from_numpy(np.ascontiguousarray(np.stack(images))).permute(0, 3, 1, 2).contiguous()
    return stacked if as_uint8 else to_unit_range(stacked)


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 images 0..255 -> float in [-1, 1]; for batches loaded with ``as_uint8``, on the training device."""
    return images.float().div_(127.5).sub_(1.0)


def _flip(frames: list[np.ndarray], points: np.ndarray, size: int) -> tuple[list[np.ndarray], np.ndarray]:
    return [frame[:, ::-1] for frame in frames], flip_landmarks(points, size).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------------
# Datasets
# ----------------------------------------------------------------------------------------------------------------


class MetaDataset(Dataset):
    """Meta-learning episodes (paper Sec. 3.2): K source frames + 1 target frame of one video per item.

    One item per video of ``split`` with at least K+1 frames. An item is a dict:

    - ``"frames"``: float (K+1, 3, S, S) in [-1, 1]; ``frames[:K]`` are the sources x_i(s), ``frames[K]`` the
      target x_i(t). The K+1 frames are distinct and drawn at random per call.
    - ``"landmarks"``: float (K+1, 3, S, S) in [-1, 1], landmark images y drawn from the stored points.
    - ``"points"``: float (K+1, 68, 2) landmarks in pixels of the returned frames.
    - ``"frame_indices"``: int64 (K+1,) the frames' positions in the stored video.
    - ``"video_index"``: the video's row of W (train split: 0..num_videos-1, stable for a given index.json).
    - ``"identity"``: the person's id.

    With probability ``flip_prob`` the whole episode is mirrored: images, and points through ``flip_landmarks``
    (left/right indices swapped). ``image_size`` resizes the stored crops (None keeps the stored size); the
    landmark line width ``landmark_thickness`` is given at 256x256 and scaled with the size.

    Reproducibility: item ``i`` depends only on ``(seed, epoch, i)`` through
    ``numpy.random.default_rng((seed, epoch, i))``, whatever the number of workers. A training loop calls
    ``dataset.set_epoch(epoch)`` before creating each epoch's DataLoader iterator (workers copy the dataset when
    the iterator starts, so with ``persistent_workers=True`` pass ``(index, epoch)`` pairs through a sampler
    instead: ``dataset[(i, epoch)]`` is the same item).

    ``as_uint8=True`` returns ``frames`` and ``landmarks`` as uint8 0..255 instead: a quarter of the bytes to
    move from the DataLoader workers (shared memory) and to the GPU, where ``to_unit_range`` converts them. A
    256x256 K=8 episode is 14 MB as float32, and moving that dominates loading (see bench/dataloader.py).
    """

    def __init__(self, root: str | Path, split: str = "train", k_shots: int = 8, image_size: int | None = None,
                 flip_prob: float = 0.5, landmark_thickness: int = 2, seed: int = 0, as_uint8: bool = False):
        if k_shots < 1:
            raise ValueError(f"k_shots must be at least 1, got {k_shots}")
        self.root = Path(root)
        index = load_index(self.root)
        if split not in index["num_videos"]:
            raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(index['num_videos'])}")
        self.split = split
        self.k_shots = k_shots
        self.encoding = index["encoding"]
        self.stored_size = index["image_size"]
        self.image_size = image_size or self.stored_size
        self.flip_prob = flip_prob
        self.thickness = scaled_thickness(landmark_thickness, self.image_size)
        self.seed = seed
        self.as_uint8 = as_uint8
        self.epoch = 0
        in_split = [e for e in index["videos"] if e["split"] == split]
        self._num_videos = len(in_split)
        # Compact tuples (path, frames, video_index, identity): small to pickle into every worker.
        self.videos = [(e["path"], e["frames"], e["video_index"], e["identity"]) for e in in_split
                       if e["frames"] >= k_shots + 1]
        if not self.videos:
            raise StoreError(f"{self.root}: no {split} video has at least K+1={k_shots + 1} frames "
                             f"({self._num_videos} {split} videos in the index)")

    @property
    def num_videos(self) -> int:
        """Videos in the split, including those too short for K+1 frames: the number of rows of W."""
        return self._num_videos

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, item: int | tuple[int, int]) -> dict:
        index, epoch = item if isinstance(item, tuple) else (item, self.epoch)
        path, count, video_index, identity = self.videos[index]
        rng = np.random.default_rng((self.seed, epoch, index))
        chosen = rng.choice(count, self.k_shots + 1, replace=False)
        # Drawn even when flip_prob is 0 or 1, so the frame choice never depends on flip_prob.
        flip = rng.random() < self.flip_prob
        folder = self.root / path
        frames = read_frames(folder, self.encoding, chosen)
        points = read_points(folder)[chosen]
        frames, points = resize_sample(frames, points, self.image_size)
        if flip:
            frames, points = _flip(frames, points, self.image_size)
        landmarks = [draw_landmarks(p, self.image_size, self.thickness) for p in points]
        return {"frames": to_images_tensor(frames, self.as_uint8),
                "landmarks": to_images_tensor(landmarks, self.as_uint8),
                "points": torch.from_numpy(np.ascontiguousarray(points, np.float32)),
                "frame_indices": torch.from_numpy(chosen.astype(np.int64)),
                "video_index": video_index, "identity": identity}


class FewShotDataset(Dataset):
    """T frames of one person for fine-tuning (paper Sec. 3.3): items are (frame, landmark image) pairs.

    Built from a stored video (``from_store``) or from frames and their points in memory (crops already cut,
    e.g. with ``dataset.pipeline.faces.crop_faces``). An item is a dict ``"frame"`` (3, S, S) and
    ``"landmarks"`` (3, S, S) in [-1, 1], ``"points"`` (68, 2) and ``"index"``; with probability ``flip_prob``
    (default 0: a person's asymmetries are part of the identity) the pair is mirrored. ``episode()`` returns all
    T frames stacked, unflipped, for the embedder's single pass that gives e_NEW. Items depend only on
    ``(seed, epoch, index)``; see ``MetaDataset`` for ``set_epoch``.
    """

    def __init__(self, frames: Sequence[np.ndarray], points: np.ndarray, image_size: int | None = None,
                 flip_prob: float = 0.0, landmark_thickness: int = 2, seed: int = 0, identity: str = ""):
        points = np.asarray(points, np.float32).reshape(-1, 68, 2)
        if len(frames) == 0 or len(frames) != len(points):
            raise ValueError(f"need T >= 1 frames with one (68, 2) point set each, got {len(frames)} frames "
                             f"and {len(points)} point sets")
        self.image_size = image_size or frames[0].shape[0]
        frames, points = resize_sample([np.asarray(f, np.uint8) for f in frames], points, self.image_size)
        self.frames = np.stack(frames)
        self.points = points
        self.flip_prob = flip_prob
        self.thickness = scaled_thickness(landmark_thickness, self.image_size)
        self.seed = seed
        self.epoch = 0
        self.identity = identity

    @classmethod
    def from_store(cls, root: str | Path, video: str, frame_indices: Sequence[int] | None = None,
                   t_shots: int | None = None, **kwargs) -> FewShotDataset:
        """The frames of stored video ``video`` ("identity/video_id"): ``frame_indices``, or ``t_shots``
        evenly spaced frames, or all of them."""
        root = Path(root)
        identity, _, video_id = video.partition("/")
        entries = [e for e in load_index(root)["videos"] if e["identity"] == identity and e["video"] == video_id]
        if not entries:
            raise StoreError(f"{root}: no video {video!r} in the index")
        entry = entries[0]
        if frame_indices is None:
            count = entry["frames"] if t_shots is None else t_shots
            frame_indices = np.rint(np.linspace(0, entry["frames"] - 1, min(count, entry["frames"]))).astype(int)
        frame_indices = [int(i) for i in frame_indices]
        if any(not 0 <= i < entry["frames"] for i in frame_indices):
            raise ValueError(f"{video} has {entry['frames']} frames; asked for {frame_indices}")
        folder = root / entry["path"]
        frames = read_frames(folder, read_store_info(root)["encoding"], frame_indices)
        return cls(frames, read_points(folder)[frame_indices], identity=identity, **kwargs)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, item: int | tuple[int, int]) -> dict:
        index, epoch = item if isinstance(item, tuple) else (item, self.epoch)
        rng = np.random.default_rng((self.seed, epoch, index))
        frames, points = [self.frames[index]], self.points[index:index + 1]
        if rng.random() < self.flip_prob:
            frames, points = _flip(frames, points, self.image_size)
        landmark = draw_landmarks(points[0], self.image_size, self.thickness)
        return {"frame": to_images_tensor(frames)[0], "landmarks": to_images_tensor([landmark])[0],
                "points": torch.from_numpy(np.ascontiguousarray(points[0])), "index": index}

    def episode(self) -> dict:
        """All T frames, landmark images and points stacked, unflipped: (T, 3, S, S), (T, 3, S, S), (T, 68, 2)."""
        landmarks = [draw_landmarks(p, self.image_size, self.thickness) for p in self.points]
        return {"frames": to_images_tensor(list(self.frames)), "landmarks": to_images_tensor(landmarks),
                "points": torch.from_numpy(self.points.copy())}


# ----------------------------------------------------------------------------------------------------------------
# Command line: python -m dataset.store {index,info} ROOT
# ----------------------------------------------------------------------------------------------------------------


def add_split_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--test-identities", default=None, metavar="FILE_OR_LIST",
                        help="identities of the test split: a file with one per line (first field), or a "
                             "comma-separated list; the others are train. Default: hash split")
    parser.add_argument("--test-fraction", type=float, default=DEFAULT_TEST_FRACTION,
                        help=f"without --test-identities, the fraction of identities in the test split, chosen by "
                             f"a hash of the name (default {DEFAULT_TEST_FRACTION})")


def describe_index(index: dict) -> str:
    counts = index["num_videos"]
    frames = [e["frames"] for e in index["videos"]]
    return (f"{index['image_size']}x{index['image_size']} {index['encoding']} store: "
            f"train {counts['train']} videos / {index['num_identities']['train']} identities, "
            f"test {counts['test']} videos / {index['num_identities']['test']} identities, "
            f"{sum(frames)} frames (per video min {min(frames, default=0)}, max {max(frames, default=0)})")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dataset.store", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    index_parser = commands.add_parser("index", help="rebuild index.json from the video folders (after all shards "
                                                     "finished, or to change the split)")
    index_parser.add_argument("root", type=Path)
    add_split_arguments(index_parser)
    info_parser = commands.add_parser("info", help="print what a store holds")
    info_parser.add_argument("root", type=Path)
    args = parser.parse_args(argv)
    if args.command == "index":
        identities = parse_identities(args.test_identities) if args.test_identities else None
        index = build_index(args.root, identities, args.test_fraction)
    else:
        index = load_index(args.root)
    print(describe_index(index))


if __name__ == "__main__":
    main()
