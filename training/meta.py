"""Meta-learning of E, G and D on a preprocessed dataset (paper Sec. 3.3): the loop behind meta_train.py.

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
import dataclasses
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm

from config import Config, save_config, to_dict
from dataset.store import MetaDataset, StoreError, to_unit_range
from model import build_networks
from model.loss import GeneratorLoss, load_content_networks
from training import checkpoint as ckpt
from training import distributed
from training.report import Reporter, image_grid
from training.step import Networks, build_optimizers, train_step


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


def _collate(items: list[dict]) -> dict:
    out = {key: torch.stack([it[key] for it in items]) for key in ("frames", "landmarks", "points")}
    out["video_index"] = torch.tensor([it["video_index"] for it in items], dtype=torch.long)
    out["identity"] = [it["identity"] for it in items]
    return out


def make_loader(dataset, cfg: Config, info: distributed.DistInfo, start: int, device: torch.device,
                collate=_collate) -> DataLoader:
    sampler = EpisodeSampler(len(dataset), cfg.train.seed, info.rank, info.world_size, start)
    workers = cfg.data.num_workers
    return DataLoader(dataset, batch_size=cfg.train.batch_size, sampler=sampler, num_workers=workers,
                      collate_fn=collate, pin_memory=device.type == "cuda", drop_last=True,
                      persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None)


@torch.no_grad()
def validate(embedder: torch.nn.Module, generator: torch.nn.Module, episodes: list[dict],
             device: torch.device) -> dict[str, float]:
    """Reconstruction L1 of target frames from K sources, against copying the nearest source frame.

    ``episodes`` are MetaDataset items (fixed: drawn once with epoch 0). The baseline copies the source whose
    landmarks are closest to the target's: what a model that ignores the target pose would do at best.
    """
    was_training = embedder.training, generator.training
    embedder.eval()
    generator.eval()
    generated, nearest = [], []
    for episode in episodes:
        frames = episode["frames"].to(device).unsqueeze(0)
        landmarks = episode["landmarks"].to(device).unsqueeze(0)
        x = frames[0, -1]
        x_hat = generator(landmarks[:, -1], embedder(frames[:, :-1], landmarks[:, :-1]))[0]
        distance = (episode["points"][:-1] - episode["points"][-1]).norm(dim=-1).mean(dim=-1)
        generated.append(float((x_hat - x).abs().mean()))
        nearest.append(float((frames[0, int(distance.argmin())] - x).abs().mean()))
    embedder.train(was_training[0])
    generator.train(was_training[1])
    return {"val/l1": float(np.mean(generated)), "val/nearest_source_l1": float(np.mean(nearest))}


def validation_episodes(cfg: Config, count: int) -> list[dict]:
    """Fixed episodes of the test split (no flips); empty if the store has no test videos."""
    try:
        dataset = MetaDataset(cfg.data.root, "test", cfg.train.k_shots, cfg.model.image_size, 0.0,
                              cfg.data.landmark_thickness, cfg.train.seed)
    except (StoreError, ValueError):
        return []
    return [dataset[(i % len(dataset), i // len(dataset))] for i in range(count)]


def prepare_batch(batch: dict, device: torch.device) -> dict:
    """Moves a uint8 batch to the device and converts images to [-1, 1] there.

    Episodes travel from the workers as uint8: a quarter of the bytes through shared memory and PCIe, which
    measured 2.3x more episodes/s from 2 workers than float32 episodes (bench/dataloader.py).
    """
    out = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
    out["frames"], out["landmarks"] = to_unit_range(out["frames"]), to_unit_range(out["landmarks"])
    return out


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


class TalkingHeadTrainer:
    """What the loop needs to know about one model family: here Zakharov et al. 2019 (E, G and D with W).

    ``meta_train`` is family-agnostic; ``training/headgan_train.py`` implements the same methods for HeadGAN.
    """

    image_tag = "train/sources_landmarks_generated_real"
    averaged = ("embedder", "generator")  # the networks train.ema_decay averages

    def __init__(self, cfg: Config):
        self.cfg = cfg

    def dataset(self) -> MetaDataset:
        c = self.cfg
        return MetaDataset(c.data.root, "train", c.train.k_shots, c.model.image_size, c.data.flip_prob,
                           c.data.landmark_thickness, c.train.seed, as_uint8=True)

    def configure(self, cfg: Config, dataset: MetaDataset) -> Config:
        """W has one row per training video: the dataset decides, the preset only predicted it."""
        self.cfg = dataclasses.replace(cfg, model=dataclasses.replace(
            cfg.model, discriminator=dataclasses.replace(cfg.model.discriminator, num_videos=dataset.num_videos)))
        return self.cfg

    collate = staticmethod(_collate)

    def optimizers(self, nets: dict) -> dict:
        return build_optimizers(nets["embedder"], nets["generator"], nets["discriminator"], self.cfg)

    def loss(self, content: dict) -> torch.nn.Module:
        return GeneratorLoss(self.cfg.loss, content)

    def wrap(self, nets: dict, info: distributed.DistInfo, dev: torch.device) -> None:
        """DDP (W kept out of it: its sparse rows are averaged by hand) and optional torch.compile."""
        if info.enabled:
            distributed.broadcast_parameters(nets["discriminator"].W)
        wrapped = {
            "embedder": distributed.wrap(nets["embedder"], info, dev),
            "generator": distributed.wrap(nets["generator"], info, dev),
            "discriminator": distributed.wrap(nets["discriminator"], info, dev, ignore=("W.weight",)),
        }
        if self.cfg.train.compile:
            wrapped = {name: torch.compile(net) for name, net in wrapped.items()}
        self.networks = Networks(wrapped["embedder"], wrapped["generator"], wrapped["discriminator"],
                                 nets["discriminator"])
        self.sync_w = distributed.average_sparse_grad if info.enabled else None

    def step(self, batch: dict, optimizers: dict, loss: torch.nn.Module, step: int) -> tuple[dict, torch.Tensor]:
        return train_step(batch, self.networks, optimizers, loss, step, self.cfg.train.amp, self.sync_w)

    prepare = staticmethod(prepare_batch)

    def validation_set(self, count: int) -> list[dict]:
        return validation_episodes(self.cfg, count)

    def validate(self, nets: dict, episodes: list[dict], dev: torch.device) -> dict[str, float]:
        return validate(nets["embedder"], nets["generator"], episodes, dev)

    def grid(self, batch: dict, output: torch.Tensor) -> np.ndarray:
        return episode_grid(batch, output)


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
        from training.headgan_train import HeadGANTrainer
        return HeadGANTrainer(cfg)
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


def episode_grid(batch: dict, x_hat: torch.Tensor, max_rows: int = 4, max_sources: int = 4) -> np.ndarray:
    """Rows of: up to 4 source frames | target landmark image | generated frame | real frame."""
    k = batch["frames"].shape[1] - 1
    rows = []
    for i in range(min(max_rows, x_hat.shape[0])):
        sources = [batch["frames"][i, j] for j in range(min(k, max_sources))]
        rows.append(sources + [batch["landmarks"][i, k], x_hat[i], batch["frames"][i, k]])
    return image_grid(rows)


def _optimizer_to(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    for state in optimizer.state.values():
        for key, value in state.items():
            if torch.is_tensor(value):
                state[key] = value.to(device)
