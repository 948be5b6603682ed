"""Convert VGG19 / VGGFace weights to the framework's weights-file format.

Usage, from the repository root::

    python vgg_model/convert_model.py --arch vgg19 --caffemodel VGG_ILSVRC_19_layers.caffemodel --out weights/vgg19.pt
    python vgg_model/convert_model.py --arch vggface --caffemodel VGG_FACE.caffemodel --out weights/vggface.pt
    python vgg_model/convert_model.py --arch vgg19 --torchvision vgg19-dcbb9e9d.pth --out weights/vgg19_tv.pt

(``python -m vgg_model.convert_model ...`` works too.)  Caffe files are read
by :mod:`vgg_model.caffe`, so neither Caffe nor protobuf is needed;
torchvision ``.pth`` state dicts are read with ``torch.load(weights_only=True)``
and torchvision itself is not imported.  Every conv layer of the architecture
table is checked by name and shape; other layers are listed as skipped.
"""

import argparse
import os
import pickle
import sys
from collections import OrderedDict

if __package__ in (None, ""):
    # Run as a script: make the repository root importable.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from vgg_model.caffe import CaffeFormatError, read_caffemodel, read_prototxt_layer_names  # noqa: E402
from vgg_model.vgg import (  # noqa: E402
    ARCHITECTURES,
    CAFFE_PREPROCESS,
    TORCHVISION_IMAGENET_PREPROCESS,
    conv_shapes,
    save_weights,
)


class ConversionError(ValueError):
    """The source weights do not match the requested architecture."""


def _same_shape(found, expected):
    """Shapes match up to leading 1s, which Caffe's legacy 4-D blob sizes may add or drop."""

    def strip(shape):
        shape = list(shape)
        while len(shape) > 1 and shape[0] == 1:
            shape.pop(0)
        return shape

    return strip(found) == strip(expected)


def _check_shape(layer, what, found, expected):
    if not _same_shape(found, expected):
        raise ConversionError(f"layer {layer}: {what} has shape {tuple(found)}, expected {tuple(expected)}")


def _summarize_skipped(skipped):
    """One line per layer type: ``InnerProduct x3: fc6 [4096x25088, 4096], ...``."""
    by_type = OrderedDict()
    for name, layer_type, shapes in skipped:
        label = name + (" [" + ", ".join("x".join(map(str, s)) for s in shapes) + "]" if shapes else "")
        by_type.setdefault(layer_type or "untyped", []).append(label)
    return [f"  {layer_type} x{len(labels)}: {', '.join(labels)}" for layer_type, labels in by_type.items()]


def convert_caffe(arch, caffemodel, prototxt=None, log=print):
    """Read a ``.caffemodel`` and return the conv state dict of ``arch`` (Caffe names)."""
    shapes = conv_shapes(arch)
    net = read_caffemodel(caffemodel, layers=shapes)
    log(f"read {caffemodel}: network {net.name!r}, {len(net.layers)} layers, format {net.format}")

    by_name = {}
    for layer in net.layers:
        if layer.name in shapes and layer.name in by_name:
            raise ConversionError(f"layer {layer.name} appears twice in {caffemodel}")
        by_name.setdefault(layer.name, layer)

    missing = [name for name in shapes if name not in by_name]
    if missing:
        raise ConversionError(
            f"{caffemodel} lacks layer(s) {', '.join(missing)} of {arch}; "
            f"found layers: {', '.join(net.layer_names())}. Is it the right file for --arch?"
        )

    # VGG16 (VGGFace) conv names are a subset of VGG19's with identical shapes, so
    # extra conv layers are the only sign that a file belongs to the other arch.
    extra = [layer.name for layer in net.layers if layer.type == "Convolution" and layer.name not in shapes]
    if extra:
        others = [a for a in ARCHITECTURES if a != arch and set(conv_shapes(a)) >= set(shapes) | set(extra)]
        hint = f" (it looks like a {others[0]} file: use --arch {others[0]})" if others else ""
        raise ConversionError(f"{caffemodel} has conv layers that {arch} lacks: {', '.join(extra)}{hint}")

    state_dict = OrderedDict()
    for name, (weight_shape, bias_shape) in shapes.items():
        layer = by_name[name]
        if layer.type != "Convolution":
            raise ConversionError(f"layer {name} has type {layer.type!r}, expected 'Convolution'")
        if len(layer.blobs) != 2:
            raise ConversionError(f"layer {name} has {len(layer.blobs)} blobs, expected 2 (weight and bias)")
        weight, bias = layer.blobs
        _check_shape(name, "weight", weight.shape, weight_shape)
        _check_shape(name, "bias", bias.shape, bias_shape)
        state_dict[f"{name}.weight"] = torch.from_numpy(weight.reshape(weight_shape))
        state_dict[f"{name}.bias"] = torch.from_numpy(bias.reshape(bias_shape))

    skipped = [(layer.name, layer.type, layer.blob_shapes) for layer in net.layers if layer.name not in shapes]
    if skipped:
        log(f"skipped {len(skipped)} layers not in the {arch} conv trunk:")
        for line in _summarize_skipped(skipped):
            log(line)

    if prototxt is not None:
        _cross_check_prototxt(prototxt, net, shapes, log)
    return state_dict


def _cross_check_prototxt(prototxt, net, shapes, log):
    declared = read_prototxt_layer_names(prototxt)
    absent = [name for name in shapes if name not in declared]
    if absent:
        raise ConversionError(
            f"{prototxt} does not declare layer(s) {', '.join(absent)}: is it the prototxt of another network?"
        )
    undeclared = [layer.name for layer in net.layers if layer.blob_shapes and layer.name not in declared]
    if undeclared:
        log(f"note: layers with weights absent from {prototxt} (ignored): {', '.join(undeclared)}")
    log(f"prototxt {prototxt}: all {len(shapes)} conv layers declared")


def torchvision_feature_names(arch):
    """``{Caffe conv name: torchvision features index}`` for ``arch``.

    torchvision's VGG ``features`` is an ``nn.Sequential`` of conv, ReLU per
    conv and a max pool per block, so indices follow from the layout table.
    """
    mapping = OrderedDict()
    index = 0
    for block, n_convs in enumerate(ARCHITECTURES[arch], start=1):
        for i in range(1, n_convs + 1):
            mapping[f"conv{block}_{i}"] = index
            index += 2  # conv, ReLU
        index += 1  # max pool
    return mapping


def convert_torchvision(arch, path, log=print):
    """Read a torchvision-format VGG state dict and return the conv state dict (Caffe names)."""
    if arch != "vgg19":
        raise ConversionError(f"--torchvision supports only --arch vgg19 (torchvision has no {arch} weights)")
    try:
        source = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        raise ConversionError(f"{path} is not a loadable PyTorch state dict: {exc}") from exc
    if not isinstance(source, dict):
        raise ConversionError(f"{path} holds a {type(source).__name__}, expected a state dict")
    shapes = conv_shapes(arch)
    state_dict = OrderedDict()
    used = set()
    for name, index in torchvision_feature_names(arch).items():
        for param, expected in zip(("weight", "bias"), shapes[name]):
            key = f"features.{index}.{param}"
            if key not in source:
                raise ConversionError(f"{path} lacks {key} (Caffe layer {name}); is it a torchvision VGG19 state dict?")
            tensor = source[key]
            if not isinstance(tensor, torch.Tensor):
                raise ConversionError(f"{path}: {key} is a {type(tensor).__name__}, expected a tensor")
            _check_shape(f"{name} ({key})", param, tensor.shape, expected)
            state_dict[f"{name}.{param}"] = tensor.detach().to(torch.float32).reshape(expected).clone()
            used.add(key)
    skipped = sorted({key.rsplit(".", 1)[0] for key in source if key not in used})
    if skipped:
        log(f"skipped {len(skipped)} modules not in the {arch} conv trunk: {', '.join(skipped)}")
    return state_dict


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", required=True, choices=sorted(ARCHITECTURES))
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--caffemodel", help="binary Caffe weights (.caffemodel)")
    source.add_argument("--torchvision", help="torchvision-format VGG19 state dict (.pth)")
    parser.add_argument("--prototxt", help="optional deploy prototxt to cross-check layer names (Caffe input only)")
    parser.add_argument("--out", required=True, help="output weights file, e.g. weights/vgg19.pt")
    args = parser.parse_args(argv)
    if args.prototxt and not args.caffemodel:
        parser.error("--prototxt only applies to --caffemodel")
    return args


def main(argv=None):
    args = parse_args(argv)
    try:
        if args.caffemodel:
            state_dict = convert_caffe(args.arch, args.caffemodel, args.prototxt)
            source, preprocess = "caffe", CAFFE_PREPROCESS[args.arch]
        else:
            state_dict = convert_torchvision(args.arch, args.torchvision)
            source, preprocess = "torchvision", TORCHVISION_IMAGENET_PREPROCESS
        out = save_weights(args.out, args.arch, source, preprocess, state_dict)
    except (ConversionError, CaffeFormatError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    n_params = sum(t.numel() for t in state_dict.values())
    print(
        f"converted {args.arch} ({source}): {len(state_dict) // 2} conv layers "
        f"({next(iter(state_dict)).split('.')[0]} .. {next(reversed(state_dict)).split('.')[0]}), "
        f"{n_params:,} parameters -> {out}"
    )
    print(
        f"preprocessing: {preprocess['channel_order']}, scale {preprocess['scale']:g}, "
        f"mean {preprocess['mean']}, std {preprocess['std']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
