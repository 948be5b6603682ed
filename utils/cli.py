"""Checks a command runs on its arguments before any work, so a mistake costs a second, not a run.

Every message is one line that names the flag. The output checks exist because an output path that is also an
input (``reenact.py --driver talk.mp4 --out talk.mp4``) would silently replace the input once the work is done,
and an output that is a directory only fails at the final rename, after all the work.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch


class ArgumentError(ValueError):
    """A command-line value that cannot work (the message names the flag and says why)."""


def same_path(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name the same file: the same real path (symlinks and ``..`` resolved), or, when both
    exist, the same inode (hard links)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist yet
        return False


def is_inside(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """Whether ``path`` is ``folder`` or lies somewhere below it (real paths)."""
    path, folder = Path(os.path.realpath(path)), Path(os.path.realpath(folder))
    return path == folder or folder in path.parents


def _named_inputs(inputs: Mapping[str, str | os.PathLike | None]) -> Iterable[tuple[str, Path]]:
    return ((flag, Path(value)) for flag, value in inputs.items() if value is not None and str(value) != "")


def check_output_file(out: str | os.PathLike, inputs: Mapping[str, str | os.PathLike | None],
                      flag: str = "--out", suffixes: tuple[str, ...] = ()) -> Path:
    """Refuses an output file that is a directory, sits below a file, has the wrong suffix, or is an input.

    ``inputs`` maps each input flag to its value (None for an absent optional input).
    """
    out = Path(out)
    if out.is_dir():
        example = out / f"out{suffixes[0] if suffixes else ''}"
        raise ArgumentError(f"{flag} {out} is a directory; give a file name, e.g. {example}")
    if suffixes and out.suffix.lower() not in suffixes:
        raise ArgumentError(f"{flag} {out} must end in {' or '.join(suffixes)}")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ArgumentError(f"{flag} {out}: {parent} is a file, not a folder")
            break
    for name, path in _named_inputs(inputs):
        if same_path(out, path):
            raise ArgumentError(f"{flag} {out} is also the {name}: refusing to overwrite an input; "
                                "choose another output path")
    return out


def check_output_dir(out: str | os.PathLike, inputs: Mapping[str, str | os.PathLike | None],
                     writes: Iterable[str], flag: str = "--out") -> Path:
    """Refuses an output folder that is a file, that holds or is inside an input folder's frames, or whose
    files (``writes``: names inside it) would replace an input."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ArgumentError(f"{flag} {out} is a file; give a folder (it is created if missing)")
    for name, path in _named_inputs(inputs):
        if path.is_dir() and is_inside(out, path):
            raise ArgumentError(f"{flag} {out} is inside the {name} folder {path}: its outputs would mix with "
                                "the inputs; choose another folder")
        for file in writes:
            if same_path(out / file, path):
                raise ArgumentError(f"{flag} {out} would overwrite the {name} {path} with its {file}; "
                                    "choose another folder")
    return out


def check_at_least(values: Mapping[str, int | float | None], minimum: int | float) -> None:
    """Every given value (flag -> value; None means not given) is at least ``minimum``."""
    for flag, value in values.items():
        if value is not None and value < minimum:
            raise ArgumentError(f"{flag} must be at least {minimum}, got {value}")


def check_device(device: str) -> torch.device:
    """A torch device string that this machine has (``cpu``, ``cuda``, ``cuda:1``, ``mps``)."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise ArgumentError(f"--device {device!r} is not a torch device (cpu, cuda, cuda:N, mps)") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ArgumentError(f"--device {device}: this machine has no CUDA GPU that torch can use")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ArgumentError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ArgumentError(f"--device {device}: MPS is not available on this machine")
    elif parsed.type not in ("cpu", "cuda", "mps"):
        raise ArgumentError(f"--device {device}: only cpu, cuda and mps are supported")
    return parsed
