"""The few-shot talking-head family (Zakharov et al. 2019) in the training loop: its trainer and its step.

One meta-learning step (Sec. 3.3) is a D phase, then an E+G phase:

    e_hat = E(sources), x_hat = G(y_target, e_hat)
    D phase:  hinge(D(x, y, i), D(x_hat.detach(), y, i))        -> step D's trunk, w0, b
    G phase:  content + adversarial + feature matching + L_MCH   -> step E and G
    then W (rows i only) steps once with the sum of its hinge and L_MCH gradients.

The two phases are separate backward passes: the D update never sees the generator's objective and the G
update never moves D. In the G phase D runs unwrapped (outside DDP) and the backward pass is restricted to E, G
and W (``backward(inputs=...)``), so gradients flow through D to x_hat without computing, or all-reducing, D's
weight gradients. Its adversarial score uses a detached W_i, so W learns only from the hinge loss and from
L_MCH, as in the paper. Loss terms stay on the device (``training/precision.py``): a step reads nothing back.
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
from training.precision import Precision, RowAdam, make_adam
from training.report import image_grid


@dataclass
class Networks:
    """The networks as the step calls them (possibly DDP/compile-wrapped) and D's plain module.

    ``discriminator_g`` is what the G phase calls: D's plain module (outside DDP), compiled when the run compiles.
    """

    embedder: nn.Module
    generator: nn.Module
    discriminator: nn.Module
    discriminator_module: nn.Module
    discriminator_g: nn.Module | None = None

    def __post_init__(self):
        if self.discriminator_g is None:
            self.discriminator_g = self.discriminator_module


def build_optimizers(embedder: nn.Module, generator: nn.Module, discriminator: nn.Module,
                     cfg: Config) -> dict[str, torch.optim.Optimizer]:
    """Fused Adam for E+G and for D's trunk (TTUR learning rates); W gets RowAdam when its gradient is sparse.

    Build them after the networks are on their device: fused Adam keeps its step counters there.
    """
    o = cfg.optim
    betas = (o.betas[0], o.betas[1])
    trunk = [p for name, p in discriminator.named_parameters() if not name.startswith("W.")]
    w = discriminator.W.weight
    return {
        "generator": make_adam([{"params": list(embedder.parameters()), "lr": o.lr_embedder},
                                {"params": list(generator.parameters()), "lr": o.lr_generator}],
                               o.lr_generator, betas),
        "discriminator": make_adam(trunk, o.lr_discriminator, betas),
        "projection": (RowAdam([w], lr=o.lr_discriminator, betas=betas) if discriminator.W.sparse
                       else make_adam([w], o.lr_discriminator, betas)),
    }


def optimized_params(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"]]


def discriminator_phase(discriminator: nn.Module, x: torch.Tensor, y: torch.Tensor, x_hat: torch.Tensor,
                        optimizer: torch.optim.Optimizer, step: int, precision: Precision,
                        **projection) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Hinge loss on real and detached generated frames in one D forward, backward, and D's update.

    ``projection`` selects D's projection vector for both halves: ``video_index`` (B,) rows of W, or ``w``.
    Returns the terms (plus D's mean scores) and the phase's device-side found_inf flag.
    """
    b = x.shape[0]
    doubled = {k: torch.cat([v, v]) for k, v in projection.items()}
    with precision.autocast():
        scores, _ = discriminator(torch.cat([x, x_hat.detach()]), torch.cat([y, y]), **doubled)
    real_scores, fake_scores = scores.float().split(b)
    terms = hinge_discriminator(real_scores, fake_scores)
    optimizer.zero_grad(set_to_none=True)
    found_inf = precision.backward(terms, step)
    precision.step(optimizer, found_inf)
    terms["score_real"], terms["score_fake"] = real_scores.detach().mean(), fake_scores.detach().mean()
    return terms, found_inf


def generator_phase(discriminator: nn.Module, x: torch.Tensor, y: torch.Tensor, x_hat: torch.Tensor,
                    w: torch.Tensor, generator_loss: GeneratorLoss, optimizer: torch.optim.Optimizer, step: int,
                    precision: Precision, e_hat: torch.Tensor | None = None, w_i: torch.Tensor | None = None,
                    also: tuple[torch.Tensor, ...] = ()) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The generator's objective through D (projection ``w`` detached), backward into the optimiser's
    parameters and ``also`` only (D's weights get no gradient), update. Returns (terms, found_inf).

    One D forward on [x_hat, x] gives the fake scores and both sides' block activations for feature matching.
    """
    b = x.shape[0]
    with precision.autocast():
        w = w.detach().expand(b, -1)
        scores, features = discriminator(torch.cat([x_hat, x]), torch.cat([y, y]), w=torch.cat([w, w]))
        fake_features = [f[:b].float() for f in features]
        real_features = [f[b:].detach().float() for f in features]
        terms = generator_loss(x_hat.float(), x, scores[:b].float(), fake_features, real_features,
                               None if e_hat is None else e_hat.float(), None if w_i is None else w_i.float())
    optimizer.zero_grad(set_to_none=True)
    found_inf = precision.backward(terms, step, inputs=optimized_params(optimizer) + list(also))
    precision.step(optimizer, found_inf)
    return terms, found_inf


def summarize_terms(d_terms: dict[str, torch.Tensor], g_terms: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The scalars a step logs, as detached 0-dim device tensors (read by the loop every log_every steps):
    every term, both totals and D's mean scores on real and generated frames."""
    stats = {f"loss/{name}": v.detach() for name, v in {**d_terms, **g_terms}.items()
             if not name.startswith("score_")}
    stats["loss/d_total"] = stats["loss/d_real"] + stats["loss/d_fake"]
    stats["loss/g_total"] = torch.stack([v.detach() for v in g_terms.values()]).sum()
    stats["score/real"], stats["score/fake"] = d_terms["score_real"], d_terms["score_fake"]
    return stats


def train_step(batch: dict[str, torch.Tensor], nets: Networks, optimizers: dict[str, torch.optim.Optimizer],
               generator_loss: GeneratorLoss, step: int, precision: Precision,
               sync_w=None) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """One meta-learning step on a batch from MetaDataset; returns (scalars as device tensors, x_hat detached).

    ``sync_w`` (distributed runs) averages W's sparse gradient across processes before its update.
    """
    frames, landmarks, index = batch["frames"], batch["landmarks"], batch["video_index"]
    k = frames.shape[1] - 1
    src_x, src_y = frames[:, :k], landmarks[:, :k]  # B x K x 3 x S x S
    x, y = frames[:, k], landmarks[:, k]  # B x 3 x S x S
    D = nets.discriminator_module

    with precision.autocast():
        e_hat = nets.embedder(src_x, src_y)  # B x embed_dim
        x_hat = nets.generator(y, e_hat)  # B x 3 x S x S

    # W's gradient accumulates over both phases (hinge, then L_MCH) and is applied once at the end.
    optimizers["projection"].zero_grad(set_to_none=True)
    d_terms, d_inf = discriminator_phase(nets.discriminator, x, y, x_hat, optimizers["discriminator"], step,
                                         precision, video_index=index)
    with precision.autocast():
        w_i = D.W(index)
    g_terms, g_inf = generator_phase(nets.discriminator_g, x, y, x_hat, w_i, generator_loss,
                                     optimizers["generator"], step, precision, e_hat=e_hat, w_i=w_i,
                                     also=(D.W.weight,))
    if sync_w is not None:
        sync_w(D.W.weight)
    precision.step(optimizers["projection"], torch.maximum(d_inf, g_inf))
    precision.update()
    return summarize_terms(d_terms, g_terms), x_hat.detach()


def collate_episodes(items: list[dict]) -> dict:
    out = {key: torch.stack([it[key] for it in items]) for key in ("frames", "landmarks", "points")}
    out["video_index"] = torch.tensor([it["video_index"] for it in items], dtype=torch.long)
    out["identity"] = [it["identity"] for it in items]
    # Damaged samples the dataset passed over to find these (dataset/store.py); the loop counts them.
    out["skipped"] = sum(int(it.get("skipped", 0)) for it in items)
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
        plain_d = nets["discriminator"]
        backend = self.cfg.train.compile_backend
        if self.cfg.train.compile:
            wrapped = {name: torch.compile(net, backend=backend) for name, net in wrapped.items()}
        # The G phase calls D outside DDP; under compile it gets its own compiled graph (w= instead of rows).
        d_for_g = torch.compile(plain_d, backend=backend) if self.cfg.train.compile else plain_d
        self.networks = Networks(wrapped["embedder"], wrapped["generator"], wrapped["discriminator"], plain_d, d_for_g)
        # Per process and step W's gradient has 2B rows from the D phase and B from the G phase: a fixed size,
        # so the all-gather needs no host read of the row count.
        rows = 3 * self.cfg.train.batch_size
        self.sync_w = (lambda weight: distributed.average_sparse_grad(weight, rows)) if info.enabled else None

    def step(self, batch: dict, optimizers: dict, loss: torch.nn.Module, step: int,
             precision: Precision) -> tuple[dict, torch.Tensor]:
        return train_step(batch, self.networks, optimizers, loss, step, precision, self.sync_w)

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
