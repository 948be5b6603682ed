"""Atomic output: whole files, whole per-video folders, and the frame folders of the frame-sampling commands.

A killed run must leave nothing that a later step would trust. Files are written under a temporary name and
renamed; a video's folder is filled under a hidden staging name and renamed into place, so the presence of the
final folder is the video's "done" marker.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

import cv2
import numpy as np

from utils.atomic import atomic_file

FRAME_INDEX = "frames.json"


def atomic_write_text(path: Path, text: str) -> None:
    """Writes ``path`` through a temporary file and a rename, so readers see the old or the new file, whole."""
    with atomic_file(path, "w") as f:
        f.write(text)


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=1) + "\n")


def _staging_prefix(final: Path) -> str:
    return f".{final.name}.partial-"


def remove_stale_staging(final: Path) -> None:
    """Removes staging folders of ``final`` left by a killed run (never ``final`` itself)."""
    if not final.parent.is_dir():
        return
    prefix = _staging_prefix(final)
    for entry in os.scandir(final.parent):
        if entry.name.startswith(prefix):
            shutil.rmtree(entry.path, ignore_errors=True)


@contextlib.contextmanager
def staged_dir(final: Path) -> Iterator[Path]:
    """Yields an empty staging folder that becomes ``final`` when the block ends without an exception.

    A staging folder left by a killed run is hidden (dot name, which every reader skips) and removed by the
    next attempt at the same video.
    """
    final = Path(final)
    remove_stale_staging(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.with_name(f"{_staging_prefix(final)}{os.getpid()}")
    staging.mkdir()
    try:
        yield staging
        os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def encode_image(image: np.ndarray, suffix: str, quality: int = 95) -> bytes:
    """RGB uint8 image -> bytes of a ``.jpg`` or ``.png`` file."""
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if suffix in (".jpg", ".jpeg") else []
    ok, data = cv2.imencode(suffix, cv2.cvtColor(image, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise ValueError(f"cannot encode a {image.shape} image as {suffix}")
    return data.tobytes()


def write_frame_folder(final: Path, files: list[tuple[bytes, str, str]]) -> None:
    """Writes one video's frame folder ``final/0000.jpg ...`` atomically.

    ``files`` holds ``(encoded bytes, suffix, source)`` per frame in video order; ``frames.json`` maps each
    written file to its source (clip and frame, or original image) so that a frame can be traced back.
    """
    with staged_dir(final) as staging:
        sources = {}
        for i, (data, suffix, source) in enumerate(files):
            name = f"{i:04d}{suffix}"
            (staging / name).write_bytes(data)
            sources[name] = source
        (staging / FRAME_INDEX).write_text(json.dumps(sources, indent=1) + "\n")
