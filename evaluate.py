"""Evaluation with the published protocols: self-reenactment (the paper's, Zakharov et al. 2019 Sec. 4) and
cross-reenactment, for both model families.

    python evaluate.py --checkpoint runs/vox2/checkpoints/step_X.pt --data vox2_store --out eval/ \\
        --shots 1 8 32 --videos 50 --holdout 32 [--mode finetune|feedforward] [--arcface w600k_r50.onnx] \\
        [--backend face_alignment] [--inception pt_inception.pth] [--lpips-backbone vgg16-397923af.pth]
    python evaluate.py --checkpoint ... --data ... --out eval_cross/ --cross --drivers 2 --driver-frames 32

Self-reenactment: for every test-split video of the store (up to --videos, evenly spread) and every T in
--shots, --holdout evenly spaced frames are held out, T frames of the rest make the person (fine-tuned, or
feed-forward through the embedder; HeadGAN: the first shot frame is the one reference image), and the person
renders the held-out frames from their own landmarks (HeadGAN: own 3D face fit and audio).

Cross-reenactment (--cross): every such person is driven by --drivers videos of *other* test identities
(--driver-frames consecutive stored frames each), through the same landmark adaptation / 3D transfer as
reenact.py.  Measured: identity preservation and leakage, motion transfer, jitter and flicker
(see evaluation/cross.py).

Every metric's name says which network computed it: ``csim_arcface`` / ``csim_dlib``, ``akd_fan`` /
``akd_dlib``, ``lpips_vgg``; ``protocol`` in metrics.json and the report state each metric's protocol in one
line.  Writes OUT/metrics.json, OUT/metrics.csv (one row per T), OUT/per_video.csv (self) or OUT/per_pair.csv
(cross), best/worst grids, plots, for --cross side-by-side videos of the best and worst pair, and
OUT/report.html, one self-contained page with all of it.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from config import ConfigError, apply_overrides, config_from_dict
from dataset.landmarks import BACKENDS, DetectorLoadError, make_detector
from dataset.pipeline.videos import evenly_spaced
from dataset.store import StoreError, load_index, read_store_info
from evaluation import cross as cross_metrics
from evaluation import keypoints, metrics, report
from evaluation.protocol import HeadGANSide, Sample, TalkingHeadSide, Video, load_video, split_video
from training.checkpoint import CheckpointError, load_checkpoint
from training.report import image_grid, write_png
from utils.safe_load import UnsafeOrDamagedFile

DETECTOR_NAMES = {"dlib": "dlib", "face_alignment": "fan"}
MESH_NAME = "mediapipe"
# Side-by-side videos and their grids show small model outputs at least this large (nearest-neighbour).
VIEW_SIZE = 128


def protocol_lines(identity: str, detector: str, cross: bool, family: str = "talking_head") -> dict[str, str]:
    """One line per metric: what it measures, how, and whose protocol it follows."""
    net = {"arcface": "ArcFace (user's model), 5-point similarity alignment to insightface's 112x112 template "
                      "(bilayer-model losses/csim.py)",
           "dlib": "dlib's face-recognition ResNet with its own 5-point alignment (offline; not comparable with "
                   "ArcFace numbers)"}[identity]
    det = {"fan": "face_alignment 2D FAN, first face, 68 points at 256x256, mean absolute x/y difference in pixels "
                  "(first-order-model pose-evaluation)",
           "dlib": "dlib HOG + 68-point predictor, first face, 68 points at 256x256, mean absolute x/y difference "
                   "in pixels (first-order-model's formula, offline detector)"}[detector]
    if not cross:
        return {
            "ssim": "SSIM, 11x11 Gaussian window, sigma 1.5, on [0, 1] RGB (Wang et al. 2004; equals skimage's)",
            "psnr": "PSNR in dB on [0, 1] RGB, capped at 100 dB",
            f"csim_{identity}": f"cosine similarity of generated and real frame embeddings: {net}; both aligned "
                                "by the real frame's landmarks",
            f"akd_{detector}": f"keypoints of generated vs real frame: {det}; frames without a detection on "
                               "either side skipped and counted",
            "lpips_vgg": "LPIPS v0.1, VGG16 trunk (Zhang et al. 2018), linear heads of the lpips package or file",
            "fid": "FID, pool3 features of the TF-ported Inception (pytorch-fid's pt_inception-2015-12-05)",
        }
    lines = {
        f"identity_{identity}": f"mean cosine of generated frames and the person's real held-out frames: {net}",
        f"leakage_{identity}": "mean cosine of generated frame t and the driver's frame t (lower is better); "
                               f"pair_similarity_{identity}: the same between the two real people",
    }
    if family == "headgan":
        name = MESH_NAME
        lines[f"motion_{name}"] = ("driving 3D mesh vs MediaPipe Face Mesh detected on the generated frames, 468 "
                                   "vertices, mean absolute x/y difference in pixels at 256x256")
        lines[f"pose_{name}_deg"] = "geodesic angle between the head rotations of 3D fits of driving and detected meshes"
        lines[f"expression_{name}"] = "RMS difference of the fitted expressions, percent of the face radius"
    else:
        name = detector
        lines[f"motion_{name}"] = f"adapted driving landmarks vs landmarks detected on the generated frames: {det}"
    lines[f"jitter_{name}"] = ("per step t -> t+1, detected motion minus driving motion, mean absolute x/y pixels "
                               "at 256x256 (0: follows the driver exactly)")
    lines["flicker"] = ("Farneback flow both ways, frame t+1 warped onto t, mean |difference| on [0, 1] RGB over "
                        "forward-backward consistent pixels (flicker_driver: the driver's real video)")
    return lines


class Measures:
    """The networks that measure: identity embedder, landmark detector, optional LPIPS and FID Inception."""

    def __init__(self, args: argparse.Namespace):
        if args.arcface:
            from evaluation.arcface import load_arcface

            self.embedder = load_arcface(args.arcface, args.device)
        else:
            self.embedder = metrics.FaceEmbedder()
        self.identity = self.embedder.name
        self.detector = make_detector(args.backend, args.device)
        self.detector_name = DETECTOR_NAMES[args.backend]
        self._mesh_detector = None
        self.lpips = self.inception = None
        self.notes = {"fid": "omitted: pass --inception pt_inception-2015-12-05-6726825d.pth (pytorch-fid's FID "
                             "weights)",
                      "lpips_vgg": "omitted: pass --lpips-backbone vgg16-397923af.pth (torchvision's VGG16 "
                                   "ImageNet weights); the v0.1 heads come from the lpips package or "
                                   "--lpips-linear"}
        if args.inception:
            from evaluation.inception import load_fid_inception

            self.inception = load_fid_inception(args.inception).to(args.device)
            self.notes["fid"] = f"computed with {args.inception}"
        if args.lpips_backbone:
            from evaluation.lpips import load_lpips

            self.lpips = load_lpips(args.lpips_backbone, args.lpips_linear).to(args.device)
            self.notes["lpips_vgg"] = f"computed: VGG LPIPS v0.1, heads from {self.lpips.linear_source}"
        self.device = args.device

    @property
    def mesh_detector(self):
        if self._mesh_detector is None:
            from dataset.face3d.backends import make_mesh_detector

            self._mesh_detector = make_mesh_detector(MESH_NAME)
        return self._mesh_detector

    def _points5(self, points68):
        from evaluation.arcface import five_points

        return None if points68 is None else five_points(points68)

    def embed(self, images: torch.Tensor, points68=None, points5=None) -> np.ndarray:
        if points5 is None:
            points5 = self._points5(points68)
        return self.embedder.embed(metrics.to_uint8(images), points5)

    def self_row(self, sample: Sample, real: torch.Tensor, real_points: np.ndarray) -> dict:
        fake = sample.generated
        real_five = self._points5(real_points)
        csim = metrics.cosine(self.embed(fake, points5=real_five), self.embed(real, points5=real_five))
        found_fake = keypoints.detect_first_faces(metrics.to_uint8(fake), self.detector)
        found_real = keypoints.detect_first_faces(metrics.to_uint8(real), self.detector)
        akd, skipped = keypoints.akd(found_fake, found_real)
        row = {"ssim": float(metrics.ssim(fake, real).mean()), "psnr": float(metrics.psnr(fake, real).mean()),
               f"csim_{self.identity}": float(csim.mean()), f"akd_{self.detector_name}": akd,
               f"akd_{self.detector_name}_skipped": skipped}
        if self.lpips is not None:
            with torch.no_grad():
                row["lpips_vgg"] = float(self.lpips(fake.to(self.device), real.to(self.device)).mean())
        return row

    def cross_row(self, sample: Sample, person_real: torch.Tensor, person_points: np.ndarray,
                  driver_real: torch.Tensor, driver_points: np.ndarray) -> dict:
        from evaluation.arcface import five_points_from_mesh
        from evaluation.temporal import flicker

        fake, size = sample.generated, sample.generated.shape[-1]
        mesh = sample.alignment_points68 is None
        fake_embed = self.embed(fake, sample.alignment_points68,
                                five_points_from_mesh(sample.driving_points) if mesh else None)
        person_embed, driver_embed = self.embed(person_real, person_points), self.embed(driver_real, driver_points)
        net = self.identity
        row = {f"identity_{net}": cross_metrics.identity_similarity(fake_embed, person_embed),
               f"leakage_{net}": cross_metrics.leakage(fake_embed, driver_embed),
               f"pair_similarity_{net}": cross_metrics.identity_similarity(driver_embed, person_embed)}
        frames = metrics.to_uint8(fake)
        if mesh:
            name = MESH_NAME
            detected = np.stack([np.full((sample.driving_points.shape[1], 3), np.nan) if m is None else m
                                 for m in self.mesh_detector.detect(keypoints.resize_to_protocol(frames))])
            driving = sample.driving_points.copy()
            driving[..., :2] = keypoints.to_protocol_frame(driving[..., :2], size)
            driving[..., 2] *= keypoints.PROTOCOL_SIZE / size
            fits = cross_metrics.fit_errors(detected, driving)
            row[f"pose_{name}_deg"], row[f"expression_{name}"] = fits["pose_deg"], fits["expression"]
            detected, driving = detected[..., :2], driving[..., :2]
        else:
            name = self.detector_name
            detected = keypoints.detect_first_faces(frames, self.detector)
            driving = keypoints.to_protocol_frame(sample.driving_points, size)
        row[f"motion_{name}"], row[f"motion_{name}_skipped"] = keypoints.akd(detected, driving)
        row[f"jitter_{name}"], _ = keypoints.jitter(detected, driving)
        row["flicker"] = flicker(frames)["flicker"]
        row["flicker_driver"] = flicker(metrics.to_uint8(driver_real))["flicker"]
        return row


def _nanmean(values) -> float:
    """Mean over the finite values; NaN (without a warning) when there are none, e.g. no face detected."""
    values = np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else float("nan")


def _aggregate(rows: list[dict], skip: set[str]) -> dict:
    names = list(dict.fromkeys(k for r in rows for k in r if k not in skip))
    return {name: (int(sum(r.get(name, 0) for r in rows)) if name.endswith("_skipped")
                   else _nanmean([r.get(name) for r in rows])) for name in names}


def _side(state: dict, cfg, args: argparse.Namespace):
    if cfg.model.family == "headgan":
        if args.mode == "finetune":
            raise ValueError("HeadGAN is evaluated one-shot and feed-forward: pass --mode feedforward --shots 1")
        if args.shots != [1]:
            raise ValueError(f"HeadGAN is one-shot (one reference image): pass --shots 1, not {args.shots}")
        args.mode = "feedforward"
        return HeadGANSide(state, cfg, args.device)
    args.mode = args.mode or "finetune"
    return TalkingHeadSide(state, cfg, args.mode, args.device)


def _view(images: torch.Tensor) -> torch.Tensor:
    """Small frames enlarged (nearest neighbour) so that grids and videos can be looked at."""
    if images.shape[-1] >= VIEW_SIZE:
        return images
    return torch.nn.functional.interpolate(images, size=(VIEW_SIZE, VIEW_SIZE), mode="nearest")


def evaluate(args: argparse.Namespace) -> dict:
    state = load_checkpoint(args.checkpoint, kind="meta_train")
    cfg = apply_overrides(config_from_dict(state["config"]), args.overrides)
    side = _side(state, cfg, args)
    root = Path(args.data)
    index = load_index(root)
    encoding = read_store_info(root)["encoding"]
    videos = [v for v in index["videos"] if v["split"] == "test" and v["frames"] >= 2]
    if not videos:
        raise StoreError(f"{root}: no test-split video with at least 2 frames (build the store with "
                         "--test-identities or --test-fraction)")
    if args.cross:
        pairs = cross_metrics.cross_pairs(videos, args.videos, args.drivers)
    else:
        pairs = [(videos[i], None) for i in evenly_spaced(len(videos), args.videos)]
    measures = Measures(args)
    size = cfg.model.image_size
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cache: dict[str, Video] = {}

    def video(entry: dict) -> Video:
        key = entry["path"]
        if key not in cache:
            cache[key] = load_video(root, entry, encoding, size)
        return cache[key]

    rows, summary, picks = [], {}, {}
    for shots in args.shots:
        per_sample = []
        reals, fakes = [], []
        for person_entry, driver_entry in tqdm(pairs, desc=f"T={shots}", dynamic_ncols=True):
            person = video(person_entry)
            train_idx, held_idx = split_video(len(person.crops), shots, args.holdout)
            row = {"shots": shots, "video": person.name}
            if driver_entry is None:
                sample = side.self_sample(person, train_idx, held_idx)
                real = person.tensor(held_idx)
                row.update(train_frames=sample.train_frames, holdout_frames=len(held_idx))
                row.update(measures.self_row(sample, real, person.points[held_idx]))
                reals.append(real)
                fakes.append(sample.generated)
                panels = (sample.driving_panel, sample.generated, real)
            else:
                driver = video(driver_entry)
                frames = list(range(min(args.driver_frames, len(driver.crops))))
                sample = side.cross_sample(person, train_idx, driver, frames)
                driver_real = driver.tensor(frames)
                row.update(driver=driver.name, train_frames=sample.train_frames, frames=len(frames))
                row.update(measures.cross_row(sample, person.tensor(held_idx), person.points[held_idx],
                                              driver_real, driver.points[frames]))
                panels = (sample.reference[None].expand(len(frames), -1, -1, -1), driver_real,
                          sample.driving_panel, sample.generated)
            if row["train_frames"] < shots:
                print(f"warning: {person.name} has only {row['train_frames']} frames for T={shots} "
                      "(recorded in train_frames)", file=sys.stderr)
            rows.append(row)
            per_sample.append((row, panels))
        skip = {"shots", "video", "driver", "train_frames", "holdout_frames", "frames"}
        agg = _aggregate([r for r, _ in per_sample], skip)
        if not args.cross:
            agg["fid"] = None
            if measures.inception is not None:
                with torch.no_grad():
                    agg["fid"] = metrics.fid(measures.inception(torch.cat(reals).to(args.device)).cpu().numpy(),
                                             measures.inception(torch.cat(fakes).to(args.device)).cpu().numpy())
            agg.setdefault("lpips_vgg", None)
        count_key = "frames" if args.cross else "holdout_frames"
        agg.update({"videos": len({r["video"] for r, _ in per_sample}),
                    "frames": int(sum(r[count_key] for r, _ in per_sample)),
                    "train_frames_mean": _nanmean([r["train_frames"] for r, _ in per_sample])})
        if args.cross:
            agg["pairs"] = len(per_sample)
        summary[str(shots)] = agg
        rank = f"identity_{measures.identity}" if args.cross else "ssim"
        picks[shots] = _best_worst(per_sample, rank)
    result = {"checkpoint": str(args.checkpoint), "data": str(root), "family": side.family, "mode": args.mode,
              "reenactment": "cross" if args.cross else "self", "holdout": args.holdout,
              "networks": {"identity": getattr(measures.embedder, "source", "dlib face-recognition ResNet v1"),
                           "landmarks": args.backend},
              "protocol": protocol_lines(measures.identity, measures.detector_name, args.cross, side.family),
              "notes": measures.notes, "per_shots": summary}
    _write_outputs(out, result, rows, picks, args, measures)
    return result


def _without_nan(value):
    if isinstance(value, dict):
        return {k: _without_nan(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _best_worst(per_sample: list, key: str) -> list:
    ranked = sorted(per_sample, key=lambda item: -math.inf if not np.isfinite(item[0].get(key, np.nan))
                    else item[0][key])
    return [("best", *ranked[-1]), ("worst", *ranked[0])] if len(ranked) > 1 else [("only", *ranked[0])]


def _write_outputs(out: Path, result: dict, rows: list[dict], picks: dict, args, measures: Measures) -> None:
    from inference.video import H264Writer, to_uint8

    cross = args.cross
    # NaN (no detection anywhere) is not JSON; null is, and says the same.
    (out / "metrics.json").write_text(json.dumps(_without_nan(result), indent=1, allow_nan=False))
    summary = result["per_shots"]
    report.write_csv(out / "metrics.csv", [{"shots": s, **v} for s, v in summary.items()])
    report.write_csv(out / ("per_pair.csv" if cross else "per_video.csv"), rows)
    names = [n for n in result["protocol"] if n != "fid" or not cross]
    images, videos = [], []
    if report.plot_metrics(out / "metrics_vs_shots.png", summary, names):
        images.append(("metrics against the number of shots T", out / "metrics_vs_shots.png"))
    if cross:
        net = measures.identity
        path = out / "identity_vs_leakage.png"
        if report.plot_scatter(path, rows, f"identity_{net}", f"leakage_{net}", "one point per pair"):
            images.append(("identity preservation against leakage, per pair", path))
    columns = ("reference | driver | driving | generated" if cross else "driving | generated | real")
    for shots, chosen in picks.items():
        grid_rows = []
        for label, row, panels in chosen:
            for i in evenly_spaced(len(panels[0]), 3):
                grid_rows.append([_view(p[i:i + 1])[0] for p in panels])
            if cross:
                path = out / f"cross_{label}_T{shots}.mp4"
                with H264Writer(path, fps=25) as writer:
                    for frame in np.concatenate([to_uint8(_view(p)) for p in panels], axis=2):
                        writer.write(frame)
                videos.append((f"T={shots}, {label} pair: {row['video']} driven by {row['driver']} ({columns})",
                               path))
        path = out / f"best_worst_T{shots}.png"
        write_png(path, image_grid(grid_rows))
        which = "identity" if cross else "SSIM"
        images.append((f"T={shots}: best and worst by {which}, rows of {columns}", path))
    table = [{"T": s, **values} for s, values in summary.items()]
    sections = [
        report.Section("Protocol", definitions=result["protocol"]),
        report.Section("Setup", definitions={
            "checkpoint": result["checkpoint"], "data": result["data"], "family": result["family"],
            "mode": result["mode"], "reenactment": result["reenactment"],
            "identity network": result["networks"]["identity"], "landmark network": result["networks"]["landmarks"],
            **{f"note: {k}": v for k, v in result["notes"].items()}}),
        report.Section("Results per shot count", table=table),
        report.Section("Plots and grids", images=images),
    ]
    if videos:
        sections.append(report.Section("Side-by-side videos", videos=videos))
    report.write_html(out / "report.html", f"{result['reenactment']}-reenactment evaluation ({result['family']})",
                      sections, intro="Frames went from the generator to the metrics without any video coding; "
                                      "the videos below are for viewing.")


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are a single line (no usage block), like every other error of this command."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> OneLineParser:
    parser = OneLineParser(prog="evaluate.py", description=__doc__.split("\n")[0],
                           formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--checkpoint", required=True, help="meta-training checkpoint")
    parser.add_argument("--data", required=True, help="dataset store (its test split is evaluated)")
    parser.add_argument("--out", required=True, help="output folder (not one of the inputs)")
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 8, 32], help="T values, each >= 1 (default 1 8 32)")
    parser.add_argument("--videos", type=int, default=50, help="test videos (persons), >= 1 (default 50)")
    parser.add_argument("--holdout", type=int, default=32, help="hold-out frames per video, >= 1 (default 32)")
    parser.add_argument("--mode", choices=["finetune", "feedforward"], default=None,
                        help="make each person by fine-tuning (paper's FT) or feed-forward through E (default: "
                             "finetune; HeadGAN: feedforward, the only mode)")
    parser.add_argument("--cross", action="store_true",
                        help="cross-reenactment: drive each person with other test identities' videos")
    parser.add_argument("--drivers", type=int, default=2, help="with --cross: driver videos per person, >= 1")
    parser.add_argument("--driver-frames", type=int, default=32,
                        help="with --cross: consecutive driver frames, >= 2 (default 32)")
    parser.add_argument("--arcface", metavar="FILE",
                        help="ArcFace model for CSIM: insightface .onnx or IR-SE50 .pth (default: dlib's network)")
    parser.add_argument("--inception", metavar="FILE",
                        help="FID Inception weights (pt_inception-2015-12-05-6726825d.pth)")
    parser.add_argument("--lpips-backbone", metavar="FILE",
                        help="LPIPS backbone: torchvision's VGG16 ImageNet weights (vgg16-397923af.pth)")
    parser.add_argument("--lpips-linear", metavar="FILE",
                        help="LPIPS v0.1 VGG heads (default: lpips/weights/v0.1/vgg.pth of the installed lpips "
                             "package)")
    parser.add_argument("--backend", choices=BACKENDS, default="dlib",
                        help="landmark network for AKD and motion: dlib (offline) or face_alignment (FAN, the "
                             "published protocol)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override the checkpoint's config, e.g. finetune.epochs=40")
    return parser


def check_args(args: argparse.Namespace) -> str | None:
    """The first problem with the arguments, as one line, or None; nothing is read or written before this."""
    for name in ("videos", "holdout", "drivers"):
        if getattr(args, name) < 1:
            return f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}"
    if args.driver_frames < 2:
        return f"--driver-frames must be at least 2 (jitter and flicker need two frames), got {args.driver_frames}"
    if any(s < 1 for s in args.shots):
        return f"--shots must all be at least 1 (T frames make the person), got {args.shots}"
    if len(set(args.shots)) != len(args.shots):
        return f"--shots has repeated values: {args.shots}"
    if args.lpips_linear and not args.lpips_backbone:
        return "--lpips-linear needs --lpips-backbone (the VGG16 trunk the heads sit on)"
    try:
        device = torch.device(args.device)
    except (RuntimeError, ValueError):
        return f"--device {args.device!r} is not a device (cpu, cuda, cuda:N)"
    if device.type == "cuda" and not torch.cuda.is_available():
        return f"--device {args.device}: CUDA is not available on this machine"
    inputs = {"--checkpoint": args.checkpoint, "--data": args.data, "--arcface": args.arcface,
              "--inception": args.inception, "--lpips-backbone": args.lpips_backbone,
              "--lpips-linear": args.lpips_linear}
    out = Path(args.out).resolve()
    for flag, value in inputs.items():
        if value is None:
            continue
        path = Path(value).resolve()
        if out == path or (flag == "--data" and path in out.parents):
            return f"--out {args.out} is {'inside ' if out != path else ''}the input {flag} {value}; " \
                   "choose another output folder"
    if out.exists() and not out.is_dir():
        return f"--out {args.out} is a file; it must be a folder"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    problem = check_args(args)
    if problem:
        print(f"evaluate.py: error: {problem}", file=sys.stderr)
        return 2
    try:
        result = evaluate(args)
    except (ConfigError, CheckpointError, StoreError, DetectorLoadError, FileNotFoundError, UnsafeOrDamagedFile,
            ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for shots, values in result["per_shots"].items():
        shown = "  ".join(f"{k} {report.format_value(v)}" for k, v in values.items()
                          if not k.endswith("_skipped") and k not in ("train_frames_mean",))
        print(f"T={shots:>3}: {shown}")
    print(f"wrote {Path(args.out) / 'report.html'} and metrics.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
