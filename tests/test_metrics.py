"""Evaluation metrics against reference implementations (skimage) and closed forms."""
from __future__ import annotations

import math

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
import scipy.ndimage
import skimage.data
import skimage.metrics
import torch

from evaluation.inception import FIDInceptionV3, load_fid_inception
from evaluation.metrics import (
    PSNR_CAP_DB,
    FaceEmbedder,
    csim,
    fid,
    frechet_distance,
    gaussian_stats,
    landmark_distance,
    psnr,
    ssim,
    to_uint8,
)


def _to_tensor(images: list[np.ndarray]) -> torch.Tensor:
    """[0, 1] float HxWx3 arrays -> (N, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() * 2 - 1


def _from_tensor(images: torch.Tensor) -> list[np.ndarray]:
    return list(((images.double() + 1) / 2).permute(0, 2, 3, 1).numpy())


def _skimage_ssim(x: np.ndarray, y: np.ndarray) -> float:
    return skimage.metrics.structural_similarity(x, y, gaussian_weights=True, sigma=1.5,
                                                 use_sample_covariance=False, data_range=1.0, channel_axis=-1)


def _astronaut_pairs() -> tuple[torch.Tensor, torch.Tensor]:
    """Two 96x96 crops of skimage's astronaut and, paired with them, a noised and a blurred version."""
    rng = np.random.default_rng(0)
    image = skimage.data.astronaut().astype(np.float64) / 255
    face, rocket = image[20:116, 160:256], image[250:346, 300:396]
    noisy = np.clip(face + rng.normal(0, 0.05, face.shape), 0, 1)
    blurred = scipy.ndimage.gaussian_filter(rocket, sigma=(2, 2, 0))
    return _to_tensor([face, rocket]), _to_tensor([noisy, blurred])


@pytest.mark.parametrize("source", ["random", "astronaut"])
def test_ssim_matches_skimage(source):
    if source == "random":
        generator = torch.Generator().manual_seed(0)
        a = torch.rand(3, 3, 40, 52, generator=generator) * 2 - 1
        b = (a + 0.3 * torch.randn(a.shape, generator=generator)).clamp(-1, 1)
    else:
        a, b = _astronaut_pairs()
    ours = ssim(a, b)
    reference = [_skimage_ssim(x, y) for x, y in zip(_from_tensor(a), _from_tensor(b))]
    assert ours.shape == (a.shape[0],)
    np.testing.assert_allclose(ours.numpy(), reference, atol=1e-3)
    assert torch.allclose(ssim(a, a), torch.ones(a.shape[0]), atol=1e-6)


def test_ssim_rejects_images_smaller_than_the_window():
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))


def test_psnr_matches_skimage_and_caps_identical_images():
    a, b = _astronaut_pairs()
    reference = [skimage.metrics.peak_signal_noise_ratio(x, y, data_range=1.0)
                 for x, y in zip(_from_tensor(a), _from_tensor(b))]
    np.testing.assert_allclose(psnr(b, a).numpy(), reference, rtol=1e-5)
    same = psnr(a, a)
    assert torch.isfinite(same).all() and torch.all(same == PSNR_CAP_DB)


def test_frechet_distance_closed_forms():
    # 1-D: (m1 - m2)^2 + s1^2 + s2^2 - 2 s1 s2 = (m1 - m2)^2 + (s1 - s2)^2.
    assert frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([3.0]), np.array([[9.0]])) == \
        pytest.approx(4.0 + 1.0)
    # Diagonal covariances: sum over dimensions of the 1-D case.
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    std1, std2 = np.array([1.0, 2.0, 3.0]), np.array([2.0, 2.0, 0.5])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((std1 - std2) ** 2)
    assert frechet_distance(mu1, np.diag(std1 ** 2), mu2, np.diag(std2 ** 2)) == pytest.approx(expected)
    rng = np.random.default_rng(0)
    features = rng.normal(size=(500, 6)) @ rng.normal(size=(6, 6))
    mu, sigma = gaussian_stats(features)
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-6)
    shift = np.arange(6.0)
    assert frechet_distance(mu, sigma, mu + shift, sigma) == pytest.approx(shift @ shift, rel=1e-6)


def test_fid_survives_singular_covariances():
    rng = np.random.default_rng(0)
    # Fewer samples than dimensions: both covariances are singular, as with small FID test sets.
    real, fake = rng.normal(size=(10, 32)), rng.normal(size=(10, 32)) + 1
    value = fid(real, fake)
    assert math.isfinite(value) and value > 32 * 0.5
    assert fid(real, real) == pytest.approx(0.0, abs=1e-3)


def test_gaussian_stats_matches_numpy():
    features = np.random.default_rng(0).normal(size=(20, 4))
    mu, sigma = gaussian_stats(features)
    np.testing.assert_allclose(mu, features.mean(axis=0))
    np.testing.assert_allclose(sigma, np.cov(features.T))
    with pytest.raises(ValueError, match="N >= 2"):
        gaussian_stats(features[:1])


def test_landmark_distance_on_known_points():
    points = np.zeros((3, 68, 2))
    moved = points.copy()
    moved[0] += [3.0, 4.0]
    moved[1, :34] += [0.0, 2.0]
    moved[2] = np.nan
    np.testing.assert_allclose(landmark_distance(points, moved), [5.0, 1.0, np.nan])
    assert np.isnan(landmark_distance(moved, points)[2])


def test_to_uint8_maps_the_range_ends():
    images = torch.tensor([-1.5, -1.0, 0.0, 1.0]).view(1, 1, 1, 4).expand(1, 3, 1, 4)
    (image,) = to_uint8(images)
    assert image.dtype == np.uint8 and image.shape == (1, 4, 3)
    assert image[0, :, 0].tolist() == [0, 0, 128, 255]


@pytest.fixture(scope="module")
def face_crops() -> dict[str, torch.Tensor]:
    """128x128 face crops (framework layout) of the astronaut, a noised copy and Grace Hopper, in [-1, 1]."""
    from dataset.landmarks import DlibDetector, crop_and_resize

    hopper = plt.imread(f"{matplotlib.get_data_path()}/sample_data/grace_hopper.jpg")
    detector = DlibDetector()
    crops = {}
    for name, image in (("astronaut", skimage.data.astronaut()), ("hopper", hopper)):
        (face, *_), = detector.detect([image])
        crops[name] = crop_and_resize(image, face.points, 128)[0].astype(np.float64) / 255
    noise = np.random.default_rng(0).normal(0, 0.02, crops["astronaut"].shape)
    crops["noisy"] = np.clip(crops["astronaut"] + noise, 0, 1)
    return {name: _to_tensor([crop]) for name, crop in crops.items()}


def test_csim_separates_identities(face_crops):
    embedder = FaceEmbedder()
    astronaut = face_crops["astronaut"]
    same = csim(astronaut, astronaut, embedder)
    noisy = csim(face_crops["noisy"], astronaut, embedder)
    other = csim(face_crops["hopper"], astronaut, embedder)
    assert same.shape == (1,) and same.item() == pytest.approx(1.0, abs=1e-5)
    # dlib's embeddings are not centred: different people still score ~0.88, the same face under noise ~0.99.
    assert noisy.item() > 0.97
    assert other.item() < noisy.item() - 0.05


def test_face_embedder_rejects_non_uint8():
    with pytest.raises(ValueError, match="uint8"):
        FaceEmbedder().embed([np.zeros((64, 64, 3), np.float32)])


def test_fid_inception_loads_the_pytorch_fid_layout(tmp_path):
    torch.manual_seed(0)
    state = FIDInceptionV3().state_dict()
    # The distributed file also holds the 1008-way classifier, which the feature network ignores.
    state["fc.weight"], state["fc.bias"] = torch.zeros(1008, 2048), torch.zeros(1008)
    for key in ("Conv2d_1a_3x3.conv.weight", "Mixed_5b.branch1x1.conv.weight", "Mixed_7c.branch_pool.bn.running_var"):
        assert key in state
    path = tmp_path / "inception.pth"
    torch.save(state, path)
    model = load_fid_inception(path)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    # Parameter count of Inception-v3 without its classifier and auxiliary head.
    assert sum(p.numel() for p in model.parameters()) == 21_785_568
    with torch.no_grad():
        features = model(torch.rand(1, 3, 64, 64) * 2 - 1)
    assert features.shape == (1, 2048) and torch.isfinite(features).all()


def test_fid_inception_rejects_a_foreign_state_dict(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="missing keys"):
        load_fid_inception(path)


def test_damaged_inception_weights_get_one_line(tmp_path):
    from utils.safe_load import UnsafeOrDamagedFile

    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(UnsafeOrDamagedFile, match="empty") as error:
        load_fid_inception(tmp_path / "empty.pth")
    assert len(str(error.value).splitlines()) == 1


def test_missing_inception_weights_say_where_to_get_them(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        load_fid_inception(tmp_path / "absent.pth")
    message = str(error.value)
    assert "pt_inception-2015-12-05-6726825d.pth" in message and "pytorch-fid" in message
    assert "--inception FILE" in message
