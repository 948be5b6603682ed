"""The whole story on built-in demo data, on CPU, in a few minutes: what `make demo` runs.

    make demo                                     # or: .venv/bin/python demo.py --out outputs/demo
    .venv/bin/python demo.py --set train.steps=2000   # longer meta-training, any config field

1. demo clips: real face photos shipped by installed packages, animated, 8 identities (dataset/demo.py)
2. cleaning: every clip decoded and checked (dataset/voxceleb2/clean_data.py)
3. landmarks: dlib detector, face crops, the indexed training store; identity id00008 held out
4. a grid of frames and landmark images to look at (dataset/inspect.py)
5. meta-training of E, G and D with the demo preset (meta_train.py)
6. fine-tuning on the held-out identity (finetune.py)
7. a reenactment video: the held-out person driven by another identity's clip (reenact.py)
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from config import load_config
from dataset.demo import build_demo_dataset
from dataset.inspect import make_grid
from dataset.landmarks import make_detector
from dataset.pipeline.faces import read_face_crops
from dataset.store import FewShotDataset
from dataset.voxceleb1.extract_landmark import extract_landmarks
from dataset.voxceleb2.clean_data import clean
from finetune import split_shots
from reenact import reenact
from training.checkpoint import latest_checkpoint
from training.finetune import finetune
from training.meta import meta_train
from training.person import load_meta_checkpoint, save_person
from training.report import write_png

HELD_OUT = "id00008"
DRIVER = "id00002"


def banner(text: str) -> None:
    print(f"\n=== {text}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--out", default="outputs/demo", help="where every output goes (default outputs/demo)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a field of the demo preset, e.g. train.steps=2000")
    args = parser.parse_args(argv)
    out = Path(args.out)
    start = time.time()
    cfg = load_config("demo", args.overrides)

    banner("1/7 demo clips")
    clips = build_demo_dataset(out / "clips")
    banner("2/7 cleaning")
    cleaning = clean(clips, out / "clean_report.json")
    banner("3/7 landmarks and the training store")
    store = out / "store"
    extract_landmarks(clips, store, backend="dlib", size=cfg.model.image_size, test_identities={HELD_OUT},
                      workers=2)
    write_png(out / "data_grid.png", make_grid(store, videos=8, frames=4))

    banner(f"4/7 meta-training ({cfg.train.steps} steps of the demo preset)")
    run = out / "run"
    cfg = load_config("demo", [f"data.root={store}", *args.overrides])
    checkpoint = meta_train(cfg, run, resume=latest_checkpoint(run) is not None)

    banner(f"5/7 fine-tuning on the held-out identity {HELD_OUT}")
    detector = make_detector("dlib")
    person_clip = sorted((clips / HELD_OUT).glob("*/*.mp4"))[0]
    crops, points, _ = read_face_crops(person_clip, detector, cfg.model.image_size)
    train_idx, holdout_idx = split_shots(len(crops), 8, 8)
    kwargs = {"image_size": cfg.model.image_size, "landmark_thickness": cfg.data.landmark_thickness}
    state, nets, meta_cfg = load_meta_checkpoint(checkpoint)
    person, report = finetune(nets, meta_cfg, FewShotDataset([crops[i] for i in train_idx], points[train_idx], **kwargs),
                              FewShotDataset([crops[i] for i in holdout_idx], points[holdout_idx], **kwargs),
                              out_dir=out / "person", identity=HELD_OUT)
    save_person(out / "person" / "person.pt", person, state["config"]["model"], cfg.data.landmark_thickness)

    banner(f"6/7 reenactment: {HELD_OUT} driven by {DRIVER}")
    driver = sorted((clips / DRIVER).glob("*/*.mp4"))[0]
    video = reenact(person, driver, out / "reenact.mp4", detector)

    banner(f"7/7 done in {time.time() - start:.0f} s")
    b, a = report["before"], report["after"]
    print(f"clips checked: {cleaning['checked_clips']}, corrupted: {len(cleaning['bad_clips'])}")
    print(f"fine-tuning, reconstruction L1 on held-out frames of {HELD_OUT}: {b['holdout_l1']:.3f} (feed-forward) "
          f"-> {a['holdout_l1']:.3f} (fine-tuned)")
    for what, path in [("demo clips", clips), ("data grid", out / "data_grid.png"), ("training run", run),
                       ("  image grids", run / "images"), ("  TensorBoard", f"tensorboard --logdir {run}"),
                       ("fine-tuned person", out / "person" / "person.pt"),
                       ("before/after grid", out / "person" / "before_after.png"),
                       ("reenactment video", video["out"])]:
        print(f"{what:<20} {path}")


if __name__ == "__main__":
    main()
