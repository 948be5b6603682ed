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

import copy
import time
from pathlib import Path
from typing import Iterator

import torch
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm

from config import Config, save_config, to_dict
from model import build_networks
from model.loss import load_content_networks
from training import checkpoint as ckpt
from training import distributed
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


def resolve_run_config(cfg: Config, run_dir: Path, resume: bool) -> tuple[Config, Path | None]:
    """Picks the config and checkpoint of a (re)started run; refuses to silently overwrite a run directory."""
    latest = ckpt.latest_checkpoint(run_dir)
    if resume:
        if latest is None:
            raise ckpt.CheckpointError(f"--resume: no checkpoint in {ckpt.checkpoint_dir(run_dir)}")
        return cfg, latest
    if latest is not None:
        raise ckpt.CheckpointError(f"{run_dir} already holds checkpoints; pass --resume to continue it, or "
                                   "choose another --out")
    return cfg, None


def _set_determinism(cfg: Config) -> None:
    torch.manual_seed(cfg.train.seed)
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


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


def meta_train(cfg: Config, run_dir: str | Path, resume: bool = False, device: str = "cpu",
               progress: bool = True) -> Path:
    """Trains the config's model family until ``train.steps``; returns the path of the final checkpoint."""

    run_dir = Path(run_dir)
    info, dev = distributed.init_distributed(torch.device(device))
    try:
        cfg, resume_from = resolve_run_config(cfg, run_dir, resume)
        if not cfg.data.root:
            raise ValueError("data.root is not set: pass --set data.root=DIR (a store written by "
                             "dataset/voxceleb1/extract_landmark.py)")
        _set_determinism(cfg)
        trainer = make_trainer(cfg)
        dataset = trainer.dataset()
        cfg = trainer.configure(cfg, dataset)

        nets = build_networks(cfg.model)
        optimizers = trainer.optimizers(nets)
        step, samples_seen, resumed_averages = 0, 0, None
        if resume_from is not None:
            state = ckpt.load_checkpoint(resume_from, kind="meta_train")
            ckpt.check_architecture(state["config"]["model"], to_dict(cfg)["model"], state["networks"], nets,
                                    str(resume_from))
            for name, net in nets.items():
                net.load_state_dict(state["networks"][name])
            for name, opt in optimizers.items():
                opt.load_state_dict(state["optimizers"][name])
            step, samples_seen = state["step"], state["data"]["samples_seen"]
            ckpt.set_rng_state(state["rng"])
            resumed_averages = state.get("ema")
        elif info.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, run_dir / "config.yaml")

        memory_format = torch.channels_last if cfg.train.channels_last else torch.preserve_format
        for net in nets.values():
            net.to(dev, memory_format=memory_format)
        for opt in optimizers.values():
            _optimizer_to(opt, dev)
        averages = None
        if cfg.train.ema_decay > 0:
            averages = WeightAverage(nets, trainer.averaged, cfg.train.ema_decay)
            if resumed_averages is not None:
                averages.load_state_dict(resumed_averages)
        content = {k: v.to(dev, memory_format=memory_format) for k, v in load_content_networks(cfg.loss).items()}
        loss = trainer.loss(content)
        trainer.wrap(nets, info, dev)

        reporter = Reporter(run_dir, enabled=info.is_main)
        val_set = trainer.validation_set(cfg.train.val_episodes) if info.is_main and cfg.train.val_every else []
        loader = make_loader(dataset, cfg, info, samples_seen, dev, trainer.collate)
        bar = tqdm(total=cfg.train.steps, initial=step, desc=f"meta-train ({cfg.model.family})",
                   disable=not (progress and info.is_main), dynamic_ncols=True)

        def training_state() -> dict:
            return {"kind": "meta_train", "config": to_dict(cfg),
                    "networks": {n: m.state_dict() for n, m in nets.items()},
                    "optimizers": {n: o.state_dict() for n, o in optimizers.items()},
                    "rng": ckpt.rng_state(), "data": {"samples_seen": samples_seen},
                    **({"ema": averages.state_dict()} if averages else {})}

        last_path = resume_from
        tick, data_time, tick_samples = time.perf_counter(), 0.0, 0
        batches = iter(loader)
        while step < cfg.train.steps:
            t0 = time.perf_counter()
            batch = trainer.prepare(next(batches), dev)
            data_time += time.perf_counter() - t0
            stats, output = trainer.step(batch, optimizers, loss, step)
            step += 1
            if averages:
                averages.update(step)
            samples_seen += cfg.train.batch_size
            tick_samples += cfg.train.batch_size * info.world_size
            bar.update(1)
            bar.set_postfix(g=f"{stats['loss/g_total']:.3f}", d=f"{stats['loss/d_total']:.3f}",
                            real=f"{stats['score/real']:.2f}", fake=f"{stats['score/fake']:.2f}")
            if step % cfg.train.log_every == 0 or step == cfg.train.steps:
                elapsed = time.perf_counter() - tick
                stats.update({"perf/samples_per_s": tick_samples / elapsed, "perf/data_fraction": data_time / elapsed,
                              **{f"lr/{n}_{i}": g["lr"] for n, o in optimizers.items()
                                 for i, g in enumerate(o.param_groups)}})
                reporter.scalars(step, stats)
                tick, data_time, tick_samples = time.perf_counter(), 0.0, 0
            if cfg.train.val_every and val_set and (step % cfg.train.val_every == 0 or step == cfg.train.steps):
                generating = {**nets, **averages.averages} if averages else nets
                reporter.scalars(step, trainer.validate(generating, val_set, dev))
            if step % cfg.train.image_every == 0 or step == cfg.train.steps:
                reporter.image(step, trainer.image_tag, trainer.grid(batch, output))
            if step % cfg.train.checkpoint_every == 0 or step == cfg.train.steps:
                if info.is_main:
                    last_path = ckpt.save_run_checkpoint(run_dir, step, training_state(), cfg.train.keep_checkpoints)
        bar.close()
        reporter.close()
        return last_path
    finally:
        distributed.shutdown_distributed(info)


def _optimizer_to(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    for state in optimizer.state.values():
        for key, value in state.items():
            if torch.is_tensor(value):
                state[key] = value.to(device)
