"""Evaluation with the published protocols: FID, SSIM, PSNR, CSIM (ArcFace or dlib), AKD (FAN or dlib), LPIPS,
and the cross-reenactment metrics.

:mod:`evaluation.metrics` (image metrics, dlib CSIM), :mod:`evaluation.arcface` (ArcFace CSIM),
:mod:`evaluation.keypoints` (AKD, motion, jitter), :mod:`evaluation.temporal` (flicker), :mod:`evaluation.cross`
(pairs, identity and leakage), :mod:`evaluation.protocol` (what is generated), :mod:`evaluation.report` (CSV,
plots, HTML), :mod:`evaluation.inception` and :mod:`evaluation.lpips` (the FID and LPIPS networks).
"""

from evaluation.inception import FIDInceptionV3, load_fid_inception
from evaluation.metrics import (
    FaceEmbedder,
    cosine,
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
    "cosine",
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
