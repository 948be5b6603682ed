"""Few-shot fine-tuning of a meta-trained model on a new person (Zakharov et al. 2019, Sec. 3.4).

    python finetune.py runs/demo/checkpoints/step_000000300.pt --frames person.mp4 --out out/person
    python finetune.py CKPT --frames photos/ --out out/person --shots 8 --set finetune.epochs=40
    python finetune.py CKPT --frames person.mp4 --out out/person --driver someone_else.mp4

The person's frames (a video or a folder of images) go through the same landmark backend and face crop as the
training data. T of them (``--shots``, evenly spaced) fine-tune G and D; up to ``--holdout`` of the others
measure generalisation. Writes OUT/person.pt (G + psi: what reenact.py loads), OUT/report.json (reconstruction
L1 before and after), OUT/before_after.png (landmarks | feed-forward | fine-tuned | real), and with --driver
OUT/reenact.mp4.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from config import ConfigError, apply_overrides, to_dict
from dataset.landmarks import BACKENDS, DetectorLoadError, make_detector
from dataset.pipeline.faces import read_face_crops
from dataset.pipeline.videos import evenly_spaced
from dataset.store import FewShotDataset
from training.checkpoint import CheckpointError
from training.finetune import finetune
from training.person import load_meta_checkpoint, save_person
from training.precision import NonFiniteLossError
from utils.cli import check_at_least, check_device, check_output_dir

# What a run writes into --out.
OUTPUTS = ("person.pt", "report.json", "before_after.png", "reenact.mp4")


def split_shots(count: int, shots: int, holdout: int) -> tuple[list[int], list[int]]:
    """T evenly spaced training frames, and up to ``holdout`` evenly spaced frames among the rest.

    ``evenly_spaced`` reads a count of 0 as "all frames", so T = 0 would silently fine-tune on every frame:
    refused here, whoever calls.
    """
    if shots < 1 or holdout < 0:
        raise ValueError(f"need at least 1 shot and a holdout of 0 or more, got shots={shots}, holdout={holdout}")
    train = evenly_spaced(count, shots)
    rest = [i for i in range(count) if i not in set(train)]
    return train, [rest[i] for i in evenly_spaced(len(rest), holdout)] if holdout and rest else []


def check_arguments(args: argparse.Namespace) -> None:
    """Everything that can be checked before the checkpoint is read (one-line errors)."""
    check_at_least({"--shots": args.shots}, 1)
    check_at_least({"--holdout": args.holdout}, 0)
    check_device(args.device)
    for flag, path in (("checkpoint", args.checkpoint), ("--frames", args.frames), ("--driver", args.driver)):
        if path is not None and not Path(path).exists():
            raise FileNotFoundError(f"{flag} not found: {path}")
    check_output_dir(args.out, {"checkpoint": args.checkpoint, "--frames": args.frames, "--driver": args.driver},
                     OUTPUTS)


def run(args: argparse.Namespace) -> dict:
    _, nets, cfg = load_meta_checkpoint(args.checkpoint)
    if cfg.model.family != "talking_head":
        raise ValueError(f"{args.checkpoint} is a {cfg.model.family!r} checkpoint; few-shot fine-tuning is for the "
                         "talking-head family. HeadGAN is one-shot: python reenact.py --person PHOTO "
                         f"--checkpoint {args.checkpoint} --driver VIDEO --out OUT.mp4")
    cfg = apply_overrides(cfg, args.overrides)
    size = cfg.model.image_size
    detector = make_detector(args.backend, args.device)
    crops, points, dropped = read_face_crops(args.frames, detector, size)
    train_idx, holdout_idx = split_shots(len(crops), args.shots, args.holdout)
    kwargs = {"image_size": size, "landmark_thickness": cfg.data.landmark_thickness, "seed": cfg.train.seed}
    train = FewShotDataset([crops[i] for i in train_idx], points[train_idx], **kwargs)
    holdout = FewShotDataset([crops[i] for i in holdout_idx], points[holdout_idx], **kwargs) if holdout_idx else None
    out = Path(args.out)
    person, report = finetune(nets, cfg, train, holdout, args.device, out, identity=Path(args.frames).stem)
    path = save_person(out / "person.pt", person, to_dict(cfg)["model"], cfg.data.landmark_thickness)
    report.update({"checkpoint": str(args.checkpoint), "frames_source": str(args.frames),
                   "frames_without_face": dropped, "person": str(path)})
    if args.driver:
        from reenact import reenact

        report["reenact"] = reenact(person, args.driver, out / "reenact.mp4", detector)
    (out / "report.json").write_text(json.dumps(report, indent=1, default=_json_default))
    return report


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return str(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("checkpoint", help="meta-training checkpoint (RUN/checkpoints/step_*.pt)")
    parser.add_argument("--frames", required=True, help="the new person: a video file or a folder of images")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--shots", type=int, default=8, help="T: frames to fine-tune on, at least 1 (default 8)")
    parser.add_argument("--holdout", type=int, default=8, help="other frames to measure on, 0 for none (default 8)")
    parser.add_argument("--driver", help="optional video whose motion the fine-tuned person follows")
    parser.add_argument("--backend", choices=BACKENDS, default="dlib", help="landmark backend (default dlib)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field of the checkpoint's config, e.g. finetune.epochs=40")
    args = parser.parse_args(argv)
    try:
        check_arguments(args)
        report = run(args)
    except (ConfigError, CheckpointError, NonFiniteLossError, DetectorLoadError, ValueError,
            FileNotFoundError) as err:  # ValueError: ArgumentError and UnsafeOrDamagedFile too
        print(f"error: {err}", file=sys.stderr)
        return 1
    before, after = report["before"], report["after"]
    print(f"fine-tuned on {report['frames']} frames for {report['epochs']} epochs ({report['steps']} steps)")
    print(f"reconstruction L1 on the T frames: {before['train_l1']:.4f} -> {after['train_l1']:.4f}")
    if after["holdout_l1"] is not None:
        print(f"reconstruction L1 on {report['holdout_frames']} held-out frames: "
              f"{before['holdout_l1']:.4f} -> {after['holdout_l1']:.4f}")
    print(f"wrote {report['person']}, {Path(args.out) / 'before_after.png'}, {Path(args.out) / 'report.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
