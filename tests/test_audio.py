"""Audio features for HeadGAN: mel bands, frame alignment through real mp4 files and the store, demo soundtracks."""
import json

import cv2
import numpy as np
import pytest

from dataset import audio, demo, store
from dataset.voxceleb2.extract_frames import extract_frames

FPS, SR = 25, audio.SAMPLE_RATE
PER_FRAME = SR // FPS                                    # 640 samples of audio per video frame


def burst_track(frames: int, bursts: list[int], length: int = 1, seed: int = 0) -> np.ndarray:
    """Faint noise with a harmonic tone burst (200 Hz and 14 harmonics) over frames [k, k + length) per k."""
    rng = np.random.default_rng(seed)
    samples = 0.001 * rng.standard_normal(frames * PER_FRAME)
    t = np.arange(length * PER_FRAME) / SR
    tone = sum(np.sin(2 * np.pi * 200 * h * t) / h for h in range(1, 16))
    for k in bursts:
        samples[k * PER_FRAME:(k + length) * PER_FRAME] += 0.3 * tone
    return samples.astype(np.float32)


def write_video(path, frames: int, samples: np.ndarray | None = None):
    """A 32x32 mp4v clip at 25 fps (frame i has grey level i), with ``samples`` muxed in as AAC if given."""
    path.parent.mkdir(parents=True, exist_ok=True)
    silent = path.with_name(f"silent-{path.name}") if samples is not None else path
    writer = cv2.VideoWriter(str(silent), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (32, 32))
    for i in range(frames):
        writer.write(np.full((32, 32, 3), 4 * i % 256, np.uint8))
    writer.release()
    if samples is not None:
        audio.add_audio_track(silent, samples, path)
        silent.unlink()
    return path


def centre_energy(features: np.ndarray) -> np.ndarray:
    """Per frame: the mean normalised level over the bands of the hop at the frame's time (column 7 of 16)."""
    return features[:, :, (audio.WINDOW - 1) // 2].mean(axis=1)


def peaks(energy: np.ndarray) -> list[int]:
    """Frames that are local maxima above the middle of the energy range."""
    threshold = (energy.min() + energy.max()) / 2
    return [i for i in range(len(energy)) if energy[i] > threshold
            and energy[i] >= energy[max(i - 1, 0)] and energy[i] >= energy[min(i + 1, len(energy) - 1)]]


# ----------------------------------------------------------------------------------------------------------------
# Spectrogram and windows
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("frequency", [180.0, 440.0, 1000.0, 2700.0, 6100.0])
def test_pure_tone_lands_in_the_band_containing_its_frequency(frequency):
    t = np.arange(SR) / SR
    spectrogram = audio.log_mel_spectrogram((0.5 * np.sin(2 * np.pi * frequency * t)).astype(np.float32))
    assert spectrogram.shape == (SR // 160 + 1, audio.N_MELS) and spectrogram.dtype == np.float32
    level = spectrogram[10:-10].mean(axis=0)
    band = int(level.argmax())
    edges = audio.mel_band_edges()
    assert edges[band] < frequency < edges[band + 2]                     # inside the band's triangle
    assert band == int(np.abs(edges[1:-1] - frequency).argmin())         # and the band centred nearest
    far = [b for b in range(audio.N_MELS) if abs(b - band) > 3]
    assert level[band] - level[far].max() > 30.0                        # dB


def test_filterbank_covers_every_band_up_to_nyquist():
    bank = audio.mel_filterbank(audio.N_MELS, 512, SR)
    assert bank.shape == (audio.N_MELS, 257)
    assert (bank.max(axis=1) > 0.5).all()                                # no empty band, even the narrow low ones
    centres = audio.mel_band_edges()[1:-1]
    assert np.all(np.diff(centres) > 0) and centres[-1] < SR / 2
    with pytest.raises(ValueError, match="fmin < fmax"):
        audio.mel_band_edges(40, SR, fmin=9000.0)


def test_hop_j_is_centred_at_j_hops():
    samples = np.zeros(SR, np.float32)
    samples[[4000, 8000]] = 1.0                                          # clicks at 0.25 s and 0.5 s
    level = audio.log_mel_spectrogram(samples).mean(axis=1)
    loud = np.flatnonzero(level > level.max() - 3.0)
    assert set(loud) == {25, 50}
    with pytest.raises(ValueError, match="whole number of samples"):
        audio.log_mel_spectrogram(samples, hop_seconds=0.01003)
    with pytest.raises(ValueError, match="mono"):
        audio.log_mel_spectrogram(np.zeros((2, 100), np.float32))


def test_frame_windows_are_centred_and_padded_with_silence_never_wrapped():
    hops = 40
    spectrogram = np.tile(np.arange(hops, dtype=np.float32)[:, None] + 100.0, (1, 3))
    spectrogram[:, 2] += 50.0                                           # a band with its own silence level
    windows = audio.frame_windows(spectrogram, [0.2, 0.0, 10.0], window=16)
    assert windows.shape == (3, 3, 16) and windows.dtype == np.float32
    # Time 0.2 s is hop 20: the window's two middle columns straddle it.
    np.testing.assert_array_equal(windows[0, 0], np.arange(13, 29) + 100.0)
    # At time 0 the first 7 columns lie before the clip: each band's minimum, not the clip's end.
    np.testing.assert_array_equal(windows[1, 0, :7], np.full(7, 100.0))
    np.testing.assert_array_equal(windows[1, 2, :7], np.full(7, 150.0))
    np.testing.assert_array_equal(windows[1, 0, 7:], np.arange(0, 9) + 100.0)
    np.testing.assert_array_equal(windows[2], np.repeat([[100.0], [100.0], [150.0]], 16, axis=1))
    with pytest.raises(ValueError, match="spectrogram"):
        audio.frame_windows(np.zeros((0, 40)), [0.0])


def test_normalisation_removes_loudness_and_keeps_constant_bands_at_zero():
    rng = np.random.default_rng(1)
    spectrogram = rng.normal(-40.0, 6.0, (200, 4))
    spectrogram[:, 3] = -80.0
    quiet = audio.normalise(spectrogram)
    loud = audio.normalise(spectrogram + 25.0)
    np.testing.assert_allclose(quiet, loud, atol=1e-5)
    np.testing.assert_allclose(quiet[:, :3].mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(quiet[:, :3].std(axis=0), 1.0, atol=1e-4)
    assert np.all(quiet[:, 3] == 0.0)


# ----------------------------------------------------------------------------------------------------------------
# Alignment through mp4 files
# ----------------------------------------------------------------------------------------------------------------


BURSTS = [9, 24, 39]                                     # multiples of 3, so every-3rd-frame sampling holds them
FRAMES = 48


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """VoxCeleb2-style clip tree: id00001/talk (two clips with audio), id00001/mute (no audio), id00002/broken."""
    root = tmp_path_factory.mktemp("clips")
    write_video(root / "id00001/talk/00001.mp4", FRAMES, burst_track(FRAMES, BURSTS))
    write_video(root / "id00001/talk/00002.mp4", 30, burst_track(30, [5], seed=1))
    write_video(root / "id00001/mute/00001.mp4", 12)
    broken = root / "id00002/broken/00001.mp4"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"not really a video" * 20)
    return root


def test_video_features_peak_exactly_at_the_burst_frames(clips):
    features = audio.video_audio_features(clips / "id00001/talk/00001.mp4")
    assert features.shape == (FRAMES, audio.N_MELS, audio.WINDOW) and features.dtype == np.float32
    assert peaks(centre_energy(features)) == BURSTS
    # A burst one frame long lights the middle of that frame's window: centred on column 7 of 16, the hop at
    # the frame's time (k + 0.5) / 25 s, and spread over the 40 ms the frame lasts.
    for k in BURSTS:
        profile = features[k].mean(axis=0)
        weight = profile - profile.min()
        assert abs((weight * np.arange(audio.WINDOW)).sum() / weight.sum() - 7.0) < 0.3, profile.round(1)
        assert profile[5:10].min() > profile[[0, 1, 2, 3, 11, 12, 13, 14, 15]].max() + 1.0, profile.round(1)


def test_burst_onsets_of_longer_sounds_start_at_their_frames(tmp_path):
    path = write_video(tmp_path / "long.mp4", 40, burst_track(40, [6, 25], length=6))
    energy = centre_energy(audio.video_audio_features(path))
    loud = energy > (energy.min() + energy.max()) / 2
    onsets = [i for i in range(1, 40) if loud[i] and not loud[i - 1]]
    offsets = [i for i in range(1, 40) if loud[i - 1] and not loud[i]]
    assert onsets == [6, 25] and offsets == [12, 31]


def test_frame_selection_and_explicit_fps_give_the_same_rows(clips):
    path = clips / "id00001/talk/00001.mp4"
    every = audio.video_audio_features(path)
    chosen = audio.video_audio_features(path, fps=25.0, frame_indices=[0, 9, 30])
    np.testing.assert_array_equal(chosen, every[[0, 9, 30]])
    assert audio.video_audio_features(path, num_frames=5).shape == (5, audio.N_MELS, audio.WINDOW)
    # Frames past the soundtrack's end are silence, not an error.
    beyond = audio.video_audio_features(path, frame_indices=[500])[0]
    np.testing.assert_array_equal(beyond, np.repeat(every.min(axis=(0, 2))[:, None], audio.WINDOW, axis=1))
    with pytest.raises(ValueError, match="not both"):
        audio.video_audio_features(path, num_frames=3, frame_indices=[1])


def test_no_audio_is_none_and_a_corrupt_file_is_an_audio_error(clips, tmp_path):
    assert audio.decode_audio(clips / "id00001/mute/00001.mp4") is None
    assert audio.video_audio_features(clips / "id00001/mute/00001.mp4") is None
    samples = audio.decode_audio(clips / "id00001/talk/00001.mp4")
    assert samples.dtype == np.float32 and len(samples) == FRAMES * PER_FRAME and np.abs(samples).max() <= 1.0
    with pytest.raises(audio.AudioError, match="Invalid data"):
        audio.decode_audio(clips / "id00002/broken/00001.mp4")
    with pytest.raises(audio.AudioError, match="No such file"):
        audio.decode_audio(tmp_path / "missing.mp4")


# ----------------------------------------------------------------------------------------------------------------
# The store
# ----------------------------------------------------------------------------------------------------------------


def add_stored_video(root, identity, video, sources):
    info = store.open_store_for_writing(root, 8, "raw")
    frames = [np.zeros((8, 8, 3), np.uint8)] * len(sources)
    store.write_video(root, info, identity, video, frames, np.zeros((len(sources), 68, 2)), {"sources": sources})
    store.build_index(root)  # as extract_landmark.py does at the end of its run
    return store.video_dir(root, identity, video)


def test_store_round_trip_is_float16_atomic_and_checks_the_frame_count(tmp_path):
    folder = add_stored_video(tmp_path / "store", "id00001", "v", ["00001/00000", "00001/00001"])
    assert audio.read_audio_features(folder) is None
    features = np.random.default_rng(0).normal(size=(2, audio.N_MELS, audio.WINDOW)).astype(np.float32)
    audio.write_audio_features(folder, features)
    assert np.load(folder / audio.AUDIO_FILE).dtype == np.float16
    read = audio.read_audio_features(folder)
    assert read.dtype == np.float32 and read.shape == features.shape
    np.testing.assert_allclose(read, features, atol=2e-3)
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) == []
    with pytest.raises(ValueError, match="stores 2 frames"):
        audio.write_audio_features(folder, features[:1])
    with pytest.raises(ValueError, match="finite"):
        audio.write_audio_features(folder, np.full((2, 40, 16), np.nan))


def test_extract_audio_maps_sparse_stored_frames_to_their_times(clips, tmp_path, capsys):
    root = tmp_path / "store"
    sources = [f"00001/{i:05d}" for i in range(0, FRAMES, 3)] + ["00002/00005", "00002/00020"]
    talk = add_stored_video(root, "id00001", "talk", sources)
    mute = add_stored_video(root, "id00001", "mute", ["00001/00000", "00001/00006"])
    add_stored_video(root, "id00002", "broken", ["00001/00000"])
    summary = audio.extract_audio(root, clips)
    assert summary.counts["done"] == 2 and summary.counts["failed"] == 1
    assert summary.totals["videos_with_audio"] == 1 and summary.totals["videos_without_audio"] == 1
    assert "1 failed" in capsys.readouterr().out
    assert audio.read_audio_features(mute) is None and not (mute / audio.AUDIO_FILE).exists()
    failures = [json.loads(line) for line in (root / "audio_failures.jsonl").read_text().splitlines()]
    assert [f["key"] for f in failures] == ["id00002/broken"] and "AudioError" in failures[0]["error"]

    stored = audio.read_audio_features(talk)
    assert stored.shape == (len(sources), audio.N_MELS, audio.WINDOW)
    first = audio.video_audio_features(clips / "id00001/talk/00001.mp4")
    second = audio.video_audio_features(clips / "id00001/talk/00002.mp4")
    np.testing.assert_allclose(stored[:16], first[::3], atol=5e-3)
    np.testing.assert_allclose(stored[16:], second[[5, 20]], atol=5e-3)
    energy = centre_energy(stored[:16])
    assert [3 * i for i in peaks(energy)] == BURSTS                   # row 3, 8, 13 <- frames 9, 24, 39
    assert centre_energy(stored[16:])[0] > centre_energy(stored[16:])[1] + 1.0

    # Resumable: a rerun skips the finished video and retries the others; --overwrite redoes it.
    again = audio.extract_audio(root, clips)
    assert again.counts["skipped"] == 1 and again.counts["failed"] == 1
    redone = audio.extract_audio(root, clips, overwrite=True, shard=(0, 1))
    assert redone.counts["done"] == 2 and (root / "audio_failures.shard-0-of-1.jsonl").is_file()


def test_stores_of_extracted_frame_folders_map_back_to_clips(clips, tmp_path):
    frames_root = tmp_path / "frames"
    extract_frames(clips, frames_root, frames_per_video=10)
    index = json.loads((frames_root / "id00001/talk/frames.json").read_text())
    kept = ["0000.jpg", "0002.jpg", "0003.jpg", "0007.jpg", "0009.jpg"]        # as if some had no face
    root = tmp_path / "store"
    folder = add_stored_video(root, "id00001", "talk", kept)
    with_index = audio.extract_audio(root, clips, frame_folders=frames_root)
    assert with_index.counts["done"] == 1
    from_index = audio.read_audio_features(folder)
    (folder / audio.AUDIO_FILE).unlink()
    assert audio.extract_audio(root, clips, frames_per_video=10).counts["done"] == 1
    np.testing.assert_array_equal(audio.read_audio_features(folder), from_index)
    expected = []
    for name in kept:
        clip, frame = index[name].split("/")
        expected.append(audio.video_audio_features(clips / "id00001/talk" / f"{clip}.mp4",
                                                   frame_indices=[int(frame)])[0])
    np.testing.assert_allclose(from_index, np.stack(expected), atol=5e-3)
    (folder / audio.AUDIO_FILE).unlink()
    failed = audio.extract_audio(root, clips)
    assert failed.counts["failed"] == 1 and "--frame-folders" in failed.failures[0]["error"]


def test_command_line(clips, tmp_path, capsys):
    root = tmp_path / "store"
    add_stored_video(root, "id00001", "talk", ["00001/00009"])
    summary = audio.main([str(root), "--videos", str(clips), "--workers", "1"])
    assert summary.counts["done"] == 1 and "videos: 1 done" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        audio.main([str(tmp_path / "nowhere"), "--videos", str(clips)])
    assert exit_info.value.code == 2 and "not a dataset store" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------------
# Demo soundtracks
# ----------------------------------------------------------------------------------------------------------------


def test_demo_clip_loudness_follows_the_mouth_opening(tmp_path):
    size, frames, seed = 64, 48, 0
    out = demo.build_demo_dataset(tmp_path, identities=2, clips_per_identity=1, frames=frames, size=size,
                                  seed=seed)
    manifest = json.loads((out / demo.MANIFEST_NAME).read_text())
    assert manifest["audio"]["sample_rate"] == audio.SAMPLE_RATE
    pitches = [person["voice_pitch_hz"] for person in manifest["identities"]]
    assert all(100 <= p <= 220 for p in pitches) and pitches[0] != pitches[1]
    for person in range(2):
        path = out / manifest["identities"][person]["clips"][0]["path"]
        samples = audio.decode_audio(path)
        assert samples is not None and len(samples) == frames * PER_FRAME
        # The mouth signal the clip was rendered with, drawn as build_demo_dataset draws it.
        recipe = demo.RECIPES[person]
        _, points = demo.make_identity(*demo.framed_sources(size)[recipe.source], recipe)
        motion = demo.sample_motion(np.random.default_rng([seed, demo.MOTION_STREAM, person, 0]), frames, size,
                                    demo._face_height(points))
        rms = np.sqrt((samples.reshape(frames, PER_FRAME).astype(np.float64) ** 2).mean(axis=1))
        assert np.corrcoef(rms, motion.mouth)[0, 1] > 0.85
        closed = motion.mouth < 0.05 * motion.mouth.max()
        assert closed.any() and rms[closed].max() < 0.3 * rms.max()
        # The features a model sees carry the mouth too.
        features = audio.video_audio_features(path)
        assert np.corrcoef(centre_energy(features), motion.mouth)[0, 1] > 0.7


def test_a_store_without_its_index_is_a_clear_error(tmp_path):
    store.open_store_for_writing(tmp_path / "store", 8, "raw")
    (tmp_path / "clips").mkdir()
    with pytest.raises(store.StoreError, match="python -m dataset.store index"):
        audio.extract_audio(tmp_path / "store", tmp_path / "clips")
