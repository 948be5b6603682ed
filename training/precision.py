"""Numerics of a training step, family-agnostic: mixed precision and the non-finite guard."""
from __future__ import annotations

import contextlib
import math

import torch


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or Inf; the run stops before the bad update is applied."""


def check_finite(terms: dict[str, torch.Tensor], step: int) -> None:
    for name, value in terms.items():
        v = float(value.detach())
        if not math.isfinite(v):
            raise NonFiniteLossError(f"loss term '{name}' is {v} at step {step}; stopping before the update. "
                                     "The run's last checkpoint is untouched.")


def autocast_context(device: torch.device, amp: str):
    if amp == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
