"""Preprocessing commands end to end on demo clips: cleaning, frame extraction and sampling, landmarks, and the
machinery they share (finding videos, sharding, resuming, failure reports)."""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import imageio_ffmpeg
import numpy as np
import pytest

from dataset import store
from dataset.landmarks import DlibDetector, Face, LandmarkDetector, crop_box
from dataset.pipeline.faces import choose_main_faces, crop_faces, detect_faces
from dataset.pipeline.runner import in_shard, parse_shard, run_videos
from dataset.pipeline.videos import VideoUnit, evenly_spaced, find_videos, scan_videos
from dataset.voxceleb1 import extract_landmark, sample_frame
from dataset.voxceleb2 import clean_data, extract_frames

REPO = Path(__file__).resolve().parents[1]


def copy_identities(clips: Path, out: Path, identities: list[str]) -> Path:
    """A writable copy of some identities of the (shared, read-only) demo clips."""
    for identity in identities:
        shutil.copytree(clips / identity, out / identity)
    return out


def file_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def video_folders(root: Path) -> set[str]:
    return {f"{p.parent.name}/{p.name}" for p in root.glob("*/*") if p.is_dir() and not p.name.startswith(".")}


def write_noise_image(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.random.default_rng(seed).integers(0, 255, (24, 24, 3), dtype=np.uint8)
    cv2.imwrite(str(path), image)


# ----------------------------------------------------------------------------------------------------------------
# Shared machinery
# ----------------------------------------------------------------------------------------------------------------


def test_evenly_spaced_covers_both_ends_with_distinct_indices():
    assert evenly_spaced(16, 6) == [0, 3, 6, 9, 12, 15]
    assert evenly_spaced(5, 8) == [0, 1, 2, 3, 4]
    assert evenly_spaced(7, 0) == list(range(7))
    for total in range(1, 60):
        for count in range(1, total + 1):
            picked = evenly_spaced(total, count)
            assert len(set(picked)) == count and picked[0] == 0 and (count == 1 or picked[-1] == total - 1)


def test_find_videos_groups_every_leaf_folder_under_its_video(tmp_path):
    write_noise_image(tmp_path / "id00001/vidA/10/0001.jpg", 0)
    write_noise_image(tmp_path / "id00001/vidA/2/0001.jpg", 1)
    write_noise_image(tmp_path / "id00001/vidA/2/0010.jpg", 2)
    write_noise_image(tmp_path / "id00001/vidA/2/0009.jpg", 3)
    write_noise_image(tmp_path / "id00002/vidB/0000.jpg", 4)
    (tmp_path / "id00002/vidB/frames.json").write_text("{}")
    write_noise_image(tmp_path / "id00002/.vidC.partial-7/0000.jpg", 5)      # staging of a killed run
    write_noise_image(tmp_path / "stray.jpg", 6)                              # above the video level
    units = find_videos(tmp_path)
    assert [u.key for u in units] == ["id00001/vidA", "id00002/vidB"]
    assert [units[0].inner(f) for f in units[0].images] == ["2/0001.jpg", "2/0009.jpg", "2/0010.jpg",
                                                           "10/0001.jpg"]
    assert units[1].images == ("id00002/vidB/0000.jpg",) and units[1].clips == ()

    write_noise_image(tmp_path / "deep/Some_Name/1.6/vidX/1/01.jpg", 7)
    deep = find_videos(tmp_path / "deep", video_depth=3)
    assert [(u.identity, u.video) for u in deep] == [("Some_Name", "vidX")]


def test_shards_partition_the_videos():
    keys = [f"id{i:05d}/video{j}" for i in range(50) for j in range(4)]
    for count in (1, 2, 3, 7):
        owners = [[i for i in range(count) if in_shard(key, (i, count))] for key in keys]
        assert all(len(o) == 1 for o in owners)
    assert parse_shard("1/4") == (1, 4)
    for bad in ("4/4", "x/2", "1"):
        with pytest.raises(Exception, match="shard"):
            parse_shard(bad)


def die_on_video_3(unit):
    if unit.video == "v3":
        os._exit(3)                          # a worker killed outright, as by a decoder segfault or the OOM killer
    if unit.video == "v5":
        raise ValueError("unreadable")
    return {"status": "done", "stats": {"frames": 2}}


def test_a_dying_worker_fails_only_its_video_and_the_run_goes_on(tmp_path):
    units = [VideoUnit("id1", f"v{i}", str(tmp_path)) for i in range(7)]
    summary = run_videos(units, die_on_video_3, workers=2, failures_path=tmp_path / "failures.jsonl")
    assert summary.counts == {"done": 5, "failed": 2} and summary.totals["frames"] == 10
    failures = [json.loads(line) for line in (tmp_path / "failures.jsonl").read_text().splitlines()]
    assert sorted((f["key"], f["error"].split(":")[0]) for f in failures) == [
        ("id1/v3", "the worker process died on this video (crash or out of memory)"), ("id1/v5", "ValueError")]


def face(box, score=1.0):
    return Face(box=box, points=np.zeros((68, 2), np.float32), score=score)


def test_main_face_is_the_prominent_one_then_followed_by_overlap():
    main, bystander = face((40, 40, 90, 90)), face((0, 0, 30, 30))
    moved_main, big_stranger = face((45, 42, 95, 92)), face((100, 30, 160, 90))
    chosen = choose_main_faces(
        [[bystander, main], [big_stranger, moved_main], [], [bystander]],
        [(128, 160, 3)] * 4)
    assert chosen[0] is main                 # largest, most central
    assert chosen[1] is moved_main           # overlaps the last main face, although the stranger is larger
    assert chosen[2] is None                 # no face: dropped by the caller
    assert chosen[3] is bystander            # the track is lost: the most prominent face takes over


# ----------------------------------------------------------------------------------------------------------------
# clean_data.py
# ----------------------------------------------------------------------------------------------------------------


def test_clean_lists_corrupt_clips_and_quarantine_moves_them_without_deleting(demo_clips, tmp_path):
    root = copy_identities(demo_clips, tmp_path / "vox2", ["id00001", "id00002"])
    clip = root / "id00001/demo0001/00001.mp4"
    data = clip.read_bytes()
    (clip.parent / "00002.mp4").write_bytes(data[: len(data) // 2])          # truncated: index lost
    (root / "id00002/demo0003/00002.mp4").write_bytes(b"not a video at all")
    # Index at the front (faststart) and the tail cut off: opens, then decodes fewer frames than it claims.
    faststart = tmp_path / "faststart.mp4"
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-i", str(clip), "-c", "copy",
                    "-movflags", "+faststart", str(faststart)], check=True)
    data = faststart.read_bytes()
    (root / "id00002/demo0004/00002.mp4").write_bytes(data[: int(len(data) * 0.6)])
    before = file_bytes(root)
    report_path = tmp_path / "reports/clean.json"

    report = clean_data.main(["--root", str(root), "--report", str(report_path)])
    bad = {c["clip"]: c for c in report["bad_clips"]}
    assert set(bad) == {"id00001/demo0001/00002.mp4", "id00002/demo0003/00002.mp4", "id00002/demo0004/00002.mp4"}
    assert 0 < bad["id00002/demo0004/00002.mp4"]["decoded"] < bad["id00002/demo0004/00002.mp4"]["claimed"]
    assert report["checked_clips"] == 7 and file_bytes(root) == before       # listing changes nothing
    assert json.loads(report_path.read_text())["bad_clips"] == report["bad_clips"]

    quarantine = tmp_path / "quarantine"
    report = clean_data.main(["--root", str(root), "--report", str(report_path), "--quarantine", str(quarantine)])
    assert report["run"]["counts"] == {"skipped": 4}                        # resumed from the journal
    after, moved = file_bytes(root), file_bytes(quarantine)
    assert set(moved) == set(bad) and set(after) == set(before) - set(bad)
    assert {**after, **moved} == before                                      # every byte is still somewhere
    assert all(c["quarantined_to"] for c in report["bad_clips"])


# ----------------------------------------------------------------------------------------------------------------
# extract_frames.py and sample_frame.py
# ----------------------------------------------------------------------------------------------------------------


def test_extract_frames_layout_resume_and_shards(demo_clips, tmp_path):
    out = tmp_path / "frames"
    summary = extract_frames.main(["--root", str(demo_clips), "--out", str(out), "--frames-per-video", "6"])
    videos = video_folders(out)
    assert summary.counts["done"] == len(videos) == 16
    folder = out / "id00001/demo0001"
    assert sorted(p.name for p in folder.iterdir()) == [f"{i:04d}.jpg" for i in range(6)] + ["frames.json"]
    sources = json.loads((folder / "frames.json").read_text())
    assert list(sources.values()) == [f"00001/{i:05d}" for i in (0, 3, 6, 9, 12, 15)]
    assert cv2.imread(str(folder / "0000.jpg")).shape == (128, 128, 3)

    rerun = extract_frames.main(["--root", str(demo_clips), "--out", str(out), "--frames-per-video", "6"])
    assert rerun.counts == {"skipped": 16}

    sharded = tmp_path / "sharded"
    parts = [extract_frames.main(["--root", str(demo_clips), "--out", str(sharded), "--frames-per-video", "6",
                                  "--shard", f"{i}/2", "--workers", str(workers)])
             for i, workers in ((0, 2), (1, 1))]
    assert sum(p.counts["done"] for p in parts) == 16 and all(0 < p.counts["done"] < 16 for p in parts)
    assert file_bytes(sharded / "id00001") == file_bytes(out / "id00001")
    assert video_folders(sharded) == videos
    assert (sharded / "failures.shard-0-of-2.jsonl").is_file()


def test_extract_frames_spreads_frames_over_the_clips_of_a_video(demo_clips, tmp_path):
    video = tmp_path / "vox2/id00001/multi"
    video.mkdir(parents=True)
    shutil.copy(demo_clips / "id00001/demo0001/00001.mp4", video / "00001.mp4")
    shutil.copy(demo_clips / "id00001/demo0002/00001.mp4", video / "00002.mp4")
    extract_frames.main(["--root", str(tmp_path / "vox2"), "--out", str(tmp_path / "out"), "--frames-per-video", "4"])
    sources = json.loads((tmp_path / "out/id00001/multi/frames.json").read_text())
    # 32 frames in all: positions 0, 10, 21, 31 -> clip 1 frames 0 and 10, clip 2 frames 5 and 15.
    assert list(sources.values()) == ["00001/00000", "00001/00010", "00002/00005", "00002/00015"]


def test_sample_frame_reads_nested_frame_folders(tmp_path):
    root = tmp_path / "vox1"
    for utterance in (1, 2, 10):
        for frame in range(4):
            write_noise_image(root / f"id10001/vidA/{utterance}/{frame:02d}.jpg", utterance * 10 + frame)
    write_noise_image(root / "id10002/vidB/00.jpg", 99)
    out = tmp_path / "frames"
    summary = sample_frame.main(["--root", str(root), "--out", str(out), "--frames-per-video", "4"])
    assert summary.counts["done"] == 2
    sources = json.loads((out / "id10001/vidA/frames.json").read_text())
    # 12 frames in natural order (utterance 2 before 10): positions 0, 4, 7, 11.
    assert list(sources.values()) == ["1/00.jpg", "2/00.jpg", "2/03.jpg", "10/03.jpg"]
    assert (out / "id10001/vidA/0003.jpg").read_bytes() == (root / "id10001/vidA/10/03.jpg").read_bytes()
    assert sorted(p.name for p in (out / "id10002/vidB").iterdir()) == ["0000.jpg", "frames.json"]


# ----------------------------------------------------------------------------------------------------------------
# extract_landmark.py
# ----------------------------------------------------------------------------------------------------------------


def test_corrupt_video_lands_in_failure_report_and_the_others_are_processed(demo_clips, tmp_path):
    root = copy_identities(demo_clips, tmp_path / "vox2", ["id00001"])
    broken = root / "id00001/broken/00001.mp4"
    broken.parent.mkdir()
    broken.write_bytes(b"\x00" * 1000)
    out = tmp_path / "store"
    summary = extract_landmark.main(["--root", str(root), "--out", str(out), "--backend", "dlib", "--size", "64",
                                     "--frames-per-video", "4", "--test-fraction", "0"])
    assert summary.counts == {"done": 2, "failed": 1}
    failures = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert [f["key"] for f in failures] == ["id00001/broken"] and "no readable frame" in failures[0]["error"]
    assert not store.video_dir(out, "id00001", "broken").exists()
    assert [e["video"] for e in store.load_index(out)["videos"]] == ["demo0001", "demo0002"]


def test_frame_without_face_is_dropped_and_counted(demo_clips, tmp_path):
    frames = tmp_path / "frames"
    extract_frames.main(["--root", str(demo_clips), "--out", str(frames), "--frames-per-video", "4",
                         "--shard", "0/1"])
    for identity in [p.name for p in frames.iterdir() if p.is_dir() and p.name != "id00001"]:
        shutil.rmtree(frames / identity)
    cv2.imwrite(str(frames / "id00001/demo0001/0099.jpg"), np.zeros((128, 128, 3), np.uint8))
    out = tmp_path / "store"
    summary = extract_landmark.extract_landmarks(frames, out, backend="dlib", size=64, min_frames=5,
                                                 test_fraction=0.0)
    assert summary.totals["frames_read"] == 9 and summary.totals["frames_dropped_no_face"] == 1
    meta = json.loads((store.video_dir(out, "id00001", "demo0001") / "meta.json").read_text())
    assert meta["dropped_no_face"] == ["0099.jpg"] and meta["frames"] == 4
    assert meta["sources"] == ["0000.jpg", "0001.jpg", "0002.jpg", "0003.jpg"]
    assert summary.totals["videos_below_5_frames"] == 2
    written = json.loads((out / "summary.json").read_text())
    assert written["videos_below_5_frames"] == ["id00001/demo0001 (4 frames)", "id00001/demo0002 (4 frames)"]


def store_files(root: Path) -> dict[str, bytes]:
    return {k: v for k, v in file_bytes(root).items() if k.startswith("videos/") or k in ("index.json",
                                                                                         "store.json")}


def test_resume_after_a_killed_run_equals_a_clean_run(demo_clips, tmp_path):
    root = copy_identities(demo_clips, tmp_path / "vox2", ["id00001", "id00002", "id00004"])
    options = ["--root", str(root), "--backend", "dlib", "--size", "64", "--frames-per-video", "16",
               "--test-fraction", "0.5"]
    clean, resumed = tmp_path / "clean", tmp_path / "resumed"
    extract_landmark.main(options + ["--out", str(clean), "--workers", "2"])

    process = subprocess.Popen([sys.executable, str(REPO / "dataset/voxceleb1/extract_landmark.py"), *options,
                                "--out", str(resumed)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list((resumed / "videos").glob("*/*/meta.json")) and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    done = {f"{p.parent.parent.name}/{p.parent.name}" for p in (resumed / "videos").glob("*/*/meta.json")}
    assert 0 < len(done) < 6 and not (resumed / "index.json").exists()
    # Whatever the kill interrupted, also leave a half-written video behind, as a kill during writing would.
    todo = sorted(video_folders(root) - done)[0].split("/")
    staging = resumed / "videos" / todo[0] / f".{todo[1]}.partial-12345"
    staging.mkdir(parents=True)
    (staging / "frames.bin").write_bytes(b"half")

    summary = extract_landmark.main(options + ["--out", str(resumed)])
    assert summary.counts == {"skipped": len(done), "done": 6 - len(done)}
    assert not list((resumed / "videos").glob("*/.*"))
    assert store_files(resumed) == store_files(clean)


# ----------------------------------------------------------------------------------------------------------------
# Listing a tree that fights back: symlink loops, unreadable folders and files, other shards' folders
# ----------------------------------------------------------------------------------------------------------------


def run_without_root(code: str, cwd: Path) -> subprocess.CompletedProcess:
    """Runs Python ``code`` in a child that, when started as root, drops to user nobody after its imports (the
    line ``DROP`` in ``code``): root reads every file whatever its mode, so only then do modes 000 mean unreadable."""
    drop = "os.setgid(65534); os.setuid(65534)" if os.geteuid() == 0 else "pass"
    return subprocess.run([sys.executable, "-c", code.replace("DROP", drop)], cwd=cwd, capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)


def test_loops_and_unreadable_paths_are_reported_and_the_rest_is_listed_once():
    top = Path(tempfile.mkdtemp(prefix="unreadable-"))  # below /tmp, which user nobody can reach
    try:
        root = top / "vox2"
        for video in ("v1", "v2", "v3"):
            (root / "id1" / video).mkdir(parents=True)
            (root / "id1" / video / "00001.mp4").write_bytes(b"clip")
        os.symlink("../..", root / "id1/v3/back_to_root")          # a loop through the whole tree
        os.symlink("..", root / "id1/v3/back_to_identity")         # and a second one: both used to hang
        os.symlink("self.mp4", root / "id1/v3/self.mp4")           # a link to itself
        os.chmod(root / "id1/v1/00001.mp4", 0)
        os.chmod(root / "id1/v2", 0)
        for path in [top, *root.rglob("*")]:
            if path.is_dir() and not path.is_symlink() and path.name != "v2":
                os.chmod(path, 0o755)
        code = f"""
import json, os, sys
sys.path.insert(0, {str(REPO)!r})
from dataset.pipeline.videos import scan_videos, sample_frames
from dataset.voxceleb2.clean_data import check_clip
from dataset.audio import _video_clips
DROP
scan = scan_videos({str(root)!r})
v1 = next(u for u in scan.units if u.video == "v1")
print(json.dumps({{"units": {{u.key: list(u.clips) for u in scan.units}}, "problems": scan.problems,
                  "check": check_clip(v1.path(v1.clips[0])), "sample": sample_frames(v1, 4).problems,
                  "audio_clips": _video_clips(v1.path("id1/v3"))}}))
"""
        result = run_without_root(code, top)
        assert result.returncode == 0, result.stderr
        found = json.loads(result.stdout)
    finally:
        os.chmod(top / "vox2/id1/v2", 0o755)
        shutil.rmtree(top)
    assert found["units"] == {"id1/v1": ["id1/v1/00001.mp4"], "id1/v3": ["id1/v3/00001.mp4"]}  # each clip once
    problems = "\n".join(found["problems"])
    assert "id1/v2: cannot list this folder (Permission denied)" in problems
    assert "id1/v3/back_to_root: same folder as ." in problems and "id1/v3/back_to_identity: same folder as id1" in problems
    assert "id1/v3/self.mp4: cannot read (Too many levels of symbolic links)" in problems
    assert found["check"]["reason"] == "cannot read the file (Permission denied)"   # not "no frames"
    assert found["sample"] == ["cannot read clip 00001.mp4: Permission denied"]
    assert found["audio_clips"] == ["00001"]                                  # the audio step walks safely too


def test_a_shard_does_not_enter_the_folders_of_other_shards_videos(tmp_path):
    root = tmp_path / "vox2"
    keys = [f"id{i:05d}/video{j}" for i in range(6) for j in range(3)]
    for key in keys:
        (root / key).mkdir(parents=True)
        (root / key / "00001.mp4").write_bytes(b"clip")
        os.symlink("self", root / key / "self")                   # reported by whoever enters the folder
    full = scan_videos(root)
    assert [u.key for u in full.units] == sorted(keys) and len(full.problems) == len(keys)
    for shard in ((0, 3), (2, 3)):
        part = scan_videos(root, shard=shard)
        mine = sorted(k for k in keys if in_shard(k, shard))
        assert [u.key for u in part.units] == mine and len(part.problems) == len(mine)
        assert all(p.split("/self")[0] in mine for p in part.problems)


WORKER_SCRIPT = """
import sys, time
sys.path.insert(0, {repo!r})
from dataset.pipeline.runner import run_videos
from dataset.pipeline.videos import VideoUnit

def slow(unit):
    time.sleep(300)
    return {{"status": "done"}}

if __name__ == "__main__":
    run_videos([VideoUnit("id", f"v{{i}}", ".") for i in range(4)], slow, workers=2)
"""


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc")
def test_workers_and_the_resource_tracker_die_with_a_killed_main_process(tmp_path):
    script = tmp_path / "slow_run.py"
    script.write_text(WORKER_SCRIPT.format(repo=str(REPO)))
    process = subprocess.Popen([sys.executable, str(script)], cwd=tmp_path, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while len(children_of(process.pid)) < 3 and time.monotonic() < deadline:   # 2 workers + resource tracker
            time.sleep(0.1)
        children = children_of(process.pid)
        assert len(children) >= 3
        process.send_signal(signal.SIGKILL)
        process.wait()
        deadline = time.monotonic() + 30
        while any(alive(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [pid for pid in children if alive(pid)]
    finally:
        process.kill()
        for pid in children_of(process.pid):
            os.kill(pid, signal.SIGKILL)


# ----------------------------------------------------------------------------------------------------------------
# Options, large frames, the cleaning journal
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("option, value", [("--scale", "-1"), ("--scale", "0"), ("--size", "0"), ("--quality", "0"),
                                           ("--frames-per-video", "-1"), ("--workers", "0"),
                                           ("--test-fraction", "1.5"), ("--max-detect-side", "10"),
                                           ("--video-depth", "1"), ("--batch-size", "0")])
def test_out_of_range_options_stop_before_anything_is_written(tmp_path, capsys, option, value):
    out = tmp_path / "store"
    with pytest.raises(SystemExit) as stop:
        extract_landmark.main(["--root", str(tmp_path), "--out", str(out), "--backend", "dlib", option, value])
    assert stop.value.code == 2 and f"argument {option}" in capsys.readouterr().err
    assert not out.exists()


def test_library_calls_refuse_bad_sizes_and_scales(tmp_path):
    with pytest.raises(store.StoreError, match="image_size"):
        store.open_store_for_writing(tmp_path / "a", 0)
    with pytest.raises(store.StoreError, match="quality"):
        store.open_store_for_writing(tmp_path / "b", 64, quality=0)
    assert not (tmp_path / "a" / store.INFO_FILE).exists()
    with pytest.raises(ValueError, match="scale"):
        crop_box(np.zeros((68, 2)) + np.arange(68)[:, None], (100, 100), scale=-1)
    with pytest.raises(ValueError, match="scale"):
        extract_landmark.extract_landmarks(tmp_path, tmp_path / "c", scale=-1.0)


class ShapeRecorder(LandmarkDetector):
    """The dlib detector, recording the image sizes it is given."""

    def __init__(self):
        self.inner, self.shapes = DlibDetector(), []

    def detect(self, images):
        self.shapes += [image.shape for image in images]
        return self.inner.detect(images)


def test_a_huge_frame_is_shrunk_for_detection_and_cropped_at_full_resolution():
    from skimage import data

    photo = data.astronaut()                                                  # 512x512, one face
    huge = cv2.resize(photo, (6000, 6000), interpolation=cv2.INTER_CUBIC)
    detector = ShapeRecorder()
    faces = detect_faces(detector, [huge], max_side=512)[0]
    small = cv2.resize(huge, (512, 512), interpolation=cv2.INTER_AREA)      # what the detector was given
    reference = detector.inner.detect([small])[0]
    assert detector.shapes[0] == (512, 512, 3)                                  # the detector never saw 6000x6000
    assert len(faces) == len(reference) == 1
    expected = (reference[0].points + 0.5) * (6000 / 512) - 0.5
    assert np.abs(faces[0].points - expected).max() < 1e-2
    assert np.allclose(faces[0].box, np.array(reference[0].box) * 6000 / 512)
    crops, points = crop_faces([huge], faces, 256)
    assert crops[0].shape == (256, 256, 3) and ((points > 0) & (points < 256)).all()
    # Cut from the full frame: sharper than the same crop cut from the shrunk copy and enlarged.
    blurry, _ = crop_faces([small], [reference[0]], 256)
    sharpness = [cv2.Laplacian(cv2.cvtColor(c, cv2.COLOR_RGB2GRAY), cv2.CV_64F).var() for c in (crops[0], blurry[0])]
    assert sharpness[0] > sharpness[1]


def test_the_cleaning_journal_never_takes_one_root_for_another(demo_clips, tmp_path):
    first = copy_identities(demo_clips, tmp_path / "dev", ["id00001"])
    second = copy_identities(demo_clips, tmp_path / "test", ["id00001"])     # same identity and video names
    clip = first / "id00001/demo0001/00001.mp4"
    clip.write_bytes(clip.read_bytes()[:200])
    report = tmp_path / "clean.json"                                         # one report name for both
    assert [c["clip"] for c in clean_data.clean(first, report)["bad_clips"]] == ["id00001/demo0001/00001.mp4"]
    before = file_bytes(second)
    result = clean_data.clean(second, report, tmp_path / "quarantine")
    assert result["run"]["counts"]["done"] == 2 and not result["run"]["counts"].get("skipped")  # checked anew
    assert result["bad_clips"] == []
    assert file_bytes(second) == before and not (tmp_path / "quarantine").exists()
    again = clean_data.clean(first, report, tmp_path / "quarantine")          # the first root resumes as before
    assert again["run"]["counts"] == {"skipped": 2}
    assert [c["quarantined_to"] for c in again["bad_clips"]] == [str(tmp_path / "quarantine/id00001/demo0001/00001.mp4")]
