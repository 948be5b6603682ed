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
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from dataset.landmarks import BACKENDS, DetectorLoadError, LandmarkDetector, make_detector
from dataset.pipeline.faces import read_face_crops
from inference.adapt import REFERENCES, adapt_landmarks
from inference.video import H264Writer, to_uint8, track_driver
from training.checkpoint import CheckpointError, load_checkpoint
from training.person import Person, load_person, person_from_frames

PERSON_SUFFIX = ".pt"


class ReenactError(ValueError):
    """The command's inputs do not fit together (the message says how)."""


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


def resolve_person(person: str | Path, checkpoint: str | Path | dict | None, detector: LandmarkDetector,
                   device: str = "cpu", max_frames: int = 32) -> Person:
    """A person file, or frames of the person turned into a Person by a meta-training checkpoint (feed-forward;
    ``checkpoint`` is its path or its already-read state).

    Raises ReenactError, CheckpointError or FileNotFoundError with a message for the user.
    """
    person = Path(person)
    if not person.exists():
        raise FileNotFoundError(f"person not found: {person} (give a person file from finetune.py, or a folder "
                                "of images or a video of the person with --checkpoint)")
    if person.is_file() and person.suffix == PERSON_SUFFIX:
        if checkpoint is not None:
            raise ReenactError(f"{person} is a person file already; --checkpoint is only for person frames")
        return load_person(person, device)
    if checkpoint is None:
        raise ReenactError(f"{person} holds frames of a person: give --checkpoint (a meta-training checkpoint) to "
                           "embed them, or pass a person file from finetune.py")
    # read once: its size, then its networks
    state = checkpoint if isinstance(checkpoint, dict) else load_checkpoint(checkpoint, kind="meta_train")
    size = state["config"]["model"]["image_size"]
    try:
        crops, points, _ = read_face_crops(person, detector, size, max_frames=max_frames)
    except ValueError as err:
        raise ReenactError(f"cannot use the person frames: {err}") from None
    return person_from_frames(state, crops, points, device=device, identity=person.stem)


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
    parser.add_argument("--person", required=True,
                        help="person file (.pt, from finetune.py), or a folder of images / a video of the person")
    parser.add_argument("--driver", required=True, help="driver video (or folder of frames)")
    parser.add_argument("--out", required=True, help="output .mp4")
    parser.add_argument("--checkpoint", help="meta-training checkpoint, for person frames (feed-forward mode)")
    parser.add_argument("--backend", default="dlib", choices=BACKENDS,
                        help="landmark detector: dlib (CPU, offline) or face_alignment (the paper's, GPU)")
    parser.add_argument("--device", default="cpu", help="device of the networks and of face_alignment")
    parser.add_argument("--no-adapt", action="store_true",
                        help="drive with the driver's landmarks as they are (the driver is the person)")
    parser.add_argument("--reference", default="mean", choices=REFERENCES,
                        help="driver face that maps onto the person's typical face: its mean (default) or first frame")
    parser.add_argument("--batch-size", type=int, default=16, help="frames per generator call")
    parser.add_argument("--person-frames", type=int, default=32,
                        help="at most this many evenly spaced person frames are embedded (feed-forward mode)")
    headgan = parser.add_argument_group("HeadGAN checkpoints (one-shot: the person is one reference image)")
    headgan.add_argument("--reference-frame", type=int, default=0,
                         help="frame of a person video / image folder used as the reference image")
    headgan.add_argument("--mesh-backend", default="mediapipe", help="3D face backend (dataset/face3d/backends.py)")
    headgan.add_argument("--no-audio", action="store_true", help="ignore the driver's audio track")
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.person_frames < 1:
        parser.error("--batch-size and --person-frames must be at least 1")
    try:
        if not Path(args.driver).exists():  # before the person, which may take a while to load or embed
            raise FileNotFoundError(f"driver not found: {args.driver}")
        state = None
        if args.checkpoint is not None and not Path(args.person).suffix == PERSON_SUFFIX:
            state = load_checkpoint(args.checkpoint, kind="meta_train")
        detector = make_detector(args.backend, device=args.device)
        if state is not None and state["config"]["model"].get("family") == "headgan":
            summary = reenact_headgan_command(args, state, detector)
            print(format_headgan_summary(summary))
            return 0
        person = resolve_person(args.person, state if state is not None else args.checkpoint, detector,
                                args.device, args.person_frames)
        summary = reenact(person, args.driver, args.out, detector, adapt=not args.no_adapt,
                          batch_size=args.batch_size, reference=args.reference)
    except (CheckpointError, DetectorLoadError, FileNotFoundError, ValueError) as err:  # ValueError: ReenactError too
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(format_summary(summary))
    return 0


def reenact_headgan_command(args: argparse.Namespace, state: dict, detector: LandmarkDetector) -> dict:
    """HeadGAN (one-shot): the person is one reference image (or frame --reference-frame of a video/folder)."""
    from dataset.face3d.backends import make_mesh_detector
    from inference.headgan import headgan_person, reenact_headgan

    mesh_detector = make_mesh_detector(args.mesh_backend)
    person = headgan_person(state, args.person, detector, mesh_detector, args.device, args.reference_frame)
    return reenact_headgan(person, args.driver, args.out, detector, mesh_detector, adapt=not args.no_adapt,
                           audio=not args.no_audio, batch_size=args.batch_size)


def format_headgan_summary(summary: dict) -> str:
    face = "the driver's expression and motion on the person's face" if summary["adapted"] else "the driver's face"
    return (f"wrote {summary['out']}: {summary['frames']} frames at {summary['fps']:.2f} fps, "
            f"{summary['size'][0]}x{summary['size'][1]} (driver | NMFC render | generated), {face}, "
            f"audio {'on' if summary['audio'] else 'off'}; {summary['no_face_frames']} frames without a face, "
            f"{summary['no_mesh_frames']} without a 3D face; {summary['seconds']:.1f} s")


if __name__ == "__main__":
    sys.exit(main())
