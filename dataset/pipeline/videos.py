"""Finding the videos of a VoxCeleb-style tree and reading evenly spaced frames from them.

A *video* is a folder at a fixed depth under the root (``idNNNNN/VIDEO_ID`` by default). Everything below it
belongs to that video, however deep: VoxCeleb2's clips ``VIDEO_ID/00001.mp4``, VoxCeleb1's frame folders
``VIDEO_ID/<utterance>/<frame>.jpg``, or the flat ``VIDEO_ID/0000.jpg`` folders that ``extract_frames.py`` and
``sample_frame.py`` write. Folders and files whose name starts with a dot are ignored: they are the staging
folders of unfinished runs.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import cv2
import numpy as np

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
CLIP_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm")


def natural_key(text: str) -> list:
    """Sort key that orders ``2.jpg`` before ``10.jpg``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


@dataclass(frozen=True)
class VideoUnit:
    """One video: its identity, its id, and its image files and clips (POSIX paths relative to ``root``)."""

    identity: str
    video: str
    root: str
    video_depth: int = 2
    images: tuple[str, ...] = ()
    clips: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        """``identity/video``: the video's name in outputs, reports and sharding."""
        return f"{self.identity}/{self.video}"

    def path(self, relative: str) -> Path:
        return Path(self.root) / relative

    def inner(self, relative: str) -> str:
        """A file's path below the video folder (``00001.mp4``, ``3/0042.jpg``)."""
        return str(PurePosixPath(*PurePosixPath(relative).parts[self.video_depth:]))


def in_shard(key: str, shard: tuple[int, int] | None) -> bool:
    """Whether video ``key`` (``identity/video``) belongs to ``shard`` ``(i, n)`` (always true without sharding)."""
    if shard is None:
        return True
    index, count = shard
    digest = hashlib.sha1(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % count == index


@dataclass
class VideoScan:
    """The videos found under a root, and what could not be listed (one line each, naming the path)."""

    units: list[VideoUnit]
    problems: list[str]


def walk_files(root: str | Path, problems: list[str], enter: Callable[[tuple[str, ...]], bool] | None = None
               ) -> Iterator[tuple[tuple[str, ...], bool]]:
    """``(path parts below root, is a regular file)`` of every non-hidden file under ``root``, folders and files in
    name order, symbolic links followed, each real folder entered once.

    Why not ``os.walk(followlinks=True)``: a folder is entered once per real folder (device, inode), so a symlink
    loop (``video/again -> ..``) is reported and not followed, instead of listing the same clip under ever longer
    paths until the path limit, or never finishing with two loops; and a folder or link that cannot be read lands
    in ``problems`` (one line naming it and the reason) instead of vanishing. ``enter(parts)`` says whether to go
    into a folder (default: all)."""
    entered: dict[tuple[int, int], str] = {}
    # A link to a folder above the root is a loop too, even when walking one video's folder.
    for ancestor in Path(root).resolve().parents:
        with contextlib.suppress(OSError):
            status = ancestor.stat()
            entered[(status.st_dev, status.st_ino)] = f"{ancestor} (above the walked folder)"
    stack: list[tuple[str, tuple[str, ...]]] = [(str(root), ())]
    while stack:
        folder, parts = stack.pop()
        relative_dir = "/".join(parts) or "."
        try:
            status = os.stat(folder)
            if (status.st_dev, status.st_ino) in entered:
                problems.append(f"{relative_dir}: same folder as {entered[(status.st_dev, status.st_ino)]} "
                                "(symbolic link loop or second link to it); not entered again")
                continue
            entered[(status.st_dev, status.st_ino)] = relative_dir
            with os.scandir(folder) as listing:
                entries = sorted(listing, key=lambda e: e.name)
        except OSError as err:
            problems.append(f"{relative_dir}: cannot list this folder ({err.strerror or err})")
            continue
        subfolders = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            child = parts + (entry.name,)
            try:
                is_dir, is_file = entry.is_dir(), entry.is_file()
            except OSError as err:
                problems.append(f"{'/'.join(child)}: cannot read ({err.strerror or err})")
                continue
            if is_dir:
                if enter is None or enter(child):
                    subfolders.append((entry.path, child))
            else:
                yield child, is_file
        stack += reversed(subfolders)  # depth first, in name order: the first of two links to a folder wins


def scan_videos(root: str | Path, video_depth: int = 2, shard: tuple[int, int] | None = None) -> VideoScan:
    """Lists the videos under ``root`` in sorted order (with ``walk_files``: symlinks followed, each real folder
    once, unreadable paths in ``problems``).

    ``video_depth`` is the depth of a video folder: 2 for ``identity/video``, 3 for ``identity/x/video``.
    The identity is always the first folder and the video the folder at ``video_depth``. With ``shard``, the
    folders of other shards' videos are not entered at all: n machines list the videos once each instead of every
    file of the tree n times.
    """
    if video_depth < 2:
        raise ValueError(f"video_depth must be at least 2 (identity/video), got {video_depth}")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"input folder not found: {root}")
    found: dict[tuple[str, str], dict[str, list[str]]] = {}
    problems: list[str] = []

    def enter(parts: tuple[str, ...]) -> bool:
        return len(parts) != video_depth or in_shard(f"{parts[0]}/{parts[-1]}", shard)

    for parts, is_file in walk_files(root, problems, enter):
        if len(parts) <= video_depth:
            continue
        kind = _file_kind(parts[-1])
        if kind is None:
            continue
        if not is_file:
            problems.append(f"{'/'.join(parts)}: broken symbolic link or not a regular file")
            continue
        files = found.setdefault((parts[0], parts[video_depth - 1]), {"images": [], "clips": []})
        files[kind].append("/".join(parts))
    units = []
    for (identity, video), files in sorted(found.items()):
        unit = VideoUnit(identity, video, str(root), video_depth)
        units.append(VideoUnit(identity, video, str(root), video_depth,
                               images=tuple(sorted(files["images"], key=lambda f: natural_key(unit.inner(f)))),
                               clips=tuple(sorted(files["clips"], key=lambda f: natural_key(unit.inner(f))))))
    return VideoScan(units, problems)


def _file_kind(name: str) -> str | None:
    suffix = os.path.splitext(name)[1].lower()
    return "images" if suffix in IMAGE_SUFFIXES else "clips" if suffix in CLIP_SUFFIXES else None


def find_videos(root: str | Path, video_depth: int = 2, shard: tuple[int, int] | None = None) -> list[VideoUnit]:
    """The videos of ``scan_videos`` (for callers that report its problems elsewhere or not at all)."""
    return scan_videos(root, video_depth, shard).units


def evenly_spaced(total: int, count: int) -> list[int]:
    """``count`` distinct indices spread evenly over ``range(total)``, both ends included (all if count <= 0)."""
    if count <= 0 or count >= total:
        return list(range(total))
    # The spacing (total - 1) / (count - 1) is at least 1, so the rounded indices are distinct.
    return [int(i) for i in np.rint(np.linspace(0, total - 1, count))]


def unreadable_reason(path: str | Path) -> str:
    """Why a file cannot be opened for reading (``"Permission denied"``), or ``""`` when it can.

    OpenCV reports a file it cannot open exactly like a file without frames; asking the OS first keeps the two
    apart in reports."""
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as err:
        return err.strerror or str(err)
    return ""


def read_image(path: str | Path) -> np.ndarray:
    """An image file as RGB uint8 HxWx3; ValueError if it cannot be read or decoded."""
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError as err:
        raise ValueError(f"cannot read image {path}: {err.strerror or err}") from err
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise ValueError(f"cannot decode image {path}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def clip_frame_count(path: str | Path) -> int:
    """Frames a clip's container claims (0 if it cannot be opened)."""
    capture = cv2.VideoCapture(str(path))
    try:
        return int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) if capture.isOpened() else 0
    finally:
        capture.release()


def read_clip_frames(path: str | Path, indices: list[int]) -> dict[int, np.ndarray]:
    """The frames at ``indices`` of a clip as RGB uint8, read sequentially.

    Seeking (CAP_PROP_POS_FRAMES) lands on the wrong frame in many mp4s, so frames are grabbed in order and only
    the wanted ones are converted. A clip that ends early returns the frames it has.
    """
    wanted = set(indices)
    frames: dict[int, np.ndarray] = {}
    capture = cv2.VideoCapture(str(path))
    try:
        index = 0
        last = max(wanted, default=-1)
        while index <= last and capture.grab():
            if index in wanted:
                ok, image = capture.retrieve()
                if ok and image is not None:
                    frames[index] = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
            index += 1
    finally:
        capture.release()
    return frames


@dataclass
class SampledFrames:
    """Frames read from one video: ``(name, RGB image)`` pairs in video order, and what could not be read."""

    frames: list[tuple[str, np.ndarray]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def sample_frames(unit: VideoUnit, count: int) -> SampledFrames:
    """``count`` evenly spaced frames of a video (all if ``count <= 0``).

    A video of image files uses them; a video of clips spreads the frames over its clips in proportion to their
    lengths, as if the clips were one video. Unreadable images and clips are skipped and listed in ``problems``.
    """
    out = SampledFrames()
    if unit.images:
        for i in evenly_spaced(len(unit.images), count):
            relative = unit.images[i]
            try:
                out.frames.append((unit.inner(relative), read_image(unit.path(relative))))
            except ValueError as err:
                out.problems.append(str(err))
        return out
    lengths = []
    for relative in unit.clips:
        reason = unreadable_reason(unit.path(relative))
        lengths.append(0 if reason else clip_frame_count(unit.path(relative)))
        if reason:
            out.problems.append(f"cannot read clip {unit.inner(relative)}: {reason}")
        elif lengths[-1] == 0:
            out.problems.append(f"cannot open clip or it has no frames: {unit.inner(relative)}")
    starts = np.cumsum([0] + lengths)
    chosen = np.array(evenly_spaced(int(starts[-1]), count), dtype=np.int64)
    for c, relative in enumerate(unit.clips):
        local = [int(i - starts[c]) for i in chosen[(chosen >= starts[c]) & (chosen < starts[c + 1])]]
        if not local:
            continue
        frames = read_clip_frames(unit.path(relative), local)
        if len(frames) < len(local):
            out.problems.append(f"clip {unit.inner(relative)} ended early: read {len(frames)} of "
                                f"{len(local)} sampled frames")
        stem = str(PurePosixPath(unit.inner(relative)).with_suffix(""))
        out.frames += [(f"{stem}/{i:05d}", frames[i]) for i in local if i in frames]
    return out
