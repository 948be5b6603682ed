"""The whole story on built-in demo data, on CPU, in a few minutes: what `make demo` runs.

    make demo                                     # or: .venv/bin/python demo.py --out outputs/demo
    .venv/bin/python demo.py --set train.steps=2000   # longer meta-training, any config field (both presets)
    .venv/bin/python demo.py --family headgan     # only one model family: talking_head or headgan

Shared data pipeline:
1. demo clips with a soundtrack: real face photos shipped by installed packages, animated, 8 identities
2. cleaning: every clip decoded and checked (dataset/voxceleb2/clean_data.py)
3. landmarks: dlib detector, face crops, the indexed training store; identity id00008 held out
Few-shot talking heads (Zakharov et al. 2019), preset `demo`:
4. meta-training of E, G and D (meta_train.py), fine-tuning on the held-out identity (finetune.py) and a
   reenactment video: the held-out person driven by another identity's clip (reenact.py)
HeadGAN (Doukas et al. 2021), preset `headgan_demo`:
5. 3D face fits (MediaPipe Face Mesh) and audio features added to the same store
6. meta-training of the flow + rendering generator and the discriminators (meta_train.py), and a one-shot
   reenactment video: one photo of the held-out person driven by another identity's 3D face and voice
It ends by writing OUT/index.html: one page with the data grid, the training curves, the latest training grid,
the before/after grid and the reenactment videos (playable in the page), and where every output is.
"""
from __future__ import annotations

import argparse
import json
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
from evaluation.report import Section, plot_curves, write_html
from finetune import split_shots
from reenact import reenact
from training.checkpoint import latest_checkpoint
from training.finetune import finetune
from training.loop import meta_train
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
    parser.add_argument("--family", choices=["both", "talking_head", "headgan"], default="both",
                        help="which model family's story to run after the shared data pipeline (default both)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a field of the demo presets, e.g. train.steps=2000")
    args = parser.parse_args(argv)
    out = Path(args.out)
    start = time.time()
    cfg = load_config("demo", args.overrides)
    load_config("headgan_demo", args.overrides)  # a bad override stops here, before any work

    banner("1/6 demo clips (with soundtracks)")
    clips = build_demo_dataset(out / "clips")
    banner("2/6 cleaning")
    cleaning = clean(clips, out / "clean_report.json")
    print(f"clips checked: {cleaning['checked_clips']}, corrupted: {len(cleaning['bad_clips'])}")
    banner("3/6 landmarks and the training store")
    store = out / "store"
    extract_landmarks(clips, store, backend="dlib", size=cfg.model.image_size, test_identities={HELD_OUT},
                      workers=2)
    write_png(out / "data_grid.png", make_grid(store, videos=8, frames=4))
    outputs = [("demo clips", clips), ("data grid", out / "data_grid.png")]
    sections = [Section("The data", paragraphs=[
        f"{cleaning['checked_clips']} demo clips, cleaned and cut into the training store; identity {HELD_OUT} is "
        "held out. Each row: frames of one video beside their landmark images."],
        images=[("data grid", out / "data_grid.png")])]
    if args.family in ("both", "talking_head"):
        found, section = talking_head_story(out, clips, store, args.overrides)
        outputs += found
        sections.append(section)
    if args.family in ("both", "headgan"):
        found, section = headgan_story(out, clips, store, args.overrides)
        outputs += found
        sections.append(section)
    banner(f"done in {time.time() - start:.0f} s")
    outputs.append(("this story as one page", write_index(out, sections, outputs, time.time() - start)))
    for what, path in outputs:
        print(f"{what:<28} {path}")


def write_index(out: Path, sections: list[Section], outputs: list[tuple[str, object]], seconds: float) -> Path:
    """OUT/index.html: the story's sections, then a table of where every output is."""
    where = Section("Where everything is", table=[{"what": what.strip(), "where": str(path)} for what, path in outputs])
    return write_html(out / "index.html", "talking-heads: the demo story", [*sections, where],
                      intro=f"Everything below was made by make demo on this machine in {seconds:.0f} s, on "
                            "built-in demo data and CPU. Minutes of CPU training give blurry 64x64 faces that "
                            "follow pose and mouth; the papers' quality needs the vox2 / headgan presets on GPUs.")


def run_section(title: str, out: Path, run: Path, curves: tuple[str, ...], paragraphs: list[str],
                images: list[tuple[str, Path]], videos: list[tuple[str, Path]]) -> Section:
    """A story's part of index.html: its losses and validation curves (from RUN/metrics.jsonl), its latest
    training grid, and the given images and videos."""
    log = run / "metrics.jsonl"
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.is_file() else []
    plots = []
    losses = out / f"{run.name}_losses.png"
    if plot_curves(losses, records, ["loss/d_total", "loss/g_total"], f"{title}: training losses"):
        plots.append(("training losses (D and G totals)", losses))
    validation = out / f"{run.name}_validation.png"
    if plot_curves(validation, records, list(curves), f"{title}: held-out reconstruction L1"):
        plots.append(("validation: the model against its copying baseline (lower is better)", validation))
    grids = sorted((run / "images").glob("*.png"))
    latest = [("latest training grid", grids[-1])] if grids else []
    return Section(title, paragraphs=paragraphs, images=[*plots, *latest, *images], videos=videos)


def talking_head_story(out: Path, clips: Path, store: Path, overrides: list[str]) -> tuple[list, Section]:
    """Meta-training, fine-tuning on the held-out identity and a reenactment video; returns what to show."""
    run = out / "run"
    cfg = load_config("demo", [f"data.root={store}", *overrides])
    banner(f"4/6 talking heads: meta-training ({cfg.train.steps} steps of the demo preset), fine-tuning on "
           f"{HELD_OUT}, reenactment by {DRIVER}")
    checkpoint = meta_train(cfg, run, resume=latest_checkpoint(run) is not None)
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
    driver = sorted((clips / DRIVER).glob("*/*.mp4"))[0]
    video = reenact(person, driver, out / "reenact.mp4", detector)
    b, a = report["before"], report["after"]
    print(f"fine-tuning, reconstruction L1 on held-out frames of {HELD_OUT}: {b['holdout_l1']:.3f} (feed-forward) "
          f"-> {a['holdout_l1']:.3f} (fine-tuned)")
    section = run_section(
        "Few-shot talking heads", out, run, ("val/l1", "val/nearest_source_l1"),
        [f"{cfg.train.steps} meta-training steps of the demo preset, then fine-tuning on 8 frames of {HELD_OUT}: "
         f"reconstruction L1 on its held-out frames {b['holdout_l1']:.3f} (feed-forward) -> {a['holdout_l1']:.3f} "
         f"(fine-tuned). The video: {HELD_OUT} driven by {DRIVER} (driver | adapted landmarks | generated)."],
        [("before/after fine-tuning: landmarks | feed-forward | fine-tuned | real", out / "person" / "before_after.png")],
        [(f"{HELD_OUT} driven by {DRIVER}", Path(video["out"]))])
    return [("talking heads: training run", run), ("  image grids", run / "images"),
            ("  TensorBoard", f"tensorboard --logdir {run}"),
            ("  fine-tuned person", out / "person" / "person.pt"),
            ("  before/after grid", out / "person" / "before_after.png"),
            ("  reenactment video", video["out"])], section


def headgan_story(out: Path, clips: Path, store: Path, overrides: list[str]) -> tuple[list, Section]:
    """3D faces and audio into the store, HeadGAN meta-training, a one-shot reenactment video."""
    from dataset.audio import extract_audio
    from dataset.face3d.backends import make_mesh_detector
    from dataset.face3d.extract_mesh import extract_meshes
    from inference.headgan import headgan_person, reenact_headgan
    from training.checkpoint import load_checkpoint

    banner("5/6 HeadGAN data: 3D face fits (MediaPipe Face Mesh) and audio features into the store")
    extract_meshes(store)
    extract_audio(store, clips)
    run = out / "headgan_run"
    cfg = load_config("headgan_demo", [f"data.root={store}", *overrides])
    banner(f"6/6 HeadGAN: meta-training ({cfg.train.steps} steps of the headgan_demo preset), one-shot "
           f"reenactment of one photo of {HELD_OUT} by {DRIVER}'s face and voice")
    checkpoint = meta_train(cfg, run, resume=latest_checkpoint(run) is not None)
    detector, mesh_detector = make_detector("dlib"), make_mesh_detector("mediapipe")
    person_clip = sorted((clips / HELD_OUT).glob("*/*.mp4"))[0]
    person = headgan_person(load_checkpoint(checkpoint, kind="meta_train"), person_clip, detector, mesh_detector)
    driver = sorted((clips / DRIVER).glob("*/*.mp4"))[0]
    video = reenact_headgan(person, driver, out / "headgan_reenact.mp4", detector, mesh_detector)
    section = run_section(
        "HeadGAN", out, run, ("val/l1", "val/reference_l1"),
        [f"{cfg.train.steps} meta-training steps of the headgan_demo preset; then one photo of {HELD_OUT} driven "
         f"by {DRIVER}'s 3D face and voice (driver | NMFC render | generated; the video has the driver's sound)."],
        [], [(f"one-shot: one photo of {HELD_OUT} driven by {DRIVER}", Path(video["out"]))])
    return [("HeadGAN: training run", run), ("  image grids", run / "images"),
            ("  reenactment video", video["out"])], section


if __name__ == "__main__":
    main()
