"""Networks and losses. ``build_networks(cfg.model)`` builds the family the config names."""
from __future__ import annotations

from torch import nn

from config import ModelConfig


def build_talking_head(cfg: ModelConfig) -> dict[str, nn.Module]:
    """E, G and D of Zakharov et al. 2019, sized by the config's layer tables."""
    from model.discriminator import Discriminator
    from model.embedder import Embedder
    from model.generator import Generator

    return {"embedder": Embedder(cfg), "generator": Generator(cfg), "discriminator": Discriminator(cfg)}


def build_headgan(cfg: ModelConfig) -> dict[str, nn.Module]:
    """Generator (flow + rendering network), multi-scale and mouth discriminators of Doukas et al. 2021."""
    from model.headgan import build_headgan as build

    return build(cfg)


# One builder per model family; a family returns its networks by name.
FAMILIES = {"talking_head": build_talking_head, "headgan": build_headgan}


def build_networks(cfg: ModelConfig) -> dict[str, nn.Module]:
    if cfg.family not in FAMILIES:
        raise ValueError(f"model.family={cfg.family!r} is not one of {sorted(FAMILIES)}")
    return FAMILIES[cfg.family](cfg)
