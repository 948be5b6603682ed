"""Damaged stores: ``python -m dataset.store verify`` finds every damaged video, ``--quarantine`` takes them out of
the index, and the training Datasets skip and count a sample that cannot be read instead of stopping."""
from __future__ import annotations

import json
import logging
import pickle

import numpy as np
import pytest
import torch

from dataset import store
from dataset.face3d import mesh
from dataset.face3d.fit import FaceFit, write_face3d
from dataset.headgan_data import HeadGANDataset, collate
from dataset.store import FewShotDataset, MetaDataset, StoreError

SIZE, FRAMES = 32, 6
VIDEOS = [("id1", "a"), ("id1", "b"), ("id2", "c"), ("id2", "d"), ("id3", "e")]


def make_store(root, encoding="jpeg"):
    """Five whole 32x32 videos of 6 frames, all in the train split."""
    info = store.open_store_for_writing(root, SIZE, encoding)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    for n, (identity, video) in enumerate(VIDEOS):
        frames = [np.stack([(xx * 7 + n * 40 + i * 9) % 256, (yy * 5) % 256, np.full_like(xx, 30 * i)],
                           -1).astype(np.uint8) for i in range(FRAMES)]
        points = rng.uniform(4, SIZE - 4, (FRAMES, 68, 2))
        store.write_video(root, info, identity, video, frames, points, {})
    store.build_index(root, test_identities=set())
    return root


def folder(root, name):
    identity, video = name.split("/")
    return store.video_dir(root, identity, video)


def truncate_frames(root, name):
    path = folder(root, name) / "frames.bin"
    path.write_bytes(path.read_bytes()[:-50])


def set_points(root, name, value, frame=2):
    path = folder(root, name) / "points.npy"
    points = np.load(path)
    points[frame, 10] = value
    np.save(path, points)


def test_verify_lists_every_damaged_video_and_quarantine_takes_them_out_without_deleting(tmp_path, capsys):
    root = make_store(tmp_path / "store")
    before = {(e["identity"], e["video"]): e["video_index"] for e in store.load_index(root)["videos"]}
    assert store.main(["verify", str(root)]) == 0
    assert len(FewShotDataset.from_store(root, "id2/c", t_shots=3)) == 3
    truncate_frames(root, "id1/b")
    set_points(root, "id2/c", np.nan)
    set_points(root, "id2/d", 1e7)
    blob = folder(root, "id3/e") / "frames.bin"
    data = bytearray(blob.read_bytes())
    offsets = np.load(folder(root, "id3/e") / "offsets.npy")
    data[offsets[3] + 2:offsets[4] - 2] = bytes(offsets[4] - offsets[3] - 4)   # frame 3: zeros between its markers
    blob.write_bytes(bytes(data))
    capsys.readouterr()

    assert store.main(["verify", str(root)]) == 1
    out = capsys.readouterr().out
    damaged = {line.split()[1].rstrip(":"): line for line in out.splitlines() if line.startswith("DAMAGED")}
    assert set(damaged) == {"id1/b", "id2/c", "id2/d", "id3/e"}
    assert "truncated" in damaged["id1/b"] and "does not cover frames.bin" in damaged["id1/b"]
    assert "non-finite points in frames [2]" in damaged["id2/c"]
    assert "out of range" in damaged["id2/d"]
    assert "frame 3 does not decode" in damaged["id3/e"]
    assert "4 damaged of 5 indexed videos" in out

    assert store.main(["verify", str(root), "--quarantine", "--workers", "2"]) == 1
    index = store.load_index(root)
    assert [(e["identity"], e["video"]) for e in index["videos"]] == [("id1", "a")]
    assert index["videos"][0]["video_index"] == before[("id1", "a")]          # W's rows do not move
    assert index["num_videos"]["train"] == len(VIDEOS) and index["quarantined"] == 4
    assert (folder(root, "id2/c") / "points.npy").is_file()                    # nothing deleted
    assert set(json.loads((root / store.QUARANTINE_FILE).read_text())["videos"]) == set(damaged)
    assert store.main(["verify", str(root)]) == 0
    with pytest.raises(StoreError, match="no video 'id2/c'"):                  # the rewritten index is read anew
        FewShotDataset.from_store(root, "id2/c")
    rebuilt = store.build_index(root, test_identities=set())                   # a rebuild keeps them out
    assert [e["video"] for e in rebuilt["videos"]] == ["a"] and rebuilt["quarantined"] == 4


def test_verify_checks_counts_raw_frames_and_headgan_arrays(tmp_path, capsys):
    root = make_store(tmp_path / "raw", "raw")
    meta = folder(root, "id1/a") / store.META_FILE
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "frames": 9}))
    path = folder(root, "id1/b") / "frames.npy"
    path.write_bytes(path.read_bytes()[:-100])
    write_fit(root, "id2/c", np.inf)
    np.save(folder(root, "id2/d") / "audio.npy", np.zeros((FRAMES - 1, 40, 16), np.float32))
    damaged = store.verify_store(root)
    assert set(damaged) == {"id1/a", "id1/b", "id2/c", "id2/d"}
    assert "meta.json says 9 frames, the index 6" in damaged["id1/a"][0]
    assert "cannot read its frames" in " ".join(damaged["id1/b"])
    assert "face3d.npz: non-finite" in " ".join(damaged["id2/c"])
    assert "audio.npy: holds 5 frames, the store 6" in " ".join(damaged["id2/d"])


def test_meta_dataset_skips_a_damaged_sample_deterministically_counts_and_warns_once(tmp_path, caplog):
    root = make_store(tmp_path / "store")
    whole = MetaDataset(root, k_shots=2, seed=1)
    expected = [whole[i] for i in range(len(whole))]
    assert [item["skipped"] for item in expected] == [0] * len(VIDEOS)
    truncate_frames(root, "id1/b")
    set_points(root, "id2/c", np.nan)
    damaged = MetaDataset(root, k_shots=2, seed=1)
    with caplog.at_level(logging.WARNING, logger="dataset.store"):
        item = damaged[1]
        again = damaged[(1, 0)]
    # Video 1 and 2 are damaged: the item is video 3's own item, and says two were passed over.
    assert item["skipped"] == again["skipped"] == 2 and item["identity"] == "id2"
    for key in ("frames", "points", "frame_indices"):
        assert torch.equal(item[key], expected[3][key])
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2                                                 # once per video, not per read
    assert "videos/id1/b" in warnings[0] and "truncated" in warnings[0]
    assert "videos/id2/c" in warnings[1] and "non-finite" in warnings[1]
    assert [item["skipped"] for item in damaged] == [0, 2, 1, 0, 0]          # iterating ends after the last video
    assert pickle.loads(pickle.dumps(damaged))[1]["skipped"] == 2              # the same in a worker process

    for name in ("id1/a", "id2/d", "id3/e"):
        truncate_frames(root, name)
    with pytest.raises(StoreError, match=rf"{root}: 5 damaged videos in a row.*dataset.store verify"):
        damaged[0]


def write_fit(root, name, value=None):
    vertices = mesh.mean_face().astype(np.float32)
    fit = FaceFit(identity=vertices, expression=np.zeros((FRAMES,) + vertices.shape, np.float32),
                  scale=np.full(FRAMES, SIZE / 3, np.float32), rotation=np.tile(np.eye(3, dtype=np.float32),
                                                                                 (FRAMES, 1, 1)),
                  translation=np.tile(np.array([SIZE / 2, SIZE / 2, 0], np.float32), (FRAMES, 1)),
                  valid=np.ones(FRAMES, bool))
    if value is not None:
        fit.translation[1, 0] = value
    write_face3d(folder(root, name), fit, {"backend": "test"})


def test_headgan_dataset_skips_damaged_fits_and_collate_sums_the_count(tmp_path):
    root = make_store(tmp_path / "store")
    for name in ("id1/a", "id1/b", "id2/c", "id2/d"):
        write_fit(root, name)
    (folder(root, "id1/b") / "face3d.npz").write_bytes((folder(root, "id1/b") / "face3d.npz").read_bytes()[:300])
    write_fit(root, "id2/c", np.nan)
    dataset = HeadGANDataset(root, audio=False)
    assert len(dataset) == 4                                                  # id3/e has no fit
    items = [dataset[i] for i in range(len(dataset))]
    assert [it["skipped"] for it in items] == [0, 2, 1, 0]
    assert items[1]["identity"] == "id2" and torch.equal(items[1]["frame_indices"], items[3]["frame_indices"])
    batch = collate(items)
    assert batch["skipped"] == 3 and isinstance(batch["skipped"], int)
