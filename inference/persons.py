"""The person a command animates, from whatever the user handed it.

    person file (.pt, finetune.py)                 -> training.person.Person (fine-tuned G + psi)
    frames of the person + talking-head checkpoint -> Person, feed-forward (psi = P E(frames))
    one image (or frame) + HeadGAN checkpoint      -> inference.headgan.HeadGANPerson (one-shot)
    exported file (.onnx, inference/export.py)     -> the same two kinds, run by onnxruntime

reenact.py (videos and live capture), ``python -m inference.export`` and bench/latency.py all resolve their
``--person`` here, so they accept the same inputs with the same messages.
"""
from __future__ import annotations

from pathlib import Path

from dataset.landmarks import LandmarkDetector
from dataset.pipeline.faces import read_face_crops
from training.checkpoint import load_checkpoint
from training.person import Person, load_person, person_from_frames

PERSON_SUFFIX = ".pt"
ONNX_SUFFIX = ".onnx"


class PersonInputError(ValueError):
    """The person inputs do not fit together (the message says how)."""


def resolve_person(person: str | Path, checkpoint: str | Path | dict | None, detector: LandmarkDetector,
                   device: str = "cpu", max_frames: int = 32) -> Person:
    """A talking-head person file, or frames of the person turned into a Person by a meta-training checkpoint
    (feed-forward; ``checkpoint`` is its path or its already-read state).

    Raises PersonInputError, CheckpointError or FileNotFoundError with a message for the user.
    """
    person = Path(person)
    if not person.exists():
        raise FileNotFoundError(f"person not found: {person} (give a person file from finetune.py, or a folder "
                                "of images or a video of the person with --checkpoint)")
    if person.is_file() and person.suffix == PERSON_SUFFIX:
        if checkpoint is not None:
            raise PersonInputError(f"{person} is a person file already; --checkpoint is only for person frames")
        return load_person(person, device)
    if checkpoint is None:
        raise PersonInputError(f"{person} holds frames of a person: give --checkpoint (a meta-training checkpoint) "
                               "to embed them, or pass a person file from finetune.py")
    # read once: its size, then its networks
    state = checkpoint if isinstance(checkpoint, dict) else load_checkpoint(checkpoint, kind="meta_train")
    size = state["config"]["model"]["image_size"]
    try:
        crops, points, _ = read_face_crops(person, detector, size, max_frames=max_frames)
    except ValueError as err:
        raise PersonInputError(f"cannot use the person frames: {err}") from None
    return person_from_frames(state, crops, points, device=device, identity=person.stem)


def load_any_person(person: str | Path, checkpoint: str | Path | None, detector: LandmarkDetector,
                    device: str = "cpu", max_frames: int = 32, reference_frame: int = 0,
                    mesh_backend: str = "mediapipe", runtime: str = "torch"):
    """Any kind of person in the module docstring; ``runtime`` "onnx" takes an exported file only.

    Returns (person, mesh detector or None): HeadGAN persons come with the 3D face backend that fitted them,
    which then tracks the driver.
    """
    person = Path(person)
    if runtime == "onnx" or person.suffix == ONNX_SUFFIX:
        from inference.export import load_onnx_person

        if person.suffix != ONNX_SUFFIX:
            raise PersonInputError(f"--runtime onnx runs an exported person (.onnx); export {person} first: "
                                   f"python -m inference.export --person {person} --out PERSON.onnx")
        if runtime != "onnx":
            raise PersonInputError(f"{person} is an exported (ONNX) person: it runs with --runtime onnx, "
                                   f"not {runtime}")
        if checkpoint is not None:
            raise PersonInputError(f"{person} is an exported person; --checkpoint is only for person frames")
        onnx_person = load_onnx_person(person, device)
        return onnx_person, _mesh_detector(mesh_backend) if onnx_person.family == "headgan" else None
    state = None
    if checkpoint is not None and person.suffix != PERSON_SUFFIX:
        state = load_checkpoint(checkpoint, kind="meta_train")
    if state is not None and state["config"]["model"].get("family") == "headgan":
        from inference.headgan import headgan_person

        mesh_detector = _mesh_detector(mesh_backend)
        return headgan_person(state, person, detector, mesh_detector, device, reference_frame), mesh_detector
    return resolve_person(person, state if state is not None else checkpoint, detector, device, max_frames), None


def family_of(person) -> str:
    """"talking_head" or "headgan", for every kind of person ``load_any_person`` returns."""
    return getattr(person, "family", "headgan" if hasattr(person, "fit") else "talking_head")


def _mesh_detector(name: str):
    from dataset.face3d.backends import make_mesh_detector

    return make_mesh_detector(name)
