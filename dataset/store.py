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
import functools
import hashlib
import json
import logging
import os
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from dataset.landmarks import draw_landmarks, flip_landmarks
from dataset.pipeline.output import atomic_write_json, atomic_write_text, encode_image, staged_dir
from dataset.pipeline.videos import VideoUnit

STORE_FORMAT = "talking-head-store"
STORE_VERSION = 1
ENCODINGS = ("jpeg", "raw")
VIDEOS_DIR = "videos"
INDEX_FILE = "index.json"
INFO_FILE = "store.json"
META_FILE = "meta.json"
QUARANTINE_FILE = "quarantine.json"
DEFAULT_TEST_FRACTION = 0.05
logger = logging.getLogger(__name__)
# Smallest crop side a store accepts: below it the 68 landmarks no longer draw as distinct parts.
MIN_IMAGE_SIZE = 8


class StoreError(ValueError):
    """A store is missing, of another format, or does not match the options it is opened or extended with."""


# ----------------------------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------------------------


def open_store_for_writing(root: Path, image_size: int, encoding: str = "jpeg", quality: int = 95) -> dict:
    """Creates ``root/store.json``, or checks that an existing store has the same image size and encoding."""
    if encoding not in ENCODINGS:
        raise StoreError(f"unknown encoding {encoding!r}; valid encodings: {', '.join(ENCODINGS)}")
    if not (isinstance(image_size, int) and image_size >= MIN_IMAGE_SIZE):
        raise StoreError(f"image_size must be an integer of at least {MIN_IMAGE_SIZE}, got {image_size!r}")
    if not (isinstance(quality, int) and 1 <= quality <= 100):
        raise StoreError(f"JPEG quality must be an integer from 1 to 100, got {quality!r}")
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


def _read_frame_count(meta_path: Path) -> int | None:
    try:
        return int(json.loads(meta_path.read_text())["frames"])
    except FileNotFoundError:
        return None  # not a finished video folder (or removed meanwhile)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise StoreError(f"{meta_path}: unreadable ({type(err).__name__}: {err}); remove the video folder to "
                         "redo it, or repair the file") from err


def read_quarantine(root: Path) -> dict[str, list[str]]:
    """Videos taken out of the index by ``verify --quarantine``: ``{"identity/video": [reasons]}``."""
    path = Path(root) / QUARANTINE_FILE
    return json.loads(path.read_text())["videos"] if path.is_file() else {}


def build_index(root: Path, test_identities: set[str] | None = None,
                test_fraction: float = DEFAULT_TEST_FRACTION, threads: int = 16) -> dict:
    """Scans the video folders of a store and writes ``index.json`` atomically; returns the index.

    Videos without frames, and videos in ``quarantine.json``, are left out. ``video_index`` numbers each split's
    videos in (identity, video) order. The meta files are read by ``threads`` threads: at VoxCeleb2's 145k videos
    the cost is the latency of opening one small file per video, which on network storage is milliseconds each and
    overlaps across threads.
    """
    if not 0.0 <= test_fraction <= 1.0:
        raise ValueError(f"test_fraction must be within [0, 1], got {test_fraction}")
    root = Path(root)
    info = read_store_info(root)
    quarantined = read_quarantine(root)
    videos = root / VIDEOS_DIR
    folders = []
    for identity in sorted(os.listdir(videos)) if videos.is_dir() else []:
        if identity.startswith(".") or not (videos / identity).is_dir():
            continue
        folders += [(identity, video) for video in sorted(os.listdir(videos / identity))
                    if not video.startswith(".") and f"{identity}/{video}" not in quarantined]
    with ThreadPoolExecutor(max(1, threads)) as pool:
        counts = list(pool.map(lambda f: _read_frame_count(videos / f[0] / f[1] / META_FILE), folders,
                               chunksize=256))
    entries = [{"identity": identity, "video": video, "path": f"{VIDEOS_DIR}/{identity}/{video}", "frames": frames,
                "split": identity_split(identity, test_identities, test_fraction)}
               for (identity, video), frames in zip(folders, counts) if frames]
    counters = {"train": 0, "test": 0}
    for entry in entries:
        entry["video_index"] = counters[entry["split"]]
        counters[entry["split"]] += 1
    header = {"format": STORE_FORMAT, "version": STORE_VERSION, "image_size": info["image_size"],
              "encoding": info["encoding"],
              "split": {"test_identities": sorted(test_identities) if test_identities is not None else None,
                        "test_fraction": None if test_identities is not None else test_fraction},
              "num_videos": counters,
              "num_identities": {s: len({e["identity"] for e in entries if e["split"] == s}) for s in counters},
              "quarantined": len(quarantined)}
    _write_index(root, header, entries)
    return {**header, "videos": entries}


def _write_index(root: Path, header: dict, entries: list[dict]) -> None:
    # One video per line keeps a 150k-video index readable with grep and diff.
    body = ",\n".join(json.dumps(entry) for entry in entries)
    atomic_write_text(Path(root) / INDEX_FILE, json.dumps(header)[:-1] + ', "videos": [\n' + body + "\n]}\n")


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


# The entries of the last index looked up by name, with the file's identity: a command that opens many videos of
# one store one at a time (evaluation over 50 videos, fine-tuning per person) parses a 145k-video index once, not
# once per video. A rewritten index (new inode or mtime) is parsed again.
_lookup_cache: dict[str, tuple[tuple, dict, dict[str, dict]]] = {}


def lookup_video(root: Path, video: str) -> tuple[dict, dict]:
    """``(index header, entry)`` of stored video ``"identity/video_id"``; ``StoreError`` if it is not indexed."""
    path = Path(root) / INDEX_FILE
    try:
        status = path.stat()
    except FileNotFoundError:
        raise StoreError(f"{root} has no {INDEX_FILE}; build it with: python -m dataset.store index {root}") from None
    signature = (status.st_dev, status.st_ino, status.st_mtime_ns, status.st_size)
    key = str(path.resolve())
    cached = _lookup_cache.get(key)
    if cached is None or cached[0] != signature:
        index = load_index(root)
        entries = {f"{e['identity']}/{e['video']}": e for e in index.pop("videos")}
        _lookup_cache.clear()  # one store at a time: an index is tens of MB in memory
        _lookup_cache[key] = cached = (signature, index, entries)
    if video not in cached[2]:
        raise StoreError(f"{root}: no video {video!r} in the index")
    return dict(cached[1]), dict(cached[2][video])


class VideoTable(Sequence):
    """The videos a Dataset serves, as rows ``(path, frames, video_index, identity)`` held in four numpy arrays.

    A list of 145k tuples of Python strings and ints costs about 40 MB and, being made of refcounted objects, is
    copied page by page into every forked DataLoader worker as soon as the worker touches it (and pickled whole
    into every spawned one). Numpy arrays are a few MB, pickle as one buffer and are only ever read."""

    def __init__(self, entries: Sequence[dict]):
        self._paths = np.array([e["path"].encode("utf-8") for e in entries], dtype=bytes)
        self._frames = np.array([e["frames"] for e in entries], dtype=np.int32)
        self._rows = np.array([e["video_index"] for e in entries], dtype=np.int64)
        self._identities, codes = np.unique(np.array([e["identity"] for e in entries], dtype=str),
                                            return_inverse=True)
        self._codes = codes.astype(np.int32)

    def __len__(self) -> int:
        return len(self._paths)

    def __getitem__(self, i: int) -> tuple[str, int, int, str]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"video {i} of {len(self)}")
        return (self._paths[i].decode("utf-8"), int(self._frames[i]), int(self._rows[i]),
                str(self._identities[self._codes[i]]))


# ----------------------------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------------------------


class DamagedVideoError(StoreError):
    """A stored video's files do not read back as they were written: truncated or undecodable frames, points that
    are not finite or far outside the crop, counts that disagree. Training skips such a sample; ``python -m
    dataset.store verify ROOT`` lists every such video."""


# Stored points lie on or near their crop (the crop is cut around them); farther than one crop side outside it they
# are garbage, whatever wrote them.
POINT_MARGIN = 1.0


def read_points(folder: Path, frames: int | None = None, size: int | None = None) -> np.ndarray:
    """A stored video's (N, 68, 2) landmarks; ``DamagedVideoError`` if they do not load, are not finite, are not
    ``frames`` sets (when given) or lie more than ``POINT_MARGIN`` crop sides outside a ``size`` crop (when given)."""
    path = Path(folder) / "points.npy"
    try:
        points = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise DamagedVideoError(f"{path}: cannot load the points ({type(err).__name__}: {err})") from err
    if points.ndim != 3 or points.shape[1:] != (68, 2) or (frames is not None and len(points) != frames):
        raise DamagedVideoError(f"{path}: shape {points.shape}, expected ({frames if frames is not None else 'N'}, "
                                "68, 2)")
    if not np.isfinite(points).all():
        bad = np.flatnonzero(~np.isfinite(points).all(axis=(1, 2)))
        raise DamagedVideoError(f"{path}: non-finite points in frames {bad[:8].tolist()}")
    if size is not None and len(points) and (points.min() < -POINT_MARGIN * size
                                             or points.max() > (1 + POINT_MARGIN) * size):
        raise DamagedVideoError(f"{path}: points out of range ({points.min():.4g} .. {points.max():.4g} for a "
                                f"{size}x{size} crop)")
    return points


def read_frames(folder: Path, encoding: str, indices: Sequence[int], size: int | None = None) -> list[np.ndarray]:
    """Frames ``indices`` of one stored video as RGB uint8 SxSx3 arrays (one open file, one read per frame).

    ``DamagedVideoError`` when a frame is missing, truncated (a JPEG blob must end with the EOI marker that every
    encoder writes; libjpeg itself decodes a cut-off file into a grey-filled image without an error), does not
    decode, or (with ``size``) is not SxSx3. Bit flips inside a JPEG that still decodes cannot be seen here."""
    folder = Path(folder)
    try:
        if encoding == "raw":
            frames = np.load(folder / "frames.npy", mmap_mode="r")
            if frames.ndim != 4 or (size is not None and frames.shape[1:] != (size, size, 3)):
                raise DamagedVideoError(f"{folder}/frames.npy: shape {frames.shape}")
            if len(indices) and max(indices) >= len(frames):
                raise DamagedVideoError(f"{folder}/frames.npy holds {len(frames)} frames, asked for {max(indices)}")
            return [np.array(frames[i]) for i in indices]
        offsets = np.load(folder / "offsets.npy", allow_pickle=False)
        out = []
        with open(folder / "frames.bin", "rb") as f:
            # A cut-off file (a full disk, an interrupted copy) is caught whichever frames are asked for.
            stored = os.fstat(f.fileno()).st_size
            if len(offsets) == 0 or stored != int(offsets[-1]):
                raise DamagedVideoError(f"{folder}/frames.bin is truncated or extended: {stored} bytes, its offsets "
                                        f"say {int(offsets[-1]) if len(offsets) else 'none'}")
            for i in indices:
                if not 0 <= i < len(offsets) - 1:
                    raise DamagedVideoError(f"{folder}: frame {i} is not among its {len(offsets) - 1} frames")
                start, stop = int(offsets[i]), int(offsets[i + 1])
                f.seek(start)
                blob = f.read(max(stop - start, 0))
                if stop <= start or len(blob) != stop - start or blob[:2] != b"\xff\xd8" or blob[-2:] != b"\xff\xd9":
                    raise DamagedVideoError(f"{folder}/frames.bin: frame {i} is truncated ({len(blob)} of "
                                            f"{stop - start} bytes, or not a whole JPEG)")
                image = cv2.imdecode(np.frombuffer(blob, np.uint8), cv2.IMREAD_COLOR)
                if image is None or (size is not None and image.shape != (size, size, 3)):
                    raise DamagedVideoError(f"{folder}/frames.bin: frame {i} does not decode"
                                            + ("" if image is None else f" to {size}x{size}x3 ({image.shape})"))
                out.append(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
        return out
    except DamagedVideoError:
        raise
    except (OSError, ValueError, EOFError) as err:  # np.load of a cut-off file, a missing file
        raise DamagedVideoError(f"{folder}: cannot read its frames ({type(err).__name__}: {err})") from err


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

    Damaged videos (``DamagedVideoError``: truncated or undecodable frames, non-finite or out-of-range points) do
    not end a multi-day run: the item of the next video in the index (wrapping around) is returned instead, built
    exactly as that video's own item, one warning naming the video and the reason is logged per video and
    process, and the item's ``"skipped"`` says how many damaged videos were passed over to make it (0 normally).
    The training loop sums it per batch and stops past ``data.max_skipped_fraction``; after ``max_skips``
    damaged videos in a row the item fails with an error naming the store.
    """

    def __init__(self, root: str | Path, split: str = "train", k_shots: int = 8, image_size: int | None = None,
                 flip_prob: float = 0.5, landmark_thickness: int = 2, seed: int = 0, as_uint8: bool = False,
                 max_skips: int = 32):
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
        self.max_skips = max_skips
        self.epoch = 0
        # Rows of W: a quarantined video keeps its row (index.json keeps its numbering) until the next rebuild.
        self._num_videos = index["num_videos"][split]
        self.videos = VideoTable([e for e in index["videos"] if e["split"] == split and e["frames"] >= k_shots + 1])
        self._warned: set[str] = set()
        if not len(self.videos):
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
        return read_skipping_damaged(self, index, lambda i: self.episode(i, epoch))

    def episode(self, index: int, epoch: int) -> dict:
        """The item of video ``index`` in ``epoch``; ``DamagedVideoError`` if its files are damaged."""
        path, count, video_index, identity = self.videos[index]
        rng = np.random.default_rng((self.seed, epoch, index))
        chosen = rng.choice(count, self.k_shots + 1, replace=False)
        # Drawn even when flip_prob is 0 or 1, so the frame choice never depends on flip_prob.
        flip = rng.random() < self.flip_prob
        folder = self.root / path
        frames = read_frames(folder, self.encoding, chosen, self.stored_size)
        points = read_points(folder, count, self.stored_size)[chosen]
        frames, points = resize_sample(frames, points, self.image_size)
        if flip:
            frames, points = _flip(frames, points, self.image_size)
        landmarks = [draw_landmarks(p, self.image_size, self.thickness) for p in points]
        return {"frames": to_images_tensor(frames, self.as_uint8),
                "landmarks": to_images_tensor(landmarks, self.as_uint8),
                "points": torch.from_numpy(np.ascontiguousarray(points, np.float32)),
                "frame_indices": torch.from_numpy(chosen.astype(np.int64)),
                "video_index": video_index, "identity": identity}


def read_skipping_damaged(dataset, index: int, read) -> dict:
    """``read(index)``, or on ``DamagedVideoError`` ``read`` of the next videos in order until one is whole, with
    ``"skipped"`` set to the number passed over (see ``MetaDataset``).

    ``dataset`` has ``root``, ``videos`` (rows starting with the path), ``max_skips`` and a ``_warned`` set."""
    count = len(dataset.videos)
    if not -count <= index < count:
        raise IndexError(f"video {index} of {count}")  # ends iteration over the dataset; never wrapped around
    index %= count
    for skipped in range(min(dataset.max_skips, count - 1) + 1):
        candidate = (index + skipped) % count
        try:
            item = read(candidate)
        except DamagedVideoError as err:
            path = dataset.videos[candidate][0]
            if path not in dataset._warned:
                dataset._warned.add(path)
                logger.warning("skipping damaged video %s: %s", path, err)
            continue
        item["skipped"] = skipped
        return item
    raise StoreError(f"{dataset.root}: {skipped + 1} damaged videos in a row from video {index} "
                     f"({dataset.videos[index][0]}) on; list them with: python -m dataset.store verify "
                     f"{dataset.root}")


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
        header, entry = lookup_video(root, video)
        identity = entry["identity"]
        if frame_indices is None:
            count = entry["frames"] if t_shots is None else t_shots
            frame_indices = np.rint(np.linspace(0, entry["frames"] - 1, min(count, entry["frames"]))).astype(int)
        frame_indices = [int(i) for i in frame_indices]
        if any(not 0 <= i < entry["frames"] for i in frame_indices):
            raise ValueError(f"{video} has {entry['frames']} frames; asked for {frame_indices}")
        folder = root / entry["path"]
        frames = read_frames(folder, header["encoding"], frame_indices, header["image_size"])
        points = read_points(folder, entry["frames"], header["image_size"])[frame_indices]
        return cls(frames, points, identity=identity, **kwargs)

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
    from dataset.pipeline.runner import bounded

    parser.add_argument("--test-fraction", type=bounded(float, 0.0, 1.0), default=DEFAULT_TEST_FRACTION,
                        help=f"without --test-identities, the fraction of identities in the test split, chosen by "
                             f"a hash of the name (default {DEFAULT_TEST_FRACTION})")


def describe_index(index: dict) -> str:
    counts = index["num_videos"]
    frames = [e["frames"] for e in index["videos"]]
    return (f"{index['image_size']}x{index['image_size']} {index['encoding']} store: "
            f"train {counts['train']} videos / {index['num_identities']['train']} identities, "
            f"test {counts['test']} videos / {index['num_identities']['test']} identities, "
            f"{sum(frames)} frames (per video min {min(frames, default=0)}, max {max(frames, default=0)})")


# Frames decoded at a time by verify: bounded memory whatever a video's length.
_VERIFY_CHUNK = 64


def check_stored_video(folder: Path, encoding: str, size: int, frames: int) -> list[str]:
    """Every problem of one stored video's files (empty when it reads back whole): meta.json and the index agree on
    the frame count, the points are finite and in range, every frame decodes at ``size`` (and, as JPEG, the byte
    offsets cover ``frames.bin`` exactly), and the HeadGAN files, where present, load, are finite and agree."""
    folder = Path(folder)
    problems = []
    try:
        meta_frames = json.loads((folder / META_FILE).read_text())["frames"]
        if meta_frames != frames:
            problems.append(f"{META_FILE} says {meta_frames} frames, the index {frames}")
    except (OSError, ValueError, KeyError, TypeError) as err:
        problems.append(f"{META_FILE} unreadable ({type(err).__name__}: {err})")
    try:
        read_points(folder, frames, size)
    except DamagedVideoError as err:
        problems.append(str(err))
    try:
        if encoding == "jpeg":
            offsets = np.load(folder / "offsets.npy", allow_pickle=False)
            stored = (folder / "frames.bin").stat().st_size
            if offsets.shape != (frames + 1,) or offsets[0] != 0 or (np.diff(offsets) <= 0).any() \
                    or offsets[-1] != stored:
                problems.append(f"offsets.npy ({offsets.shape[0]} offsets, last {offsets[-1] if len(offsets) else None}) "
                                f"does not cover frames.bin ({stored} bytes) as {frames} frames")
        for start in range(0, frames, _VERIFY_CHUNK):
            read_frames(folder, encoding, range(start, min(start + _VERIFY_CHUNK, frames)), size)
    except DamagedVideoError as err:
        problems.append(str(err))
    except (OSError, ValueError, EOFError) as err:
        problems.append(f"frame files unreadable ({type(err).__name__}: {err})")
    from dataset.audio import AUDIO_FILE
    from dataset.face3d.fit import FACE3D_FILE
    from dataset.headgan_data import read_headgan_arrays

    has_fit, has_audio = (folder / FACE3D_FILE).is_file(), (folder / AUDIO_FILE).is_file()
    if has_fit or has_audio:
        try:
            read_headgan_arrays(folder, frames, audio=has_audio, face3d=has_fit)
        except StoreError as err:
            problems.append(str(err))
    return problems


@dataclass(frozen=True)
class _IndexedVideo(VideoUnit):
    """A video of the index as a pipeline unit that carries its indexed frame count to the worker."""

    frames: int = 0


def _verify_unit(unit: _IndexedVideo, *, encoding: str, size: int) -> dict:
    folder = video_dir(Path(unit.root), unit.identity, unit.video)
    return {"status": "done", "problems": check_stored_video(folder, encoding, size, unit.frames),
            "stats": {"videos_checked": 1, "frames_checked": unit.frames}}


def verify_store(root: Path, *, quarantine: bool = False, workers: int = 1) -> dict[str, list[str]]:
    """Checks every indexed video of a store (``check_stored_video``); returns the damaged ones with their
    problems. With ``quarantine`` they are also taken out of ``index.json`` and recorded in ``quarantine.json``
    (kept by later ``index`` rebuilds); no file is deleted or moved. The other videos keep their ``video_index``
    (the rows of W), so a run that resumes on the same index keeps its embedding matrix."""
    from dataset.pipeline.runner import run_videos

    root = Path(root)
    index = load_index(root)
    units = [_IndexedVideo(e["identity"], e["video"], str(root), frames=e["frames"]) for e in index["videos"]]
    damaged: dict[str, list[str]] = {}

    def collect(result: dict) -> None:
        problems = result.get("problems") or ([result["error"]] if result["status"] == "failed" else [])
        if problems:
            damaged[result["key"]] = problems

    work = functools.partial(_verify_unit, encoding=index["encoding"], size=index["image_size"])
    run_videos(units, work, workers=workers, desc="verifying", on_result=collect)
    if quarantine and damaged:
        listed = {**read_quarantine(root), **damaged}
        atomic_write_json(root / QUARANTINE_FILE, {"videos": dict(sorted(listed.items()))})
        kept = [e for e in index.pop("videos") if f"{e['identity']}/{e['video']}" not in damaged]
        index["quarantined"] = len(listed)
        index["num_identities"] = {s: len({e["identity"] for e in kept if e["split"] == s})
                                   for s in index["num_videos"]}
        _write_index(root, index, kept)
    return dict(sorted(damaged.items()))


def main(argv: list[str] | None = None) -> int:
    """The command line; returns the exit status (1 when ``verify`` found damaged videos)."""
    from dataset.pipeline.runner import bounded

    parser = argparse.ArgumentParser(prog="python -m dataset.store", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    index_parser = commands.add_parser("index", help="rebuild index.json from the video folders (after all shards "
                                                     "finished, or to change the split)")
    index_parser.add_argument("root", type=Path)
    add_split_arguments(index_parser)
    info_parser = commands.add_parser("info", help="print what a store holds")
    info_parser.add_argument("root", type=Path)
    verify_parser = commands.add_parser("verify", help="decode every stored frame, check points and counts; list "
                                                       "the damaged videos (exit status 1 when there are any)")
    verify_parser.add_argument("root", type=Path)
    verify_parser.add_argument("--quarantine", action="store_true",
                               help="take the damaged videos out of index.json (listed in quarantine.json, kept "
                                    "out by later index rebuilds); no file is deleted")
    verify_parser.add_argument("--workers", type=bounded(int, 1), default=1, help="worker processes (default 1)")
    args = parser.parse_args(argv)
    try:
        if args.command == "verify":
            damaged = verify_store(args.root, quarantine=args.quarantine, workers=args.workers)
            for key, problems in damaged.items():
                print(f"DAMAGED {key}: {'; '.join(problems)}")
            index = load_index(args.root)
            print(f"{len(damaged)} damaged of {len(index['videos']) + (len(damaged) if args.quarantine else 0)} "
                  f"indexed videos" + (f"; taken out of {INDEX_FILE} (see {QUARANTINE_FILE})"
                                       if args.quarantine and damaged else ""))
            return 1 if damaged else 0
        if args.command == "index":
            identities = parse_identities(args.test_identities) if args.test_identities else None
            index = build_index(args.root, identities, args.test_fraction)
        else:
            index = load_index(args.root)
    except StoreError as err:
        parser.exit(2, f"error: {err}\n")
    print(describe_index(index))
    return 0


if __name__ == "__main__":
    sys.exit(main())
