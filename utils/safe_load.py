"""One safe way to read a torch file a user handed us: ``torch.load(..., weights_only=True)`` with clear errors.

Every loader of checkpoints, person files and weight files goes through ``load_tensors``, so a missing file, a
zero-byte file (an interrupted copy), a truncated one, and a file that holds pickled code are each reported in
one line that names the file and says what to do. torch's own message for a refused pickle recommends
``weights_only=False``; that advice is never passed on: such a file is not loaded, whatever it claims to be.
"""
from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch


class UnsafeOrDamagedFile(ValueError):
    """A torch file that cannot be read safely: empty, truncated, not a torch file, or holding code."""


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    # torch's messages run on with advice; the first sentence is what the user needs.
    return lines[0].split(". ")[0][:120] if lines else type(err).__name__


def load_tensors(path: str | os.PathLike, what: str = "file", map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``; raises FileNotFoundError or UnsafeOrDamagedFile, one line each.

    ``what`` names the file's role in messages ("checkpoint", "VGG weights file", ...).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path}")
    if path.is_dir():
        raise UnsafeOrDamagedFile(f"{what} {path} is a directory, not a file")
    try:
        size = path.stat().st_size
    except OSError as err:
        raise UnsafeOrDamagedFile(f"cannot read {what} {path}: {err.strerror or err}") from None
    if size == 0:
        raise UnsafeOrDamagedFile(f"{what} {path} is empty (0 bytes): an interrupted copy or save")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if "unsupported global" in str(err).lower():
            raise UnsafeOrDamagedFile(
                f"{what} {path} holds pickled Python objects beyond tensors (code would run on loading); "
                "it is not loaded. Re-save it as a plain state dict of tensors (or safetensors).") from None
        raise UnsafeOrDamagedFile(f"{what} {path} is not a PyTorch file of tensors (a plain pickle, or damaged); "
                                  "it is not loaded") from None
    except (RuntimeError, EOFError, ValueError, zipfile.BadZipFile, OSError, KeyError, IndexError) as err:
        raise UnsafeOrDamagedFile(f"{what} {path} is truncated, damaged or not a PyTorch file "
                                  f"({type(err).__name__}: {_first_line(err)})") from None
