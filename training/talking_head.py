"""The few-shot talking-head family (Zakharov et al. 2019) in the training loop: its trainer and its step.

One meta-learning step (Sec. 3.3) is a D phase, then an E+G phase:

    e_hat = E(sources), x_hat = G(y_target, e_hat)
    D phase:  hinge(D(x, y, i), D(x_hat.detach(), y, i))        -> step D's trunk, w0, b
    G phase:  content + adversarial + feature matching + L_MCH   -> step E and G
    then W (rows i only) steps once with the sum of its hinge and L_MCH gradients.

The two phases are separate backward passes: the D update never sees the generator's objective and the G
update never moves D. In the G phase D runs unwrapped (outside DDP) with its trunk frozen, so gradients flow
through it to x_hat without touching, or all-reducing, D's weights. Its adversarial score uses a detached W_i,
so W learns only from the hinge loss and from L_MCH, as in the paper.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from config import Config
from dataset.store import MetaDataset, StoreError, to_unit_range
from model.loss import GeneratorLoss, hinge_discriminator
from training import distributed
from training.precision import autocast_context, check_finite
from training.report import image_grid


@dataclass
class Networks:
    """The networks as the step calls them (possibly DDP/compile-wrapped) and D's plain module."""

    embedder: nn.Module
    generator: nn.Module
    discriminator: nn.Module
    discriminator_module: nn.Module


def build_optimizers(embedder: nn.Module, generator: nn.Module, discriminator: nn.Module,
                     cfg: Config) -> dict[str, torch.optim.Optimizer]:
    """Adam for E+G and for D's trunk (TTUR learning rates); W gets SparseAdam when its gradient is sparse."""
    o = cfg.optim
    betas = (o.betas[0], o.betas[1])
    trunk = [p for name, p in discriminator.named_parameters() if not name.startswith("W.")]
    w_opt = torch.optim.SparseAdam if discriminator.W.sparse else torch.optim.Adam
    return {
        "generator": torch.optim.Adam([{"params": embedder.parameters(), "lr": o.lr_embedder},
                                       {"params": generator.parameters(), "lr": o.lr_generator}], betas=betas),
        "discriminator": torch.optim.Adam(trunk, lr=o.lr_discriminator, betas=betas),
        "projection": w_opt([discriminator.W.weight], lr=o.lr_discriminator, betas=betas),
    }


def discriminator_phase(discriminator: nn.Module, x: torch.Tensor, y: torch.Tensor, x_hat: torch.Tensor,
                        optimizer: torch.optim.Optimizer, step: int, autocast, **projection) -> dict[str, torch.Tensor]:
    """Hinge loss on real and detached generated frames in one D forward, backward, and D's update.

    ``projection`` selects D's projection vector for both halves: ``video_index`` (B,) rows of W, or ``w``.
    """
    b = x.shape[0]
    doubled = {k: torch.cat([v, v]) for k, v in projection.items()}
    with autocast:
        scores, _ = discriminator(torch.cat([x, x_hat.detach()]), torch.cat([y, y]), **doubled)
    real_scores, fake_scores = scores.float().split(b)
    terms = hinge_discriminator(real_scores, fake_scores)
    check_finite(terms, step)
    optimizer.zero_grad(set_to_none=True)
    sum(terms.values()).backward()
    optimizer.step()
    terms["score_real"], terms["score_fake"] = real_scores.detach().mean(), fake_scores.detach().mean()
    return terms


def generator_phase(discriminator: nn.Module, x: torch.Tensor, y: torch.Tensor, x_hat: torch.Tensor,
                    w: torch.Tensor, generator_loss: GeneratorLoss, optimizer: torch.optim.Optimizer, step: int,
                    autocast, e_hat: torch.Tensor | None = None, w_i: torch.Tensor | None = None
                    ) -> dict[str, torch.Tensor]:
    """The generator's objective through a frozen, unwrapped D (projection ``w`` detached), backward, update.

    One D forward on [x_hat, x] gives the fake scores and both sides' block activations for feature matching.
    """
    b = x.shape[0]
    trunk = [p for name, p in discriminator.named_parameters() if not name.startswith("W.")]
    for p in trunk:
        p.requires_grad_(False)
    try:
        with autocast:
            w = w.detach().expand(b, -1)
            scores, features = discriminator(torch.cat([x_hat, x]), torch.cat([y, y]), w=torch.cat([w, w]))
            fake_features = [f[:b].float() for f in features]
            real_features = [f[b:].detach().float() for f in features]
            terms = generator_loss(x_hat.float(), x, scores[:b].float(), fake_features, real_features,
                                   None if e_hat is None else e_hat.float(), None if w_i is None else w_i.float())
        check_finite(terms, step)
        optimizer.zero_grad(set_to_none=True)
        sum(terms.values()).backward()
    finally:
        for p in trunk:
            p.requires_grad_(True)
    optimizer.step()
    return terms


def summarize_terms(d_terms: dict[str, torch.Tensor], g_terms: dict[str, torch.Tensor]) -> dict[str, float]:
    """The scalars a step logs: every term, both totals and D's mean scores on real and generated frames."""
    stats = {f"loss/{name}": float(v.detach()) for name, v in {**d_terms, **g_terms}.items()
             if not name.startswith("score_")}
    stats["loss/d_total"] = stats["loss/d_real"] + stats["loss/d_fake"]
    stats["loss/g_total"] = sum(float(v.detach()) for v in g_terms.values())
    stats["score/real"], stats["score/fake"] = float(d_terms["score_real"]), float(d_terms["score_fake"])
    return stats


def train_step(batch: dict[str, torch.Tensor], nets: Networks, optimizers: dict[str, torch.optim.Optimizer],
               generator_loss: GeneratorLoss, step: int, amp: str = "none",
               sync_w=None) -> tuple[dict[str, float], torch.Tensor]:
    """One meta-learning step on a batch from MetaDataset; returns (logged scalars, x_hat detached).

    ``sync_w`` (distributed runs) averages W's sparse gradient across processes before its update.
    """
    frames, landmarks, index = batch["frames"], batch["landmarks"], batch["video_index"]
    k = frames.shape[1] - 1
    src_x, src_y = frames[:, :k], landmarks[:, :k]  # B x K x 3 x S x S
    x, y = frames[:, k], landmarks[:, k]  # B x 3 x S x S
    D = nets.discriminator_module
    autocast = autocast_context(x.device, amp)

    with autocast:
        e_hat = nets.embedder(src_x, src_y)  # B x embed_dim
        x_hat = nets.generator(y, e_hat)  # B x 3 x S x S

    # W's gradient accumulates over both phases (hinge, then L_MCH) and is applied once at the end.
    optimizers["projection"].zero_grad(set_to_none=True)
    d_terms = discriminator_phase(nets.discriminator, x, y, x_hat, optimizers["discriminator"], step, autocast,
                                  video_index=index)
    with autocast:
        w_i = D.W(index)
    g_terms = generator_phase(D, x, y, x_hat, w_i, generator_loss, optimizers["generator"], step, autocast,
                              e_hat=e_hat, w_i=w_i)
    if sync_w is not None:
        sync_w(D.W.weight)
    optimizers["projection"].step()
    return summarize_terms(d_terms, g_terms), x_hat.detach()


def collate_episodes(items: list[dict]) -> dict:
    out = {key: torch.stack([it[key] for it in items]) for key in ("frames", "landmarks", "points")}
    out["video_index"] = torch.tensor([it["video_index"] for it in items], dtype=torch.long)
    out["identity"] = [it["identity"] for it in items]
    return out


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


class TalkingHeadTrainer:
    """What the loop needs to know about one model family: here Zakharov et al. 2019 (E, G and D with W).

    ``training.loop.meta_train`` is family-agnostic; ``training/headgan.py`` implements the same methods for HeadGAN.
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

    collate = staticmethod(collate_episodes)

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


def episode_grid(batch: dict, x_hat: torch.Tensor, max_rows: int = 4, max_sources: int = 4) -> np.ndarray:
    """Rows of: up to 4 source frames | target landmark image | generated frame | real frame."""
    k = batch["frames"].shape[1] - 1
    rows = []
    for i in range(min(max_rows, x_hat.shape[0])):
        sources = [batch["frames"][i, j] for j in range(min(k, max_sources))]
        rows.append(sources + [batch["landmarks"][i, k], x_hat[i], batch["frames"][i, k]])
    return image_grid(rows)
