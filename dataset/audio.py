"""Audio features for HeadGAN: a log-mel window of the soundtrack around every video frame.

    python -m dataset.audio data/vox2_store --videos data/vox2/dev/mp4 --workers 8 [--shard 0/4]
    python -m dataset.audio data/vox2_store --videos data/vox2/dev/mp4 --frame-folders data/vox2_frames

HeadGAN (Doukas et al. 2021, Sec. 3) conditions the AdaIN blocks of its rendering network and its mouth
discriminator on the audio of a short window centred on each frame. The official code feeds speech-recognition
character probabilities; here the common substitute, log-mel spectral features, computed with NumPy alone:

* decoding: the ``ffmpeg`` binary that ``imageio-ffmpeg`` ships turns any clip into 16 kHz mono samples
  (``decode_audio``); a clip without an audio stream gives ``None``, which is not an error (the video then
  trains with audio off), while an unreadable file raises ``AudioError`` with ffmpeg's own message;
* spectrogram: 25 ms Hann windows every 10 ms, hop j centred at j x 10 ms (zero padding beyond the ends, so
  that the signal before and after the clip is silence), a 512-point FFT, ``N_MELS`` = 40 triangular mel bands
  (HTK mel scale, 0 Hz to 8 kHz) and power in dB, floored 80 dB below the clip's loudest value;
* normalisation (``normalise``): per clip, each band minus its mean over time, divided by its standard
  deviation over time (at least 1 dB). Loudness, microphone colouring and recording level differ between
  videos far more than between the syllables of one speaker; after this step a feature says how this moment
  differs from the rest of the clip, which is what the mouth does;
* frame windows (``frame_windows``): for each video frame the ``WINDOW`` = 16 hops (160 ms) centred on its
  time. Frames near the ends are padded with the clip's silence level (each band's minimum over the clip),
  never wrapped.

Time convention, used everywhere here: frame i of a clip at ``fps`` shows the interval [i / fps, (i + 1) / fps)
and sits at its middle, ``(i + 0.5) / fps`` (``frame_times``). At 25 fps that is exactly hop 4i + 2, which is
column 7 of frame i's 16 (70 ms of context before it, 80 ms after); a sound lasting exactly frame i is centred
there.

``clip_features`` is the one function from samples to the (N, N_MELS, WINDOW) features; both the store writer
and inference (``video_audio_features``) go through it, so training and reenactment see identical features.

In the dataset store (``dataset/store.py``) a video's features are ``videos/IDENTITY/VIDEO/audio.npy``, float16
(N, N_MELS, WINDOW), row i for stored frame i. ``extract_audio`` fills them for the videos of the store's
``index.json`` (as ``dataset/face3d/extract_mesh.py`` does): a stored frame's ``meta.json``
``"sources"`` entry names where it came from, and is mapped to a clip under ``--videos`` and a time:

* ``"00001/00017"``: frame 17 of the clip ``00001.mp4`` (stores made from clips, ``sample_frames``);
* ``"0003.jpg"``: the fourth image of a frame folder written by ``dataset/voxceleb2/extract_frames.py``. The
  folder's ``frames.json`` maps it back to its clip and frame (``--frame-folders``); once those folders are
  deleted, ``--frames-per-video N`` (the value extraction used) recomputes the same evenly spaced choice from
  the clips. The recomputation is exact only if extraction read every sampled frame (its summary reported no
  unreadable clips or frames); ``frames.json`` is always exact.

A video whose clips have no audio track gets no ``audio.npy`` and is counted; an unreadable clip fails the
video, which is listed in ``STORE/audio_failures.jsonl`` (the landmark extraction's ``failures.jsonl`` is left
alone) and retried by a rerun. Finished videos are skipped (``--overwrite`` recomputes them), and ``--shard``
splits the videos as in every other preprocessing command.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import re
import subprocess
from pathlib import Path, PurePosixPath
from typing import Sequence

import cv2
import numpy as np

from dataset import store
from dataset.pipeline.runner import RunSummary, add_run_arguments, run_videos, shard_suffix
from dataset.pipeline.videos import (CLIP_SUFFIXES, IMAGE_SUFFIXES, VideoUnit, clip_frame_count, evenly_spaced,
                                     natural_key, walk_files)
from utils.atomic import atomic_file

SAMPLE_RATE = 16000          # Hz, mono
HOP_SECONDS = 0.01           # one spectrogram column every 10 ms
WIN_SECONDS = 0.025          # each column analyses 25 ms
N_MELS = 40                  # HeadGANConfig.audio_mels
WINDOW = 16                  # HeadGANConfig.audio_window: hops per frame (160 ms)
TOP_DB = 80.0                # dB range kept below a clip's loudest value; quieter is "silence"
MIN_STD_DB = 1.0             # normalisation never divides by less: a constant band stays constant (0)
AUDIO_FILE = "audio.npy"
FRAME_INDEX = "frames.json"  # written by dataset/pipeline/output.write_frame_folder


class AudioError(ValueError):
    """A file whose audio cannot be decoded (missing, corrupt, not a media file), or timing that is unreadable."""


# ----------------------------------------------------------------------------------------------------------------
# Decoding and muxing with ffmpeg
# ----------------------------------------------------------------------------------------------------------------


def ffmpeg_executable() -> str:
    """Path of the ffmpeg binary shipped by ``imageio-ffmpeg``."""
    try:
        import imageio_ffmpeg
    except ImportError:
        raise AudioError("audio needs the ffmpeg binary of the imageio-ffmpeg package: "
                         "pip install imageio-ffmpeg") from None
    return imageio_ffmpeg.get_ffmpeg_exe()


def _ffmpeg_message(stderr: bytes, lines: int = 4) -> str:
    text = stderr.decode("utf-8", "replace").strip().splitlines()
    return " | ".join(line.strip() for line in text[-lines:]) or "no message"


def decode_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray | None:
    """The first audio stream of a media file as float32 mono samples in [-1, 1] at ``sample_rate``.

    Returns None when the file opens but has no audio stream; raises ``AudioError`` (with ffmpeg's message) when
    it is missing or cannot be read.
    """
    command = [ffmpeg_executable(), "-hide_banner", "-nostdin", "-i", str(path), "-map", "0:a:0", "-vn",
               "-ac", "1", "-ar", str(int(sample_rate)), "-f", "s16le", "-"]
    result = subprocess.run(command, capture_output=True)
    if result.returncode != 0:
        log = result.stderr.decode("utf-8", "replace")
        # The input opened (ffmpeg printed its streams) but none of them is audio: a silent video.
        if "Input #0" in log and not re.search(r"Stream #0:\d+.*: Audio:", log):
            return None
        raise AudioError(f"cannot decode the audio of {path}: {_ffmpeg_message(result.stderr)}")
    return (np.frombuffer(result.stdout, dtype="<i2").astype(np.float32) / 32768.0)


def add_audio_track(video: str | Path, samples: np.ndarray, out: str | Path, sample_rate: int = SAMPLE_RATE,
                    bitrate: str = "64k") -> None:
    """Writes ``out``: the video stream of ``video`` copied as is, plus ``samples`` (mono, [-1, 1]) as AAC.

    ``out`` is written in place (callers wanting atomicity pass a temporary name). Bit-exact flags keep the
    file free of version strings, so the same inputs give the same bytes.
    """
    samples = np.asarray(samples, dtype=np.float32).reshape(-1)
    pcm = np.round(np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()
    command = [ffmpeg_executable(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
               "-i", str(video), "-f", "s16le", "-ar", str(int(sample_rate)), "-ac", "1", "-i", "pipe:0",
               "-map", "0:v:0", "-map", "1:a:0", "-c:v", "copy", "-c:a", "aac", "-b:a", bitrate,
               "-map_metadata", "-1", "-fflags", "+bitexact", "-flags:a", "+bitexact", "-f", "mp4", str(out)]
    result = subprocess.run(command, input=pcm, capture_output=True)
    if result.returncode != 0:
        raise AudioError(f"cannot add an audio track to {video}: {_ffmpeg_message(result.stderr)}")


def video_fps(path: str | Path) -> float:
    """Frame rate of a video file as OpenCV reads it; ``AudioError`` if it has none."""
    capture = cv2.VideoCapture(str(path))
    try:
        fps = capture.get(cv2.CAP_PROP_FPS) if capture.isOpened() else 0.0
    finally:
        capture.release()
    if not np.isfinite(fps) or fps <= 0:
        raise AudioError(f"cannot read the frame rate of {path}; pass it explicitly (fps=...)")
    return float(fps)


# ----------------------------------------------------------------------------------------------------------------
# Spectrogram, normalisation, frame windows
# ----------------------------------------------------------------------------------------------------------------


def hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    """HTK mel scale: 2595 log10(1 + f / 700)."""
    return 2595.0 * np.log10(1.0 + np.asarray(hz, np.float64) / 700.0)


def mel_to_hz(mel: np.ndarray | float) -> np.ndarray:
    return 700.0 * (10.0 ** (np.asarray(mel, np.float64) / 2595.0) - 1.0)


def mel_band_edges(n_mels: int = N_MELS, sample_rate: int = SAMPLE_RATE, fmin: float = 0.0,
                   fmax: float | None = None) -> np.ndarray:
    """(n_mels + 2,) frequencies in Hz, equally spaced in mel: band b rises from ``edges[b]``, peaks at
    ``edges[b + 1]`` and falls to zero at ``edges[b + 2]``."""
    fmax = sample_rate / 2.0 if fmax is None else fmax
    if not 0.0 <= fmin < fmax <= sample_rate / 2.0:
        raise ValueError(f"mel bands need 0 <= fmin < fmax <= sample_rate / 2, got {fmin}, {fmax}, {sample_rate}")
    return mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))


def mel_filterbank(n_mels: int = N_MELS, n_fft: int = 512, sample_rate: int = SAMPLE_RATE, fmin: float = 0.0,
                   fmax: float | None = None) -> np.ndarray:
    """(n_mels, n_fft // 2 + 1) triangular filters with peak 1, evaluated at the FFT bin frequencies.

    The triangles are linear in Hz between their edges and evaluated at the exact bin frequencies (not snapped
    to bins), so narrow low-frequency bands still get weight from their neighbouring bins.
    """
    edges = mel_band_edges(n_mels, sample_rate, fmin, fmax)
    bins = np.arange(n_fft // 2 + 1) * sample_rate / n_fft
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins[None] - lower) / (centre - lower)
    falling = (upper - bins[None]) / (upper - centre)
    return np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)


def _samples_per(seconds: float, sample_rate: int, name: str) -> int:
    count = int(round(seconds * sample_rate))
    if count < 1 or abs(count - seconds * sample_rate) > 1e-6:
        raise ValueError(f"{name} = {seconds} s is not a whole number of samples at {sample_rate} Hz")
    return count


def log_mel_spectrogram(samples: np.ndarray, sample_rate: int = SAMPLE_RATE, n_mels: int = N_MELS,
                        hop_seconds: float = HOP_SECONDS, win_seconds: float = WIN_SECONDS) -> np.ndarray:
    """float32 (T_hops, n_mels) log-mel power in dB; hop j is centred at time ``j * hop_seconds``.

    ``T_hops = len(samples) // hop + 1``. Values are floored ``TOP_DB`` below the maximum, so digital silence
    and faint noise read the same.
    """
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim != 1:
        raise ValueError(f"expected mono samples (T,), got shape {samples.shape}")
    hop = _samples_per(hop_seconds, sample_rate, "hop_seconds")
    win = _samples_per(win_seconds, sample_rate, "win_seconds")
    n_fft = 1 << (win - 1).bit_length()
    hops = len(samples) // hop + 1
    # Zero padding centres hop j on sample j * hop and covers the last hop's whole window.
    padded = np.zeros(win + (hops - 1) * hop, np.float32)
    body = samples[:max(0, len(padded) - win // 2)]
    padded[win // 2:win // 2 + len(body)] = body
    frames = np.lib.stride_tricks.sliding_window_view(padded, win)[::hop]                 # T x win
    window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win) / win)).astype(np.float32)    # periodic Hann
    power = np.abs(np.fft.rfft(frames * window, n=n_fft, axis=1)) ** 2                    # T x (n_fft/2 + 1)
    mel = power @ mel_filterbank(n_mels, n_fft, sample_rate).T.astype(np.float64)         # T x n_mels
    db = 10.0 * np.log10(np.maximum(mel, 1e-10))
    return np.maximum(db, db.max() - TOP_DB).astype(np.float32)


def normalise(spectrogram: np.ndarray) -> np.ndarray:
    """Per-clip normalisation: each band minus its mean over time, over its std over time (>= ``MIN_STD_DB``).

    See the module docstring for why. ``clip_features`` applies it, for the store and for inference alike.
    """
    spectrogram = np.asarray(spectrogram, np.float64)
    std = np.maximum(spectrogram.std(axis=0), MIN_STD_DB)
    return ((spectrogram - spectrogram.mean(axis=0)) / std).astype(np.float32)


def frame_windows(spectrogram: np.ndarray, frame_times: Sequence[float] | np.ndarray,
                  hop_seconds: float = HOP_SECONDS, window: int = WINDOW) -> np.ndarray:
    """float32 (N, n_mels, window): per frame time (seconds), the ``window`` hops centred on it.

    Column ``(window - 1) // 2`` is the hop at the frame time (the nearest one for an odd window, the one at or
    just before it for an even window); the window reaches ``(window - 1) // 2`` hops before it and
    ``window // 2`` after. Hops before the start or after the end are the spectrogram's silence level: each
    band's minimum over the clip.
    """
    spectrogram = np.asarray(spectrogram, np.float32)
    if spectrogram.ndim != 2 or len(spectrogram) == 0:
        raise ValueError(f"expected a spectrogram (T_hops >= 1, n_mels), got shape {spectrogram.shape}")
    if window < 1:
        raise ValueError(f"window must be at least 1 hop, got {window}")
    times = np.asarray(frame_times, np.float64).reshape(-1)
    if not np.all(np.isfinite(times)):
        raise ValueError("frame times must be finite seconds")
    # The epsilon keeps times that are exact multiples of the hop (0.18 / 0.01 = 17.999...) on their hop.
    first = np.floor(times / hop_seconds - window / 2.0 + 1.0 + 1e-6).astype(np.int64)
    columns = first[:, None] + np.arange(window)[None]                                     # N x window
    inside = (columns >= 0) & (columns < len(spectrogram))
    gathered = spectrogram[np.clip(columns, 0, len(spectrogram) - 1)]                      # N x window x mels
    silence = spectrogram.min(axis=0)
    gathered = np.where(inside[..., None], gathered, silence[None, None])
    return np.ascontiguousarray(gathered.transpose(0, 2, 1))


def frame_times(indices: Sequence[int] | np.ndarray, fps: float) -> np.ndarray:
    """Times in seconds of video frames ``indices``: the middle of each frame's interval, (i + 0.5) / fps."""
    if not np.isfinite(fps) or fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    return (np.asarray(indices, np.float64) + 0.5) / fps


def clip_features(samples: np.ndarray, times: Sequence[float] | np.ndarray,
                  sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """float32 (N, N_MELS, WINDOW) features of one clip's samples at frame ``times`` (seconds).

    The single path from audio to model input: log-mel spectrogram, per-clip ``normalise``, frame windows.
    """
    return frame_windows(normalise(log_mel_spectrogram(samples, sample_rate)), times)


def video_audio_features(path: str | Path, fps: float | None = None, num_frames: int | None = None,
                         frame_indices: Sequence[int] | None = None) -> np.ndarray | None:
    """float32 (N, N_MELS, WINDOW) features for frames of a video file, or None when it has no audio.

    The frames are ``frame_indices``, else ``range(num_frames)``, else every frame OpenCV counts in the file;
    frame i is at time (i + 0.5) / fps, with ``fps`` read with OpenCV when not given.
    """
    if frame_indices is not None and num_frames is not None:
        raise ValueError("pass frame_indices or num_frames, not both")
    samples = decode_audio(path)
    if samples is None:
        return None
    fps = video_fps(path) if fps is None else float(fps)
    if frame_indices is None:
        if num_frames is None:
            num_frames = clip_frame_count(path)
            if num_frames <= 0:
                raise AudioError(f"OpenCV cannot count the frames of {path}; pass num_frames or frame_indices")
        frame_indices = range(num_frames)
    indices = np.asarray(list(frame_indices), np.int64)
    if np.any(indices < 0):
        raise ValueError(f"frame indices must be >= 0, got {indices.min()}")
    return clip_features(samples, frame_times(indices, fps))


# ----------------------------------------------------------------------------------------------------------------
# The store's audio.npy
# ----------------------------------------------------------------------------------------------------------------


def write_audio_features(folder: str | Path, features: np.ndarray) -> Path:
    """Writes ``folder/audio.npy`` (float16 (N, mels, window)) atomically; returns its path.

    When the folder holds a stored video (``meta.json``), N must be its number of frames: row i is frame i.
    """
    folder = Path(folder)
    features = np.asarray(features)
    if features.ndim != 3 or not np.all(np.isfinite(features)):
        raise ValueError(f"expected finite audio features (N, mels, window), got shape {features.shape}")
    meta_path = folder / store.META_FILE
    if meta_path.is_file():
        frames = json.loads(meta_path.read_text())["frames"]
        if len(features) != frames:
            raise ValueError(f"{folder} stores {frames} frames; got audio features for {len(features)}")
    path = folder / AUDIO_FILE
    with atomic_file(path, "wb") as f:
        np.save(f, features.astype(np.float16))
    return path


def read_audio_features(folder: str | Path) -> np.ndarray | None:
    """float32 (N, mels, window) features of a stored video, or None when it has none (no audio track)."""
    path = Path(folder) / AUDIO_FILE
    if not path.is_file():
        return None
    features = np.load(path, allow_pickle=False)
    if features.ndim != 3:
        raise store.StoreError(f"{path}: expected (N, mels, window) audio features, got shape {features.shape}")
    return features.astype(np.float32)


# ----------------------------------------------------------------------------------------------------------------
# Mapping stored frames back to clips and times
# ----------------------------------------------------------------------------------------------------------------


def video_folder(root: Path, identity: str, video: str, video_depth: int = 2) -> Path:
    """The folder of a video under a VoxCeleb-style root (``identity/video``, or deeper with ``video_depth``)."""
    if video_depth == 2:
        folder = Path(root) / identity / video
        if not folder.is_dir():
            raise FileNotFoundError(f"no folder {folder}: is it the clip folder the store was made from?")
        return folder
    pattern = "/".join([identity] + ["*"] * (video_depth - 2) + [video])
    matches = sorted(p for p in Path(root).glob(pattern) if p.is_dir())
    if len(matches) != 1:
        raise FileNotFoundError(f"expected one folder {Path(root) / pattern}, found {len(matches)}")
    return matches[0]


def _clip_path(folder: Path, stem: str) -> Path:
    for suffix in CLIP_SUFFIXES:
        candidate = folder / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"no clip {folder / stem}.* ({', '.join(CLIP_SUFFIXES)}) for a stored frame")


def _parse_clip_source(source: str) -> tuple[str, int] | None:
    """``"00001/00017"`` -> ``("00001", 17)``; None for anything else."""
    match = re.fullmatch(r"(.+)/(\d+)", source)
    if match is None or PurePosixPath(match.group(1)).suffix.lower() in IMAGE_SUFFIXES:
        return None
    return match.group(1), int(match.group(2))


def _video_clips(folder: Path) -> list[str]:
    """Clip stems below a video folder in the order ``find_videos`` gives them (numbers compared as numbers),
    listed by the same loop-safe walk."""
    problems: list[str] = []
    stems = ["/".join(parts) for parts, is_file in walk_files(folder, problems)
             if is_file and os.path.splitext(parts[-1])[1].lower() in CLIP_SUFFIXES]
    return [str(PurePosixPath(s).with_suffix("")) for s in sorted(stems, key=natural_key)]


def _resampled_sources(folder: Path, frames_per_video: int) -> list[str]:
    """The ``"clip/frame"`` sources that ``sample_frames`` chose for a video of clips, in order."""
    stems = _video_clips(folder)
    lengths = [clip_frame_count(_clip_path(folder, stem)) for stem in stems]
    starts = np.cumsum([0] + lengths)
    sources = []
    for index in evenly_spaced(int(starts[-1]), frames_per_video):
        clip = int(np.searchsorted(starts, index, side="right") - 1)
        sources.append(f"{stems[clip]}/{index - starts[clip]:05d}")
    return sources


def resolve_sources(sources: Sequence[str], folder: Path, frame_index: dict[str, str] | None = None,
                    frames_per_video: int | None = None) -> list[tuple[str, int]]:
    """``(clip stem, frame index)`` for each stored frame's source name (see the module docstring).

    ``folder`` is the video's clip folder; ``frame_index`` the ``frames.json`` of its extracted frame folder;
    ``frames_per_video`` the extraction's setting, to recompute that mapping when ``frames.json`` is gone.
    """
    resampled = None
    resolved = []
    for source in sources:
        parsed = _parse_clip_source(source)
        if parsed is None and frame_index is not None:
            if source not in frame_index:
                raise ValueError(f"stored frame {source!r} is not listed in the frame folder's {FRAME_INDEX}")
            parsed = _parse_clip_source(frame_index[source])
            if parsed is None:
                raise ValueError(f"stored frame {source!r} comes from the image {frame_index[source]!r}, not from "
                                 "a clip: its time in the soundtrack is unknown")
        elif parsed is None and frames_per_video is not None:
            number = re.fullmatch(r"(\d+)\.\w+", source)
            if number is None:
                raise ValueError(f"stored frame {source!r} is not named like extract_frames.py's NNNN.jpg")
            if resampled is None:
                resampled = _resampled_sources(folder, frames_per_video)
            if int(number.group(1)) >= len(resampled):
                raise ValueError(f"stored frame {source!r} is beyond the {len(resampled)} frames that "
                                 f"--frames-per-video {frames_per_video} samples from {folder}: wrong value?")
            parsed = _parse_clip_source(resampled[int(number.group(1))])
        elif parsed is None:
            raise ValueError(f"stored frame {source!r} is an image file: pass --frame-folders (the output of "
                             "extract_frames.py, whose frames.json maps it to its clip) or --frames-per-video N "
                             "(the value extract_frames.py used)")
        resolved.append(parsed)
    return resolved


# ----------------------------------------------------------------------------------------------------------------
# The command: features for every video of a store
# ----------------------------------------------------------------------------------------------------------------


def audio_for_video(unit: VideoUnit, *, store_root: Path, overwrite: bool, frame_folders: Path | None,
                    frames_per_video: int | None, video_depth: int) -> dict:
    """Computes and writes one stored video's ``audio.npy`` (the work function of the run)."""
    folder = store.video_dir(store_root, unit.identity, unit.video)
    if (folder / AUDIO_FILE).is_file() and not overwrite:
        return {"status": "skipped"}
    meta = json.loads((folder / store.META_FILE).read_text())
    clips_folder = video_folder(Path(unit.root), unit.identity, unit.video, video_depth)
    frame_index = None
    if frame_folders is not None:
        index_path = video_folder(frame_folders, unit.identity, unit.video, video_depth) / FRAME_INDEX
        frame_index = json.loads(index_path.read_text())
    resolved = resolve_sources(meta["sources"], clips_folder, frame_index, frames_per_video)
    features = np.zeros((len(resolved), N_MELS, WINDOW), np.float32)
    for stem in dict.fromkeys(stem for stem, _ in resolved):
        rows = [row for row, (s, _) in enumerate(resolved) if s == stem]
        clip = _clip_path(clips_folder, stem)
        samples = decode_audio(clip)
        if samples is None:
            # One silent clip leaves part of the video without sound: the whole video trains with audio off.
            return {"status": "done", "stats": {"videos_without_audio": 1}}
        times = frame_times([resolved[row][1] for row in rows], video_fps(clip))
        features[rows] = clip_features(samples, times)
    write_audio_features(folder, features)
    return {"status": "done", "stats": {"videos_with_audio": 1, "frames_with_audio": len(resolved)}}


def extract_audio(store_root: str | Path, videos_root: str | Path, workers: int = 1, shard=None,
                  overwrite: bool = False, *, frame_folders: str | Path | None = None,
                  frames_per_video: int | None = None, video_depth: int = 2) -> RunSummary:
    """Writes ``audio.npy`` for every video of the store (in ``shard``) from its clips; returns the summary."""
    store_root, videos_root = Path(store_root), Path(videos_root)
    store.read_store_info(store_root)
    store.load_index(store_root)  # a store without index.json stops here with the command that builds it
    if not videos_root.is_dir():
        raise FileNotFoundError(f"clip folder not found: {videos_root}")
    if frame_folders is not None and not Path(frame_folders).is_dir():
        raise FileNotFoundError(f"frame folders not found: {frame_folders}")
    work = functools.partial(audio_for_video, store_root=store_root, overwrite=overwrite,
                             frame_folders=None if frame_folders is None else Path(frame_folders),
                             frames_per_video=frames_per_video, video_depth=video_depth)
    summary = run_videos(store.indexed_units(store_root, videos_root), work, workers=workers, shard=shard,
                         desc="audio features", failures_path=store_root / f"audio_failures{shard_suffix(shard)}.jsonl")
    print(summary.format())
    return summary


def main(argv: list[str] | None = None) -> RunSummary:
    parser = argparse.ArgumentParser(prog="python -m dataset.audio", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("store", type=Path, help="dataset store (written by extract_landmark.py)")
    parser.add_argument("--videos", type=Path, required=True,
                        help="the clips the store was made from: idNNNNN/VIDEO_ID/NNNNN.mp4")
    parser.add_argument("--frame-folders", type=Path, default=None,
                        help="for stores made from extract_frames.py folders: those folders (their frames.json "
                             "maps each image to its clip and frame)")
    parser.add_argument("--frames-per-video", type=int, default=None,
                        help="for stores made from extract_frames.py folders that are gone: the "
                             "--frames-per-video it used, to recompute which frames it took")
    parser.add_argument("--overwrite", action="store_true", help="recompute videos that already have audio.npy")
    add_run_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return extract_audio(args.store, args.videos, args.workers, args.shard, args.overwrite,
                             frame_folders=args.frame_folders, frames_per_video=args.frames_per_video,
                             video_depth=args.video_depth)
    except (store.StoreError, FileNotFoundError, AudioError) as err:
        parser.exit(2, f"error: {err}\n")


if __name__ == "__main__":
    main()
