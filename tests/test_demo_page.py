"""The page `make demo` ends with (demo.write_index), built from small real outputs of the same kinds: a training
run's metrics.jsonl and grid, a before/after grid and H.264 videos; checked in headless Chromium."""
from __future__ import annotations

import json

import numpy as np

from browser import render_summary
from demo import run_section, write_index
from evaluation.report import Section
from inference.video import H264Writer
from training.report import write_png


def _video(path, frames=6):
    with H264Writer(path, fps=25) as writer:
        for i in range(frames):
            writer.write(np.full((64, 192, 3), 40 * i, np.uint8))
    return path


def test_demo_index_shows_data_curves_grids_and_playable_videos(tmp_path):
    run = tmp_path / "run"
    (run / "images").mkdir(parents=True)
    records = [{"step": s, "loss/d_total": 2.0 - s / 100, "loss/g_total": 9 - s / 50} for s in range(0, 100, 25)]
    records += [{"step": s, "val/l1": 0.3 - s / 1000, "val/nearest_source_l1": 0.15} for s in (50, 100)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    rng = np.random.default_rng(0)
    for name in ("images/train_000000050.png", "images/train_000000100.png", "before_after.png", "grid.png"):
        write_png(run / name, rng.integers(0, 255, (64, 256, 3), dtype=np.uint8))
    section = run_section("Few-shot talking heads", tmp_path, run, ("val/l1", "val/nearest_source_l1"),
                          ["800 steps"], [("before/after", run / "before_after.png")],
                          [("reenactment", _video(tmp_path / "reenact.mp4"))])
    assert [caption for caption, _ in section.images][-1] == "before/after"
    assert ("latest training grid", run / "images" / "train_000000100.png") in section.images
    data = Section("The data", images=[("data grid", run / "grid.png")])
    page = write_index(tmp_path, [data, section, Section("HeadGAN", videos=[("one-shot", _video(tmp_path / "h.mp4"))])],
                       [("demo clips", tmp_path / "clips")], 12.0)
    assert page == tmp_path / "index.html"
    seen = render_summary(page)
    # data grid, losses, validation, latest grid, before/after: all decoded; both videos show frames.
    assert seen["images"] == 5 and seen["images_loaded"] == 5
    assert seen["videos"] == 2 and seen["videos_with_frames"] == 2
    assert seen["tables"] == [2] and seen["headers"] == ["what", "where"]
