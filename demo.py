"""The main demo: the whole pipeline on built-in demo data, on CPU.

    make demo            # or: .venv/bin/python demo.py

So far it prints the networks of the demo preset next to the paper's 256x256 set-up (model.summary); each
stage of the story (demo data, preprocessing, meta-training, fine-tuning, reenactment) adds itself here.
"""
from __future__ import annotations

from config import load_config
from model.summary import format_table, summarize


def main() -> None:
    for preset in ("demo", "vox2"):
        cfg = load_config(preset)
        print(format_table(cfg.name, cfg.model, summarize(cfg.model)), end="\n\n")


if __name__ == "__main__":
    main()
