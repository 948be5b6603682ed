"""Few-shot fine-tuning on T frames of a new person (Zakharov et al. 2019, Sec. 3.4).

The meta-learned embedder runs once: e_NEW = mean_t E(x_t, y_t). Then
    G's AdaIN parameters become a trainable psi' initialised to P e_NEW (P itself is no longer used),
    D's projection W_i + w0 becomes a trainable w' initialised to w0 + e_NEW,
and G (with psi') and D (with w') train on the T frames with the meta-learning losses minus L_MCH, in the same
D phase / G phase steps (training/talking_head.py).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from config import Config, to_dict
from dataset.store import FewShotDataset
from model.loss import GeneratorLoss, load_content_networks
from training.person import Person, embed_person
from training.report import image_grid, write_png
from training.precision import Precision, make_adam, resolve_amp
from training.talking_head import discriminator_phase, generator_phase, summarize_terms


@torch.no_grad()
def reconstruction_l1(generator: nn.Module, psi: torch.Tensor, frames: torch.Tensor, landmarks: torch.Tensor,
                      batch_size: int = 16) -> float:
    """Mean absolute error (images in [-1, 1]) of G(y, psi) against the real frames."""
    total = 0.0
    for x, y in zip(frames.split(batch_size), landmarks.split(batch_size)):
        total += float((generator(y, psi=psi) - x).abs().mean(dim=(1, 2, 3)).sum())
    return total / frames.shape[0]


def finetune(nets: dict[str, nn.Module], cfg: Config, train: FewShotDataset, holdout: FewShotDataset | None = None,
             device: str | torch.device = "cpu", out_dir: str | Path | None = None, identity: str = "",
             progress: bool = True) -> tuple[Person, dict]:
    """Fine-tunes a meta-trained G and D (in place) on ``train``; returns the person and a report.

    The report holds the reconstruction L1 of G before (feed-forward, psi = P e_NEW) and after fine-tuning on the
    training frames and, when given, on ``holdout`` frames of the same person; with ``out_dir`` it also writes
    ``before_after.png`` (rows: landmarks | before | after | real).
    """
    device = torch.device(device)
    E, G, D = (nets[n].to(device) for n in ("embedder", "generator", "discriminator"))
    episode = {k: v.to(device) for k, v in train.episode().items()}
    with torch.no_grad():
        e_new = embed_person(E.eval(), episode["frames"], episode["landmarks"])  # embed_dim
        psi = nn.Parameter(G.project(e_new.unsqueeze(0))[0].clone())  # psi' = P e_NEW
        w_prime = nn.Parameter(D.w0 + e_new)  # w' = w0 + e_NEW

    def evaluate(dataset: FewShotDataset | None) -> float | None:
        if dataset is None:
            return None
        data = dataset.episode()
        G.eval()
        return reconstruction_l1(G, psi, data["frames"].to(device), data["landmarks"].to(device))

    before = {"train_l1": evaluate(train), "holdout_l1": evaluate(holdout)}
    before_images = _panel(G, psi, holdout or train, device)

    f, o = cfg.finetune, cfg.optim
    betas = (o.betas[0], o.betas[1])
    g_params = [p for name, p in G.named_parameters() if not name.startswith("projection.")] + [psi]
    d_params = [p for name, p in D.named_parameters() if not name.startswith("W.")] + [w_prime]
    opt_g = make_adam(g_params, f.lr_generator, betas)
    opt_d = make_adam(d_params, f.lr_discriminator, betas)
    content = {k: v.to(device) for k, v in load_content_networks(cfg.loss).items()}
    generator_loss = GeneratorLoss(cfg.loss, content)
    precision = Precision(resolve_amp(cfg.train.amp, device), device)

    batch_size = min(f.batch_size, len(train))
    loader = DataLoader(train, batch_size=batch_size, shuffle=True, drop_last=False,
                        generator=torch.Generator().manual_seed(cfg.train.seed))
    steps = f.epochs * len(loader)
    G.train()
    D.train()
    step, stats = 0, {}
    with tqdm(total=steps, desc="fine-tune", disable=not progress, dynamic_ncols=True) as bar:
        for epoch in range(f.epochs):
            train.set_epoch(epoch)
            for batch in loader:
                x, y = batch["frame"].to(device), batch["landmarks"].to(device)
                with precision.autocast():
                    x_hat = G(y, psi=psi)
                step += 1
                # D's projection is w' itself: the forward adds w0, so hand it w' - w0.
                d_terms, _ = discriminator_phase(D, x, y, x_hat, opt_d, step, precision,
                                                 w=(w_prime - D.w0).expand(x.shape[0], -1))
                g_terms, _ = generator_phase(D, x, y, x_hat, w_prime - D.w0, generator_loss, opt_g, step, precision)
                precision.update()
                stats = summarize_terms(d_terms, g_terms)
                bar.update(1)
            # Once per epoch: the losses stay on the device in between (no host read per step).
            precision.check(step)
            bar.set_postfix(g=f"{float(stats['loss/g_total']):.3f}", d=f"{float(stats['loss/d_total']):.3f}")
    stats = {name: float(value) for name, value in stats.items()}

    G.eval()
    after = {"train_l1": evaluate(train), "holdout_l1": evaluate(holdout)}
    report = {"frames": len(train), "holdout_frames": len(holdout) if holdout else 0, "epochs": f.epochs,
              "steps": steps, "before": before, "after": after, "last_step": stats}
    if out_dir is not None:
        out_dir = Path(out_dir)
        rows = [[y, b, a, x] for y, b, a, x in zip(before_images["landmarks"], before_images["generated"],
                                                     _panel(G, psi, holdout or train, device)["generated"],
                                                     before_images["real"])]
        write_png(out_dir / "before_after.png", image_grid(rows))
    points = train.points.mean(axis=0).astype(np.float32)
    person = Person(G, psi.detach(), points, train.image_size, train.thickness, identity, to_dict(cfg)["model"])
    return person, report


@torch.no_grad()
def _panel(generator: nn.Module, psi: torch.Tensor, dataset: FewShotDataset, device: torch.device,
           count: int = 4) -> dict[str, torch.Tensor]:
    """Up to ``count`` evenly spaced frames of a person: landmark images, generated and real frames (CPU)."""
    data = dataset.episode()
    pick = np.unique(np.linspace(0, len(dataset) - 1, min(count, len(dataset))).round().astype(int))
    landmarks = data["landmarks"][pick]
    generator.eval()
    return {"landmarks": landmarks, "generated": generator(landmarks.to(device), psi=psi).cpu(),
            "real": data["frames"][pick]}
