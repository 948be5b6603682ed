"""Learning for real: meta-training on demo data lowers the held-out reconstruction error."""
from __future__ import annotations

import json

import torch

from config import load_config
from model import build_networks
from training.meta import meta_train, validate, validation_episodes


def test_meta_training_improves_held_out_reconstruction(demo_store, tmp_path):
    cfg = load_config("demo", ["model.image_size=32", "data.num_workers=0", f"data.root={demo_store}",
                               "train.steps=300", "train.val_every=100", "train.val_episodes=8",
                               "train.checkpoint_every=300", "train.image_every=300", "train.log_every=50"])
    episodes = validation_episodes(cfg, cfg.train.val_episodes)
    assert episodes and all(e["identity"] == "id00008" for e in episodes)  # an identity never trained on
    # The run's initial E and G: same seed, built before D, so D's W size does not matter.
    torch.manual_seed(cfg.train.seed)
    nets = build_networks(cfg.model)
    start = validate(nets["embedder"], nets["generator"], episodes, torch.device("cpu"))
    meta_train(cfg, tmp_path / "run", progress=False)
    history = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
               if "val/l1" in line]
    end = history[-1]
    print(f"held-out L1: {start['val/l1']:.3f} at init -> {end['val/l1']:.3f} after 300 steps; "
          f"copying the nearest source: {end['val/nearest_source_l1']:.3f}")
    assert end["val/l1"] < 0.75 * start["val/l1"]
