"""The family-agnostic training loop behind meta_train.py: sampler, loader, moving averages, run directory.

Each model family supplies a trainer (training/talking_head.py, training/headgan.py) that builds its dataset,
optimisers, loss and step; this loop runs any of them.

The run directory holds everything a run produces:

    RUN/config.yaml          the resolved config (frozen at the first start; a resume must agree with it)
    RUN/checkpoints/         step_NNNNNNNNN.pt, the newest train.keep_checkpoints of them
    RUN/metrics.jsonl        every logged scalar, one JSON object per line
    RUN/tensorboard/         the same scalars plus image grids (tensorboard --logdir RUN)
    RUN/images/              the image grids as PNG: sources | target landmarks | generated | real

Resuming restores networks, optimisers, every RNG and the data position, so on CPU with
``train.deterministic`` a run of N steps and a run of N/2 + resume + N/2 end with identical weights.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import torch
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm

from config import RESUME_MAY_CHANGE, Config, ConfigError, config_differences, load_config, save_config, to_dict
from dataset.store import StoreError
from model import build_networks
from model.loss import load_content_networks
from training import checkpoint as ckpt
from training import distributed
from training.precision import Precision, resolve_amp
from training.report import Reporter


class EpisodeSampler(Sampler):
    """An endless stream of ``(video, epoch)`` items: a fresh permutation per epoch, split across processes.

    Position ``start`` (items already consumed by this process) lets a resumed run continue the exact stream.
    Each epoch gives every process ``len(dataset) // world_size`` items, so the processes stay in step.
    """

    def __init__(self, length: int, seed: int, rank: int = 0, world_size: int = 1, start: int = 0):
        self.length, self.seed, self.rank, self.world_size, self.start = length, seed, rank, world_size, start
        self.per_rank = length // world_size
        if self.per_rank == 0:
            raise ValueError(f"{length} training videos cannot be split over {world_size} processes")

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, offset = divmod(self.start, self.per_rank)
        while True:
            order = torch.randperm(self.length, generator=torch.Generator().manual_seed(self.seed * 100003 + epoch))
            mine = order[self.rank::self.world_size][:self.per_rank].tolist()
            for video in mine[offset:]:
                yield video, epoch
            epoch, offset = epoch + 1, 0


def make_loader(dataset, cfg: Config, info: distributed.DistInfo, start: int, device: torch.device,
                collate) -> DataLoader:
    sampler = EpisodeSampler(len(dataset), cfg.train.seed, info.rank, info.world_size, start)
    workers = cfg.data.num_workers
    return DataLoader(dataset, batch_size=cfg.train.batch_size, sampler=sampler, num_workers=workers,
                      collate_fn=collate, pin_memory=device.type == "cuda", drop_last=True,
                      persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None)


def configure_backends(cfg: Config, device: torch.device) -> None:
    """Seeds, and the backends' speed and determinism switches (TF32, cudnn autotuning) for ``device``."""
    torch.manual_seed(cfg.train.seed)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = cfg.train.tf32
        torch.backends.cudnn.allow_tf32 = cfg.train.tf32
        # Autotuning picks the fastest convolution per shape; its choice may differ from run to run.
        torch.backends.cudnn.benchmark = not cfg.train.deterministic
    if not cfg.train.deterministic:
        return
    if device.type == "cuda":
        if cfg.model.family == "headgan":
            raise ConfigError("train.deterministic on CUDA: HeadGAN's flow warping and multi-scale resizing "
                              "(grid_sampler_2d_backward, adaptive_avg_pool2d_backward, upsample_bilinear2d_backward)"
                              " have no deterministic CUDA kernels; train with train.deterministic=false")
        # cuBLAS needs a fixed workspace for reproducible matrix products; read when its handle is created.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True)


def store_rows(dataset) -> torch.Tensor:
    """(N, 2) int64: a 64-bit hash of each video's path and the row of W (video_index) it trains.

    Kept in checkpoints, so a resume can check that the store still puts the same videos behind the same rows
    (a re-indexed store would silently train other videos' W rows)."""
    pairs = []
    for i in range(len(dataset.videos)):
        row = dataset.videos[i]
        digest = hashlib.blake2b(row[0].encode("utf-8"), digest_size=8).digest()
        pairs.append((int.from_bytes(digest, "little", signed=True), row[2] if len(row) > 2 else i))
    return torch.tensor(pairs, dtype=torch.long).reshape(-1, 2)


def check_store_rows(saved: torch.Tensor | None, current: torch.Tensor, source: str) -> str | None:
    """Refuses a store whose videos moved to other rows or that gained videos; returns a note for removed ones."""
    if saved is None:
        return None
    before = dict(saved.tolist())
    moved = sum(1 for h, r in current.tolist() if h in before and before[h] != r)
    added = sum(1 for h, _ in current.tolist() if h not in before)
    if moved or added:
        raise ckpt.CheckpointError(f"the store (data.root) is not the one {source} trained on: {added} videos are "
                                   f"new and {moved} sit at other rows of W. Resume with the original store, or "
                                   "start a new run (--out) on this one")
    removed = len(before) - (len(current) - added)
    return f"{removed} videos of the run's store are no longer in its index (quarantined?)" if removed else None


def _remove_stale_temporaries(folder: Path) -> None:
    """Temporary files of saves that were killed (``utils.atomic``: ``.NAME.<random>.tmp``) are never completed."""
    for stale in folder.glob(".*.tmp"):
        with contextlib.suppress(OSError):
            stale.unlink()


def check_run_dir(run_dir: Path, needed_bytes: int) -> None:
    """The run directory is writable and has room for two checkpoints, or one line says why not."""
    folder = ckpt.checkpoint_dir(run_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test.", suffix=".tmp"):
            pass
    except OSError as err:
        raise ckpt.CheckpointError(f"cannot write to the run directory {folder}: {err.strerror or err}") from None
    free = shutil.disk_usage(folder).free
    if free < 2 * needed_bytes:
        raise ckpt.CheckpointError(f"{folder} has {free / 2**30:.2f} GiB free; a checkpoint of this run takes "
                                   f"about {needed_bytes / 2**30:.2f} GiB and rotation needs room for two")


def _state_bytes(nets: dict, averaged: tuple[str, ...], ema: bool) -> int:
    """About what a checkpoint takes: weights, Adam's two moments, and the moving averages."""
    total = 0
    for name, net in nets.items():
        size = sum(t.numel() * t.element_size() for t in net.state_dict().values())
        total += size * (3 + (name in averaged and ema))
    return total


def open_run(cfg: Config, run_dir: Path, resume: bool, info: distributed.DistInfo
             ) -> tuple[dict | None, Path | None]:
    """Checks a (re)started run against its directory; returns (checkpoint state, its path) or (None, None).

    A fresh run refuses a directory that already holds checkpoints. A resume refuses a requested config that
    differs from the run's frozen config.yaml outside ``RESUME_MAY_CHANGE`` (naming every key), and falls back
    from an unreadable newest checkpoint to the newest readable one, saying so (the bad file is renamed
    ``*.unreadable``, kept for inspection and out of the rotation).
    """
    if info.is_main and ckpt.checkpoint_dir(run_dir).is_dir():
        _remove_stale_temporaries(ckpt.checkpoint_dir(run_dir))
    candidates = ckpt.list_checkpoints(run_dir)
    if not resume:
        if candidates:
            raise ckpt.CheckpointError(f"{run_dir} already holds checkpoints; pass --resume to continue it, or "
                                       "choose another --out")
        return None, None
    if not candidates:
        raise ckpt.CheckpointError(f"--resume: no checkpoint in {ckpt.checkpoint_dir(run_dir)}")
    for path in reversed(candidates):
        try:
            state = ckpt.load_checkpoint(path, kind="meta_train")
        except ckpt.CheckpointError as err:
            if info.is_main:
                print(f"warning: {err}; trying the previous checkpoint", file=sys.stderr, flush=True)
                with contextlib.suppress(OSError):
                    path.rename(path.with_name(path.name + ".unreadable"))
            continue
        if path != candidates[-1] and info.is_main:
            print(f"warning: resuming from {path.name}, the newest readable checkpoint", file=sys.stderr,
                  flush=True)
        frozen = run_dir / "config.yaml"
        run_cfg = to_dict(load_config(frozen)) if frozen.is_file() else state["config"]
        differences = config_differences(run_cfg, to_dict(cfg))
        if differences:
            shown = "\n  ".join(differences)
            raise ConfigError(f"--resume would change the run's config ({frozen}); refused:\n  {shown}\n"
                              "Only these may change on a resume: " + ", ".join(RESUME_MAY_CHANGE))
        return state, path
    raise ckpt.CheckpointError(f"--resume: no readable checkpoint in {ckpt.checkpoint_dir(run_dir)}")


class SkipCounter:
    """Damaged samples the datasets passed over; the run stops past ``data.max_skipped_fraction`` of those read.

    The share is taken over at least ``GRACE`` samples, so a few bad clips early in a run do not end it."""

    GRACE = 1000

    def __init__(self, max_fraction: float, root: str):
        self.max_fraction, self.root = max_fraction, root
        self.skipped = self.read = self.since_log = 0

    def add(self, batch: dict, batch_size: int) -> None:
        skipped = int(batch.get("skipped", 0))
        self.skipped += skipped
        self.since_log += skipped
        self.read += batch_size + skipped
        if self.skipped > self.max_fraction * max(self.read, self.GRACE):
            raise StoreError(f"{self.skipped} of {self.read} samples read from {self.root} were damaged, more than "
                             f"data.max_skipped_fraction={self.max_fraction}; list and quarantine them with: "
                             f"python -m dataset.store verify {self.root} --quarantine")

    def log(self) -> dict[str, float]:
        out = {"data/skipped": float(self.since_log), "data/skipped_total": float(self.skipped)}
        self.since_log = 0
        return out


class WeightAverage:
    """Exponential moving averages of some networks' weights (``train.ema_decay``), for validation and inference.

    The averages are copies of the unwrapped modules (no DDP, no compile) on the training device: every rank
    updates its own from weights that DDP keeps identical, so they agree without communication. Buffers are
    copied, not averaged.
    """

    def __init__(self, nets: dict[str, torch.nn.Module], names: tuple[str, ...], decay: float):
        self.decay = decay
        self.averages = {name: copy.deepcopy(nets[name]).requires_grad_(False) for name in names}
        pairs = [(average, nets[name]) for name, average in self.averages.items()]
        self._kept = [p for average, _ in pairs for p in average.parameters()]
        self._current = [p for _, net in pairs for p in net.parameters()]
        self._buffers = [(kept, current) for average, net in pairs
                         for kept, current in zip(average.buffers(), net.buffers())]

    @torch.no_grad()
    def update(self, step: int) -> None:
        """After optimisation step ``step`` (1-based): early averages warm up, so step 1 copies the weights."""
        decay = min(self.decay, (step - 1) / (step + 9))
        torch._foreach_lerp_(self._kept, self._current, 1.0 - decay)
        for kept, current in self._buffers:
            kept.copy_(current)

    def state_dict(self) -> dict[str, dict]:
        return {name: net.state_dict() for name, net in self.averages.items()}

    def load_state_dict(self, state: dict[str, dict]) -> None:
        for name, net in self.averages.items():
            net.load_state_dict(state[name])


def make_trainer(cfg: Config):
    """The trainer of ``cfg.model.family``."""
    if cfg.model.family == "headgan":
        from training.headgan import HeadGANTrainer
        return HeadGANTrainer(cfg)
    from training.talking_head import TalkingHeadTrainer
    return TalkingHeadTrainer(cfg)


@dataclasses.dataclass
class Training:
    """What a training step needs, built the way meta_train builds it (bench/train.py uses the same)."""

    trainer: object
    nets: dict[str, torch.nn.Module]  # the plain modules (the trainer holds the wrapped ones it steps)
    optimizers: dict[str, torch.optim.Optimizer]
    precision: Precision
    loss: torch.nn.Module
    averages: WeightAverage | None


def build_training(cfg: Config, trainer, device: torch.device, info: distributed.DistInfo | None = None,
                   state: dict | None = None, source: str = "", content: dict | None = None) -> Training:
    """Networks (from a checkpoint ``state`` when given) on ``device``, fused optimisers, precision, moving
    averages, the loss with its perceptual networks (``content``, default: ``load_content_networks``), and the
    trainer's wrapping (DDP, torch.compile). ``cfg`` must be resolved (``resolve_config``) and configured."""
    info = info or distributed.DistInfo()
    nets = build_networks(cfg.model)
    if state is not None:
        ckpt.check_architecture(state["config"]["model"], to_dict(cfg)["model"], state["networks"], nets, source)
        for name, net in nets.items():
            net.load_state_dict(state["networks"][name])
    memory_format = torch.channels_last if cfg.train.channels_last else torch.preserve_format
    for net in nets.values():
        net.to(device, memory_format=memory_format)
    # Built after the move: fused Adam keeps its state (step counters too) on the parameters' device, and
    # load_state_dict puts a checkpoint's state where the optimiser wants it.
    optimizers = trainer.optimizers(nets)
    precision = Precision(cfg.train.amp, device)
    averages = WeightAverage(nets, trainer.averaged, cfg.train.ema_decay) if cfg.train.ema_decay > 0 else None
    if state is not None:
        for name, opt in optimizers.items():
            opt.load_state_dict(state["optimizers"][name])
        precision.load_state_dict(state.get("scaler"))
        if averages is not None and state.get("ema") is not None:
            averages.load_state_dict(state["ema"])
    content = load_content_networks(cfg.loss) if content is None else content
    content = {k: v.to(device, memory_format=memory_format) for k, v in content.items()}
    if cfg.train.compile:
        content = {k: torch.compile(v, backend=cfg.train.compile_backend) for k, v in content.items()}
    loss = trainer.loss(content)
    trainer.wrap(nets, info, device)
    return Training(trainer, nets, optimizers, precision, loss, averages)


def resolve_config(cfg: Config, device: torch.device) -> Config:
    """The config as the run freezes it: ``train.amp`` resolved for the device (``auto`` -> bf16 / fp16 / none)."""
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, amp=resolve_amp(cfg.train.amp, device)))


def meta_train(cfg: Config, run_dir: str | Path, resume: bool = False, device: str | torch.device = "auto",
               progress: bool = True) -> Path:
    """Trains the config's model family until ``train.steps``; returns the path of the final checkpoint.

    Host<->device synchronisation happens only at log, validation, image and checkpoint steps: loss terms and
    the non-finite guard stay on the device in between (``training/precision.py``).
    """
    run_dir = Path(run_dir)
    dev = distributed.resolve_device(device) if isinstance(device, str) else torch.device(device)
    info, dev = distributed.init_distributed(dev)
    try:
        if not cfg.data.root:
            raise ValueError("data.root is not set: pass --set data.root=DIR (a store written by "
                             "dataset/voxceleb1/extract_landmark.py)")
        cfg = resolve_config(cfg, dev)
        configure_backends(cfg, dev)
        trainer = make_trainer(cfg)
        dataset = trainer.dataset()
        cfg = trainer.configure(cfg, dataset)
        rows = store_rows(dataset)
        state, resume_from = open_run(cfg, run_dir, resume, info)

        step, samples_seen = 0, 0
        if state is not None:
            step, samples_seen = state["step"], state["data"]["samples_seen"]
            note = check_store_rows(state["data"].get("store_rows"), rows, str(resume_from))
            if note and info.is_main:
                print(f"note: {note}", file=sys.stderr)
        run = build_training(cfg, trainer, dev, info, state=state, source=str(resume_from))
        nets, optimizers, precision, loss, averages = (run.nets, run.optimizers, run.precision, run.loss,
                                                       run.averages)
        if state is not None:
            ckpt.set_rng_state(state["rng"])
        if info.is_main:
            check_run_dir(run_dir, _state_bytes(nets, trainer.averaged, averages is not None))
            save_config(cfg, run_dir / "config.yaml")  # on a resume: the allowed changes (steps, cadences)

        reporter = Reporter(run_dir, enabled=info.is_main, resume_step=step if state is not None else None)
        val_set = trainer.validation_set(cfg.train.val_episodes) if info.is_main and cfg.train.val_every else []
        loader = make_loader(dataset, cfg, info, samples_seen, dev, trainer.collate)
        skips = SkipCounter(cfg.data.max_skipped_fraction, cfg.data.root)
        bar = tqdm(total=cfg.train.steps, initial=step, desc=f"meta-train ({cfg.model.family})",
                   disable=not (progress and info.is_main), dynamic_ncols=True)

        def training_state() -> dict:
            return {"kind": "meta_train", "config": to_dict(cfg),
                    "networks": {n: m.state_dict() for n, m in nets.items()},
                    "optimizers": {n: o.state_dict() for n, o in optimizers.items()},
                    "scaler": precision.state_dict(),
                    "rng": ckpt.rng_state(), "data": {"samples_seen": samples_seen, "store_rows": rows},
                    **({"ema": averages.state_dict()} if averages else {})}

        last_path = resume_from
        tick, data_time, tick_samples, running, logged_steps = time.perf_counter(), 0.0, 0, None, 0
        batches = iter(loader)
        del state  # the checkpoint's tensors are in the networks now
        while step < cfg.train.steps:
            t0 = time.perf_counter()
            raw = next(batches)
            skips.add(raw, cfg.train.batch_size)
            batch = trainer.prepare(raw, dev)
            data_time += time.perf_counter() - t0
            stats, output = trainer.step(batch, optimizers, loss, step + 1, precision)
            step += 1
            if averages:
                averages.update(step)
            samples_seen += cfg.train.batch_size
            tick_samples += cfg.train.batch_size * info.world_size
            running = stats if running is None else {k: running[k] + v for k, v in stats.items()}
            logged_steps += 1
            bar.update(1)
            last = step == cfg.train.steps
            logged = {}  # everything of this step goes into one metrics.jsonl line
            if step % cfg.train.log_every == 0 or last:
                skipped_updates = precision.check(step)  # the step's one read of the device (with the next)
                names = list(running)
                values = (torch.stack([running[n].float() for n in names]) / logged_steps).tolist()
                logged.update(zip(names, values))
                elapsed = time.perf_counter() - tick
                logged.update({"perf/samples_per_s": tick_samples / elapsed, "perf/data_fraction": data_time / elapsed,
                               "perf/updates_skipped": float(skipped_updates), **skips.log(),
                               **{f"lr/{n}_{i}": g["lr"] for n, o in optimizers.items()
                                  for i, g in enumerate(o.param_groups)}})
                bar.set_postfix(g=f"{logged['loss/g_total']:.3f}", d=f"{logged['loss/d_total']:.3f}",
                                real=f"{logged['score/real']:.2f}", fake=f"{logged['score/fake']:.2f}")
                tick, data_time, tick_samples, running, logged_steps = time.perf_counter(), 0.0, 0, None, 0
            if cfg.train.val_every and val_set and (step % cfg.train.val_every == 0 or last):
                generating = {**nets, **averages.averages} if averages else nets
                logged.update(trainer.validate(generating, val_set, dev))
            if logged:
                reporter.scalars(step, logged)
            if step % cfg.train.image_every == 0 or last:
                reporter.image(step, trainer.image_tag, trainer.grid(batch, output))
            if step % cfg.train.checkpoint_every == 0 or last:
                precision.check(step)  # no checkpoint after a skipped (non-finite) update goes unreported
                if info.is_main:
                    last_path = ckpt.save_run_checkpoint(run_dir, step, training_state(), cfg.train.keep_checkpoints)
        bar.close()
        reporter.close()
        return last_path
    finally:
        distributed.shutdown_distributed(info)
