"""ArcFace CSIM: alignment onto insightface's template, and the loading of both published model forms.

No ArcFace weights can be downloaded here, so the ONNX path is tested with a small network built and exported
to ONNX in the test (with and without built-in input normalisation, the two kinds insightface distinguishes),
and the IR-SE50 path with randomly initialised weights saved in the InsightFace_Pytorch layout.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import skimage.data
import torch
from torch import nn

from evaluation.arcface import (ARCFACE_SIZE, ARCFACE_TEMPLATE, IRSE50, align_faces, alignment_matrices, five_points,
                                five_points_from_mesh, load_arcface, onnx_first_nodes, onnx_normalises_input)
from utils.safe_load import UnsafeOrDamagedFile


def _similarity(points: np.ndarray, scale: float, angle: float, shift) -> np.ndarray:
    rotation = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return points @ rotation.T + np.asarray(shift)


def test_five_points_are_the_eye_centres_nose_tip_and_mouth_corners():
    points = np.random.default_rng(0).uniform(0, 100, (2, 68, 2))
    five = five_points(points)
    assert five.shape == (2, 5, 2)
    np.testing.assert_allclose(five[:, 0], points[:, 36:42].mean(1))
    np.testing.assert_allclose(five[:, 1], points[:, 42:48].mean(1))
    np.testing.assert_allclose(five[:, 2:], points[:, [30, 48, 54]])


def test_alignment_puts_the_five_points_on_the_template():
    # Five points that are an exact similarity of the template land on it exactly.
    image_points = _similarity(ARCFACE_TEMPLATE, 1.7, 0.3, (40.0, -12.0))
    (matrix,) = alignment_matrices(image_points[None])
    mapped = np.c_[image_points, np.ones(5)] @ matrix.T
    np.testing.assert_allclose(mapped, ARCFACE_TEMPLATE, atol=1e-9)
    # In pixels: bright dots drawn at the five points appear at the template's positions after warping.
    image = np.zeros((256, 256, 3), np.uint8)
    for x, y in image_points:
        image[int(round(y)) - 2:int(round(y)) + 3, int(round(x)) - 2:int(round(x)) + 3] = 255
    (crop,) = align_faces([image], image_points[None])
    assert crop.shape == (ARCFACE_SIZE, ARCFACE_SIZE, 3)
    for x, y in ARCFACE_TEMPLATE:
        assert crop[int(round(y)), int(round(x))].min() > 100, (x, y)
    assert crop.mean() < 30  # and nothing else is bright


def test_mesh_points_match_the_landmark_points_on_a_real_face():
    """The five points from MediaPipe's mesh and from dlib's 68 landmarks agree on the astronaut (within a few
    pixels of a 256 px face crop)."""
    from dataset.face3d.backends import make_mesh_detector
    from dataset.landmarks import DlibDetector, crop_and_resize

    photo = skimage.data.astronaut()
    (face, *_), = DlibDetector().detect([photo])
    crop, points = crop_and_resize(photo, face.points, 256)
    (mesh,) = make_mesh_detector("mediapipe").detect([crop])
    difference = np.linalg.norm(five_points_from_mesh(mesh[None])[0] - five_points(points), axis=1)
    assert difference.max() < 8, difference


class _TinyFaceNet(nn.Module):
    """A small stand-in for an ArcFace network: 112x112 RGB in, a 16-d embedding out; optionally normalising its
    own 0..255 input inside the graph, as mxnet-converted insightface models do."""

    def __init__(self, normalise: bool):
        super().__init__()
        self.normalise = normalise
        self.features = nn.Sequential(nn.Conv2d(3, 8, 5, stride=4), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x):
        if self.normalise:
            x = (x - 127.5) * 0.0078125
        return self.features(x)


def _export(model: nn.Module, path) -> None:
    with warnings.catch_warnings():
        # torch >= 2.9 warns that this is the TorchScript-based exporter; it needs no onnx package.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, torch.zeros(1, 3, ARCFACE_SIZE, ARCFACE_SIZE), str(path), dynamo=False,
            input_names=["input.1"], output_names=["embedding"], dynamic_axes={"input.1": {0: "n"}})


@pytest.fixture(scope="module")
def faces():
    photo = skimage.data.astronaut()
    from dataset.landmarks import DlibDetector

    (face, *_), = DlibDetector().detect([photo])
    return [photo, photo[:, ::-1].copy()], five_points(np.stack([face.points, face.points]))


@pytest.mark.parametrize("normalise", [False, True])
def test_onnx_model_runs_with_insightfaces_input_scaling(tmp_path, faces, normalise):
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = _TinyFaceNet(normalise).eval()
    path = tmp_path / "tiny.onnx"
    _export(model, path)
    assert onnx_normalises_input(path) is normalise
    ops = [op for _, op in onnx_first_nodes(path, 8)]
    assert "Conv" in ops and ({"Sub", "Mul"} <= set(ops)) is normalise, ops
    embedder = load_arcface(path)
    assert (embedder.mean, embedder.std) == ((0.0, 1.0) if normalise else (127.5, 127.5))
    images, points = faces
    ours = embedder.embed(images, points)
    # The same network in torch on the same aligned crops, scaled the way insightface scales that kind of model.
    crops = torch.from_numpy(align_faces(images, points)).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        expected = model(crops if normalise else (crops - 127.5) / 127.5).numpy()
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-5)


def test_irse50_state_dict_in_the_published_layout_loads(tmp_path, faces):
    torch.manual_seed(0)
    network = IRSE50()
    # InsightFace_Pytorch's model_ir_se50.pth: 43.8M parameters, keys such as these.
    assert sum(p.numel() for p in network.parameters()) == 43_797_696
    state = network.state_dict()
    for key in ("input_layer.0.weight", "body.0.res_layer.5.fc1.weight", "body.3.shortcut_layer.0.weight",
                "output_layer.3.weight", "output_layer.4.running_var"):
        assert key in state, key
    path = tmp_path / "model_ir_se50.pth"
    torch.save({f"module.{k}": v for k, v in state.items()}, path)   # as saved from DataParallel
    embedder = load_arcface(path)
    images, points = faces
    embeddings = embedder.embed(images, points)
    assert embeddings.shape == (2, 512)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    # The same weights in the module built here give the same embedding: every key landed where it belongs.
    crops = torch.from_numpy(align_faces(images[:1], points[:1])).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        np.testing.assert_allclose(network.eval()(crops).numpy()[0], embeddings[0], atol=1e-5)


def test_arcface_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_arcface(tmp_path / "w600k_r50.onnx")
    message = str(info.value)
    assert "insightface" in message and "model_ir_se50.pth" in message and "--arcface" in message
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="not an IR-SE50 state dict"):
        load_arcface(tmp_path / "other.pth")
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(UnsafeOrDamagedFile, match="empty"):
        load_arcface(tmp_path / "empty.pth")
    (tmp_path / "bad.onnx").write_bytes(b"\x00not onnx")
    with pytest.raises(ValueError, match="not a loadable ONNX model"):
        load_arcface(tmp_path / "bad.onnx")
