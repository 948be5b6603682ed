"""HeadGAN training pairs: a reference frame and a driving frame of one video, with their NMFC renders and audio.

HeadGAN (Doukas et al. 2021) is one-shot: the generator sees one reference image of the person with the render
of its own 3D face, the render of the driving face (same person, another frame of the video during training),
and the audio features of the driving frame; it must produce the driving frame. The store is the talking-head
store (``dataset/store.py``) with two more files per video:

    face3d.npz   the video's 3D face fit (identity averaged over the video; expression and pose per frame),
                 written by ``python -m dataset.face3d.extract_mesh STORE``
    audio.npy    per-frame log-mel windows, written by ``python -m dataset.audio STORE --videos ROOT``;
                 optional: a video without it trains with its audio switched off (``has_audio`` False)

Renders are drawn when an item is read (like the landmark images of the talking-head model), from the compact
per-frame fit: about 3 KB a frame on disk instead of an image. The mouth centre, for the mouth discriminator's
crop, is the mean of the stored 68-point landmarks' lips (points 48-67).
"""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from dataset.audio import AUDIO_FILE, read_audio_features
from dataset.face3d.fit import FACE3D_FILE, FaceFit, read_face3d
from dataset.face3d.render import render_nmfc
from dataset.store import (DamagedVideoError, StoreError, VideoTable, load_index, read_frames, read_points,
                           read_skipping_damaged, resize_sample, to_images_tensor)

LIPS = slice(48, 68)


def read_headgan_arrays(folder: Path, frames: int, audio: bool = True,
                        face3d: bool = True) -> tuple[FaceFit | None, np.ndarray | None]:
    """A video's 3D face fit (None with ``face3d`` off) and audio features (None without audio, or with ``audio``
    off), checked: they load, are finite and hold ``frames`` frames; ``DamagedVideoError`` otherwise. A fit of
    another format version stays a ``StoreError`` (the whole store needs the extraction command again, skipping
    would not help)."""
    folder = Path(folder)
    try:
        fit = read_face3d(folder) if face3d else None
        features = read_audio_features(folder) if audio else None
    except StoreError:
        raise
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as err:  # what np.load of a cut file raises
        raise DamagedVideoError(f"{folder}: cannot read its 3D face fit or audio ({type(err).__name__}: {err})") \
            from err
    arrays = {}
    if fit is not None:
        arrays[FACE3D_FILE] = (fit.num_frames, [fit.identity, fit.expression, fit.scale, fit.rotation,
                                                fit.translation])
    if features is not None:
        arrays[AUDIO_FILE] = (len(features), [features])
    for name, (count, values) in arrays.items():
        if count != frames:
            raise DamagedVideoError(f"{folder}/{name}: holds {count} frames, the store {frames}")
        if not all(np.isfinite(v).all() for v in values):
            raise DamagedVideoError(f"{folder}/{name}: non-finite values")
    return fit, features


def mouth_centre(points: np.ndarray) -> np.ndarray:
    """(…, 68, 2) landmarks -> (…, 2) pixel centre of the lips."""
    return np.asarray(points, np.float32)[..., LIPS, :].mean(axis=-2)


class HeadGANDataset(Dataset):
    """One item per video of ``split`` that has a 3D face fit with at least two valid frames.

    An item is a dict (images float (3, S, S) in [-1, 1], or uint8 with ``as_uint8``):

    - ``"reference"``, ``"reference_render"``: the reference frame and the NMFC render of its fit;
    - ``"target"``, ``"driving_render"``: the driving frame (the generator's target) and its render;
    - ``"audio"``: float (audio_mels, audio_window) features of the driving frame (zeros without audio) and
      ``"has_audio"``: bool;
    - ``"mouth"``: float (2,) the driving frame's mouth centre in pixels of the returned images;
    - ``"frame_indices"``: int64 (2,) reference and driving positions in the stored video;
    - ``"video_index"``, ``"identity"``;
    - ``"skipped"``: damaged videos passed over to make this item (see ``MetaDataset``; ``collate`` sums it).

    Items depend only on ``(seed, epoch, index)`` (see ``MetaDataset``). No flips: a mirrored render would swap
    the mesh's left and right colours.
    """

    def __init__(self, root: str | Path, split: str = "train", image_size: int | None = None, seed: int = 0,
                 audio: bool = True, audio_shape: tuple[int, int] = (40, 16), as_uint8: bool = False,
                 max_skips: int = 32):
        self.root = Path(root)
        index = load_index(self.root)
        if split not in index["num_videos"]:
            raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(index['num_videos'])}")
        self.split, self.seed, self.as_uint8 = split, seed, as_uint8
        self.encoding = index["encoding"]
        self.stored_size = index["image_size"]
        self.image_size = image_size or self.stored_size
        self.audio, self.audio_shape = audio, tuple(audio_shape)
        self.epoch = 0
        self.max_skips = max_skips
        in_split = [e for e in index["videos"] if e["split"] == split and e["frames"] >= 2]
        # Rows (path, frames, video_index, identity), as in MetaDataset.
        self.videos = VideoTable([e for e in in_split if (self.root / e["path"] / FACE3D_FILE).is_file()])
        self.missing_face3d = len(in_split) - len(self.videos)
        self._warned: set[str] = set()
        if not len(self.videos):
            raise StoreError(f"{self.root}: no {split} video has a 3D face fit ({FACE3D_FILE}); write them with: "
                             f"python -m dataset.face3d.extract_mesh {self.root}")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.videos)

    def read_video(self, index: int) -> tuple[Path, FaceFit, np.ndarray | None]:
        """The folder, 3D face fit and audio features (or None) of video ``index``; ``DamagedVideoError`` if they
        cannot be read."""
        path, frames = self.root / self.videos[index][0], self.videos[index][1]
        fit, features = read_headgan_arrays(path, frames, self.audio)
        if features is not None and tuple(features.shape[1:]) != self.audio_shape:
            raise StoreError(f"{path}/{AUDIO_FILE} holds {features.shape[1:]} features per frame, the model "
                             f"expects {self.audio_shape} (model.headgan.audio_mels x audio_window)")
        return path, fit, features

    def pair(self, index: int, reference: int, driving: int, loaded: tuple | None = None) -> dict:
        """The item of video ``index`` with the given reference and driving frames (``loaded``: its
        ``read_video`` result, if already read)."""
        path, fit, features = loaded or self.read_video(index)
        chosen = np.array([reference, driving], np.int64)
        frames = read_frames(path, self.encoding, chosen, self.stored_size)
        points = read_points(path, self.videos[index][1], self.stored_size)[chosen]
        frames, points = resize_sample(frames, points, self.image_size)
        vertices = fit.resized(self.image_size / self.stored_size).vertices(chosen)
        renders = [render_nmfc(v, self.image_size) for v in vertices]
        has_audio = features is not None
        audio = features[driving] if has_audio else np.zeros(self.audio_shape, np.float32)
        images = to_images_tensor(frames + renders, self.as_uint8)
        _, _, video_index, identity = self.videos[index]
        return {"reference": images[0], "target": images[1], "reference_render": images[2],
                "driving_render": images[3], "audio": torch.from_numpy(np.asarray(audio, np.float32)),
                "has_audio": has_audio, "mouth": torch.from_numpy(mouth_centre(points[1])),
                "frame_indices": torch.from_numpy(chosen), "video_index": video_index, "identity": identity}

    def __getitem__(self, item: int | tuple[int, int]) -> dict:
        """The item of video ``index``, or of the next whole video after damaged ones (``"skipped"`` counts them;
        see ``MetaDataset``)."""
        index, epoch = item if isinstance(item, tuple) else (item, self.epoch)
        return read_skipping_damaged(self, index, lambda i: self.random_pair(i, epoch))

    def random_pair(self, index: int, epoch: int) -> dict:
        rng = np.random.default_rng((self.seed, epoch, index))
        loaded = self.read_video(index)
        valid = np.flatnonzero(loaded[1].valid)
        if len(valid) < 2:
            raise DamagedVideoError(f"{loaded[0]}: fewer than 2 frames with a face mesh")
        reference, driving = rng.choice(valid, 2, replace=False)
        return self.pair(index, int(reference), int(driving), loaded)


def collate(items: list[dict]) -> dict:
    """Stacks HeadGAN items; ``"skipped"`` is the batch's total of damaged videos passed over (a Python int)."""
    out = {key: torch.stack([it[key] for it in items])
           for key in ("reference", "target", "reference_render", "driving_render", "audio", "mouth",
                       "frame_indices")}
    out["has_audio"] = torch.tensor([it["has_audio"] for it in items])
    out["video_index"] = torch.tensor([it["video_index"] for it in items], dtype=torch.long)
    out["identity"] = [it["identity"] for it in items]
    out["skipped"] = int(sum(it.get("skipped", 0) for it in items))
    return out
