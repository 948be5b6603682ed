"""Live reenactment: a person animated frame by frame from a camera, a stream or a video file.

    python reenact.py --person out/person.pt --webcam                      # camera 0, preview window
    python reenact.py --person out/person.onnx --runtime onnx --webcam 1   # camera 1, onnxruntime
    python reenact.py --person photo.jpg --checkpoint HEADGAN_CKPT --webcam rtsp://host/stream --out live.mp4
    python reenact.py --person out/person.pt --webcam driver.mp4 --no-window --max-frames 100

Every source goes through the same ``cv2.VideoCapture``: an integer is a camera index, anything else a stream URL
or a file, so a video file exercises the camera path exactly (the tests do that). Each frame runs the offline
reenactment's steps, causally:

    capture -> detect (main face and its 68 landmarks, tracked as ``inference.video.FaceTracker`` does offline)
    -> crop -> [HeadGAN: 3D face of the crop] -> adapt -> draw (landmark image / NMFC render)
    -> generate -> compose (driver | landmarks or render | generated) -> encode (--out) -> display

Offline, the driver's reference face is the mean over the whole video; live there is no whole video, so it is
fixed from the first ``calibration`` frames with a face (until then, the frames seen so far): talking heads take
the pose-normalised mean of their landmarks (``inference.adapt.reference_shape``), HeadGAN fits the driver's
identity to their meshes (``dataset.face3d.fit.fit_video``); later frames get their pose from a similarity on the
stable vertices against that identity, and their expression is what remains. A frame without a face (or mesh)
repeats the last driving input. Live HeadGAN runs with the model's silent audio embedding (no microphone capture).

The preview window opens only where there is a display (``--no-window`` turns it off; q or Esc stops). Frames
per second, over the whole loop and per stage, are printed at the end (and every ``report_every`` frames).
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
import torch

from dataset.landmarks import LandmarkDetector
from inference.adapt import adapt_landmarks, reference_shape
from inference.video import DEFAULT_FPS, FaceTracker, H264Writer, to_uint8

STAGES = ("capture", "detect", "crop", "fit3d", "adapt", "draw", "generate", "compose", "encode", "display")
RUNTIMES = ("torch", "compiled", "onnx")


class LiveError(ValueError):
    """The capture cannot be opened or read (the message says which and why)."""


def capture_target(source: str | int) -> int | str:
    """A camera index for an integer (or a string of digits), else the string itself (URL or file)."""
    if isinstance(source, int) or str(source).isdigit():
        return int(source)
    return str(source)


def check_capture_source(source: str | int) -> int | str:
    """``capture_target``, refusing a file path that does not exist (a URL or camera is only known on opening)."""
    target = capture_target(source)
    if isinstance(target, str) and "://" not in target and not Path(target).exists():
        raise FileNotFoundError(f"capture source not found: {target} (give a camera index, a stream URL or a "
                                "video file)")
    return target


class Capture:
    """Frames of a ``cv2.VideoCapture`` (camera index, stream URL or video file) as RGB uint8 arrays."""

    def __init__(self, source: str | int):
        self.source = check_capture_source(source)
        self.capture = cv2.VideoCapture(self.source)
        if not self.capture.isOpened():
            kind = "camera" if isinstance(self.source, int) else "stream or video"
            raise LiveError(f"cannot open {kind} {self.source!r} with OpenCV")
        fps = self.capture.get(cv2.CAP_PROP_FPS)
        # Many cameras report 0; the output video then plays at VoxCeleb's rate.
        self.fps = float(fps) if np.isfinite(fps) and 0 < fps <= 240 else DEFAULT_FPS

    def read(self) -> np.ndarray | None:
        """The next frame, or None at the end of a file or when the camera stops delivering."""
        ok, image = self.capture.read()
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB) if ok and image is not None else None

    def release(self) -> None:
        self.capture.release()


def display_available() -> bool:
    """Whether an OpenCV window can open here (Windows and macOS always; elsewhere an X11 or Wayland display)."""
    return sys.platform in ("win32", "darwin") or bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


class StageClock:
    """Seconds spent per stage and per frame; ``with clock("detect"): ...`` adds to the current frame."""

    def __init__(self):
        self.frames: list[dict[str, float]] = []

    def start_frame(self) -> None:
        self.frames.append(defaultdict(float))

    @contextlib.contextmanager
    def __call__(self, stage: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.frames[-1][stage] += time.perf_counter() - start

    def summary(self, skip: int = 0) -> dict:
        """Median ms per stage and per whole frame over the frames after the first ``skip`` (warm-up)."""
        frames = self.frames[skip:] or self.frames
        if not frames:
            return {"frames": 0, "stage_ms": {}, "frame_ms": None, "fps": None}
        stages = [s for s in STAGES if any(s in f for f in frames)]
        totals = np.array([sum(f.values()) for f in frames])
        return {"frames": len(frames),
                "stage_ms": {s: round(1000 * float(np.median([f.get(s, 0.0) for f in frames])), 3) for s in stages},
                "frame_ms": round(1000 * float(np.median(totals)), 3),
                "fps": round(len(totals) / float(totals.sum()), 2) if totals.sum() > 0 else None}


def frame_generator(person, runtime: str = "torch"):
    """``generate(driving (1, 3, S, S) in [-1, 1]) -> (1, 3, S, S)`` for one frame of ``person``.

    torch: the person's own networks (what reenact.py runs); compiled: ``torch.compile`` of the exported frame
    model (``inference.export.frame_model``: psi or the reference features folded in); onnx: an exported person
    (its runtime is onnxruntime already). HeadGAN gets no audio live: the model's silent embedding.
    """
    from inference.persons import family_of

    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; valid runtimes: {', '.join(RUNTIMES)}")
    headgan = family_of(person) == "headgan"
    if runtime == "compiled":
        from inference.export import frame_model

        model = torch.compile(frame_model(person).to(person.device))
        return torch.no_grad()(lambda driving: model(driving.to(person.device)).cpu())
    if headgan:
        return lambda driving: person.generate(driving, None)["image"].cpu()
    return lambda driving: person.generate(driving)


class TalkingHeadDriving:
    """Per frame: the driver's landmarks adapted onto the person (reference from the first frames), drawn."""

    def __init__(self, person, adapt: bool = True, calibration: int = 25):
        self.person, self.adapt, self.calibration = person, adapt, calibration
        self.seen: list[np.ndarray] = []
        self.reference: np.ndarray | None = None

    def driving(self, crop: np.ndarray, points: np.ndarray, found: bool,
                clock: StageClock) -> tuple[torch.Tensor, np.ndarray]:
        with clock("adapt"):
            if self.adapt:
                if found and len(self.seen) < self.calibration:
                    self.seen.append(points)
                    self.reference = reference_shape(np.stack(self.seen), "mean")
                points = adapt_landmarks(points[None], self.person.reference_points, self.reference)[0]
        with clock("draw"):
            landmarks = self.person.draw(points[None])
        return landmarks, to_uint8(landmarks)[0]


class HeadGANDriving:
    """Per frame: the crop's 3D face, fitted against the driver's identity from the first frames, its expression
    and motion moved onto the person (``transfer``), rendered as NMFC."""

    def __init__(self, person, mesh_detector, adapt: bool = True, calibration: int = 25):
        self.person, self.mesh_detector = person, mesh_detector
        self.adapt, self.calibration = adapt, calibration
        self.meshes: list[np.ndarray] = []
        self.identity_fit = None        # FaceFit of the calibration frames
        self.last: tuple[torch.Tensor, np.ndarray] | None = None

    def driver_fit(self, mesh: np.ndarray):
        """A two-frame FaceFit of the driver: its first calibration frame (the motion reference) and ``mesh``."""
        import dataclasses

        from dataset.face3d import mesh as face_mesh
        from dataset.face3d.fit import FaceFit, fit_video, similarity_transforms

        if len(self.meshes) < self.calibration:
            self.meshes.append(mesh)
            self.identity_fit = fit_video(np.stack(self.meshes))
            return self.identity_fit if len(self.meshes) == 1 else \
                dataclasses.replace(self.identity_fit, **{k: getattr(self.identity_fit, k)[[0, -1]] for k in
                                                          ("expression", "scale", "rotation", "translation", "valid")})
        fit = self.identity_fit
        stable = face_mesh.stable_vertices()
        scale, rotation, translation = similarity_transforms(fit.identity[stable], mesh[None, stable])
        # Back into the canonical frame: R^T (x - t) / s, as the video fit does for its frames.
        canonical = (mesh[None] - translation[:, None, :]) @ rotation / scale[:, None, None]
        return FaceFit(identity=fit.identity, expression=np.stack([fit.expression[0], canonical[0] - fit.identity]),
                       scale=np.r_[fit.scale[0], scale], rotation=np.stack([fit.rotation[0], rotation[0]]),
                       translation=np.stack([fit.translation[0], translation[0]]), valid=np.ones(2, bool))

    def driving(self, crop: np.ndarray, points: np.ndarray, found: bool,
                clock: StageClock) -> tuple[torch.Tensor, np.ndarray]:
        from dataset.face3d.fit import transfer
        from dataset.face3d.render import render_nmfc
        from inference.headgan import to_tensor

        with clock("fit3d"):
            mesh = self.mesh_detector.detect([crop])[0]
        if mesh is None:
            if self.last is None:
                raise LookupError("no 3D face yet")
            return self.last
        with clock("adapt"):
            fit = self.driver_fit(np.asarray(mesh, np.float64))
            vertices = (transfer(self.person.fit, fit) if self.adapt else fit.vertices())[-1]
        with clock("draw"):
            render = render_nmfc(vertices, self.person.image_size)
            self.last = to_tensor([render]), render
        return self.last


def run_live(person, source: str | int, detector: LandmarkDetector, mesh_detector=None, runtime: str = "torch",
             out: str | Path | None = None, window: bool | None = None, max_frames: int | None = None,
             adapt: bool = True, calibration: int = 25, report_every: int = 0, warmup: int = 0) -> dict:
    """Animates ``person`` from ``source`` until it ends, ``max_frames`` frames, or q / Esc in the window.

    ``window`` None opens the preview where there is a display. With ``out`` the panels are also written as an
    H.264 mp4 (atomically, at the capture's frame rate). Returns frames, whole-loop frames/s and the median ms
    per stage over the frames after ``warmup`` (the first frames of a compiled model include its compilation).
    """
    from inference.persons import family_of

    window = display_available() if window is None else window
    capture = Capture(source)
    family = family_of(person)
    driving = HeadGANDriving(person, mesh_detector, adapt, calibration) if family == "headgan" else \
        TalkingHeadDriving(person, adapt, calibration)
    generate = frame_generator(person, runtime)
    tracker = FaceTracker(detector, person.image_size)
    clock = StageClock()
    frames = faces = 0
    start = time.perf_counter()
    try:
        with contextlib.ExitStack() as stack:
            # The writer removes its partial file when the loop fails (or delivers nothing).
            writer = stack.enter_context(H264Writer(out, fps=capture.fps)) if out is not None else None
            while max_frames is None or frames < max_frames:
                clock.start_frame()
                with clock("capture"):
                    frame = capture.read()
                if frame is None:
                    clock.frames.pop()
                    break
                frames += 1
                with clock("detect"):
                    face = tracker.faces([frame])[0]
                faces += face is not None
                panels = _panels(frame, face, tracker, driving, generate, clock)
                if writer is not None:
                    with clock("encode"):
                        writer.write(panels)
                if window:
                    with clock("display"):
                        cv2.imshow("reenact: driver | driving | generated", cv2.cvtColor(panels, cv2.COLOR_RGB2BGR))
                        if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
                            break
                if report_every and frames % report_every == 0:
                    print(f"{frames} frames, {clock.summary(warmup)['fps']} frames/s", file=sys.stderr, flush=True)
            if frames == 0:
                raise LiveError(f"capture {source!r} delivered no frames")
    finally:
        capture.release()
        if window:
            cv2.destroyAllWindows()
    seconds = time.perf_counter() - start
    return {"source": str(source), "family": family, "runtime": runtime, "frames": frames,
            "frames_with_face": faces, "seconds": round(seconds, 2), "fps": round(frames / seconds, 2),
            "out": None if out is None else str(out), "window": window, "image_size": person.image_size,
            "timing": clock.summary(warmup)}


def _panels(frame: np.ndarray, face, tracker: FaceTracker, driving, generate, clock: StageClock) -> np.ndarray:
    """One output row: driver crop | driving image | generated. Before the first face (or, for HeadGAN, the first
    3D face) the frame is shrunk into the driver panel and the other two are black."""
    size = tracker.size
    if tracker.held is None:
        crop = cv2.resize(frame, (size, size), interpolation=cv2.INTER_AREA)
        return np.concatenate([crop, np.zeros_like(crop), np.zeros_like(crop)], axis=1)
    with clock("crop"):
        crop, points = tracker.crop(frame, tracker.held)
    try:
        driving_input, middle = driving.driving(crop, points, face is not None, clock)
    except LookupError:
        return np.concatenate([crop, np.zeros_like(crop), np.zeros_like(crop)], axis=1)
    with clock("generate"):
        generated = to_uint8(generate(driving_input))[0]
    with clock("compose"):
        return np.concatenate([crop, middle, generated], axis=1)


def format_live_summary(summary: dict) -> str:
    timing = summary["timing"]
    stages = ", ".join(f"{stage} {ms:.1f}" for stage, ms in timing["stage_ms"].items())
    wrote = f"; wrote {summary['out']}" if summary["out"] else ""
    return (f"live {summary['family']} ({summary['runtime']}): {summary['frames']} frames "
            f"({summary['frames_with_face']} with a face) at {summary['fps']:.2f} frames/s "
            f"{summary['image_size']}x{summary['image_size']}; median ms per frame {timing['frame_ms']} ({stages})"
            f"{wrote}")
