"""The training dataset store and its torch Datasets: format, splits, episodes, flips, workers, inspection."""
import json
import os
import pickle
import shutil
import stat

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from bench import dataloader as bench
from dataset import inspect as inspect_store
from dataset import store
from dataset.landmarks import draw_landmarks, flip_landmarks
from dataset.store import FewShotDataset, MetaDataset, StoreError
from dataset.voxceleb1.extract_landmark import extract_landmarks

SIZE = 64
TEST_IDENTITIES = {"id00007", "id00008"}


@pytest.fixture(scope="module")
def store64(demo_clips, tmp_path_factory):
    """A 64x64 store of the demo clips, 12 frames per video; two identities are the test split."""
    out = tmp_path_factory.mktemp("store64") / "store"
    extract_landmarks(demo_clips, out, backend="dlib", size=SIZE, frames_per_video=12,
                      test_identities=TEST_IDENTITIES)
    return out


def test_index_describes_every_stored_video(store64):
    index = store.load_index(store64)
    assert index["image_size"] == SIZE and index["encoding"] == "jpeg"
    assert len(index["videos"]) == 16
    for entry in index["videos"]:
        folder = store64 / entry["path"]
        assert np.load(folder / "points.npy").shape == (entry["frames"], 68, 2)
        assert len(np.load(folder / "offsets.npy")) == entry["frames"] + 1
        assert json.loads((folder / "meta.json").read_text())["frames"] == entry["frames"]
    frames = store.read_frames(store64 / index["videos"][0]["path"], "jpeg", [0, 2])
    assert [f.shape for f in frames] == [(SIZE, SIZE, 3)] * 2 and frames[0].dtype == np.uint8


def test_split_is_by_identity(store64, tmp_path):
    index = store.load_index(store64)
    by_split = {s: {e["identity"] for e in index["videos"] if e["split"] == s} for s in ("train", "test")}
    assert by_split["test"] == TEST_IDENTITIES and not by_split["train"] & by_split["test"]
    for split in ("train", "test"):
        rows = [e["video_index"] for e in index["videos"] if e["split"] == split]
        assert rows == list(range(index["num_videos"][split]))

    copy = shutil.copytree(store64, tmp_path / "copy")
    store.main(["index", str(copy), "--test-fraction", "0.5"])
    hashed = store.load_index(copy)
    assert hashed == store.build_index(copy, None, 0.5)                     # deterministic
    train = {e["identity"] for e in hashed["videos"] if e["split"] == "train"}
    test = {e["identity"] for e in hashed["videos"] if e["split"] == "test"}
    assert train and test and not train & test


def test_parse_identities_reads_lists_and_meta_files(tmp_path):
    listing = tmp_path / "test_ids.txt"
    listing.write_text("# VoxCeleb2 test\nid00017, VGGFace2 n000017, m, test\n\nid00061\n")
    assert store.parse_identities(str(listing)) == {"id00017", "id00061"}
    assert store.parse_identities("id1,id2") == {"id1", "id2"}


def test_meta_dataset_episode_shapes_ranges_and_distinct_frames(store64):
    dataset = MetaDataset(store64, "train", k_shots=4, landmark_thickness=2)
    index = store.load_index(store64)
    assert dataset.num_videos == index["num_videos"]["train"] == 12
    assert len(dataset) == sum(e["frames"] >= 5 for e in index["videos"] if e["split"] == "train")
    for i in range(len(dataset)):
        item = dataset[i]
        assert item["frames"].shape == item["landmarks"].shape == (5, 3, SIZE, SIZE)
        assert item["frames"].dtype == torch.float32 and item["points"].shape == (5, 68, 2)
        for key in ("frames", "landmarks"):
            assert item[key].min() >= -1 and item[key].max() <= 1
        assert (item["landmarks"] > -1).any() and item["frames"].std() > 0.1
        assert len(set(item["frame_indices"].tolist())) == 5
        assert 0 <= item["video_index"] < dataset.num_videos
        assert item["identity"] not in TEST_IDENTITIES
        assert ((item["points"] > -SIZE * 0.1) & (item["points"] < SIZE * 1.1)).all()


def test_short_videos_are_skipped_but_keep_their_row_of_w(tmp_path):
    info = store.open_store_for_writing(tmp_path, 16, "raw")
    rng = np.random.default_rng(0)
    for identity, video, frames in (("id1", "a", 5), ("id1", "b", 2), ("id2", "c", 3), ("id3", "d", 0)):
        images = [rng.integers(0, 255, (16, 16, 3), dtype=np.uint8) for _ in range(frames)]
        store.write_video(tmp_path, info, identity, video, images, rng.uniform(0, 16, (frames, 68, 2)), {})
    store.build_index(tmp_path, test_identities=set())
    rows = {k: [(item["identity"], item["video_index"]) for item in MetaDataset(tmp_path, k_shots=k)]
            for k in (1, 2, 4)}
    assert rows[1] == [("id1", 0), ("id1", 1), ("id2", 2)]                   # the empty video is not indexed
    assert rows[2] == [("id1", 0), ("id2", 2)] and rows[4] == [("id1", 0)]
    assert MetaDataset(tmp_path, k_shots=4).num_videos == 3


def test_items_are_reproducible_from_seed_epoch_and_index(store64):
    a, b = MetaDataset(store64, k_shots=4, seed=3), MetaDataset(store64, k_shots=4, seed=3)
    for key in ("frames", "landmarks", "points", "frame_indices"):
        assert torch.equal(a[2][key], b[2][key])
    b.set_epoch(1)
    assert torch.equal(b[2]["frames"], a[(2, 1)]["frames"])
    changed = [not torch.equal(a[i]["frame_indices"], b[i]["frame_indices"]) for i in range(len(a))]
    assert any(changed)


def test_flip_mirrors_images_and_relabels_points(store64):
    plain = MetaDataset(store64, k_shots=4, flip_prob=0.0, seed=5)
    flipped = MetaDataset(store64, k_shots=4, flip_prob=1.0, seed=5)
    for i in range(4):
        p, f = plain[i], flipped[i]
        assert torch.equal(p["frame_indices"], f["frame_indices"])
        assert torch.equal(f["frames"], p["frames"].flip(-1))
        expected = flip_landmarks(p["points"].numpy(), SIZE)
        assert np.allclose(f["points"].numpy(), expected)
        # The subject's right eye (36-41) stays labelled right: after mirroring it is the one on the image's left.
        assert f["points"][0, 36:42, 0].mean() < f["points"][0, 42:48, 0].mean()
        drawn = draw_landmarks(expected[0], SIZE, 1)
        assert torch.equal(f["landmarks"][0], torch.from_numpy(drawn).permute(2, 0, 1).float() / 127.5 - 1)


def test_image_size_resizes_frames_and_scales_points(store64):
    full = MetaDataset(store64, k_shots=2, flip_prob=0.0)
    half = MetaDataset(store64, k_shots=2, flip_prob=0.0, image_size=SIZE // 2)
    assert half[0]["frames"].shape == (3, 3, SIZE // 2, SIZE // 2)
    assert np.allclose(half[0]["points"].numpy(), (full[0]["points"].numpy() + 0.5) / 2 - 0.5, atol=1e-4)


def test_uint8_output_is_the_float_output_before_scaling(store64):
    as_float = MetaDataset(store64, k_shots=2)[1]
    as_bytes = MetaDataset(store64, k_shots=2, as_uint8=True)[1]
    assert as_bytes["frames"].dtype == torch.uint8
    assert torch.equal(store.to_unit_range(as_bytes["frames"]), as_float["frames"])


def test_datasets_pickle_and_load_in_worker_processes(store64):
    dataset = MetaDataset(store64, k_shots=3)
    assert torch.equal(pickle.loads(pickle.dumps(dataset))[1]["frames"], dataset[1]["frames"])
    loader = DataLoader(dataset, batch_size=2, num_workers=2)
    batch = next(iter(loader))
    assert batch["frames"].shape == (2, 4, 3, SIZE, SIZE) and batch["video_index"].tolist() == [0, 1]
    assert torch.equal(batch["frames"][1], dataset[1]["frames"])
    few = FewShotDataset.from_store(store64, "id00008/demo0015", t_shots=3)
    assert torch.equal(pickle.loads(pickle.dumps(few))[0]["frame"], few[0]["frame"])


def test_test_split_and_too_short_videos(store64):
    test = MetaDataset(store64, "test", k_shots=4)
    assert {test[i]["identity"] for i in range(len(test))} <= TEST_IDENTITIES
    with pytest.raises(StoreError, match="K\\+1=41"):
        MetaDataset(store64, k_shots=40)


def test_few_shot_dataset_from_store_and_from_arrays(store64):
    few = FewShotDataset.from_store(store64, "id00008/demo0015", t_shots=3, image_size=32)
    assert len(few) == 3 and few.identity == "id00008"
    item = few[0]
    assert item["frame"].shape == item["landmarks"].shape == (3, 32, 32) and item["points"].shape == (68, 2)
    episode = few.episode()
    assert episode["frames"].shape == (3, 3, 32, 32) and episode["points"].shape == (3, 68, 2)
    assert torch.equal(episode["frames"][0], item["frame"])

    mirrored = FewShotDataset(few.frames, few.points, flip_prob=1.0)
    assert torch.equal(mirrored[1]["frame"], few[1]["frame"].flip(-1))
    assert np.allclose(mirrored[1]["points"].numpy(), flip_landmarks(few.points[1], 32))
    with pytest.raises(ValueError, match="T >= 1"):
        FewShotDataset([], np.zeros((0, 68, 2)))


def test_raw_and_jpeg_encodings_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    smooth = [cv2.GaussianBlur(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8), (0, 0), 2) for _ in range(3)]
    points = rng.uniform(0, 32, (3, 68, 2)).astype(np.float32)
    for encoding in store.ENCODINGS:
        info = store.open_store_for_writing(tmp_path / encoding, 32, encoding)
        folder = store.write_video(tmp_path / encoding, info, "id1", "v1", smooth, points, {"sources": []})
        read = store.read_frames(folder, encoding, [2, 0])
        error = max(np.abs(r.astype(int) - smooth[i].astype(int)).mean() for r, i in zip(read, [2, 0]))
        assert error == 0 if encoding == "raw" else error < 3
        assert np.array_equal(store.read_points(folder), points)
    with pytest.raises(StoreError, match="image_size=32"):
        store.open_store_for_writing(tmp_path / "raw", 64, "raw")
    with pytest.raises(StoreError, match="python -m dataset.store index"):
        MetaDataset(tmp_path / "raw")


def test_inspect_writes_a_grid_of_frames_and_landmarks(store64, tmp_path):
    out = inspect_store.main([str(store64), "--out", str(tmp_path / "grid.png"), "--videos", "3", "--frames", "2"])
    grid = cv2.imread(str(out))
    gap = inspect_store.GAP
    assert grid.shape == (3 * SIZE + 2 * gap, 2 * 3 * SIZE + gap, 3)


def test_bench_prints_throughput_json(store64, capsys):
    result = bench.main(["--data", str(store64), "--workers", "0", "--k", "2", "--size", "32", "--seconds", "0.2"])
    assert json.loads(capsys.readouterr().out) == result
    assert result["per_worker_samples_per_s"] > 0 and result["total_samples_per_s"] > 0


def test_store_files_get_the_umask_permissions_so_a_group_can_share_them(tmp_path):
    from utils.atomic import atomic_file

    old = os.umask(0o002)
    try:
        info = store.open_store_for_writing(tmp_path, 16, "raw")
        store.write_video(tmp_path, info, "id1", "a", [np.zeros((16, 16, 3), np.uint8)], np.ones((1, 68, 2)), {})
        store.build_index(tmp_path, test_identities=set())
        os.umask(0o077)
        with atomic_file(tmp_path / "private.bin") as f:
            f.write(b"x")
    finally:
        os.umask(old)
    modes = {name: stat.S_IMODE((tmp_path / name).stat().st_mode) for name in (store.INFO_FILE, store.INDEX_FILE,
                                                                                "videos/id1/a/points.npy")}
    assert modes == {store.INFO_FILE: 0o664, store.INDEX_FILE: 0o664, "videos/id1/a/points.npy": 0o664}
    assert stat.S_IMODE((tmp_path / "private.bin").stat().st_mode) == 0o600
