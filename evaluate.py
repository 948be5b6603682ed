"""Evaluation with the paper's protocol (Zakharov et al. 2019, Sec. 4): test videos, T shots, hold-out frames.

    python evaluate.py --checkpoint runs/vox2/checkpoints/step_X.pt --data vox2_store --out eval/ \\
        --shots 1 8 32 --videos 50 --holdout 32 [--mode finetune|feedforward] [--inception pt_inception.pth] \\
        [--lpips-backbone vgg16-397923af.pth --lpips-linear vgg.pth]

For every test-split video of the store (up to --videos, evenly spread over the split) and every T in --shots:
``holdout`` evenly spaced frames are held out, T frames of the rest make the person (fine-tuned, or feed-forward
through the embedder), and the person renders the held-out frames from their own landmarks (self-reenactment,
as in the paper's quantitative comparison). Metrics per shot count:

    SSIM, PSNR          against the real held-out frames ([0, 1] images, 11x11 Gaussian SSIM)
    CSIM                cosine similarity of dlib face-recognition embeddings, generated vs real
    AKD                 mean pixel distance between the driving landmarks and landmarks detected on the result
    FID                 with the FID Inception weights from --inception (omitted, with the reason, without them)
    LPIPS               VGG LPIPS v0.1 (Zhang et al. 2018) with --lpips-backbone (torchvision's VGG16 ImageNet
                        weights) and --lpips-linear (the LPIPS project's lpips/weights/v0.1/vgg.pth); omitted,
                        with the files to pass, without them

Writes OUT/metrics.json, OUT/metrics.csv (one row per shot count), OUT/per_video.csv, OUT/best_worst_T.png
(rows: landmarks | generated | real, for the best and the worst video by SSIM) and OUT/metrics_vs_shots.png.

HeadGAN checkpoints are evaluated one-shot (``--shots 1 --mode feedforward``): the first shot frame is the
reference image, and each held-out frame is generated from the NMFC render of its own 3D face fit and its audio
features (self-reenactment); the grids' first column is then the render.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from config import ConfigError, apply_overrides, config_from_dict
from dataset.landmarks import BACKENDS, DetectorLoadError, LandmarkDetector, make_detector
from dataset.pipeline.faces import choose_main_faces
from dataset.pipeline.videos import evenly_spaced
from dataset.store import FewShotDataset, StoreError, load_index, read_frames, read_points, read_store_info
from training.checkpoint import CheckpointError, load_checkpoint
from training.finetune import finetune
from training.person import Person, networks_from_state, person_from_frames
from training.report import image_grid, write_png

METRICS = ("ssim", "psnr", "csim", "akd", "fid", "lpips")
LPIPS_NOTE = ("not computed: pass --lpips-backbone vgg16-397923af.pth (torchvision's VGG16 ImageNet weights) and "
              "--lpips-linear vgg.pth (lpips/weights/v0.1/vgg.pth of the LPIPS project)")


def split_video(count: int, shots: int, holdout: int) -> tuple[list[int], list[int]]:
    """Hold-out frames (evenly spaced), then T shot frames evenly spaced among the others."""
    held = evenly_spaced(count, min(holdout, count - 1))
    rest = [i for i in range(count) if i not in set(held)]
    return [rest[i] for i in evenly_spaced(len(rest), shots)], held


def detect_points(images: list[np.ndarray], detector: LandmarkDetector, min_side: int = 256) -> np.ndarray:
    """68 landmarks of the main face per image ((N, 68, 2), NaN where none): small frames are upscaled first,
    since dlib's HOG detector needs faces of about 80 px."""
    factor = max(1.0, min_side / images[0].shape[0])
    big = [cv2.resize(im, None, fx=factor, fy=factor, interpolation=cv2.INTER_CUBIC) for im in images]
    faces = choose_main_faces(detector.detect(big), [im.shape for im in big])
    return np.stack([f.points / factor if f is not None else np.full((68, 2), np.nan, np.float32) for f in faces])


def make_person(state: dict, mode: str, cfg, crops, points, device) -> Person:
    """A person from T frames: feed-forward, or fine-tuned from a fresh copy of the checkpoint's networks."""
    if mode == "feedforward":
        return person_from_frames(state, crops, points, device)
    nets, _ = networks_from_state(state)
    train = FewShotDataset(crops, points, image_size=cfg.model.image_size,
                           landmark_thickness=cfg.data.landmark_thickness, seed=cfg.train.seed)
    person, _ = finetune(nets, cfg, train, device=device, progress=False)
    return person


class HeadGANGenerate:
    """HeadGAN's side of the protocol (one-shot): the first shot frame is the reference image, and the held-out
    frames are rendered from the video's own 3D face fit (face3d.npz) and audio features (audio.npy, if any)."""

    def __init__(self, state: dict, cfg, device: str):
        from inference.headgan import generator_from_state

        self.generator, _ = generator_from_state(state, device)
        self.cfg, self.device = cfg, device

    @torch.no_grad()
    def __call__(self, folder: Path, crops: list[np.ndarray], train_idx: list[int], held_idx: list[int],
                 stored_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        from dataset.audio import read_audio_features
        from dataset.face3d.fit import read_face3d
        from dataset.face3d.render import render_nmfc
        from inference.headgan import to_tensor

        size = self.cfg.model.image_size
        fit = read_face3d(folder).resized(size / stored_size)
        reference = train_idx[0]
        vertices = fit.vertices([reference] + list(held_idx))
        renders = to_tensor([render_nmfc(v, size) for v in vertices])
        images = to_tensor([crops[reference]])
        features = read_audio_features(folder) if self.cfg.model.headgan.audio else None
        audio = None if features is None else torch.from_numpy(np.asarray(features[held_idx], np.float32))
        n = len(held_idx)
        out = self.generator(images.expand(n, -1, -1, -1).to(self.device),
                             renders[:1].expand(n, -1, -1, -1).to(self.device), renders[1:].to(self.device),
                             None if audio is None else audio.to(self.device))
        return renders[1:], out["image"].cpu()


def evaluate(args: argparse.Namespace) -> dict:
    from evaluation import metrics

    # Read once: every (video, T) pair builds its own networks from this state.
    state = load_checkpoint(args.checkpoint, kind="meta_train")
    cfg = config_from_dict(state["config"])
    cfg = apply_overrides(cfg, args.overrides)
    headgan = None
    if args.mode is None:
        args.mode = "feedforward" if cfg.model.family == "headgan" else "finetune"
    if cfg.model.family == "headgan":
        if args.mode == "finetune":
            raise ValueError("HeadGAN is evaluated one-shot and feed-forward: pass --mode feedforward --shots 1")
        if args.shots != [1]:
            raise ValueError(f"HeadGAN is one-shot (one reference image): pass --shots 1, not {args.shots}")
        headgan = HeadGANGenerate(state, cfg, args.device)
    root = Path(args.data)
    index = load_index(root)
    encoding = read_store_info(root)["encoding"]
    videos = [v for v in index["videos"] if v["split"] == "test" and v["frames"] >= 2]
    if not videos:
        raise StoreError(f"{root}: no test-split video with at least 2 frames (build the store with "
                         "--test-identities or --test-fraction)")
    videos = [videos[i] for i in evenly_spaced(len(videos), args.videos)]
    detector = make_detector(args.backend, args.device)
    embedder = metrics.FaceEmbedder()
    inception = None
    fid_note = "omitted: pass --inception pt_inception-2015-12-05-6726825d.pth (pytorch-fid's FID weights)"
    if args.inception:
        from evaluation.inception import load_fid_inception

        inception, fid_note = load_fid_inception(args.inception).to(args.device), "computed"
    lpips_model, lpips_note = None, LPIPS_NOTE
    if args.lpips_backbone:
        from evaluation.lpips import load_lpips

        lpips_model = load_lpips(args.lpips_backbone, args.lpips_linear).to(args.device)
        lpips_note = "computed: VGG LPIPS v0.1 (Zhang et al. 2018), mean over the held-out frames"
    size = cfg.model.image_size
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, summary = [], {}
    for shots in args.shots:
        reals, fakes, per_video = [], [], []
        for video in tqdm(videos, desc=f"T={shots}", dynamic_ncols=True):
            folder = root / video["path"]
            train_idx, held_idx = split_video(video["frames"], shots, args.holdout)
            frames, points = read_frames(folder, encoding, list(range(video["frames"]))), read_points(folder)
            crops = [cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA) for f in frames]
            points = points * (size / frames[0].shape[0])
            if headgan is not None:
                landmarks, fake = headgan(folder, crops, train_idx, held_idx, frames[0].shape[0])
            else:
                person = make_person(state, args.mode, cfg, [crops[i] for i in train_idx], points[train_idx],
                                     args.device)
                landmarks = person.draw(points[held_idx])
                fake = person.generate(landmarks)
            real = torch.stack([torch.from_numpy(crops[i]).permute(2, 0, 1).float() / 127.5 - 1 for i in held_idx])
            found = detect_points(metrics.to_uint8(fake), detector)
            row = {"shots": shots, "video": f"{video['identity']}/{video['video']}", "train_frames": len(train_idx),
                   "holdout_frames": len(held_idx),
                   "ssim": float(metrics.ssim(fake, real).mean()), "psnr": float(metrics.psnr(fake, real).mean()),
                   "csim": float(metrics.csim(fake, real, embedder).mean()),
                   "akd": _nanmean(metrics.landmark_distance(found, points[held_idx])),
                   "akd_detected": float(np.mean(~np.isnan(found[:, 0, 0])))}
            if lpips_model is not None:
                with torch.no_grad():
                    row["lpips"] = float(lpips_model(fake.to(args.device), real.to(args.device)).mean())
            per_video.append((row, landmarks, fake, real))
            rows.append(row)
            reals.append(real)
            fakes.append(fake)
        agg = {m: _nanmean([r[m] for r, *_ in per_video]) for m in ("ssim", "psnr", "csim", "akd")}
        if inception is not None:
            with torch.no_grad():
                agg["fid"] = metrics.fid(inception(torch.cat(reals).to(args.device)).cpu().numpy(),
                                         inception(torch.cat(fakes).to(args.device)).cpu().numpy())
        else:
            agg["fid"] = None
        agg["lpips"] = _nanmean([r["lpips"] for r, *_ in per_video]) if lpips_model is not None else None
        agg.update({"videos": len(per_video), "frames": int(sum(r["holdout_frames"] for r, *_ in per_video))})
        summary[str(shots)] = agg
        write_png(out / f"best_worst_T{shots}.png", _best_worst_grid(per_video))
    report = {"checkpoint": str(args.checkpoint), "data": str(root), "mode": args.mode, "holdout": args.holdout,
              "per_shots": summary, "fid": fid_note,
              "lpips": lpips_note,
              "akd": f"landmarks detected with the {args.backend} backend on the generated frames"}
    (out / "metrics.json").write_text(json.dumps(report, indent=1))
    _write_csv(out / "metrics.csv", [{"shots": s, **v} for s, v in summary.items()])
    _write_csv(out / "per_video.csv", rows)
    _plot(out / "metrics_vs_shots.png", summary)
    return report


def _nanmean(values) -> float:
    """Mean over the finite values; NaN (without a warning) when there are none, e.g. no face detected."""
    values = np.asarray(values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else float("nan")


def _best_worst_grid(per_video: list) -> np.ndarray:
    ranked = sorted(per_video, key=lambda item: item[0]["ssim"])
    picks = [ranked[-1], ranked[0]] if len(ranked) > 1 else ranked
    rows = []
    for _, landmarks, fake, real in picks:
        for i in evenly_spaced(len(fake), 3):
            rows.append([landmarks[i], fake[i], real[i]])
    return image_grid(rows)


def _write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _plot(path: Path, summary: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shots = [int(s) for s in summary]
    names = [m for m in METRICS if all(summary[str(s)][m] is not None for s in shots)]
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3))
    for ax, name in zip(np.atleast_1d(axes), names):
        ax.plot(shots, [summary[str(s)][name] for s in shots], marker="o")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("T (shots)")
        ax.set_title(name.upper())
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--checkpoint", required=True, help="meta-training checkpoint")
    parser.add_argument("--data", required=True, help="dataset store (its test split is evaluated)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 8, 32], help="T values (default 1 8 32)")
    parser.add_argument("--videos", type=int, default=50, help="test videos (default 50)")
    parser.add_argument("--holdout", type=int, default=32, help="hold-out frames per video (default 32)")
    parser.add_argument("--mode", choices=["finetune", "feedforward"], default=None,
                        help="make each person by fine-tuning (paper's FT) or feed-forward through E (default: "
                             "finetune; HeadGAN: feedforward, the only mode)")
    parser.add_argument("--inception", help="FID Inception weights (pt_inception-2015-12-05-6726825d.pth)")
    parser.add_argument("--lpips-backbone", metavar="FILE",
                        help="LPIPS backbone: torchvision's VGG16 ImageNet weights (vgg16-397923af.pth)")
    parser.add_argument("--lpips-linear", metavar="FILE",
                        help="LPIPS linear heads: the LPIPS project's lpips/weights/v0.1/vgg.pth")
    parser.add_argument("--backend", choices=BACKENDS, default="dlib", help="landmark backend for AKD")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override the checkpoint's config, e.g. finetune.epochs=40")
    args = parser.parse_args(argv)
    if bool(args.lpips_backbone) != bool(args.lpips_linear):
        parser.error("LPIPS needs both --lpips-backbone and --lpips-linear (or neither)")
    try:
        report = evaluate(args)
    except (ConfigError, CheckpointError, StoreError, DetectorLoadError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for shots, values in report["per_shots"].items():
        fid = "n/a" if values["fid"] is None else f"{values['fid']:.1f}"
        lpips = "n/a" if values["lpips"] is None else f"{values['lpips']:.3f}"
        print(f"T={shots:>3}: SSIM {values['ssim']:.3f}  PSNR {values['psnr']:.2f}  CSIM {values['csim']:.3f}  "
              f"AKD {values['akd']:.2f}px  FID {fid}  LPIPS {lpips}  "
              f"({values['videos']} videos, {values['frames']} frames)")
    print(f"wrote {Path(args.out) / 'metrics.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
