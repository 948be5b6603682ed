"""Parameter counts and forward FLOPs per image of a config's networks.

    python -m model.summary --config vox2            # table
    python -m model.summary --config demo --json     # {"embedder": {"params": N, "gflops": X}, ...}
    python -m model.summary --config headgan         # HeadGAN: generator, discriminator, mouth_discriminator

The networks are built on PyTorch's meta device, so nothing is allocated and a 256x256 preset is summarised in
about a second. FLOPs are counted by ``torch.utils.flop_counter`` (matrix multiplies, convolutions and
attention, 2 FLOPs per multiply-add; elementwise work and grid_sample are not counted), for one image at
model.image_size. Talking heads: E on one (frame, landmarks) pair, G from e_hat (P included), D on one pair;
discriminator parameters exclude the per-video matrix W, which is reported separately. HeadGAN: G on one
(reference, reference render, driving render, audio window), the multi-scale D on one (image, render) pair
over all its scales, the mouth D on one crop with its audio window.
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
    """Returns {network: {"params": int, "gflops": float, ...}} for the config's model family."""
    if cfg.family == "headgan":
        return _summarize_headgan(cfg)
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


def _summarize_headgan(cfg: ModelConfig) -> dict[str, dict[str, float]]:
    from model.headgan import crop_mouth

    h = cfg.headgan
    with torch.device("meta"):
        nets = build_networks(cfg)
        for net in nets.values():
            net.eval()
        s = cfg.image_size
        image = torch.empty(1, 3, s, s)
        audio = torch.empty(1, h.audio_mels, h.audio_window) if h.audio else None
        G, D = nets["generator"], nets["discriminator"]
        summary = {
            "generator": {"params": _params(G), "gflops": _gflops(lambda: G(image, image, image, audio)),
                          "flow_params": _params(G.flow), "rendering_params": _params(G.render)},
            "discriminator": {"params": _params(D), "gflops": _gflops(lambda: D(image, image))},
        }
        if "mouth_discriminator" in nets:
            M = nets["mouth_discriminator"]
            mouth = crop_mouth(image, torch.zeros(1, 2), M.crop_size)
            summary["mouth_discriminator"] = {"params": _params(M), "gflops": _gflops(lambda: M(mouth, audio)),
                                              "crop_size": M.crop_size}
        return summary


def _notes(cfg: ModelConfig, summary: dict) -> tuple[str, dict[str, str]]:
    """The table's title details and a note per network."""
    if cfg.family == "headgan":
        h, g = cfg.headgan, summary["generator"]
        notes = {"generator": f"flow network {g['flow_params'] / 1e6:.2f}M, rendering network "
                              f"{g['rendering_params'] / 1e6:.2f}M",
                 "discriminator": f"{h.d_scales} scales x {h.d_layers} layers from {h.ndf} channels"}
        if "mouth_discriminator" in summary:
            notes["mouth_discriminator"] = f"{summary['mouth_discriminator']['crop_size']} px mouth crop"
        return f"ngf {h.ngf}, {h.levels} levels, audio {'on' if h.audio else 'off'}", notes
    return f"embed_dim {cfg.embed_dim}", {
        "embedder": "",
        "generator": f"P {summary['generator']['projection_params'] / 1e6:.2f}M params, "
                     f"{summary['generator']['adain_params']} AdaIN outputs",
        "discriminator": f"without W ({cfg.discriminator.num_videos} x {cfg.embed_dim} = "
                         f"{summary['discriminator']['W_params'] / 1e6:.1f}M)",
    }


def format_table(name: str, cfg: ModelConfig, summary: dict) -> str:
    details, notes = _notes(cfg, summary)
    width = max(15, *(len(net) + 2 for net in summary))
    lines = [f"{name}: {cfg.family} at {cfg.image_size}x{cfg.image_size}, {details}",
             f"{'network':<{width}}{'params':>12}{'GFLOP/image':>14}  notes"]
    for net, row in summary.items():
        lines.append(f"{net:<{width}}{row['params'] / 1e6:>11.2f}M{row['gflops']:>14.2f}  {notes[net]}")
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
