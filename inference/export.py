"""A person as one ONNX file, for onnxruntime or any other ONNX runtime: the generator for that one person.

    python -m inference.export --person out/person/person.pt --out out/person.onnx             # fine-tuned
    python -m inference.export --person photos/ --checkpoint CKPT --out out/person.onnx         # feed-forward
    python -m inference.export --person photo.jpg --checkpoint HEADGAN_CKPT --out out/hg.onnx   # HeadGAN
    python reenact.py --person out/person.onnx --runtime onnx --driver driver.mp4 --out out.mp4

What is folded into the graph, so that a frame costs one run of the file:

* talking heads: G with the person's psi as a constant. AdaIN's per-layer scales and biases are slices of psi,
  so they become constants too; the projection P is not in the file. Input ``driving``: (B, 3, S, S) landmark
  images in [-1, 1]; output ``image``: (B, 3, S, S) in [-1, 1].
* HeadGAN: the generator with the flow network's encoder features of (reference image, its NMFC render) computed
  once. That is exact: the encoder sees only the reference pair, never the driving frame, and its instance norms
  are per image, so the features of a batch are the single reference's, repeated. Inputs ``driving`` (B, 3, S, S)
  NMFC renders and, when the model has audio, ``audio`` (B, mels, window) with ``has_audio`` (B,) bool (False:
  the model's learned silent embedding, as for a driver without sound).
* spectral normalisation: in eval mode a weight is W / sigma with sigma from the stored power-iteration vectors;
  the file holds W / sigma itself, which is what the PyTorch model computes on every call.

The batch axis is dynamic for talking heads. A HeadGAN file is traced at batch 1 (its SPADE layers resize the
conditioning map to a size read from a tensor, which the exporter can only turn into a constant when every shape
is); larger batches run one frame at a time, and live capture is batch 1 anyway. The file's metadata
(``talkinghead`` key, JSON) carries what a runtime needs besides the network: family, image size, identity; for
talking heads the person's mean landmarks (cross-person adaptation) and landmark thickness; for HeadGAN the model
section of the config and the reference's 3D face fit (``dataset.face3d.fit.transfer`` moves a driver's expression
onto it). Exported with the TorchScript-based ``torch.onnx.export(..., dynamo=False)``, which needs only the
``onnx`` package (no ``onnxscript``). After writing, the file is run once with onnxruntime on the person's own
face and compared with PyTorch; the command prints the largest difference.
"""
from __future__ import annotations

import argparse
import io
import json
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from config import config_from_dict, to_dict
from inference.headgan import HeadGANPerson
from training.person import Person
from utils.atomic import atomic_file

METADATA_KEY = "talkinghead"
FORMAT = "talkinghead-onnx"
VERSION = 1
DEFAULT_OPSET = 17  # GridSample (HeadGAN's warp) needs 16; 17 is what onnxruntime >= 1.12 runs everywhere
OPSETS = range(16, 21)


class ExportError(ValueError):
    """A person cannot be exported, or an exported file cannot be run (the message says why)."""


def fold_spectral_norm(module: nn.Module) -> nn.Module:
    """Replaces every parametrised weight of ``module`` (in place, in eval mode) by the tensor it evaluates to.

    Only for a freshly built copy: torch's parametrised classes are shared by deep copies, so removing them from
    a copy would break the original.
    """
    module.eval()
    for sub in list(module.modules()):
        if parametrize.is_parametrized(sub):
            for name in list(sub.parametrizations.keys()):
                parametrize.remove_parametrizations(sub, name, leave_parametrized=True)
    return module


def _plain_copy(generator: nn.Module, model_cfg) -> nn.Module:
    """A new generator of the same class and config with ``generator``'s weights, spectral norm folded, on CPU."""
    copy = type(generator)(model_cfg)
    copy.load_state_dict({k: v.detach().cpu() for k, v in generator.state_dict().items()})
    return fold_spectral_norm(copy)


class TalkingHeadFrameModel(nn.Module):
    """G for one person: landmark images (B, 3, S, S) -> frames (B, 3, S, S), psi a constant."""

    def __init__(self, generator: nn.Module, psi: torch.Tensor):
        super().__init__()
        self.generator = generator
        self.register_buffer("psi", psi.detach().reshape(1, -1).clone())

    def forward(self, driving: torch.Tensor) -> torch.Tensor:
        return self.generator(driving, psi=self.psi)


class PrecomputedFeatures(nn.Module):
    """Stands in for the flow network's encoder: the reference pair's features (one per scale), repeated over the
    batch of whatever it is given."""

    def __init__(self, features: list[torch.Tensor]):
        super().__init__()
        self.levels = len(features)
        for level, feature in enumerate(features):  # 1 x C_l x S/2**l x S/2**l
            self.register_buffer(f"level_{level}", feature.detach().clone())

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [getattr(self, f"level_{level}").expand(x.shape[0], -1, -1, -1) for level in range(self.levels)]


class HeadGANFrameModel(nn.Module):
    """HeadGAN's G for one reference: driving renders (+ audio) -> frames, reference features precomputed.

    ``generator`` (a copy of its own: its encoder is replaced) runs its usual forward; only the flow encoder's
    output is fixed, so the model follows the generator's code wherever that changes.
    """

    def __init__(self, generator: nn.Module, reference: torch.Tensor, reference_render: torch.Tensor):
        super().__init__()
        with torch.no_grad():
            features = generator.flow.encoder(torch.cat([reference, reference_render], dim=1))
        generator.flow.encoder = PrecomputedFeatures(features)
        self.generator = generator.eval()

    def forward(self, driving: torch.Tensor, audio: torch.Tensor | None = None,
                has_audio: torch.Tensor | None = None) -> torch.Tensor:
        # The encoder no longer reads the reference pair: the driving render stands in for its shape. The warped
        # reference image (a training output) is not returned, so the exporter drops it from the graph.
        return self.generator(driving, driving, driving, audio, has_audio)["image"]


def frame_model(person) -> nn.Module:
    """The person's generator as a plain module (CPU, eval, spectral norm folded): what ``export_onnx`` writes,
    and what ``torch.compile`` compiles for the ``compiled`` runtime (inference/live.py)."""
    if isinstance(person, HeadGANPerson):
        generator = _plain_copy(person.generator, person.cfg.model)
        return HeadGANFrameModel(generator, person.reference.cpu(), person.reference_render.cpu()).eval()
    if not isinstance(person, Person):
        raise ExportError(f"cannot export a {type(person).__name__}; give a person from finetune.py, frames with a "
                          "checkpoint, or a HeadGAN reference image with its checkpoint")
    if person.model_config is None:
        raise ExportError("this person does not record the model config its generator was built from")
    model_cfg = config_from_dict({"model": person.model_config}).model
    return TalkingHeadFrameModel(_plain_copy(person.generator, model_cfg), person.psi.cpu()).eval()


def example_inputs(person) -> dict[str, torch.Tensor]:
    """Inputs of the person's frame model for one frame of the person's own face (the export's check)."""
    if isinstance(person, HeadGANPerson):
        inputs = {"driving": person.reference_render.cpu()}
        h = person.cfg.model.headgan
        if person.generator.audio_encoder is not None:
            inputs["audio"] = torch.randn(1, h.audio_mels, h.audio_window, generator=torch.Generator().manual_seed(0))
            inputs["has_audio"] = torch.ones(1, dtype=torch.bool)
        return inputs
    return {"driving": person.draw(person.reference_points[None])}


def metadata(person) -> dict:
    """The JSON stored beside the network (see the module docstring)."""
    common = {"format": FORMAT, "version": VERSION, "image_size": person.image_size, "identity": person.identity}
    if isinstance(person, HeadGANPerson):
        fit = {name: np.asarray(getattr(person.fit, name)).tolist()
               for name in ("identity", "expression", "scale", "rotation", "translation", "valid")}
        return {**common, "family": "headgan", "model": to_dict(person.cfg)["model"], "fit": fit}
    return {**common, "family": "talking_head", "model": person.model_config,
            "landmark_thickness": person.landmark_thickness,
            "reference_points": np.asarray(person.reference_points, np.float64).tolist()}


def export_onnx(person, out_path: str | Path, opset: int = DEFAULT_OPSET) -> dict:
    """Writes the person's frame model to ``out_path`` (atomically) and checks it against PyTorch.

    Returns a summary: path, family, inputs, file size, and ``max_abs_diff`` between onnxruntime's and
    PyTorch's frame for the person's own face.
    """
    import onnx

    model = frame_model(person)
    inputs = example_inputs(person)
    names = list(inputs)
    buffer = io.BytesIO()
    dynamic = None if isinstance(person, HeadGANPerson) else \
        {**{name: {0: "batch"} for name in names}, "image": {0: "batch"}}
    with warnings.catch_warnings():
        # The tracer warns at every Python branch on a shape; those shapes are fixed for one person and size
        # (the reason a HeadGAN file has a fixed batch), and the check below runs the file against PyTorch.
        # The instance norms are the model's own (statistics of each image, in eval mode too), as exported.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message=".*instance_norm.*train=True.*")
        torch.onnx.export(model, tuple(inputs.values()), buffer, dynamo=False, opset_version=opset,
                          input_names=names, output_names=["image"], dynamic_axes=dynamic)
    proto = onnx.load_from_string(buffer.getvalue())
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(metadata(person))
    out_path = Path(out_path)
    with atomic_file(out_path) as f:
        f.write(proto.SerializeToString())
    exported = load_onnx_person(out_path)
    with torch.no_grad():
        expected = reference_output(person, inputs)
    got = exported.model.run(inputs)
    return {"out": str(out_path), "family": exported.family, "inputs": names, "opset": opset,
            "bytes": out_path.stat().st_size, "image_size": person.image_size,
            "max_abs_diff": float((got - expected).abs().max())}


def reference_output(person, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """PyTorch's frame for ``example_inputs``, through the person's own (unfolded) networks."""
    if isinstance(person, HeadGANPerson):
        audio = inputs.get("audio")
        out = person.generator(person.reference, person.reference_render, inputs["driving"].to(person.device),
                               None if audio is None else audio.to(person.device),
                               None if audio is None else inputs["has_audio"].to(person.device))
        return out["image"].cpu()
    return person.generate(inputs["driving"])


# ----------------------------------------------------------------------------------------------------------------
# Running an exported person
# ----------------------------------------------------------------------------------------------------------------


class OnnxFrameModel:
    """An exported file in an onnxruntime session; ``run({name: tensor})`` -> image tensor on the CPU."""

    def __init__(self, path: Path, device: str | torch.device = "cpu", threads: int = 0):
        import onnxruntime as ort

        device = torch.device(device)
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise ExportError("--device cuda with --runtime onnx needs onnxruntime-gpu (pip install "
                                  "onnxruntime-gpu); this onnxruntime has only "
                                  f"{', '.join(ort.get_available_providers())}")
            providers = [("CUDAExecutionProvider", {"device_id": device.index or 0}), *providers]
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as err:  # onnxruntime raises its own exception types, one per failure kind
            first = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
            raise ExportError(f"exported person {path} cannot be loaded by onnxruntime ({first})") from None
        self.input_names = [i.name for i in self.session.get_inputs()]
        # A symbolic batch dimension is a string ("batch"); a HeadGAN file is traced at batch 1.
        self.batch_fixed = isinstance(self.session.get_inputs()[0].shape[0], int)

    def run(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Frames for a batch of inputs (a file of fixed batch 1 is run once per item)."""
        feeds = {name: inputs[name].detach().cpu().numpy() for name in self.input_names}
        count = len(feeds["driving"])
        if not self.batch_fixed or count == 1:
            return torch.from_numpy(self.session.run(["image"], feeds)[0])
        return torch.cat([torch.from_numpy(self.session.run(["image"], {k: v[i:i + 1] for k, v in feeds.items()})[0])
                          for i in range(count)])


class OnnxPerson(Person):
    """A talking-head person whose frames come from an exported file (same drawing and interface as Person)."""

    family = "talking_head"
    model: OnnxFrameModel

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")  # inputs go in and frames come out as CPU arrays whatever the provider

    def generate(self, landmarks: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
        outputs = [self.model.run({"driving": chunk}) for chunk in landmarks.split(batch_size)]
        return torch.cat(outputs) if outputs else landmarks.new_zeros((0, 3, self.image_size, self.image_size))


@dataclass
class OnnxHeadGANPerson:
    """A HeadGAN person whose frames come from an exported file: what ``reenact_headgan`` needs of a person."""

    model: OnnxFrameModel
    cfg: object
    fit: object
    identity: str = ""
    family = "headgan"

    @property
    def image_size(self) -> int:
        return self.cfg.model.image_size

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def generate(self, renders: torch.Tensor, audio: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """As ``HeadGANPerson.generate``: renders (N, 3, S, S) (+ audio or None) -> {"image": frames}."""
        inputs = {"driving": renders}
        if "audio" in self.model.input_names:
            h = self.cfg.model.headgan
            n = renders.shape[0]
            inputs["audio"] = torch.zeros(n, h.audio_mels, h.audio_window) if audio is None else audio.float()
            inputs["has_audio"] = torch.full((n,), audio is not None, dtype=torch.bool)
        return {"image": self.model.run(inputs)}


def load_onnx_person(path: str | Path, device: str | torch.device = "cpu",
                     threads: int = 0) -> OnnxPerson | OnnxHeadGANPerson:
    """An exported person (``export_onnx``) ready to generate with onnxruntime (``threads`` CPU threads per
    operator; 0: onnxruntime's choice, one per core)."""
    from dataset.face3d.fit import FaceFit

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"exported person not found: {path}")
    if path.stat().st_size == 0:
        raise ExportError(f"exported person {path} is empty (0 bytes): an interrupted copy or export")
    model = OnnxFrameModel(path, device, threads)
    raw = model.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    try:
        meta = json.loads(raw) if raw else {}
    except json.JSONDecodeError:
        meta = {}
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise ExportError(f"{path} is an ONNX file but not a person exported by python -m inference.export "
                          f"(no '{FORMAT}' version {VERSION} metadata)")
    cfg = config_from_dict({"model": meta["model"]})
    if meta["family"] == "headgan":
        return OnnxHeadGANPerson(model, cfg, FaceFit(**{k: np.asarray(v) for k, v in meta["fit"].items()}),
                                 meta["identity"])
    person = OnnxPerson(None, torch.zeros(0), np.asarray(meta["reference_points"], np.float32), meta["image_size"],
                        meta["landmark_thickness"], meta["identity"], meta["model"])
    person.model = model
    return person


# ----------------------------------------------------------------------------------------------------------------
# Command
# ----------------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    from dataset.landmarks import BACKENDS, DetectorLoadError, make_detector
    from inference.persons import load_any_person
    from training.checkpoint import CheckpointError
    from utils.cli import check_at_least, check_output_file
    from utils.safe_load import UnsafeOrDamagedFile

    parser = argparse.ArgumentParser(prog="python -m inference.export", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--person", required=True, help="person file (.pt, finetune.py), or frames / one image of "
                        "the person with --checkpoint (talking-head feed-forward, or HeadGAN one-shot)")
    parser.add_argument("--checkpoint", help="meta-training checkpoint, for person frames or a HeadGAN reference")
    parser.add_argument("--out", required=True, help="output .onnx file")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                        help=f"ONNX opset, {OPSETS.start}..{OPSETS.stop - 1} (default {DEFAULT_OPSET})")
    parser.add_argument("--backend", default="dlib", choices=BACKENDS, help="landmark detector for person frames")
    parser.add_argument("--person-frames", type=int, default=32, help="frames embedded in feed-forward mode")
    parser.add_argument("--reference-frame", type=int, default=0, help="HeadGAN: frame used as the reference")
    parser.add_argument("--mesh-backend", default="mediapipe", help="HeadGAN: 3D face backend")
    args = parser.parse_args(argv)
    try:
        if args.opset not in OPSETS:
            raise ExportError(f"--opset must be {OPSETS.start}..{OPSETS.stop - 1}, got {args.opset}")
        check_at_least({"--person-frames": args.person_frames}, 1)
        check_at_least({"--reference-frame": args.reference_frame}, 0)
        check_output_file(args.out, {"--person": args.person, "--checkpoint": args.checkpoint}, suffixes=(".onnx",))
        if Path(args.person).suffix == ".onnx":
            raise ExportError(f"{args.person} is exported already")
        person, _ = load_any_person(args.person, args.checkpoint, make_detector(args.backend), "cpu",
                                    args.person_frames, args.reference_frame, args.mesh_backend)
        summary = export_onnx(person, args.out, args.opset)
    except (CheckpointError, DetectorLoadError, FileNotFoundError, UnsafeOrDamagedFile, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {summary['out']}: {summary['family']} person, {summary['image_size']}x{summary['image_size']}, "
          f"inputs {', '.join(summary['inputs'])}, {summary['bytes'] / 2 ** 20:.1f} MiB, opset {summary['opset']}; "
          f"onnxruntime vs PyTorch on the person's own face: max abs diff {summary['max_abs_diff']:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
