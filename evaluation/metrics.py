"""Image-quality and identity metrics of the paper's evaluation protocol (Zakharov et al. 2019, Sec. 4).

FID, SSIM and CSIM are the paper's metrics; PSNR and AKD (average keypoint distance) are the common extras.
Images are float tensors (N, 3, H, W) in [-1, 1], the framework's convention; every metric maps them to
[0, 1] (clamped, as when they are saved to uint8) or to RGB uint8 first, so numbers are on the scales other
papers report.  Per-image metrics return (N,) tensors; average them over a test set yourself.

    ssim(fake, real).mean(); psnr(fake, real).mean()
    csim(fake, real, FaceEmbedder()).mean()
    fid(real_features, fake_features)   # pool3 features of evaluation.inception.load_fid_inception
"""
from __future__ import annotations

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F

from dataset.landmarks import face_recognition_model_path

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_C1 = 0.01 ** 2
SSIM_C2 = 0.03 ** 2
# PSNR of identical images is infinite; it is capped here so that means over a test set stay finite.
# 100 dB is an MSE of 1e-10 on [0, 1] images, far below one uint8 level.
PSNR_CAP_DB = 100.0
# Diagonal offset for the covariance square root when S1 S2 is singular (fewer samples than dimensions).
FRECHET_EPS = 1e-6
# Imaginary parts of sqrtm's result above this are not round-off but a sign of broken statistics.
FRECHET_IMAG_TOLERANCE = 1e-3


def _check_pair(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape or a.dim() != 4:
        raise ValueError(f"expected two (N, C, H, W) image batches of the same shape, got {tuple(a.shape)} "
                         f"and {tuple(b.shape)}")


def _to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1] in float64, clamped like a saved image (float64 so the metrics match skimage's)."""
    return ((images.detach().to(torch.float64) + 1) / 2).clamp(0, 1)


def _gaussian_window(channels: int) -> torch.Tensor:
    """The 11x11, sigma 1.5 SSIM window (Wang et al. 2004) as a depthwise conv kernel (channels, 1, 11, 11)."""
    offsets = torch.arange(SSIM_WINDOW, dtype=torch.float64) - (SSIM_WINDOW - 1) / 2
    profile = torch.exp(-offsets ** 2 / (2 * SSIM_SIGMA ** 2))
    profile = profile / profile.sum()
    return torch.outer(profile, profile).expand(channels, 1, SSIM_WINDOW, SSIM_WINDOW).contiguous()


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N,) structural similarity of each image pair, the convention of the paper's protocol.

    11x11 Gaussian window with sigma 1.5, C1 = 0.01^2 and C2 = 0.03^2 on [0, 1] images, population (not
    sample) covariances, averaged over the pixels whose window lies inside the image and over the channels.
    This equals ``skimage.metrics.structural_similarity(..., gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=1.0, channel_axis=-1)``.
    """
    _check_pair(a, b)
    if min(a.shape[-2:]) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW}, got {tuple(a.shape[-2:])}")
    x, y = _to_unit_range(a), _to_unit_range(b)
    window = _gaussian_window(x.shape[1])

    def local_mean(image: torch.Tensor) -> torch.Tensor:
        # No padding: only windows fully inside the image count, as skimage crops its border.
        return F.conv2d(image, window, groups=image.shape[1])

    mu_x, mu_y = local_mean(x), local_mean(y)
    var_x = local_mean(x * x) - mu_x ** 2
    var_y = local_mean(y * y) - mu_y ** 2
    cov_xy = local_mean(x * y) - mu_x * mu_y
    similarity = ((2 * mu_x * mu_y + SSIM_C1) * (2 * cov_xy + SSIM_C2)
                  / ((mu_x ** 2 + mu_y ** 2 + SSIM_C1) * (var_x + var_y + SSIM_C2)))
    return similarity.mean(dim=(1, 2, 3)).to(torch.float32)


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N,) peak signal-to-noise ratio in dB of each image pair on [0, 1] images (peak 1).

    Identical images give ``PSNR_CAP_DB`` (100 dB) instead of infinity.
    """
    _check_pair(a, b)
    mse = ((_to_unit_range(a) - _to_unit_range(b)) ** 2).mean(dim=(1, 2, 3))
    return (10 * torch.log10(1 / mse)).clamp(max=PSNR_CAP_DB).to(torch.float32)


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and covariance (D, D) of (N, D) features, the Gaussian that FID fits to each image set."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"expected (N, D) features with N >= 2, got shape {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def _covariance_sqrt(sigma1: np.ndarray, sigma2: np.ndarray) -> np.ndarray:
    """sqrt(S1 S2), offsetting both diagonals by ``FRECHET_EPS`` when the product is singular."""
    root = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(root).all():
        offset = FRECHET_EPS * np.eye(sigma1.shape[0])
        root = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(root):
        # sqrtm of a product of PSD matrices is real up to round-off; a large imaginary part means bad input.
        worst = np.abs(root.imag).max()
        if worst > FRECHET_IMAG_TOLERANCE:
            raise ValueError(f"covariance square root has an imaginary part of {worst:.3g}; "
                             "are the covariances symmetric positive semi-definite?")
        root = root.real
    return root


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance between N(mu1, S1) and N(mu2, S2): ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 sqrt(S1 S2)).

    The closed form of Dowson & Landau (1982) that FID (Heusel et al. 2017) applies to Inception features.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise ValueError(f"mismatched statistics: means {mu1.shape}, {mu2.shape}; "
                         f"covariances {sigma1.shape}, {sigma2.shape}")
    difference = mu1 - mu2
    distance = difference @ difference + np.trace(sigma1 + sigma2 - 2 * _covariance_sqrt(sigma1, sigma2))
    # Round-off can take the distance of (nearly) identical statistics a hair below zero.
    return max(float(distance), 0.0)


def fid(real_features: np.ndarray, fake_features: np.ndarray) -> float:
    """Fréchet Inception Distance between two (N, 2048) sets of pool3 features (lower is better)."""
    return frechet_distance(*gaussian_stats(real_features), *gaussian_stats(fake_features))


def to_uint8(images: torch.Tensor) -> list[np.ndarray]:
    """(N, 3, H, W) images in [-1, 1] -> list of N RGB uint8 (H, W, 3) arrays (clamped, rounded)."""
    scaled = ((images.detach().to(torch.float32).cpu().clamp(-1, 1) + 1) * 127.5).round()
    return list(scaled.to(torch.uint8).permute(0, 2, 3, 1).numpy())


class FaceEmbedder:
    """dlib's face-recognition ResNet (128-d embeddings, King 2017), the offline identity network for CSIM.

    The paper's CSIM uses an ArcFace-type network; dlib's ships with ``face-recognition-models`` and runs on CPU
    without downloads, so CSIM values here are on dlib's scale (different people still score about 0.88), not
    comparable to published numbers.  Each image is a face crop: dlib's 5-point predictor runs in the face box
    ``face_box`` (fractions x0, y0, x1, y1 of the crop's width and height), and ``dlib.get_face_chip`` aligns
    the face to dlib's 150x150 input.  Models load on first use.

    The default box is where dlib's own detector puts the face in the framework's crops (``crop_box``: 1.8x the
    landmarks' box, raised by 10%).  The predictor is trained on detector boxes, and on the whole crop its eye
    points drift by ~15 px, enough to drop the CSIM of an image and its lightly noised copy from 0.999 to 0.96.
    Pass ``face_box=(0, 0, 1, 1)`` for tight crops.
    """

    name = "dlib"
    CHIP_SIZE = 150
    CHIP_PADDING = 0.25
    FACE_BOX = (0.2, 0.25, 0.8, 0.85)

    def __init__(self, face_box: tuple[float, float, float, float] = FACE_BOX):
        self.face_box = tuple(face_box)
        self._predictor = None
        self._network = None

    def _load(self) -> None:
        import dlib

        predictor = face_recognition_model_path("shape_predictor_5_face_landmarks.dat")
        network = face_recognition_model_path("dlib_face_recognition_resnet_model_v1.dat")
        self._predictor = dlib.shape_predictor(str(predictor))
        self._network = dlib.face_recognition_model_v1(str(network))

    def _chip(self, image: np.ndarray) -> np.ndarray:
        import dlib

        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an RGB uint8 HxWx3 face crop, got {image.dtype} {image.shape}")
        image = np.ascontiguousarray(image)
        height, width = image.shape[:2]
        x0, y0, x1, y1 = self.face_box
        # dlib rectangles are inclusive, hence the -1 on the far corner.
        box = dlib.rectangle(int(round(x0 * width)), int(round(y0 * height)),
                             int(round(x1 * width)) - 1, int(round(y1 * height)) - 1)
        return dlib.get_face_chip(image, self._predictor(image, box), size=self.CHIP_SIZE,
                                  padding=self.CHIP_PADDING)

    def embed(self, images_uint8: list[np.ndarray], points5: np.ndarray | None = None) -> np.ndarray:
        """(N, 128) float64 embeddings of RGB uint8 HxWx3 face crops.

        ``points5`` (the ArcFace embedder's alignment points) is accepted and not used: dlib's network is only
        comparable with itself when it aligns with its own 5-point predictor, as it was trained.
        """
        if self._network is None:
            self._load()
        if len(images_uint8) == 0:
            return np.zeros((0, 128))
        chips = [self._chip(image) for image in images_uint8]
        return np.array([np.asarray(self._network.compute_face_descriptor(chip)) for chip in chips])


def csim(a: torch.Tensor, b: torch.Tensor, embedder, points5_a: np.ndarray | None = None,
         points5_b: np.ndarray | None = None) -> torch.Tensor:
    """(N,) cosine similarity of the face embeddings of generated ``a`` and real ``b`` (higher = same identity).

    ``embedder`` is ``FaceEmbedder`` (dlib) or ``evaluation.arcface.ArcFaceEmbedder``; the latter aligns each
    image by its (N, 5, 2) points (for a generated frame: those of the landmarks it was driven by).
    """
    _check_pair(a, b)
    return torch.from_numpy(cosine(embedder.embed(to_uint8(a), points5_a),
                                   embedder.embed(to_uint8(b), points5_b))).to(torch.float32)


def cosine(embed_a: np.ndarray, embed_b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two (N, D) embedding arrays (broadcasts a (1, D) side)."""
    embed_a, embed_b = np.asarray(embed_a, np.float64), np.asarray(embed_b, np.float64)
    norms = np.linalg.norm(embed_a, axis=-1) * np.linalg.norm(embed_b, axis=-1)
    return (embed_a * embed_b).sum(-1) / np.maximum(norms, 1e-12)


def landmark_distance(points_a: np.ndarray, points_b: np.ndarray) -> np.ndarray:
    """(N,) average keypoint distance (AKD): mean Euclidean pixel error over the (68) points of each pair.

    NaN where either side is missing (no face found, stored as all-NaN points).
    """
    points_a, points_b = np.asarray(points_a, np.float64), np.asarray(points_b, np.float64)
    if points_a.shape != points_b.shape or points_a.ndim != 3 or points_a.shape[2] != 2:
        raise ValueError(f"expected two (N, K, 2) point arrays of the same shape, got {points_a.shape} "
                         f"and {points_b.shape}")
    return np.linalg.norm(points_a - points_b, axis=2).mean(axis=1)
