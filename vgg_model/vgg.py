"""VGG convolutional trunks used by the content loss of Zakharov et al. 2019.

The paper's content loss compares activations of two Caffe-trained networks:
VGG19 (Simonyan & Zisserman, ILSVRC 2014, "Very Deep Convolutional Networks for
Large-Scale Image Recognition") and VGGFace (Parkhi et al. 2015, "Deep Face
Recognition", a VGG16 layout).  Only the convolutional trunk is needed, so the
fully-connected layers are never built.

Layer and parameter names follow the Caffe deploy prototxts (``conv1_1``,
``relu1_1``, ``pool1``, ...), so a state dict reads ``conv1_1.weight``,
``conv1_1.bias``, ... .

Weights come from ``vgg_model/convert_model.py``, which writes a plain
``torch.save`` dict (see :func:`save_weights`) that loads with
``weights_only=True``.
"""

import os
import pickle
from collections import OrderedDict

import torch
from torch import nn

from utils.atomic import atomic_file

FORMAT_MARKER = "talkinghead-vgg"
FORMAT_VERSION = 1

# Convolutions per block; the five blocks have 64, 128, 256, 512, 512 channels.
BLOCK_CHANNELS = (64, 128, 256, 512, 512)
ARCHITECTURES = {
    "vgg19": (2, 2, 4, 4, 4),  # configuration E of Simonyan & Zisserman
    "vggface": (2, 2, 3, 3, 3),  # configuration D (VGG16), as in Parkhi et al.
}

# Input normalisation the weights were trained with.  Caffe models take BGR
# images in 0..255 with a per-channel mean subtracted (means are in BGR order);
# torchvision's ImageNet models take RGB in 0..1 normalised by mean and std.
CAFFE_VGG19_PREPROCESS = {
    "channel_order": "BGR",
    "scale": 255.0,
    "mean": [103.939, 116.779, 123.68],
    "std": [1.0, 1.0, 1.0],
}
CAFFE_VGGFACE_PREPROCESS = {
    "channel_order": "BGR",
    "scale": 255.0,
    "mean": [93.5940, 104.7624, 129.1863],
    "std": [1.0, 1.0, 1.0],
}
TORCHVISION_IMAGENET_PREPROCESS = {
    "channel_order": "RGB",
    "scale": 1.0,
    "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
}

CAFFE_PREPROCESS = {"vgg19": CAFFE_VGG19_PREPROCESS, "vggface": CAFFE_VGGFACE_PREPROCESS}

# Where the original Caffe weights are published, for error messages.
WEIGHT_SOURCES = {
    "vgg19": (
        "the Oxford VGG 'Very Deep Convolutional Networks' (ILSVRC-2014) page, "
        "https://www.robots.ox.ac.uk/~vgg/research/very_deep/",
        "VGG_ILSVRC_19_layers.caffemodel",
    ),
    "vggface": (
        "the Oxford VGG Face descriptor page, "
        "https://www.robots.ox.ac.uk/~vgg/software/vgg_face/",
        "VGG_FACE.caffemodel",
    ),
}

DEFAULT_WEIGHTS = {"vgg19": "weights/vgg19.pt", "vggface": "weights/vggface.pt"}


class VGGWeightsError(ValueError):
    """A weights file exists but is not a converted VGG file for the requested arch."""


def _check_arch(arch):
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown VGG arch {arch!r}; expected one of {sorted(ARCHITECTURES)}")


def layer_names(arch):
    """All trunk layer names of ``arch`` in forward order, Caffe style."""
    _check_arch(arch)
    names = []
    for block, n_convs in enumerate(ARCHITECTURES[arch], start=1):
        for i in range(1, n_convs + 1):
            names += [f"conv{block}_{i}", f"relu{block}_{i}"]
        names.append(f"pool{block}")
    return names


def conv_shapes(arch):
    """Ordered ``{conv name: (weight shape, bias shape)}`` of the whole trunk of ``arch``."""
    _check_arch(arch)
    shapes = OrderedDict()
    in_channels = 3
    for block, (n_convs, channels) in enumerate(zip(ARCHITECTURES[arch], BLOCK_CHANNELS), start=1):
        for i in range(1, n_convs + 1):
            shapes[f"conv{block}_{i}"] = ((channels, in_channels, 3, 3), (channels,))
            in_channels = channels
    return shapes


def convert_command(arch, out=None):
    """The shell command that converts the original Caffe weights of ``arch`` to ``out``."""
    _check_arch(arch)
    return (
        f"python vgg_model/convert_model.py --arch {arch} "
        f"--caffemodel {WEIGHT_SOURCES[arch][1]} --out {out or DEFAULT_WEIGHTS[arch]}"
    )


def check_preprocess(preprocess):
    """Validate a preprocess dict and return a normalised copy (floats, upper-case order)."""
    if not isinstance(preprocess, dict):
        raise ValueError(f"preprocess must be a dict, got {type(preprocess).__name__}")
    missing = {"channel_order", "scale", "mean", "std"} - set(preprocess)
    if missing:
        raise ValueError(f"preprocess dict lacks {sorted(missing)}: {preprocess!r}")
    order = str(preprocess["channel_order"]).upper()
    if order not in ("RGB", "BGR"):
        raise ValueError(f"preprocess channel_order must be 'RGB' or 'BGR', got {order!r}")
    mean = [float(v) for v in preprocess["mean"]]
    std = [float(v) for v in preprocess["std"]]
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ValueError(f"preprocess needs 3 means and 3 positive stds, got {preprocess!r}")
    return {"channel_order": order, "scale": float(preprocess["scale"]), "mean": mean, "std": std}


class VGGFeatures(nn.Module):
    """VGG convolutional trunk that returns activations at named Caffe layers.

    Built from the layout table up to and including ``last_layer``.  3x3 convs
    (padding 1) are followed by ReLUs and each block ends in a 2x2/2 max pool.
    Pools use ceil mode because Caffe rounds pooled sizes up; on the even sizes
    images normally have the result is the same as floor mode.

    ``preprocess`` is the normalisation the weights were trained with (see the
    ``*_PREPROCESS`` constants); :meth:`forward` applies it to images in the
    framework's convention (RGB, [-1, 1], NCHW).
    """

    def __init__(self, arch: str, preprocess: dict, last_layer: str = "relu5_1"):
        super().__init__()
        all_names = layer_names(arch)
        if last_layer not in all_names:
            raise ValueError(f"unknown last_layer {last_layer!r} for {arch}; valid names: {', '.join(all_names)}")
        self.arch = arch
        self.last_layer = last_layer
        self.layer_names = all_names[: all_names.index(last_layer) + 1]

        shapes = conv_shapes(arch)
        for name in self.layer_names:
            if name.startswith("conv"):
                (out_ch, in_ch, kh, _), _ = shapes[name]
                module = nn.Conv2d(in_ch, out_ch, kernel_size=kh, padding=kh // 2)
            elif name.startswith("relu"):
                # Not in-place: the conv output may itself be a requested activation.
                module = nn.ReLU()
            else:
                module = nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True)
            self.add_module(name, module)

        self.preprocess_config = check_preprocess(preprocess)
        self.bgr = self.preprocess_config["channel_order"] == "BGR"
        self.scale = self.preprocess_config["scale"]
        mean = torch.tensor(self.preprocess_config["mean"], dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(self.preprocess_config["std"], dtype=torch.float32).view(1, 3, 1, 1)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)

    def preprocess(self, x):
        """Map RGB images in [-1, 1] to the network's input space.

        [-1, 1] -> [0, 1] -> channel order of the weights -> * scale -> (x - mean) / std.
        """
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected NCHW images with 3 channels, got shape {tuple(x.shape)}")
        x = (x + 1.0) * 0.5
        if self.bgr:
            x = x.flip(1)
        return (x * self.scale - self.mean) / self.std

    def forward_preprocessed(self, x, layers):
        """Like :meth:`forward` for inputs already in the network's input space."""
        wanted = self._check_layers(layers)
        if not wanted:
            return []
        deepest = max(self.layer_names.index(name) for name in wanted)
        found = {}
        for name in self.layer_names[: deepest + 1]:
            x = getattr(self, name)(x)
            if name in wanted:
                found[name] = x
        return [found[name] for name in layers]

    def forward(self, x, layers):
        """Activations of RGB images ``x`` in [-1, 1] (NCHW) at ``layers``, in the order asked."""
        return self.forward_preprocessed(self.preprocess(x), layers)

    def _check_layers(self, layers):
        if isinstance(layers, str):
            raise ValueError(f"layers must be a list of names, got the string {layers!r}")
        wanted = set(layers)
        unknown = [name for name in layers if name not in self.layer_names]
        if unknown:
            raise ValueError(
                f"unknown layer {unknown[0]!r} for this {self.arch} trunk (built up to {self.last_layer}); "
                f"valid names: {', '.join(self.layer_names)}"
            )
        return wanted


def save_weights(path, arch, source, preprocess, state_dict):
    """Write a converted weights file atomically.

    The file is ``torch.save`` of a dict holding only str/int/float/list/dict
    and tensors, so :func:`load_vgg` can read it with ``weights_only=True``.
    It is written to a temporary file in the destination directory, fsynced
    and moved into place with ``os.replace`` so a crash never leaves a
    half-written file under the final name.
    """
    _check_arch(arch)
    payload = {
        "format": FORMAT_MARKER,
        "version": FORMAT_VERSION,
        "arch": arch,
        "source": source,
        "preprocess": check_preprocess(preprocess),
        "state_dict": {name: tensor.detach().cpu().contiguous() for name, tensor in state_dict.items()},
    }
    path = os.path.abspath(path)
    with atomic_file(path) as f:
        torch.save(payload, f)
    return path


def _conversion_hint(arch, out=None):
    return f"convert the original weights with: {convert_command(arch, out)}"


def _describe(obj):
    if isinstance(obj, dict):
        keys = list(obj)
        shown = ", ".join(repr(k) for k in keys[:5]) + (", ..." if len(keys) > 5 else "")
        return f"a dict with {len(keys)} keys ({shown})"
    return f"an object of type {type(obj).__name__}"


def load_vgg(path, arch, last_layer="relu5_1"):
    """Load a converted weights file into a frozen :class:`VGGFeatures` in eval mode.

    Checks the format marker, version and arch recorded by the converter and
    loads the conv weights up to ``last_layer`` strictly.
    """
    _check_arch(arch)
    path = os.fspath(path)
    if not os.path.isfile(path):
        where, filename = WEIGHT_SOURCES[arch]
        raise FileNotFoundError(
            f"VGG weights file {path!r} not found. Download {filename} from {where}, then "
            f"{_conversion_hint(arch, path)}"
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        # torch's own message suggests weights_only=False, which is exactly what
        # must not be done with an unknown file, so only its type is quoted.
        source = path if path.endswith(".caffemodel") else WEIGHT_SOURCES[arch][1]
        raise VGGWeightsError(
            f"{path!r} is not a converted VGG weights file (torch.load(weights_only=True) failed with "
            f"{type(exc).__name__}). If it is the original Caffe model, convert it with: "
            f"python vgg_model/convert_model.py --arch {arch} --caffemodel {source} --out {DEFAULT_WEIGHTS[arch]}"
        ) from exc

    if not isinstance(payload, dict) or payload.get("format") != FORMAT_MARKER:
        hint = _conversion_hint(arch)
        if isinstance(payload, dict) and any(str(k).startswith("features.") for k in payload):
            hint = (
                "it looks like a torchvision state dict; convert it with: python vgg_model/convert_model.py "
                f"--arch {arch} --torchvision {path} --out {DEFAULT_WEIGHTS[arch]}"
            )
        raise VGGWeightsError(
            f"{path!r} is not a converted VGG weights file: expected a dict with format={FORMAT_MARKER!r}, "
            f"found {_describe(payload)}; {hint}"
        )
    version = payload.get("version")
    if version != FORMAT_VERSION:
        raise VGGWeightsError(
            f"{path!r} has weights-file version {version!r}, this code reads version {FORMAT_VERSION}; "
            f"re-run the converter: {convert_command(arch)}"
        )
    if payload.get("arch") != arch:
        raise VGGWeightsError(
            f"{path!r} holds {payload.get('arch')!r} weights but {arch!r} was requested; "
            f"point the config at the {arch} file or {_conversion_hint(arch)}"
        )

    model = VGGFeatures(arch, payload["preprocess"], last_layer=last_layer)
    state = payload["state_dict"]
    expected = model.state_dict()
    missing = [key for key in expected if key not in state]
    if missing:
        raise VGGWeightsError(f"{path!r} lacks {missing} needed up to {last_layer}; {_conversion_hint(arch)}")
    for key, tensor in expected.items():
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise VGGWeightsError(
                f"{path!r}: {key} has shape {tuple(state[key].shape)}, expected {tuple(tensor.shape)}"
            )
    model.load_state_dict({key: state[key] for key in expected}, strict=True)
    model.eval()
    model.requires_grad_(False)
    return model
