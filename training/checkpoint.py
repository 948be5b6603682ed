"""Checkpoints: the whole training state, written atomically, read with ``weights_only=True``.

A checkpoint is one ``torch.save`` of plain containers and tensors:

    {"format": "talkinghead-checkpoint", "version": 1, "kind": "meta_train" | "person",
     "config": <resolved config as a dict>, "step": int, "networks": {name: state_dict},
     "optimizers": {name: state_dict}, "scaler": state_dict | None, "rng": {...}, "data": {...}}

Saving writes a temporary file in the same folder, fsyncs it and renames it over the final name, so a process
killed mid-save leaves the previous checkpoint intact and never a truncated file under a checkpoint's name.
Run directories keep the newest ``keep`` checkpoints as ``checkpoints/step_NNNNNNNNN.pt``; the step itself is
read from inside the file, never from its name.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from utils.atomic import atomic_file
from utils.safe_load import UnsafeOrDamagedFile, load_tensors

FORMAT = "talkinghead-checkpoint"
VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, or does not fit the model it is loaded into."""


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Atomically writes ``state`` (plus the format marker) to ``path``."""
    path = Path(path)
    payload = {"format": FORMAT, "version": VERSION, **state}
    with atomic_file(path) as f:
        torch.save(payload, f)
    return path


def load_checkpoint(path: str | Path, kind: str | None = None) -> dict[str, Any]:
    """Reads a checkpoint safely; clear errors for missing, truncated, foreign or wrong-kind files."""
    path = Path(path)
    try:
        payload = load_tensors(path, "checkpoint")
    except (FileNotFoundError, UnsafeOrDamagedFile) as err:
        raise CheckpointError(str(err)) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a checkpoint of this framework (no '{FORMAT}' marker)")
    if payload.get("version") != VERSION:
        raise CheckpointError(f"{path} has checkpoint format version {payload.get('version')}, this code reads "
                              f"version {VERSION}")
    if kind is not None and payload.get("kind") != kind:
        raise CheckpointError(f"{path} is a '{payload.get('kind')}' checkpoint; expected '{kind}'")
    return payload


def inference_weights(state: dict[str, Any]) -> dict[str, dict]:
    """Per network, the weights to generate with: the run's moving averages where it kept them
    (``train.ema_decay`` > 0: state["ema"]), else the last step's (state["networks"])."""
    return {**state["networks"], **state.get("ema", {})}


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """The run's checkpoints, oldest first (names sort by step: zero-padded)."""
    return sorted(checkpoint_dir(run_dir).glob("step_*.pt"))


def nonfinite_tensors(state: Any, prefix: str = "") -> list[str]:
    """Names of the floating-point tensors in ``state`` holding a NaN or Inf (one host read for all of them)."""
    named: list[tuple[str, torch.Tensor]] = []

    def walk(value: Any, name: str) -> None:
        if torch.is_tensor(value):
            if value.is_floating_point() and value.numel():
                named.append((name, value))
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(item, f"{name}.{key}" if name else str(key))
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                walk(item, f"{name}[{i}]")

    walk(state, prefix)
    if not named:
        return []
    flags = torch.stack([torch.isfinite(t).all().to("cpu", non_blocking=True) for _, t in named]).tolist()
    return [name for (name, _), ok in zip(named, flags) if not ok]


def save_run_checkpoint(run_dir: str | Path, step: int, state: dict[str, Any], keep: int) -> Path:
    """Writes ``checkpoints/step_{step}.pt`` and deletes all but the newest ``keep``.

    A state holding a NaN or Inf is never written (the newest good checkpoint stays the newest), and a failing
    write (disk full, read-only) is one CheckpointError naming the file and the checkpoint that is still intact.
    """
    from training.precision import NonFiniteLossError

    path = checkpoint_dir(run_dir) / f"step_{step:09d}.pt"
    previous = latest_checkpoint(run_dir)
    intact = f"the newest checkpoint {previous} is intact" if previous else "no earlier checkpoint exists"
    bad = nonfinite_tensors({k: state[k] for k in ("networks", "optimizers", "ema") if k in state})
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise NonFiniteLossError(f"step {step}: NaN or Inf in {shown}; not saving it ({intact}). The weights "
                                 "diverged: lower the learning rates")
    try:
        save_checkpoint(path, {**state, "step": step})
    except OSError as err:
        raise CheckpointError(f"cannot write checkpoint {path}: {err.strerror or err} ({intact})") from None
    for old in list_checkpoints(run_dir)[:-keep]:
        old.unlink()
    return path


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    paths = list_checkpoints(run_dir)
    return paths[-1] if paths else None


def check_architecture(saved_model_cfg: dict, current_model_cfg: dict,
                       saved_networks: dict[str, dict[str, torch.Tensor]],
                       current_networks: dict[str, torch.nn.Module], source: str) -> None:
    """Refuses a checkpoint whose networks differ from the current ones, saying what differs."""
    problems = []
    for key in sorted(set(saved_model_cfg) | set(current_model_cfg)):
        if saved_model_cfg.get(key) != current_model_cfg.get(key):
            problems.append(f"model.{key}: checkpoint {saved_model_cfg.get(key)!r}, "
                            f"config {current_model_cfg.get(key)!r}")
    for name, net in current_networks.items():
        saved = saved_networks.get(name)
        if saved is None:
            problems.append(f"network '{name}' is missing from the checkpoint")
            continue
        current = net.state_dict()
        for key in sorted(set(saved) | set(current)):
            if key not in saved:
                problems.append(f"{name}.{key}: not in the checkpoint")
            elif key not in current:
                problems.append(f"{name}.{key}: in the checkpoint but not in the model")
            elif saved[key].shape != current[key].shape:
                problems.append(f"{name}.{key}: checkpoint {tuple(saved[key].shape)}, "
                                f"model {tuple(current[key].shape)}")
    if problems:
        shown = "\n  ".join(problems[:12]) + (f"\n  ... and {len(problems) - 12} more" if len(problems) > 12 else "")
        raise CheckpointError(f"{source} was saved from a different architecture:\n  {shown}")


def rng_state() -> dict[str, Any]:
    """Every random generator's state, as tensors and plain values (loadable with weights_only=True)."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": [list(v) if isinstance(v, tuple) else v for v in random.getstate()],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
