"""Meta-learning of the few-shot talking-head model (Zakharov et al. 2019, Sec. 3.3).

    python meta_train.py --config demo --out runs/demo --set data.root=data/demo_store
    python meta_train.py --out runs/demo --resume                      # continue the latest checkpoint
    torchrun --nproc_per_node 8 meta_train.py --config vox2 --out runs/vox2 --set data.root=/data/vox2_store

Every step runs a D phase on a detached generated frame, then an E+G phase (training/talking_head.py; HeadGAN:
training/headgan.py). The run directory holds the frozen config, checkpoints, metrics.jsonl, TensorBoard logs
and image grids (training/loop.py). On a GPU box the defaults are the fast path: the local GPU, train.amp auto
(bf16, or fp16 with a gradient scaler where bf16 is missing), TF32 and cudnn autotuning.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from config import ConfigError, add_config_arguments, config_from_args, load_config
from dataset.store import StoreError
from training.checkpoint import CheckpointError
from training.loop import meta_train
from training.precision import NonFiniteLossError, PrecisionError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    add_config_arguments(parser, default="")
    parser.add_argument("--out", required=True, help="run directory")
    parser.add_argument("--resume", action="store_true", help="continue the latest checkpoint in --out")
    parser.add_argument("--device", default="auto",
                        help="auto (default: this process's GPU if there is one, else the CPU), cpu, cuda")
    args = parser.parse_args(argv)
    try:
        if not args.config:
            frozen = Path(args.out) / "config.yaml"
            if not (args.resume and frozen.is_file()):
                parser.error("--config is required (except with --resume in a run directory that has config.yaml)")
            cfg = load_config(frozen, args.overrides)
        else:
            cfg = config_from_args(args)
        path = meta_train(cfg, args.out, resume=args.resume, device=args.device)
    except (ConfigError, CheckpointError, NonFiniteLossError, PrecisionError, StoreError, ValueError,
            FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if path is not None:  # rank 0 writes the checkpoints; the other processes of a torchrun run have none
        print(f"done: last checkpoint {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
