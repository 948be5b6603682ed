"""LPIPS, the learned perceptual image distance of Zhang et al. 2018 (VGG variant, v0.1 linear heads).

R. Zhang, P. Isola, A. A. Efros, E. Shechtman, O. Wang, "The Unreasonable Effectiveness of Deep Features as
a Perceptual Metric", CVPR 2018.  The distance of two images is, summed over five VGG16 layers (relu1_2,
relu2_2, relu3_3, relu4_3, relu5_3), the spatial mean of a learned non-negative channel weighting of the
squared difference of the channel-normalised activations (Eq. 1 of the paper).

Nothing is downloaded, and both weight files are read with ``utils.safe_load.load_tensors``:

    backbone  torchvision's VGG16 ImageNet state dict (``vgg16-397923af.pth``, keys ``features.N.weight/bias``),
              always the user's file
    linear    the LPIPS project's ``lpips/weights/v0.1/vgg.pth`` (keys ``lin0.model.1.weight`` .. ``lin4...``);
              by default the copy inside the installed ``lpips`` wheel, found without importing the package
              (its ``__init__`` imports torchvision)

    model = load_lpips("vgg16-397923af.pth")            # heads from the lpips package
    model = load_lpips("vgg16-397923af.pth", "vgg.pth")
    distances = model(fake, real)   # (N,), images (N, 3, H, W) RGB in [-1, 1]; 0 for identical images
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch
from torch import nn

from vgg_model.convert_model import torchvision_feature_names
from utils.safe_load import load_tensors
from vgg_model.vgg import ARCHITECTURES, BLOCK_CHANNELS, VGGFeatures, conv_shapes

# VGG16 is configuration D, the layout the framework's table calls "vggface".
ARCH = "vggface"
LAYERS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")
CHANNELS = BLOCK_CHANNELS
# The published method's input scaling, (x - SHIFT) / SCALE for RGB images in [-1, 1].
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
# Added to the channel norm before dividing, as in the paper's reference implementation.
NORM_EPS = 1e-10

BACKBONE_SOURCE = ("torchvision's VGG16 ImageNet weights, vgg16-397923af.pth "
                   "(https://download.pytorch.org/models/vgg16-397923af.pth)")
LINEAR_SOURCE = ("the LPIPS project's lpips/weights/v0.1/vgg.pth "
                 "(https://github.com/richzhang/PerceptualSimilarity)")
OPTIONS_HINT = ("pass them to evaluate.py as --lpips-backbone vgg16-397923af.pth [--lpips-linear vgg.pth; default: "
                "the heads inside the installed lpips package, pip install --no-deps lpips]")
PACKAGED_HEADS = Path("weights") / "v0.1" / "vgg.pth"


def packaged_linear_heads() -> Path | None:
    """``lpips/weights/v0.1/vgg.pth`` of the installed lpips package, located by its import spec (the package is
    not imported: its ``__init__`` needs torchvision); None when it is not installed or lacks the file."""
    spec = importlib.util.find_spec("lpips")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / PACKAGED_HEADS
    return path if path.is_file() else None


def lpips_preprocess() -> dict:
    """The ``VGGFeatures`` preprocess dict that reproduces LPIPS's input scaling exactly.

    VGGFeatures maps x in [-1, 1] to u = (x + 1) / 2 and then to (u - mean) / std.  With x = 2u - 1,
    (x - shift) / scale = (u - (1 + shift) / 2) / (scale / 2), so mean = (1 + shift) / 2 and
    std = scale / 2.  These are torchvision's ImageNet mean and std, which the LPIPS constants encode.
    """
    return {"channel_order": "RGB", "scale": 1.0,
            "mean": [(1.0 + s) / 2.0 for s in SHIFT], "std": [s / 2.0 for s in SCALE]}


def linear_keys() -> list[str]:
    """Keys of the LPIPS v0.1 linear-head file, one (1, C, 1, 1) weight per layer."""
    return [f"lin{i}.model.1.weight" for i in range(len(LAYERS))]


def backbone_keys() -> dict[str, str]:
    """``{torchvision key: Caffe-named key}`` for every VGG16 conv parameter LPIPS uses."""
    return {f"features.{index}.{param}": f"{name}.{param}"
            for name, index in torchvision_feature_names(ARCH).items() for param in ("weight", "bias")}


class LPIPS(nn.Module):
    """LPIPS distance (Zhang et al. 2018), VGG16 trunk with v0.1 linear heads; frozen, in eval mode.

    Build it with :func:`load_lpips`; a bare ``LPIPS()`` has untrained weights.  ``forward(a, b)`` takes two
    (N, 3, H, W) RGB batches in [-1, 1] and returns the (N,) distances (0 for identical images, symmetric,
    lower = more similar).  Gradients flow to the inputs, so it can also serve as a loss.
    """

    def __init__(self):
        super().__init__()
        self.trunk = VGGFeatures(ARCH, lpips_preprocess(), last_layer=LAYERS[-1])
        # The framework's trunk rounds pooled sizes up like Caffe; torchvision's VGG16, which the LPIPS
        # heads were trained on, rounds down.  They differ on odd sizes, so use torchvision's pooling.
        for block in range(1, len(ARCHITECTURES[ARCH])):
            setattr(self.trunk, f"pool{block}", nn.MaxPool2d(kernel_size=2, stride=2))
        self.heads = nn.ModuleList(nn.Conv2d(channels, 1, kernel_size=1, bias=False) for channels in CHANNELS)
        self.linear_source = ""  # the heads' file, set by load_lpips
        self.eval()
        self.requires_grad_(False)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if a.shape != b.shape or a.dim() != 4 or a.shape[1] != 3:
            raise ValueError(f"expected two (N, 3, H, W) image batches of the same shape, got {tuple(a.shape)} "
                             f"and {tuple(b.shape)}")
        features_a = self.trunk(a, list(LAYERS))
        features_b = self.trunk(b, list(LAYERS))
        distance = a.new_zeros(a.shape[0])
        for head, fa, fb in zip(self.heads, features_a, features_b):
            difference = (_unit_normalise(fa) - _unit_normalise(fb)) ** 2
            distance = distance + head(difference).mean(dim=(1, 2, 3))
        return distance


def _unit_normalise(features: torch.Tensor) -> torch.Tensor:
    """Scale each spatial position's feature vector to unit length over the channels."""
    return features / (features.pow(2).sum(dim=1, keepdim=True).sqrt() + NORM_EPS)


def _load_state(path: str, what: str) -> dict:
    state = load_tensors(path, f"LPIPS {what} file")
    if not isinstance(state, dict):
        raise ValueError(f"{path!r} holds a {type(state).__name__}, expected the {what} state dict")
    return state


def _check_tensor(path: str, key: str, value, shape: tuple) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{path!r}: {key} is a {type(value).__name__}, expected a tensor")
    if tuple(value.shape) != tuple(shape):
        raise ValueError(f"{path!r}: {key} has shape {tuple(value.shape)}, expected {tuple(shape)}")
    return value.detach().to(torch.float32)


def _backbone_state(path: str) -> dict:
    source = _load_state(path, "torchvision VGG16")
    mapping = backbone_keys()
    missing = [key for key in mapping if key not in source]
    # Other VGG files (VGG19, VGG16-BN) put parameters at feature indices VGG16 leaves empty.
    stray = sorted(key for key in source if key.startswith("features.") and key not in mapping)
    if missing or stray:
        raise ValueError(f"{path!r} is not torchvision's VGG16 state dict: missing keys {missing}, unexpected "
                         f"feature keys {stray}; expected {BACKBONE_SOURCE}")
    shapes = {f"{name}.{param}": shape for name, pair in conv_shapes(ARCH).items()
              for param, shape in zip(("weight", "bias"), pair)}
    return {f"trunk.{target}": _check_tensor(path, key, source[key], shapes[target])
            for key, target in mapping.items()}


def _linear_state(path: str) -> dict:
    source = _load_state(path, "LPIPS linear-head")
    keys = linear_keys()
    missing = [key for key in keys if key not in source]
    unexpected = sorted(str(key) for key in source if key not in keys)
    if missing or unexpected:
        raise ValueError(f"{path!r} is not the LPIPS v0.1 VGG linear-head file: missing keys {missing}, "
                         f"unexpected keys {unexpected}; expected {LINEAR_SOURCE}")
    state = {}
    for i, (key, channels) in enumerate(zip(keys, CHANNELS)):
        weight = _check_tensor(path, key, source[key], (1, channels, 1, 1))
        # The method constrains the heads to be non-negative, so a distance can never be negative.
        if (weight < 0).any():
            raise ValueError(f"{path!r}: {key} has negative weights; LPIPS heads are non-negative")
        state[f"heads.{i}.weight"] = weight
    return state


def load_lpips(backbone_path, linear_path=None) -> LPIPS:
    """LPIPS from torchvision's VGG16 ImageNet state dict and the LPIPS v0.1 VGG linear heads (``linear_path``, or
    the installed lpips package's copy when it is None).  ``model.linear_source`` says which heads were used.

    Raises FileNotFoundError (saying where each file comes from) when a file is missing, and ValueError
    (``UnsafeOrDamagedFile`` for unreadable files) naming the offending keys or shapes when a file is not the
    expected one.
    """
    if linear_path is None:
        linear_path = packaged_linear_heads()
        if linear_path is None:
            raise FileNotFoundError(f"LPIPS linear heads not found: the lpips package is not installed and no "
                                    f"--lpips-linear was given ({LINEAR_SOURCE}). Install it or {OPTIONS_HINT}")
    paths = {"backbone": os.fspath(backbone_path), "linear": os.fspath(linear_path)}
    sources = {"backbone": BACKBONE_SOURCE, "linear": LINEAR_SOURCE}
    absent = [f"{role} file {path!r} (from {sources[role]})" for role, path in paths.items()
              if not os.path.isfile(path)]
    if absent:
        raise FileNotFoundError(f"LPIPS weights not found: {'; '.join(absent)}. Download and {OPTIONS_HINT}")
    model = LPIPS()
    model.load_state_dict({**_backbone_state(paths["backbone"]), **_linear_state(paths["linear"])}, strict=True)
    model.linear_source = paths["linear"]
    return model
