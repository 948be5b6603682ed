"""Shared fixtures: small demo data built once per test session by the real pipeline."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def demo_clips(tmp_path_factory):
    """Demo talking-head clips (VoxCeleb2 layout): 8 identities x 2 clips x 16 frames at 128x128."""
    from dataset.demo import build_demo_dataset

    return build_demo_dataset(tmp_path_factory.mktemp("demo_clips"), identities=8, clips_per_identity=2,
                              frames=16, size=128, seed=0)


@pytest.fixture(scope="session")
def demo_store(demo_clips, tmp_path_factory):
    """A 32x32 training store of the demo clips (dlib landmarks); identity id00008 is the test split."""
    from dataset.voxceleb1.extract_landmark import extract_landmarks

    out = tmp_path_factory.mktemp("demo_store") / "store"
    extract_landmarks(demo_clips, out, backend="dlib", size=32, frames_per_video=16, min_frames=5,
                      test_identities={"id00008"}, workers=1)
    return out


@pytest.fixture(scope="session")
def headgan_store(demo_clips, tmp_path_factory):
    """The demo clips as a 64x64 HeadGAN store: landmarks (dlib), 3D face fits (MediaPipe) and audio features;
    identity id00008 is the test split."""
    from dataset.audio import extract_audio
    from dataset.face3d.extract_mesh import extract_meshes
    from dataset.voxceleb1.extract_landmark import extract_landmarks

    out = tmp_path_factory.mktemp("headgan_store") / "store"
    extract_landmarks(demo_clips, out, backend="dlib", size=64, frames_per_video=16, min_frames=5,
                      test_identities={"id00008"}, workers=1)
    extract_meshes(out)
    extract_audio(out, demo_clips)
    return out
