"""Driver videos in, browser-playable videos out.

Reading: ``VideoSource`` streams the RGB frames of a video file (OpenCV) or of a folder of images (natural
order, 25 fps), and ``track_driver`` follows the driver's main face through them, cut like the training data.

Writing: ``H264Writer`` pipes raw RGB frames into the ffmpeg binary that imageio-ffmpeg ships (built with
libx264) and makes an mp4 that browsers play: H.264, yuv420p, even width and height, and the index (moov atom) at
the front (``-movflags +faststart``) so playback starts before the download ends. The file is written under a
hidden temporary name in the output folder and renamed over the final name only once ffmpeg has finished, so a
crash or an error never leaves a half-written video under the final name.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from itertools import islice
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from dataset.landmarks import Face, LandmarkDetector, crop_and_resize
from dataset.pipeline.faces import choose_main_faces
from dataset.pipeline.videos import IMAGE_SUFFIXES, natural_key, read_image

# Frame rate of a folder of images, and of a video whose container does not say (VoxCeleb's rate).
DEFAULT_FPS = 25.0


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, 3, S, S) images in [-1, 1] -> (N, S, S, 3) RGB uint8, ready for ``H264Writer.write``."""
    scaled = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round()
    return scaled.to(torch.uint8).permute(0, 2, 3, 1).numpy()


class NoFaceError(ValueError):
    """The driver shows no face the detector can find."""


class VideoSource:
    """The frames of a video file or of a folder of images, read one at a time (a long video never sits in
    memory whole)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if self.path.is_dir():
            self.files = sorted((p for p in self.path.iterdir()
                                 if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")),
                                key=lambda p: natural_key(p.name))
            if not self.files:
                raise ValueError(f"{self.path}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
            self.fps = DEFAULT_FPS
            self.frame_count = len(self.files)
        elif self.path.is_file():
            self.files = None
            capture = cv2.VideoCapture(str(self.path))
            try:
                if not capture.isOpened():
                    raise ValueError(f"{self.path}: cannot open this video")
                fps = capture.get(cv2.CAP_PROP_FPS)
                # A container's frame count is often off by a few; it only sizes the progress bar.
                self.frame_count = max(int(capture.get(cv2.CAP_PROP_FRAME_COUNT)), 0)
            finally:
                capture.release()
            self.fps = float(fps) if np.isfinite(fps) and fps > 0 else DEFAULT_FPS
        else:
            raise FileNotFoundError(f"{self.path}: no such video file or folder of images")

    def frames(self) -> Iterator[np.ndarray]:
        """RGB uint8 HxWx3 frames in order; a video is read to its end, whatever its header claims."""
        if self.files is not None:
            for file in self.files:
                yield read_image(file)
            return
        capture = cv2.VideoCapture(str(self.path))
        try:
            while True:
                ok, image = capture.read()
                if not ok or image is None:
                    return
                yield cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        finally:
            capture.release()


@dataclass
class DriverTrack:
    """The driver's face in every frame, cut as the training data is (``read_face_crops``), frames kept in order.

    A frame where no face was found holds the landmarks of the nearest earlier frame with a face (of the first
    one, for frames before it), and its crop is the frame itself cut where that face was.
    """

    crops: list[np.ndarray]  # per frame, RGB uint8 size x size
    points: np.ndarray       # (N, 68, 2) float32, crop pixels
    found: np.ndarray        # (N,) bool, a face was detected in this frame
    fps: float

    @property
    def missing(self) -> int:
        """Frames without a detected face (their landmarks were held)."""
        return int((~self.found).sum())


class FaceTracker:
    """Follows one driver's main face from frame to frame, as the training data does (``choose_main_faces``).

    ``faces`` takes the next frames of the video (one frame for a live camera, a chunk for a file) and returns
    the main face of each, or None where none was found; the last face found carries the tracking into the next
    call. ``held`` is that last face: where a frame without a face is cut, and whose landmarks it keeps.
    """

    def __init__(self, detector: LandmarkDetector, size: int, scale: float = 1.8):
        self.detector, self.size, self.scale = detector, size, scale
        self.held: Face | None = None

    def faces(self, frames: list[np.ndarray]) -> list[Face | None]:
        shapes = [frame.shape for frame in frames]
        detections = self.detector.detect(frames)
        if self.held is None:
            chosen = choose_main_faces(detections, shapes)
        else:
            # The last kept face goes first as a frame of its own, so tracking continues from it.
            chosen = choose_main_faces([[self.held], *detections], [shapes[0], *shapes])[1:]
        for face in chosen:
            self.held = face or self.held
        return chosen

    def crop(self, frame: np.ndarray, face: Face) -> tuple[np.ndarray, np.ndarray]:
        """The frame cut around ``face`` like the training data, and the face's 68 points in crop pixels."""
        crop, moved = crop_and_resize(frame, face.points, self.size, self.scale)
        return crop, moved.astype(np.float32)


def track_driver(path: str | Path, detector: LandmarkDetector, size: int, scale: float = 1.8,
                 chunk_size: int = 32, progress: bool = False) -> DriverTrack:
    """Detects and crops the main face in every frame of a driver video, keeping one entry per frame.

    ``read_face_crops`` drops frames without a face, which is right for a person's training frames but would
    shorten the output video and shift it against the driver's; here such frames keep the previous landmarks.
    Frames go to the detector ``chunk_size`` at a time, and ``FaceTracker`` follows the main face across chunks.
    """
    source = VideoSource(path)
    tracker = FaceTracker(detector, size, scale)
    crops: list[np.ndarray] = []
    points: list[np.ndarray] = []
    found: list[bool] = []
    waiting: list[np.ndarray] = []  # frames before the first face, cut once that face is known
    frames = source.frames()
    with tqdm(total=source.frame_count or None, desc="driver faces", unit="frame", disable=not progress,
              dynamic_ncols=True) as bar:
        while chunk := list(islice(frames, chunk_size)):
            held = tracker.held
            for frame, face in zip(chunk, tracker.faces(chunk)):
                held = face or held
                if held is None:
                    waiting.append(frame)
                    continue
                for early in [*waiting, frame]:
                    crop, moved = tracker.crop(early, held)
                    crops.append(crop)
                    points.append(moved)
                found += [False] * len(waiting) + [face is not None]
                waiting = []
            bar.update(len(chunk))
    if tracker.held is None:
        raise NoFaceError(f"{path}: no face found in any of its {len(waiting)} frames")
    return DriverTrack(crops, np.stack(points), np.array(found), source.fps)


class H264Writer:
    """Writes RGB uint8 frames to a browser-playable H.264 mp4, atomically (see the module docstring).

        with H264Writer("out.mp4", fps=25) as writer:
            for frame in frames:          # HxWx3 uint8, every frame the same size
                writer.write(frame)

    The file appears under ``path`` when the block ends without an exception; otherwise ffmpeg is stopped and
    the temporary file removed. Odd widths or heights get one black column or row (yuv420p needs even sizes).
    ``crf`` is x264's constant quality (0 lossless, 18 visually lossless, 23 its default). ``audio_from``: a
    media file whose first audio stream (if it has one) is muxed in as AAC, e.g. the driver video's voice.
    """

    def __init__(self, path: str | Path, fps: float, crf: int = 18, audio_from: str | Path | None = None):
        if not fps > 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.path = Path(path)
        # Found now, not at the final rename after all the frames (which would also strand the temporary file).
        if self.path.is_dir():
            raise ValueError(f"cannot write a video to {self.path}: it is a directory")
        self.fps = fps
        self.crf = crf
        self.audio_from = Path(audio_from) if audio_from is not None and Path(audio_from).is_file() else None
        self.frames_written = 0
        self._tmp = self.path.with_name(f".{self.path.name}.partial-{os.getpid()}.mp4")
        self._process: subprocess.Popen | None = None
        self._size: tuple[int, int] | None = None

    def __enter__(self) -> H264Writer:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return self

    def write(self, frame: np.ndarray) -> None:
        frame = np.ascontiguousarray(frame)
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError(f"expected an RGB uint8 HxWx3 frame, got {frame.dtype} {frame.shape}")
        size = (frame.shape[1], frame.shape[0])
        if self._process is None:
            self._start(size)
        elif size != self._size:
            raise ValueError(f"frame {self.frames_written} is {size[0]}x{size[1]}, the video "
                             f"{self._size[0]}x{self._size[1]}")
        try:
            self._process.stdin.write(frame.tobytes())
        except BrokenPipeError:
            raise RuntimeError(f"ffmpeg stopped while writing {self.path}: {self._stop()}") from None
        self.frames_written += 1

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is not None:
            self._abort()
            return
        if self._process is None:
            raise ValueError(f"no frames to write to {self.path}")
        errors = self._stop()
        if self._process.returncode != 0:
            self._abort()
            raise RuntimeError(f"ffmpeg failed writing {self.path} (exit {self._process.returncode}): {errors}")
        try:
            with open(self._tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(self._tmp, self.path)
        except OSError:
            self._abort()  # e.g. the path became a directory meanwhile: no hidden partial file stays behind
            raise

    @property
    def video_size(self) -> tuple[int, int]:
        """(width, height) of the written video: the frames' size rounded up to even numbers."""
        if self._size is None:
            raise ValueError("no frame written yet")
        return self._size[0] + self._size[0] % 2, self._size[1] + self._size[1] % 2

    def _start(self, size: tuple[int, int]) -> None:
        import imageio_ffmpeg

        self._size = size
        rate = Fraction(self.fps).limit_denominator(1001)  # 29.97 stays 30000/1001
        command = [
            imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
            "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{size[0]}x{size[1]}", "-framerate", str(rate),
            "-i", "-",
            *(["-i", str(self.audio_from), "-map", "0:v:0", "-map", "1:a:0?", "-c:a", "aac"]
              if self.audio_from else ["-an"]),
            "-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2",
            "-c:v", "libx264", "-preset", "medium", "-crf", str(self.crf), "-pix_fmt", "yuv420p",
            "-movflags", "+faststart", "-f", "mp4", str(self._tmp),
        ]
        # ffmpeg's stderr (errors only) goes to a pipe that is read once it has exited.
        self._process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.PIPE)

    def _stop(self) -> str:
        """Closes ffmpeg's input, waits for it to finish, and returns what it printed."""
        with contextlib.suppress(BrokenPipeError):
            self._process.stdin.close()
        errors = self._process.stderr.read().decode(errors="replace").strip()
        self._process.wait()
        return errors or "no message"

    def _abort(self) -> None:
        if self._process is not None:
            if self._process.poll() is None:
                self._process.kill()
                self._process.wait()
            for pipe in (self._process.stdin, self._process.stderr):
                with contextlib.suppress(OSError):
                    pipe.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._tmp)

