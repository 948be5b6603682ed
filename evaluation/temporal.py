"""Flicker of a generated video: what changes between consecutive frames that motion does not explain.

For each step t -> t+1 (frames resized to 256x256): dense optical flow both ways (OpenCV's Farneback on the grey
frames), frame t+1 warped back onto frame t along the forward flow, and the mean absolute RGB difference on
[0, 1] over the pixels whose flow is trustworthy (forward-backward consistent within ``CONSISTENCY_PX`` and
landing inside the frame: pixels that appear or disappear are left out).  A still video, or one whose content only
moves, scores about 0; texture that boils or colours that pulse score their amplitude.  ``raw`` is the same
difference without motion compensation, for comparison.  The driver's own frames, measured the same way, give
the level of a real video.
"""
from __future__ import annotations

import cv2
import numpy as np

from evaluation.keypoints import resize_to_protocol

# Farneback settings for 256x256 faces: 3 pyramid levels reach motions of ~30 px, a 15 px window smooths noise.
FARNEBACK = dict(pyr_scale=0.5, levels=3, winsize=15, iterations=3, poly_n=5, poly_sigma=1.2, flags=0)
CONSISTENCY_PX = 1.0


def _flow(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return cv2.calcOpticalFlowFarneback(a, b, None, **FARNEBACK)


def _warp(image: np.ndarray, flow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``image`` sampled at x + flow(x) (bilinear), and where that lies inside the image."""
    height, width = flow.shape[:2]
    grid_x, grid_y = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    map_x, map_y = grid_x + flow[..., 0], grid_y + flow[..., 1]
    inside = (map_x >= 0) & (map_x <= width - 1) & (map_y >= 0) & (map_y <= height - 1)
    return cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE), inside


def flicker(frames_uint8: list[np.ndarray]) -> dict:
    """{"flicker": motion-compensated mean absolute difference, "raw": uncompensated, "steps": count} over the
    consecutive frames of a video (RGB uint8, at least 2)."""
    if len(frames_uint8) < 2:
        raise ValueError(f"flicker needs at least 2 frames, got {len(frames_uint8)}")
    frames = [f.astype(np.float32) / 255 for f in resize_to_protocol(frames_uint8)]
    greys = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in resize_to_protocol(frames_uint8)]
    compensated, raw = [], []
    for t in range(len(frames) - 1):
        forward, backward = _flow(greys[t], greys[t + 1]), _flow(greys[t + 1], greys[t])
        warped, inside = _warp(frames[t + 1], forward)
        back_at_target, _ = _warp(backward, forward)
        consistent = np.linalg.norm(forward + back_at_target, axis=2) < CONSISTENCY_PX
        mask = inside & consistent
        difference = np.abs(warped - frames[t]).mean(axis=2)
        compensated.append(float(difference[mask].mean()) if mask.any() else float("nan"))
        raw.append(float(np.abs(frames[t + 1] - frames[t]).mean()))
    finite = [v for v in compensated if np.isfinite(v)]
    return {"flicker": float(np.mean(finite)) if finite else float("nan"), "raw": float(np.mean(raw)),
            "steps": len(raw)}
