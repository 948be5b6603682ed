"""Reenactment: a person, driven by the face of another video (Zakharov et al. 2019, Sec. 3.4 and 4).

    python reenact.py --person runs/person.pt --driver driver.mp4 --out out.mp4          # fine-tuned person
    python reenact.py --person photos/ --checkpoint runs/demo/checkpoints/step_000001000.pt \\
        --driver driver.mp4 --out out.mp4                                                # feed-forward, no training
    python reenact.py --person runs/me.pt --driver my_other_video.mp4 --out out.mp4 --no-adapt   # self-driving

The person is a fine-tuned person file (``.pt``, written by finetune.py), or a folder of images or a video of
the person together with a meta-training ``--checkpoint``: then the main face of up to ``--person-frames`` of
its frames is cut as the training data is and E averages them into psi = P e_hat (feed-forward mode).

In every driver frame the main face is detected and cut the same way; a frame without a face keeps the previous
frame's landmarks, so the output has exactly the driver's frames, at its frame rate. The driver's landmarks are
moved onto the person's face (``inference/adapt.py``: the driver's expression and head motion, the person's face
shape) unless ``--no-adapt`` asks for them as they are (the driver is the person). G renders them in batches.

The output is an H.264 mp4 that browsers play, written atomically, one row of three panels per frame:
driver crop | driver landmarks as the generator saw them (adapted, drawn) | generated frame, with the driver's
audio track when it has one.

A HeadGAN checkpoint (``model.family: headgan``) is one-shot: the person is one image (or frame
``--reference-frame`` of a video or folder), the driver's 3D face (expression and head motion on the person's
identity) and audio drive it, and the middle panel is the NMFC render (``inference/headgan.py``):

    python reenact.py --person photo.jpg --checkpoint runs/headgan/checkpoints/step_000000800.pt \
        --driver driver.mp4 --out out.mp4

An exported person (``python -m inference.export``: ONNX, psi or the reference features folded in) runs with
onnxruntime (``--runtime onnx``, the default for an ``.onnx`` person), for either family:

    python reenact.py --person out/person.onnx --runtime onnx --driver driver.mp4 --out out.mp4

``--webcam [SOURCE]`` drives the person live instead of from --driver (``inference/live.py``): a camera index
(default 0), a stream URL or a video file, through the same OpenCV capture; a preview window shows
driver | landmarks or render | generated where there is a display (``--no-window``), ``--out`` records it, and
the command prints frames/s and the time per stage:

    python reenact.py --person out/person.pt --webcam            # q or Esc in the window stops

Every argument is checked before any work: an ``--out`` that is a directory, does not end in .mp4, or is one of
the inputs (``--driver``, ``--person``, ``--checkpoint``, a capture file) is refused with one line.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from dataset.landmarks import BACKENDS, DetectorLoadError, LandmarkDetector, make_detector
from inference.adapt import REFERENCES, adapt_landmarks
from inference.persons import ONNX_SUFFIX, PersonInputError, family_of, load_any_person, resolve_person
from inference.video import H264Writer, to_uint8, track_driver
from training.checkpoint import CheckpointError
from training.person import Person
from utils.cli import ArgumentError, check_at_least, check_device, check_output_file
from utils.safe_load import UnsafeOrDamagedFile

# The earlier names, for callers: person resolution lives in inference/persons.py now.
ReenactError = PersonInputError
__all__ = ["ReenactError", "main", "reenact", "resolve_person"]


def reenact(person: Person, driver_path: str | Path, out_path: str | Path, detector: LandmarkDetector,
            adapt: bool = True, batch_size: int = 16, progress: bool = True, reference: str = "mean") -> dict:
    """Drives ``person`` with the face of the video (or image folder) ``driver_path``; writes ``out_path``.

    Returns the summary: output path, frames, fps, frames where no face was found, seconds, and the settings.
    Raises ``inference.video.NoFaceError`` if the driver shows no face at all.
    """
    start = time.perf_counter()
    track = track_driver(driver_path, detector, person.image_size, progress=progress)
    points = adapt_landmarks(track.points, person.reference_points, reference) if adapt else track.points
    with H264Writer(out_path, fps=track.fps, audio_from=driver_path) as writer, \
            tqdm(total=len(points), desc="reenact", unit="frame", disable=not progress, dynamic_ncols=True) as bar:
        for begin in range(0, len(points), batch_size):
            end = begin + batch_size
            landmarks = person.draw(points[begin:end])
            generated = person.generate(landmarks, batch_size)
            for crop, drawn, frame in zip(track.crops[begin:end], to_uint8(landmarks), to_uint8(generated)):
                writer.write(np.concatenate([crop, drawn, frame], axis=1))
            bar.update(len(landmarks))
    return {"out": str(out_path), "frames": writer.frames_written, "fps": track.fps,
            "size": list(writer.video_size), "no_face_frames": track.missing,
            "adapted": adapt, "reference": reference if adapt else None, "identity": person.identity,
            "seconds": round(time.perf_counter() - start, 2)}


def format_summary(summary: dict) -> str:
    held = summary["no_face_frames"]
    landmarks = f"adapted to the person ({summary['reference']} reference)" if summary["adapted"] else "as driven"
    return (f"wrote {summary['out']}: {summary['frames']} frames at {summary['fps']:.2f} fps, "
            f"{summary['size'][0]}x{summary['size'][1]} (driver | landmarks | generated), landmarks {landmarks}; "
            f"{held} driver frame{'s' if held != 1 else ''} without a face kept the previous landmarks; "
            f"{summary['seconds']:.1f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--person", required=True, help="person file (.pt from finetune.py, or .onnx from python -m "
                        "inference.export), or a folder of images / a video / a photo of the person with --checkpoint")
    parser.add_argument("--driver", help="driver video (or folder of frames)")
    parser.add_argument("--out", help="output .mp4 (optional with --webcam: records the live panels)")
    parser.add_argument("--checkpoint", help="meta-training checkpoint, for person frames (feed-forward mode) or a "
                        "HeadGAN reference image")
    parser.add_argument("--backend", default="dlib", choices=BACKENDS,
                        help="landmark detector: dlib (CPU, offline) or face_alignment (the paper's, GPU)")
    parser.add_argument("--device", default="cpu", help="device of the networks and of face_alignment")
    parser.add_argument("--runtime", choices=("torch", "onnx"),
                        help="what runs the generator: torch, or onnx (onnxruntime, for an .onnx person); "
                        "default: onnx for an .onnx person, else torch")
    parser.add_argument("--no-adapt", action="store_true",
                        help="drive with the driver's landmarks as they are (the driver is the person)")
    parser.add_argument("--reference", default="mean", choices=REFERENCES,
                        help="driver face that maps onto the person's typical face: its mean (default) or first frame")
    parser.add_argument("--batch-size", type=int, default=16, help="frames per generator call")
    parser.add_argument("--person-frames", type=int, default=32,
                        help="at most this many evenly spaced person frames are embedded (feed-forward mode)")
    live = parser.add_argument_group("live capture (inference/live.py)")
    live.add_argument("--webcam", nargs="?", const="0", metavar="SOURCE",
                      help="drive live from an OpenCV capture instead of --driver: a camera index (default 0), a "
                      "stream URL or a video file")
    live.add_argument("--no-window", action="store_true",
                      help="no preview window (automatic where there is no display)")
    live.add_argument("--max-frames", type=int, help="stop after this many frames")
    live.add_argument("--calibration-frames", type=int, default=25,
                      help="frames with a face that fix the driver's reference face (default 25, one second)")
    headgan = parser.add_argument_group("HeadGAN checkpoints (one-shot: the person is one reference image)")
    headgan.add_argument("--reference-frame", type=int, default=0,
                         help="frame of a person video / image folder used as the reference image")
    headgan.add_argument("--mesh-backend", default="mediapipe", help="3D face backend (dataset/face3d/backends.py)")
    headgan.add_argument("--no-audio", action="store_true", help="ignore the driver's audio track")
    args = parser.parse_args(argv)
    try:
        check_arguments(args)
        summary = run(args)
    except (CheckpointError, DetectorLoadError, FileNotFoundError, UnsafeOrDamagedFile,
            ValueError) as err:  # ValueError: PersonInputError, ArgumentError, ExportError, LiveError too
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(summary)
    return 0


def check_arguments(args: argparse.Namespace) -> None:
    """Everything that can be checked before any work (one-line errors); fills in the default runtime."""
    if (args.driver is None) == (args.webcam is None):
        raise ArgumentError("give either --driver (a video) or --webcam [SOURCE] (live capture), not both or neither")
    if args.webcam is None and args.out is None:
        raise ArgumentError("--out is required with --driver")
    check_at_least({"--batch-size": args.batch_size, "--person-frames": args.person_frames,
                    "--max-frames": args.max_frames, "--calibration-frames": args.calibration_frames}, 1)
    check_at_least({"--reference-frame": args.reference_frame}, 0)
    check_device(args.device)
    if args.runtime is None:
        args.runtime = "onnx" if Path(args.person).suffix == ONNX_SUFFIX else "torch"
    capture_file = args.webcam if args.webcam is not None and not args.webcam.isdigit() else None
    if args.out is not None:
        check_output_file(args.out, {"--person": args.person, "--driver": args.driver, "--checkpoint": args.checkpoint,
                                     "--webcam": capture_file}, suffixes=(".mp4",))
    if args.driver is not None and not Path(args.driver).exists():
        raise FileNotFoundError(f"driver not found: {args.driver}")
    if args.webcam is not None:
        from inference.live import check_capture_source

        check_capture_source(args.webcam)


def run(args: argparse.Namespace) -> str:
    """Loads the person and drives it (a video, or live); returns the line to print."""
    detector = make_detector(args.backend, device=args.device)
    person, mesh_detector = load_any_person(args.person, args.checkpoint, detector, args.device, args.person_frames,
                                            args.reference_frame, args.mesh_backend, args.runtime)
    if args.webcam is not None:
        from inference.live import format_live_summary, run_live

        return format_live_summary(run_live(
            person, args.webcam, detector, mesh_detector, args.runtime, args.out,
            window=False if args.no_window else None, max_frames=args.max_frames, adapt=not args.no_adapt,
            calibration=args.calibration_frames, report_every=100))
    if family_of(person) == "headgan":
        from inference.headgan import reenact_headgan

        return format_headgan_summary(reenact_headgan(person, args.driver, args.out, detector, mesh_detector,
                                                      adapt=not args.no_adapt, audio=not args.no_audio,
                                                      batch_size=args.batch_size))
    return format_summary(reenact(person, args.driver, args.out, detector, adapt=not args.no_adapt,
                                  batch_size=args.batch_size, reference=args.reference))


def format_headgan_summary(summary: dict) -> str:
    face = "the driver's expression and motion on the person's face" if summary["adapted"] else "the driver's face"
    return (f"wrote {summary['out']}: {summary['frames']} frames at {summary['fps']:.2f} fps, "
            f"{summary['size'][0]}x{summary['size'][1]} (driver | NMFC render | generated), {face}, "
            f"audio {'on' if summary['audio'] else 'off'}; {summary['no_face_frames']} frames without a face, "
            f"{summary['no_mesh_frames']} without a 3D face; {summary['seconds']:.1f} s")


if __name__ == "__main__":
    sys.exit(main())
