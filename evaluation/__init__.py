"""Evaluation metrics of the paper's protocol (Sec. 4): FID, SSIM, CSIM, plus PSNR and AKD.

See :mod:`evaluation.metrics` for the metrics and :mod:`evaluation.inception` for the FID Inception network.
"""

from evaluation.inception import FIDInceptionV3, load_fid_inception
from evaluation.metrics import (
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

__all__ = [
    "FIDInceptionV3",
    "FaceEmbedder",
    "csim",
    "fid",
    "frechet_distance",
    "gaussian_stats",
    "landmark_distance",
    "load_fid_inception",
    "psnr",
    "ssim",
    "to_uint8",
]
