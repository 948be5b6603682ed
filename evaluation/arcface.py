"""CSIM with ArcFace, the protocol published numbers use (bilayer-model's ``losses/csim.py``, SPEC section 3).

Per face: five points from the 68 iBUG landmarks (eye centres = means of 36-41 and 42-47, nose tip 30, mouth
corners 48 and 54), a least-squares similarity (Umeyama) onto insightface's standard 112x112 template, the warped
crop through an ArcFace network, and the cosine of the two embeddings.  As in bilayer-model, a generated frame is
aligned with the landmarks it was *driven* by, not with landmarks detected on it, so a generated face that lands
in the wrong place scores lower instead of being re-centred.

The network is the user's file; nothing is downloaded:

* an insightface ONNX model (``w600k_r50.onnx`` of the ``buffalo_l`` pack, ``glintr100.onnx``, ...), run by
  onnxruntime.  Its input scaling follows insightface's own rule: a graph whose first nodes subtract and multiply
  normalises by itself and takes RGB 0..255; any other takes (x - 127.5) / 127.5.
* an IR-SE50 state dict in the InsightFace_Pytorch layout (``model_ir_se50.pth``, the file bilayer-model and
  pSp use), rebuilt here as ``IRSE50`` and fed RGB in [-1, 1].

    embedder = load_arcface("w600k_r50.onnx")
    embeddings = embedder.embed(images_uint8, five_points(points68))    # (N, 512)
"""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from inference.adapt import fit_similarity
from utils.safe_load import load_tensors

ARCFACE_SIZE = 112
# insightface's standard template (x, y) in the 112x112 crop: right eye, left eye, nose tip, right and left
# mouth corner (the subject's sides; the right eye is on the image's left).
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                             [41.5493, 92.3655], [70.7299, 92.2041]], np.float64)
RIGHT_EYE, LEFT_EYE, NOSE_TIP, RIGHT_MOUTH, LEFT_MOUTH = range(36, 42), range(42, 48), 30, 48, 54

SOURCES = ("an ArcFace network: insightface's ONNX models (e.g. w600k_r50.onnx in the buffalo_l model pack "
           "of the insightface project's model zoo, run with onnxruntime) or an IR-SE50 state dict "
           "(model_ir_se50.pth of the InsightFace_Pytorch project, the file bilayer-model's CSIM uses)")
# How many leading graph nodes insightface inspects for built-in input normalisation.
_NORMALISING_NODES = 8


def five_points(points68: np.ndarray) -> np.ndarray:
    """(N, 68, 2) or (68, 2) iBUG landmarks -> (N, 5, 2) or (5, 2) ArcFace alignment points (template order)."""
    points = np.asarray(points68, np.float64)
    if points.shape[-2:] != (68, 2):
        raise ValueError(f"expected (..., 68, 2) landmarks, got {points.shape}")
    return np.stack([points[..., list(RIGHT_EYE), :].mean(-2), points[..., list(LEFT_EYE), :].mean(-2),
                     points[..., NOSE_TIP, :], points[..., RIGHT_MOUTH, :], points[..., LEFT_MOUTH, :]], axis=-2)


def five_points_from_mesh(vertices: np.ndarray) -> np.ndarray:
    """(N, V, 3) face meshes (``dataset.face3d``) -> (N, 5, 2) alignment points: the centres of the two eye
    openings, the vertex nearest the camera on the mean face (nose tip) and the outermost vertices of the mouth
    opening.  Derived from the mesh asset, so any topology with its asset works."""
    from dataset.face3d import mesh

    mean = mesh.mean_face()
    mouth = mesh.region("mouth")
    right_corner, left_corner = mouth[np.argmin(mean[mouth, 0])], mouth[np.argmax(mean[mouth, 0])]
    xy = np.asarray(vertices, np.float64)[..., :2]
    return np.stack([xy[..., mesh.region("right_eye"), :].mean(-2), xy[..., mesh.region("left_eye"), :].mean(-2),
                     xy[..., int(np.argmin(mean[:, 2])), :], xy[..., right_corner, :], xy[..., left_corner, :]],
                    axis=-2)


def alignment_matrices(points5: np.ndarray) -> np.ndarray:
    """(N, 5, 2) image points -> (N, 2, 3) similarity matrices mapping image pixels onto the 112x112 template."""
    linear, translation = fit_similarity(np.asarray(points5, np.float64), ARCFACE_TEMPLATE)
    return np.concatenate([linear, translation[..., None]], axis=-1)


def align_faces(images_uint8: list[np.ndarray], points5: np.ndarray) -> np.ndarray:
    """RGB uint8 HxWx3 images and their (N, 5, 2) points -> (N, 112, 112, 3) uint8 aligned crops (black outside
    the image, bilinear, as insightface's ``norm_crop``)."""
    matrices = alignment_matrices(points5)
    if len(matrices) != len(images_uint8):
        raise ValueError(f"{len(images_uint8)} images but {len(matrices)} point sets")
    return np.stack([cv2.warpAffine(np.ascontiguousarray(image), matrix, (ARCFACE_SIZE, ARCFACE_SIZE),
                                    flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
                     for image, matrix in zip(images_uint8, matrices)]) if len(matrices) else \
        np.zeros((0, ARCFACE_SIZE, ARCFACE_SIZE, 3), np.uint8)


# ----------------------------------------------------------------------------------------------------------------
# IR-SE50 (Deng et al. 2019 ArcFace trunk with squeeze-excitation), InsightFace_Pytorch's key layout
# ----------------------------------------------------------------------------------------------------------------

# (units, output channels) per stage; the first unit of every stage halves the resolution: 112 -> 7.
IRSE50_STAGES = ((3, 64), (4, 128), (14, 256), (3, 512))
IRSE50_SE_REDUCTION = 16
EMBEDDING_DIM = 512


class _SqueezeExcite(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // IRSE50_SE_REDUCTION, 1, bias=False)
        self.fc2 = nn.Conv2d(channels // IRSE50_SE_REDUCTION, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean(dim=(2, 3), keepdim=True)))))


class _UnitIRSE(nn.Module):
    """Improved residual unit: BN -> 3x3 conv -> PReLU -> 3x3 conv (stride) -> BN -> SE, plus the shortcut."""

    def __init__(self, in_channels: int, channels: int, stride: int):
        super().__init__()
        # The names (shortcut_layer, res_layer) and the indices inside them are those of the published files.
        if in_channels == channels:
            self.shortcut_layer = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(nn.Conv2d(in_channels, channels, 1, stride, bias=False),
                                                nn.BatchNorm2d(channels))
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_channels), nn.Conv2d(in_channels, channels, 3, 1, 1, bias=False), nn.PReLU(channels),
            nn.Conv2d(channels, channels, 3, stride, 1, bias=False), nn.BatchNorm2d(channels),
            _SqueezeExcite(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


class IRSE50(nn.Module):
    """IR-SE50 ArcFace trunk: (N, 3, 112, 112) RGB in [-1, 1] -> (N, 512) unit-length embeddings."""

    def __init__(self):
        super().__init__()
        self.input_layer = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64))
        units, channels = [], 64
        for count, out in IRSE50_STAGES:
            for i in range(count):
                units.append(_UnitIRSE(channels, out, 2 if i == 0 else 1))
                channels = out
        self.body = nn.Sequential(*units)
        side = ARCFACE_SIZE // 2 ** len(IRSE50_STAGES)
        self.output_layer = nn.Sequential(nn.BatchNorm2d(channels), nn.Dropout(), nn.Flatten(),
                                          nn.Linear(channels * side * side, EMBEDDING_DIM),
                                          nn.BatchNorm1d(EMBEDDING_DIM))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.output_layer(self.body(self.input_layer(x))), dim=1)


# ----------------------------------------------------------------------------------------------------------------
# Embedders
# ----------------------------------------------------------------------------------------------------------------


class ArcFaceEmbedder:
    """Embeds aligned faces with an ArcFace network (ONNX session or IR-SE50 module); see ``load_arcface``."""

    name = "arcface"

    def __init__(self, run, mean: float, std: float, source: str, batch_size: int = 32):
        self._run, self.mean, self.std, self.source, self.batch_size = run, mean, std, source, batch_size

    def embed(self, images_uint8: list[np.ndarray], points5: np.ndarray) -> np.ndarray:
        """(N, 512) float64 embeddings of RGB uint8 images aligned by their (N, 5, 2) points."""
        if points5 is None:
            raise ValueError("ArcFace needs each face's five alignment points")
        crops = align_faces(images_uint8, points5).astype(np.float32)
        blob = ((crops - self.mean) / self.std).transpose(0, 3, 1, 2)          # Nx3x112x112 RGB
        chunks = [self._run(np.ascontiguousarray(blob[i:i + self.batch_size]))
                  for i in range(0, len(blob), self.batch_size)]
        return np.concatenate(chunks).astype(np.float64) if chunks else np.zeros((0, EMBEDDING_DIM))


def load_arcface(path: str | os.PathLike, device: str = "cpu") -> ArcFaceEmbedder:
    """An ArcFace embedder from an insightface ONNX model (``.onnx``) or an IR-SE50 state dict (``.pth``/``.pt``).

    FileNotFoundError says where such files come from; ValueError (or ``UnsafeOrDamagedFile``) names what is
    wrong with a file that is not one of the two.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ArcFace model not found: {path}. Pass {SOURCES} with --arcface FILE "
                                "(without it CSIM uses dlib's offline network and is named csim_dlib)")
    if path.suffix.lower() == ".onnx":
        return _load_onnx(path)
    return _load_irse50(path, device)


def _load_onnx(path: Path) -> ArcFaceEmbedder:
    try:
        import onnxruntime
    except ImportError:
        raise ValueError(f"{path} is an ONNX model and needs onnxruntime: pip install onnxruntime") from None
    try:
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own exception types for every kind of bad file
        raise ValueError(f"{path} is not a loadable ONNX model ({str(err).splitlines()[0][:160]})") from None
    (model_input,), output = session.get_inputs(), session.get_outputs()[0].name
    shape = model_input.shape
    if len(shape) != 4 or shape[1] != 3 or tuple(shape[2:]) != (ARCFACE_SIZE, ARCFACE_SIZE):
        raise ValueError(f"{path}: input {model_input.name} has shape {shape}; an ArcFace model takes "
                         f"(N, 3, {ARCFACE_SIZE}, {ARCFACE_SIZE})")
    normalises = onnx_normalises_input(path)
    return ArcFaceEmbedder(lambda blob: session.run([output], {model_input.name: blob})[0],
                           *((0.0, 1.0) if normalises else (127.5, 127.5)), source=f"{path} (onnxruntime)")


def _load_irse50(path: Path, device: str) -> ArcFaceEmbedder:
    state = load_tensors(path, "ArcFace IR-SE50 state dict")
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, expected an IR-SE50 state dict")
    # Files saved from DataParallel prefix every key with "module.".
    state = {key.removeprefix("module."): value for key, value in state.items()}
    model = IRSE50()
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{path} is not an IR-SE50 state dict (InsightFace_Pytorch layout): missing keys "
                         f"{missing[:4]}, unexpected keys {unexpected[:4]}; expected {SOURCES}")
    wrong = [key for key in expected if tuple(state[key].shape) != tuple(expected[key].shape)]
    if wrong:
        raise ValueError(f"{path}: {wrong[0]} has shape {tuple(state[wrong[0]].shape)}, IR-SE50 has "
                         f"{tuple(expected[wrong[0]].shape)}")
    model.load_state_dict(state)
    model = model.to(device).eval().requires_grad_(False)

    def run(blob: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(blob).to(device)).cpu().numpy()

    # The InsightFace_Pytorch models were trained on RGB normalised with mean 0.5, std 0.5: [-1, 1].
    return ArcFaceEmbedder(run, 127.5, 127.5, source=f"{path} (IR-SE50)")


def onnx_first_nodes(path: str | os.PathLike, count: int) -> list[tuple[str, str]]:
    """(name, op_type) of the first ``count`` nodes of an ONNX model's graph (onnxruntime does not expose it)."""
    import onnx

    try:
        model = onnx.load(os.fspath(path), load_external_data=False)
    except Exception as err:  # protobuf's DecodeError and onnx's own errors have no common base
        raise ValueError(f"{path} is not a readable ONNX model ({str(err).splitlines()[0][:160]})") from None
    return [(node.name, node.op_type) for node in model.graph.node[:count]]


def onnx_normalises_input(path: str | os.PathLike) -> bool:
    """insightface's test for a model that scales its own input: a subtraction and a multiplication among the
    first 8 nodes of the graph (by operator type, or by the names mxnet-converted models give them)."""
    kinds = set()
    for name, op_type in onnx_first_nodes(path, _NORMALISING_NODES):
        if op_type == "Sub" or name.startswith(("Sub", "_minus")):
            kinds.add("sub")
        if op_type == "Mul" or name.startswith(("Mul", "_mul")):
            kinds.add("mul")
    return kinds == {"sub", "mul"}
