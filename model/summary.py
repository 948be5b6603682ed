"""Parameter counts and forward FLOPs per image of a config's networks.

    python -m model.summary --config vox2            # table
    python -m model.summary --config demo --json     # {"embedder": {"params": N, "gflops": X}, ...}

The networks are built on PyTorch's meta device, so nothing is allocated and a 256x256 preset is summarised in
about a second. FLOPs are counted by ``torch.utils.flop_counter`` (matrix multiplies, convolutions and
attention, 2 FLOPs per multiply-add; elementwise work is not counted), for one image at model.image_size:
E on one (frame, landmarks) pair, G from e_hat (P included), D on one pair. Discriminator parameters exclude
the per-video matrix W, which is reported separately.
"""
from __future__ import annotations

import argparse
import json

import torch
from torch.utils.flop_counter import FlopCounterMode

from config import ConfigError, ModelConfig, add_config_arguments, config_from_args
from model import build_networks


def _params(module: torch.nn.Module, skip_prefix: str | None = None) -> int:
    return sum(p.numel() for name, p in module.named_parameters()
               if skip_prefix is None or not name.startswith(skip_prefix))


def _gflops(fn) -> float:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        fn()
    return counter.get_total_flops() / 1e9


def summarize(cfg: ModelConfig) -> dict[str, dict[str, float]]:
    """Returns {network: {"params": int, "gflops": float, ...}} for the talking-head family."""
    with torch.device("meta"):
        nets = build_networks(cfg)
        for net in nets.values():
            net.eval()  # no spectral-norm power iterations in the count
        s = cfg.image_size
        frame = torch.empty(1, 3, s, s)
        landmarks = torch.empty(1, cfg.landmark_channels, s, s)
        e_hat = torch.empty(1, cfg.embed_dim)
        index = torch.zeros(1, dtype=torch.long)
        E, G, D = nets["embedder"], nets["generator"], nets["discriminator"]
        return {
            "embedder": {"params": _params(E), "gflops": _gflops(lambda: E.embed(frame, landmarks))},
            "generator": {"params": _params(G), "gflops": _gflops(lambda: G(landmarks, e_hat)),
                          "projection_params": _params(G.projection),
                          "adain_params": G.num_adain_params},
            "discriminator": {"params": _params(D, skip_prefix="W."),
                              "gflops": _gflops(lambda: D(frame, landmarks, index)),
                              "W_params": D.W.weight.numel()},
        }


def format_table(name: str, cfg: ModelConfig, summary: dict) -> str:
    lines = [f"{name}: {cfg.family} at {cfg.image_size}x{cfg.image_size}, embed_dim {cfg.embed_dim}",
             f"{'network':<15}{'params':>12}{'GFLOP/image':>14}  notes"]
    notes = {
        "embedder": "",
        "generator": f"P {summary['generator']['projection_params'] / 1e6:.2f}M params, "
                     f"{summary['generator']['adain_params']} AdaIN outputs",
        "discriminator": f"without W ({cfg.discriminator.num_videos} x {cfg.embed_dim} = "
                         f"{summary['discriminator']['W_params'] / 1e6:.1f}M)",
    }
    for net, row in summary.items():
        lines.append(f"{net:<15}{row['params'] / 1e6:>11.2f}M{row['gflops']:>14.2f}  {notes[net]}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_config_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)
    try:
        cfg = config_from_args(args)
        summary = summarize(cfg.model)
    except (ConfigError, ValueError) as err:
        parser.exit(2, f"error: {err}\n")
    if args.json:
        print(json.dumps({net: {"params": row["params"], "gflops": round(row["gflops"], 3)}
                          for net, row in summary.items()}))
    else:
        print(format_table(cfg.name, cfg.model, summary))


if __name__ == "__main__":
    main()
