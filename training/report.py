"""Run statistics: one call feeds TensorBoard and ``metrics.jsonl``; image grids go to both as well."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import torch

from utils.atomic import atomic_file


def image_grid(rows: list[list[torch.Tensor]]) -> np.ndarray:
    """Rows of (3, S, S) images in [-1, 1] -> one uint8 HxWx3 RGB grid (images side by side, rows stacked)."""
    strips = [torch.cat([img.detach().float().cpu() for img in row], dim=2) for row in rows]
    grid = torch.cat(strips, dim=1)
    return ((grid.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()


def write_png(path: str | Path, rgb: np.ndarray) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path}")


def drop_steps_after(path: Path, step: int) -> None:
    """Removes the lines of steps after ``step`` from a metrics.jsonl: a resumed run logs them again, and each
    step must appear once. Lines that do not parse (a kill mid-write) are dropped too."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue
    with atomic_file(path, "w") as f:
        f.write("".join(line + "\n" for line in kept))


class Reporter:
    """Writes scalars to ``RUN/metrics.jsonl`` and TensorBoard (``RUN/tensorboard``); images also as PNGs.

    Only the process that owns it writes (rank 0 in distributed runs); others get ``enabled=False``.
    """

    def __init__(self, run_dir: str | Path, enabled: bool = True, resume_step: int | None = None):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self._writer = None
        self._jsonl = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            path = self.run_dir / "metrics.jsonl"
            if resume_step is not None:
                drop_steps_after(path, resume_step)
            # purge_step hides TensorBoard events the resumed steps will write again.
            self._writer = SummaryWriter(str(self.run_dir / "tensorboard"),
                                         purge_step=None if resume_step is None else resume_step + 1)
            self._jsonl = open(path, "a")

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        for name, value in values.items():
            self._writer.add_scalar(name, value, step)
        self._jsonl.write(json.dumps({"step": step, **values}) + "\n")
        self._jsonl.flush()

    def image(self, step: int, name: str, rgb: np.ndarray) -> Path | None:
        if not self.enabled:
            return None
        self._writer.add_image(name, rgb, step, dataformats="HWC")
        path = self.run_dir / "images" / f"{name.replace('/', '_')}_{step:09d}.png"
        write_png(path, rgb)
        return path

    def close(self) -> None:
        if self.enabled:
            self._writer.close()
            self._jsonl.close()
