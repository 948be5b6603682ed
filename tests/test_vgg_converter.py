"""Tests for the VGG19 / VGGFace Caffe converter and feature extractor (vgg_model/).

Caffe models are synthesised by tests/caffe_writer.py with the real VGG conv
shapes and random He-initialised weights, in both Caffe layer formats, and
the converted networks are checked against an independent reader: OpenCV's
``cv2.dnn.readNetFromCaffe``.
"""

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import caffe_writer as cw
from vgg_model.caffe import CaffeFormatError, read_caffemodel, read_prototxt_layer_names
from vgg_model.convert_model import (
    ConversionError,
    convert_caffe,
    convert_torchvision,
    main,
    torchvision_feature_names,
)
from vgg_model.vgg import (
    ARCHITECTURES,
    CAFFE_VGG19_PREPROCESS,
    CAFFE_VGGFACE_PREPROCESS,
    TORCHVISION_IMAGENET_PREPROCESS,
    VGGFeatures,
    VGGWeightsError,
    conv_shapes,
    load_vgg,
    save_weights,
)

ROOT = Path(__file__).resolve().parents[1]

# 40x56 input: pool3 gives 5x7, so pool4/pool5 see odd sizes and exercise Caffe's
# ceil-mode pooling; non-square to catch transposed axes.
HEIGHT, WIDTH = 40, 56
COMPARE_LAYERS = ["relu1_1", "pool2", "relu3_2", "relu4_1", "relu5_1", "pool5"]
MEANS = {"vgg19": [103.939, 116.779, 123.68], "vggface": [93.5940, 104.7624, 129.1863]}


def random_weights(arch, seed=0, zeros=False):
    """{conv: (weight, bias)} with He-init weights so activations stay finite through the trunk."""
    rng = np.random.default_rng(seed)
    weights = {}
    for name, (weight_shape, bias_shape) in conv_shapes(arch).items():
        if zeros:
            weights[name] = (np.zeros(weight_shape, np.float32), np.zeros(bias_shape, np.float32))
            continue
        std = np.float32(np.sqrt(2.0 / (weight_shape[1] * 9)))
        weight = rng.standard_normal(weight_shape, dtype=np.float32) * std
        weights[name] = (weight, rng.standard_normal(bias_shape, dtype=np.float32) * np.float32(0.1))
    return weights


def write_model(directory, arch, layer_format="layer", packed=True, weights=None, fc8=True):
    """Write a VGG caffemodel and deploy prototxt; returns (caffemodel, prototxt, weights)."""
    weights = random_weights(arch) if weights is None else weights
    head = (np.full((10, 512 * 2 * 2), 0.5, np.float32), np.zeros(10, np.float32)) if fc8 else None
    layers = cw.vgg_layers(ARCHITECTURES[arch], weights, fc8=head)
    caffemodel = Path(directory) / f"{arch}_{layer_format}.caffemodel"
    prototxt = Path(directory) / f"{arch}_{layer_format}.prototxt"
    cw.write_caffemodel(caffemodel, layers, layer_format, packed)
    prototxt.write_text(cw.deploy_prototxt(layers, (1, 3, HEIGHT, WIDTH), layer_format))
    return caffemodel, prototxt, weights


def manual_caffe_blob(image, mean):
    """[-1, 1] RGB NCHW -> BGR, 0..255, mean-subtracted, written out independently of VGGFeatures."""
    bgr = image[:, ::-1]
    return np.ascontiguousarray((bgr + 1.0) / 2.0 * 255.0 - np.asarray(mean, np.float32)[None, :, None, None])


def assert_close(ours, reference, name, rel=2e-4):
    assert ours.shape == reference.shape, f"{name}: shape {ours.shape} vs OpenCV {reference.shape}"
    scale = float(np.abs(reference).max())
    assert np.isfinite(scale) and scale > 0, f"{name}: degenerate reference activations"
    err = float(np.abs(ours - reference).max())
    assert err <= rel * scale, f"{name}: max abs diff {err} vs activation scale {scale}"


def run_converter(how, args):
    """Run the converter in-process (``main``), as a script, or with ``python -m``."""
    if how == "main":
        return main(args)
    entry = ["vgg_model/convert_model.py"] if how == "script" else ["-m", "vgg_model.convert_model"]
    command = [sys.executable, *entry]
    env = {**os.environ, "PYTHONPATH": ""}
    result = subprocess.run(command + args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    print(result.stdout)
    print(result.stderr, file=sys.stderr)
    return result.returncode


@pytest.fixture(scope="module")
def vgg19_zero_model(tmp_path_factory):
    """A VGG19 caffemodel (zero weights, cheap to write) for the error tests."""
    return write_model(tmp_path_factory.mktemp("vgg19_zero"), "vgg19", weights=random_weights("vgg19", zeros=True))


@pytest.mark.parametrize(
    "arch, layer_format, packed, how",
    [
        ("vgg19", "layer", True, "main"),
        ("vgg19", "v1", True, "script"),
        ("vggface", "layer", False, "module"),
        ("vggface", "v1", False, "main"),
    ],
)
def test_converted_weights_match_opencv(tmp_path, capfd, arch, layer_format, packed, how):
    caffemodel, prototxt, weights = write_model(tmp_path, arch, layer_format, packed)
    n_values = sum(w.size + b.size for w, b in weights.values())
    if not packed:
        # One 5-byte (tag, float) record per value proves the floats really are unpacked.
        assert caffemodel.stat().st_size > 5 * n_values

    out = tmp_path / "weights" / f"{arch}.pt"
    args = ["--arch", arch, "--caffemodel", str(caffemodel), "--prototxt", str(prototxt), "--out", str(out)]
    assert run_converter(how, args) == 0
    printed = capfd.readouterr().out
    assert "InnerProduct x1: fc8" in printed and "Dropout x1: drop8" in printed and "ReLU x" in printed
    assert f"{n_values:,} parameters" in printed and str(out) in printed and "BGR" in printed
    assert os.listdir(out.parent) == [out.name], "temporary file left behind by the atomic write"

    payload = torch.load(out, map_location="cpu", weights_only=True)
    assert payload["format"] == "talkinghead-vgg" and payload["version"] == 1
    assert payload["arch"] == arch and payload["source"] == "caffe"
    assert payload["preprocess"]["mean"] == pytest.approx(MEANS[arch])
    assert list(payload["state_dict"]) == [f"{n}.{p}" for n in conv_shapes(arch) for p in ("weight", "bias")]
    for name, (weight, bias) in weights.items():
        assert np.array_equal(payload["state_dict"][f"{name}.weight"].numpy(), weight), name
        assert np.array_equal(payload["state_dict"][f"{name}.bias"].numpy(), bias), name
    del payload

    model = load_vgg(out, arch, last_layer="pool5")
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    net = cv2.dnn.readNetFromCaffe(str(prototxt), str(caffemodel))

    image = torch.rand(1, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(1)) * 2 - 1
    blob = manual_caffe_blob(image.numpy(), MEANS[arch])
    net.setInput(blob)
    reference = net.forward(COMPARE_LAYERS)
    with torch.no_grad():
        from_blob = model.forward_preprocessed(torch.from_numpy(blob), COMPARE_LAYERS)
        from_image = model(image, COMPARE_LAYERS)
    for name, ref, ours_blob, ours_image in zip(COMPARE_LAYERS, reference, from_blob, from_image):
        # Same input, so this checks the converted weights ...
        assert_close(ours_blob.numpy(), ref, name)
        # ... and this the [-1, 1] RGB -> Caffe BGR preprocessing.
        assert_close(ours_image.numpy(), ref, name)


def test_default_trunk_stops_at_relu5_1(tmp_path, vgg19_zero_model):
    caffemodel, _, _ = vgg19_zero_model
    out = tmp_path / "vgg19.pt"
    assert main(["--arch", "vgg19", "--caffemodel", str(caffemodel), "--out", str(out)]) == 0
    model = load_vgg(out, "vgg19")
    assert list(model.state_dict())[-2:] == ["conv5_1.weight", "conv5_1.bias"]
    image = torch.zeros(2, 3, 32, 32)
    outputs = model(image, ["relu5_1", "relu1_1", "pool3"])
    assert [tuple(o.shape) for o in outputs] == [(2, 512, 2, 2), (2, 64, 32, 32), (2, 256, 4, 4)]
    with pytest.raises(ValueError, match="conv5_2.*valid names.*relu1_1"):
        model(image, ["conv5_2"])
    with pytest.raises(ValueError, match="'relu9_9'"):
        model(image, ["relu1_1", "relu9_9"])


@pytest.mark.parametrize(
    "preprocess", [CAFFE_VGG19_PREPROCESS, CAFFE_VGGFACE_PREPROCESS, TORCHVISION_IMAGENET_PREPROCESS]
)
def test_preprocess_matches_manual(preprocess):
    model = VGGFeatures("vgg19", preprocess, last_layer="relu1_1")
    image = torch.rand(2, 3, 5, 7, generator=torch.Generator().manual_seed(0)) * 2 - 1
    x = (image.numpy() + 1) / 2
    if preprocess["channel_order"] == "BGR":
        x = x[:, ::-1]
    mean = np.asarray(preprocess["mean"], np.float32)[None, :, None, None]
    std = np.asarray(preprocess["std"], np.float32)[None, :, None, None]
    expected = (x * preprocess["scale"] - mean) / std
    np.testing.assert_allclose(model.preprocess(image).numpy(), expected, rtol=1e-5, atol=1e-4)
    assert set(model.state_dict()) == {"conv1_1.weight", "conv1_1.bias"}, "mean/std must not be persistent"


def test_torchvision_import(tmp_path, capsys):
    # torchvision's vgg19().features indices of the 16 convs.
    indices = [0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34]
    assert list(torchvision_feature_names("vgg19").values()) == indices
    generator = torch.Generator().manual_seed(0)
    source = {}
    for index, (weight_shape, bias_shape) in zip(indices, conv_shapes("vgg19").values()):
        source[f"features.{index}.weight"] = torch.randn(weight_shape, generator=generator) * 0.01
        source[f"features.{index}.bias"] = torch.randn(bias_shape, generator=generator)
    source["classifier.6.weight"] = torch.zeros(10, 20)
    source["classifier.6.bias"] = torch.zeros(10)
    pth = tmp_path / "vgg19-tv.pth"
    torch.save(source, pth)

    out = tmp_path / "vgg19_tv.pt"
    assert main(["--arch", "vgg19", "--torchvision", str(pth), "--out", str(out)]) == 0
    assert "classifier.6" in capsys.readouterr().out
    payload = torch.load(out, map_location="cpu", weights_only=True)
    assert payload["source"] == "torchvision" and payload["preprocess"] == TORCHVISION_IMAGENET_PREPROCESS
    state = payload["state_dict"]
    assert torch.equal(state["conv1_1.weight"], source["features.0.weight"])
    assert torch.equal(state["conv3_2.weight"], source["features.12.weight"])
    assert torch.equal(state["conv4_1.bias"], source["features.19.bias"])
    assert torch.equal(state["conv5_4.weight"], source["features.34.weight"])
    for name, index in zip(conv_shapes("vgg19"), indices):
        assert torch.equal(state[f"{name}.weight"], source[f"features.{index}.weight"]), name
    model = load_vgg(out, "vgg19")
    assert model.preprocess_config["channel_order"] == "RGB"

    with pytest.raises(ConversionError, match="only --arch vgg19"):
        convert_torchvision("vggface", str(pth))
    assert main(["--arch", "vggface", "--torchvision", str(pth), "--out", str(tmp_path / "face.pt")]) == 1
    with pytest.raises(VGGWeightsError, match="--torchvision"):
        load_vgg(pth, "vgg19")


def test_truncated_caffemodel(tmp_path, vgg19_zero_model, capsys):
    caffemodel, _, _ = vgg19_zero_model
    data = caffemodel.read_bytes()
    cut = tmp_path / "half.caffemodel"
    cut.write_bytes(data[: len(data) // 2])
    expected = r"truncated: field 100 \(layer\) .* byte offset \d+ runs past the end of the file \(size \d+\)"
    with pytest.raises(CaffeFormatError, match=expected):
        read_caffemodel(cut)
    assert main(["--arch", "vgg19", "--caffemodel", str(cut), "--out", str(tmp_path / "x.pt")]) == 1
    assert "truncated" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()


@pytest.mark.parametrize(
    "content, message",
    [
        (b"\x89PNG\r\n\x1a\n" + bytes(64), "PNG image"),
        (b"\xff\xd8\xff\xe0" + bytes(64), "JPEG image"),
        (b'name: "VGG"\nlayer { name: "conv1_1" }\n', "text file"),
        (b"", "empty"),
        (b"\x0a\x03abc\x18\x01", "no layers found"),
        (b"\x0a\x03abc\x0f\x00", "invalid wire type 7"),
    ],
)
def test_foreign_files(tmp_path, content, message):
    path = tmp_path / "foreign.caffemodel"
    path.write_bytes(content)
    with pytest.raises(CaffeFormatError, match=message):
        read_caffemodel(path)


def test_torch_checkpoint_is_not_a_caffemodel(tmp_path):
    path = tmp_path / "model.caffemodel"
    torch.save({"a": torch.zeros(3)}, path)
    with pytest.raises(CaffeFormatError, match="zip archive"):
        read_caffemodel(path)


def test_legacy_formats_rejected_clearly(tmp_path):
    v0 = cw.length_delimited(2, cw.length_delimited(1, cw.string(1, "conv1")))
    (tmp_path / "v0.caffemodel").write_bytes(v0)
    with pytest.raises(CaffeFormatError, match="V0 layer format"):
        read_caffemodel(tmp_path / "v0.caffemodel")
    mixed = cw.layer("a", "ReLU", layer_format="v1") + cw.layer("b", "ReLU")
    (tmp_path / "mixed.caffemodel").write_bytes(mixed)
    with pytest.raises(CaffeFormatError, match="both 'layer'"):
        read_caffemodel(tmp_path / "mixed.caffemodel")


def test_reader_layers_and_shapes(vgg19_zero_model):
    caffemodel, prototxt, _ = vgg19_zero_model
    net = read_caffemodel(caffemodel, layers={"conv1_1"})
    assert net.format == "layer" and net.name == "VGG_test"
    conv = net.layers[0]
    assert (conv.name, conv.type, conv.blob_shapes) == ("conv1_1", "Convolution", [(64, 3, 3, 3), (64,)])
    assert [b.shape for b in conv.blobs] == [(64, 3, 3, 3), (64,)] and conv.blobs[0].dtype == np.float32
    fc8 = next(layer for layer in net.layers if layer.name == "fc8")
    assert fc8.blobs == [] and fc8.blob_shapes == [(10, 2048), (10,)]
    assert read_prototxt_layer_names(prototxt)[:3] == ["conv1_1", "relu1_1", "conv1_2"]


def test_wrong_shape_names_the_layer(tmp_path):
    weights = random_weights("vgg19", zeros=True)
    weights["conv3_2"] = (np.zeros((256, 128, 3, 3), np.float32), np.zeros(256, np.float32))
    caffemodel, _, _ = write_model(tmp_path, "vgg19", "v1", weights=weights, fc8=False)
    expected = r"conv3_2: weight has shape \(256, 128, 3, 3\), expected \(256, 256, 3, 3\)"
    with pytest.raises(ConversionError, match=expected):
        convert_caffe("vgg19", caffemodel, log=lambda *_: None)


def test_missing_layer_and_wrong_arch_caffemodel(tmp_path, vgg19_zero_model):
    weights = random_weights("vgg19", zeros=True)
    layers = [layer for layer in cw.vgg_layers(ARCHITECTURES["vgg19"], weights) if layer[0] != "conv4_1"]
    path = tmp_path / "no_conv4_1.caffemodel"
    cw.write_caffemodel(path, layers)
    with pytest.raises(ConversionError, match="lacks layer.*conv4_1"):
        convert_caffe("vgg19", path, log=lambda *_: None)
    # VGGFace's conv names and shapes are a subset of VGG19's: only the extra convs give a VGG19 file away.
    caffemodel, _, _ = vgg19_zero_model
    with pytest.raises(ConversionError, match="conv3_4, conv4_4, conv5_4 .*--arch vgg19"):
        convert_caffe("vggface", caffemodel, log=lambda *_: None)


def test_prototxt_of_other_network_rejected(tmp_path, vgg19_zero_model):
    caffemodel, _, _ = vgg19_zero_model
    prototxt = tmp_path / "other.prototxt"
    prototxt.write_text('name: "other"\nlayer { name: "conv1_1" type: "Convolution" }  # only one conv\n')
    with pytest.raises(ConversionError, match="does not declare layer.*conv1_2"):
        convert_caffe("vgg19", caffemodel, prototxt, log=lambda *_: None)


@pytest.mark.parametrize(
    "arch, original", [("vgg19", "VGG_ILSVRC_19_layers.caffemodel"), ("vggface", "VGG_FACE.caffemodel")]
)
def test_missing_weights_file(tmp_path, arch, original):
    path = tmp_path / f"{arch}.pt"
    with pytest.raises(FileNotFoundError) as info:
        load_vgg(path, arch)
    message = str(info.value)
    assert f"python vgg_model/convert_model.py --arch {arch} --caffemodel {original} --out {path}" in message
    assert "Oxford VGG" in message


def test_weights_file_checks(tmp_path, vgg19_zero_model):
    face = tmp_path / "vggface.pt"
    state = VGGFeatures("vggface", CAFFE_VGGFACE_PREPROCESS).state_dict()
    save_weights(face, "vggface", "caffe", CAFFE_VGGFACE_PREPROCESS, state)
    assert load_vgg(face, "vggface").arch == "vggface"
    with pytest.raises(VGGWeightsError, match="holds 'vggface' weights but 'vgg19' was requested"):
        load_vgg(face, "vgg19")

    caffemodel, _, _ = vgg19_zero_model
    with pytest.raises(VGGWeightsError, match="not a converted VGG weights file.*convert_model.py --arch vgg19"):
        load_vgg(caffemodel, "vgg19")

    random_pth = tmp_path / "random.pth"
    torch.save({"encoder.weight": torch.zeros(2)}, random_pth)
    with pytest.raises(VGGWeightsError, match="found a dict with 1 keys .*'encoder.weight'.*convert_model.py"):
        load_vgg(random_pth, "vgg19")

    old = tmp_path / "old.pt"
    torch.save({"format": "talkinghead-vgg", "version": 99, "arch": "vgg19"}, old)
    with pytest.raises(VGGWeightsError, match="version 99"):
        load_vgg(old, "vgg19")
