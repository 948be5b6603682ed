"""Draws a grid of stored frames with their landmark images, to look at a dataset store before training on it.

    python -m dataset.inspect data/vox2_store --out grid.png [--videos 8] [--frames 4] [--split train]

One row per video (videos spread evenly over the index, so that different identities show), and per frame
three tiles: the crop, its landmark image (as the networks see it), and the landmarks drawn over the crop. The
row's ``identity/video`` and frame count are written on its first tile. Things to look for: a face centred with
forehead and chin inside the crop, landmarks on the face's features, the same person throughout a row, and the
part colours on the correct sides (the subject's right eye is red and sits on the image's left).

Run it as a module (``python -m``): as a script its folder would shadow the standard library's ``inspect``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from dataset.landmarks import draw_landmarks
from dataset.pipeline.videos import evenly_spaced
from dataset.store import load_index, read_frames, read_points, scaled_thickness

GAP = 4


def overlay(frame: np.ndarray, landmark_image: np.ndarray) -> np.ndarray:
    """The frame with the landmark image's drawn pixels painted over it."""
    out = frame.copy()
    drawn = landmark_image.any(axis=-1)
    out[drawn] = landmark_image[drawn]
    return out


def _label(tile: np.ndarray, text: str) -> np.ndarray:
    tile = tile.copy()
    scale = max(tile.shape[0] / 320, 0.3)
    (_, height), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 3)
    for color, width in (((0, 0, 0), 3), ((255, 255, 255), 1)):
        cv2.putText(tile, text, (4, height + 6), cv2.FONT_HERSHEY_SIMPLEX, scale, color, width, cv2.LINE_AA)
    return tile


def make_grid(root: Path, videos: int = 8, frames: int = 4, split: str | None = None,
              thickness: int = 2) -> np.ndarray:
    """The inspection grid of a store as an RGB uint8 image."""
    index = load_index(root)
    entries = [e for e in index["videos"] if split is None or e["split"] == split]
    if not entries:
        raise ValueError(f"{root}: no videos{f' in split {split}' if split else ''} to show")
    size = index["image_size"]
    width = scaled_thickness(thickness, size)
    blank = np.zeros((size, size, 3), np.uint8)
    rows = []
    for e in (entries[i] for i in evenly_spaced(len(entries), videos)):
        chosen = evenly_spaced(e["frames"], frames)
        images = read_frames(root / e["path"], index["encoding"], chosen)
        points = read_points(root / e["path"])[chosen]
        tiles = []
        for i in range(frames):
            if i < len(images):
                drawing = draw_landmarks(points[i], size, width)
                group = [images[i], drawing, overlay(images[i], drawing)]
            else:
                group = [blank] * 3
            tiles.append(np.concatenate(group, axis=1))
        tiles[0] = _label(tiles[0], f"{e['identity']}/{e['video']} ({e['frames']}, {e['split']})")
        spacer = np.full((size, GAP, 3), 64, np.uint8)
        row = [tiles[0]]
        for tile in tiles[1:]:
            row += [spacer, tile]
        rows.append(np.concatenate(row, axis=1))
    spacer = np.full((GAP, rows[0].shape[1], 3), 64, np.uint8)
    grid = [rows[0]]
    for row in rows[1:]:
        grid += [spacer, row]
    return np.concatenate(grid, axis=0)


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="python -m dataset.inspect", description=__doc__.split("\n")[0])
    parser.add_argument("root", type=Path, help="dataset store (written by extract_landmark.py)")
    parser.add_argument("--out", type=Path, default=Path("grid.png"), help="PNG to write (default grid.png)")
    parser.add_argument("--videos", type=int, default=8, help="rows: videos to show (default 8)")
    parser.add_argument("--frames", type=int, default=4, help="frames per video (default 4)")
    parser.add_argument("--split", choices=["train", "test"], default=None, help="show one split only")
    parser.add_argument("--thickness", type=int, default=2, help="landmark line width at 256x256 (default 2)")
    args = parser.parse_args(argv)
    grid = make_grid(args.root, args.videos, args.frames, args.split, args.thickness)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(args.out), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR)):
        raise OSError(f"cannot write {args.out}")
    print(f"wrote {args.out} ({grid.shape[1]}x{grid.shape[0]})")
    return args.out


if __name__ == "__main__":
    main()
