"""Finding the videos of a VoxCeleb-style tree and reading evenly spaced frames from them.

A *video* is a folder at a fixed depth under the root (``idNNNNN/VIDEO_ID`` by default). Everything below it
belongs to that video, however deep: VoxCeleb2's clips ``VIDEO_ID/00001.mp4``, VoxCeleb1's frame folders
``VIDEO_ID/<utterance>/<frame>.jpg``, or the flat ``VIDEO_ID/0000.jpg`` folders that ``extract_frames.py`` and
``sample_frame.py`` write. Folders and files whose name starts with a dot are ignored: they are the staging
folders of unfinished runs.
"""
from __future__ import annotations

import os
import re
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


def find_videos(root: str | Path, video_depth: int = 2) -> list[VideoUnit]:
    """Lists the videos under ``root`` in sorted order; symlinked folders are followed.

    ``video_depth`` is the depth of a video folder: 2 for ``identity/video``, 3 for ``identity/x/video``.
    The identity is always the first folder and the video the folder at ``video_depth``.
    """
    if video_depth < 2:
        raise ValueError(f"video_depth must be at least 2 (identity/video), got {video_depth}")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"input folder not found: {root}")
    found: dict[tuple[str, str], dict[str, list[str]]] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        relative_dir = PurePosixPath(Path(dirpath).relative_to(root).as_posix())
        if len(relative_dir.parts) < video_depth:
            continue
        identity, video = relative_dir.parts[0], relative_dir.parts[video_depth - 1]
        for name in filenames:
            suffix = os.path.splitext(name)[1].lower()
            kind = "images" if suffix in IMAGE_SUFFIXES else "clips" if suffix in CLIP_SUFFIXES else None
            if kind is None or name.startswith("."):
                continue
            files = found.setdefault((identity, video), {"images": [], "clips": []})
            files[kind].append(str(relative_dir / name))
    units = []
    for (identity, video), files in sorted(found.items()):
        unit = VideoUnit(identity, video, str(root), video_depth)
        units.append(VideoUnit(identity, video, str(root), video_depth,
                               images=tuple(sorted(files["images"], key=lambda f: natural_key(unit.inner(f)))),
                               clips=tuple(sorted(files["clips"], key=lambda f: natural_key(unit.inner(f))))))
    return units


def evenly_spaced(total: int, count: int) -> list[int]:
    """``count`` distinct indices spread evenly over ``range(total)``, both ends included (all if count <= 0)."""
    if count <= 0 or count >= total:
        return list(range(total))
    # The spacing (total - 1) / (count - 1) is at least 1, so the rounded indices are distinct.
    return [int(i) for i in np.rint(np.linspace(0, total - 1, count))]


def read_image(path: str | Path) -> np.ndarray:
    """An image file as RGB uint8 HxWx3; ValueError if it cannot be decoded."""
    data = np.fromfile(str(path), dtype=np.uint8)
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
        lengths.append(clip_frame_count(unit.path(relative)))
        if lengths[-1] == 0:
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
