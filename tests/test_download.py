"""The VoxCeleb download helper against a real HTTP server on 127.0.0.1 with basic auth and injected faults."""
from __future__ import annotations

import base64
import hashlib
import http.server
import io
import os
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pytest

from dataset import download

USER, PASSWORD = "researcher", "s3cret-pass"
REPO = Path(__file__).resolve().parents[1]


class FaultyServer(http.server.ThreadingHTTPServer):
    """Serves ``files`` under ``/vox/`` with basic auth and HTTP range requests. ``faults[name]`` is a list of
    faults consumed one per request for that file: ``"drop"`` sends the headers and half of the body, then closes
    the connection; ``"ignore-range"`` answers a range request with the whole file (status 200)."""

    daemon_threads = True
    max_requests = 500  # a client that loops forever gets 503s instead of keeping the test busy

    def __init__(self, files: dict[str, bytes]):
        super().__init__(("127.0.0.1", 0), Handler)
        self.files = files
        self.faults: dict[str, list[str]] = {}
        self.log: list[tuple[str, str | None]] = []

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/vox"


class Handler(http.server.BaseHTTPRequestHandler):
    server: FaultyServer

    def log_message(self, *args) -> None:  # keep pytest's output clean
        pass

    def do_GET(self) -> None:
        name = self.path.removeprefix("/vox/")
        self.server.log.append((name, self.headers.get("Range")))
        if len(self.server.log) > self.server.max_requests:
            return self.send_error(503)
        expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        if self.headers.get("Authorization") != expected:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="voxceleb"')
            self.send_header("Content-Length", "0")
            return self.end_headers()
        if name not in self.server.files:
            return self.send_error(404)
        data = self.server.files[name]
        fault = self.server.faults.get(name, []).pop(0) if self.server.faults.get(name) else None
        start = 0
        requested = self.headers.get("Range")
        if requested and fault != "ignore-range":
            start = int(requested.removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                return self.end_headers()
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        if fault == "drop":
            self.wfile.write(body[:len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)
            return
        self.wfile.write(body)


@pytest.fixture
def server():
    srv = FaultyServer({})
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(timeout=5)


def make_zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as bundle:
        for name, data in members.items():
            bundle.writestr(name, data)
    return buffer.getvalue()


def clip_members(count: int, size: int = 3000) -> dict[str, bytes]:
    return {f"dev/mp4/id{i:05d}/vid{i}/00001.mp4": os.urandom(size) for i in range(count)}


def split(data: bytes, names: tuple[str, ...]) -> dict[str, bytes]:
    step = -(-len(data) // len(names))
    return {name: data[i * step:(i + 1) * step] for i, name in enumerate(names)}


def write_checksums(path: Path, files: dict[str, bytes], wrong: str | None = None) -> Path:
    lines = [f"{'0' * 32 if name == wrong else hashlib.md5(data).hexdigest()}  {name}" for name, data in files.items()]
    path.write_text("# md5sum output\n" + "\n".join(lines) + "\n")
    return path


def run(server, out: Path, names: list[str], *extra: str, password: str = PASSWORD) -> int:
    return download.main(names + ["--out", str(out), "--base-url", server.base_url, "--user", USER,
                                  "--password", password, "--retries", "2", *extra])


def test_split_archive_resumes_after_a_drop_verifies_joins_extracts_and_reruns_as_done(server, tmp_path, capsys,
                                                                                        monkeypatch):
    monkeypatch.setattr(download.time, "sleep", lambda seconds: None)  # retry pauses: nothing to wait for here
    members = clip_members(6, size=200_000)                                  # parts of several network reads
    parts = split(make_zip(members), download.ARCHIVES["vox2_dev_mp4"].files)
    server.files.update(parts)
    server.faults["vox2_dev_mp4_partab"] = ["drop"]
    server.faults["vox2_dev_mp4_partac"] = ["drop", "ignore-range"]
    checksums = write_checksums(tmp_path / "md5.txt", parts)
    out = tmp_path / "vox"
    assert run(server, out, ["vox2_dev_mp4"], "--checksums", str(checksums)) == 0

    ranged = {name: r for name, r in server.log if r}
    resumed_at = int(ranged["vox2_dev_mp4_partab"].removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_at <= len(parts["vox2_dev_mp4_partab"]) // 2                   # continued, not redone
    assert "vox2_dev_mp4_partac" in ranged                                   # the server ignored it: started over
    for name, data in members.items():
        assert (out / "vox2_dev_mp4" / name).read_bytes() == data
    manifest = download.load_manifest(out)
    assert set(manifest["files"]) == set(parts) and all(f["verified"] for f in manifest["files"].values())
    assert all(PASSWORD not in f["url"] for f in manifest["files"].values())
    assert manifest["extracted"]["vox2_dev_mp4"]["members_written"] == len(members)
    assert not list(out.rglob("*.partial"))
    assert PASSWORD not in capsys.readouterr().err

    requests_before = len(server.log)
    assert run(server, out, ["vox2_dev_mp4"], "--checksums", str(checksums)) == 0
    assert len(server.log) == requests_before                                # everything was done already


def test_wrong_password_and_missing_file_are_one_line_errors_that_never_show_the_password(server, tmp_path, capsys):
    server.files["vox2_test_mp4.zip"] = make_zip(clip_members(1))
    assert run(server, tmp_path / "a", ["vox2_test_mp4"], password="wrong-guess") == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "vox2_test_mp4.zip" in err and "HTTP 401" in err and "wrong-guess" not in err

    assert run(server, tmp_path / "b", ["vox2_test_aac"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: vox2_test_aac.zip: not found") and "404" in err and PASSWORD not in err


def test_checksum_mismatch_names_the_part_and_keeps_the_file(server, tmp_path, capsys):
    files = {"vox2_test_mp4.zip": make_zip(clip_members(2))}
    server.files.update(files)
    out = tmp_path / "vox"
    checksums = write_checksums(tmp_path / "md5.txt", files, wrong="vox2_test_mp4.zip")
    assert run(server, out, ["vox2_test_mp4"], "--checksums", str(checksums)) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "vox2_test_mp4.zip: MD5" in err and "0" * 32 in err
    kept = out / "parts" / "vox2_test_mp4.zip.md5-mismatch"
    assert kept.read_bytes() == files["vox2_test_mp4.zip"]
    assert "vox2_test_mp4.zip" not in download.load_manifest(out)["files"]


def test_a_server_that_keeps_dropping_stops_with_the_bytes_kept_and_a_rerun_continues(server, tmp_path, capsys,
                                                                                      monkeypatch):
    monkeypatch.setattr(download.time, "sleep", lambda seconds: None)
    data = make_zip(clip_members(3, size=100_000))
    server.files["vox2_test_mp4.zip"] = data
    server.faults["vox2_test_mp4.zip"] = ["drop"] * 3                          # more than --retries 2 allows
    out = tmp_path / "vox"
    assert run(server, out, ["vox2_test_mp4"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "vox2_test_mp4.zip: the connection kept failing (3 attempts" in err
    partial = out / "parts" / "vox2_test_mp4.zip.partial"
    kept = partial.stat().st_size
    assert 0 < kept < len(data) and partial.read_bytes() == data[:kept]

    assert run(server, out, ["vox2_test_mp4"]) == 0
    assert server.log[-1] == ("vox2_test_mp4.zip", f"bytes={kept}-")
    assert (out / "parts" / "vox2_test_mp4.zip").read_bytes() == data
    assert "no checksum known for vox2_test_mp4.zip" in capsys.readouterr().err   # mp4 MD5s are not published


def test_a_full_disk_is_one_line_error_and_loses_nothing(server, tmp_path):
    data = make_zip(clip_members(20, size=4000))
    server.files["vox2_test_mp4.zip"] = data
    out = tmp_path / "vox"
    limit = len(data) // 3
    # A file-size limit makes the kernel refuse writes past it, as a full disk does (EFBIG instead of ENOSPC).
    code = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
            f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit})); "
            "from dataset.download import main; "
            f"sys.exit(main(['vox2_test_mp4', '--out', {str(out)!r}, '--base-url', {server.base_url!r}]))")
    env = {**os.environ, "VOXCELEB_USER": USER, "VOXCELEB_PASSWORD": PASSWORD}
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=120, stdin=subprocess.DEVNULL)
    assert result.returncode == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "vox2_test_mp4.zip.partial: no space left" in last and PASSWORD not in result.stderr
    partial = out / "parts" / "vox2_test_mp4.zip.partial"
    assert partial.stat().st_size == limit and partial.read_bytes() == data[:limit]

    assert run(server, out, ["vox2_test_mp4"]) == 0                          # room again: continues from the bytes
    assert server.log[-1] == ("vox2_test_mp4.zip", f"bytes={limit}-")
    assert (out / "parts" / "vox2_test_mp4.zip").read_bytes() == data


def test_checksum_files_and_archive_members_are_checked(tmp_path):
    listing = tmp_path / "sums.md5"
    listing.write_text(f"{'a' * 32}  parts/vox2_dev_mp4_partaa\nvox2_dev_mp4_partab {'B' * 32}\n# done\n")
    assert download.read_checksums(listing) == {"vox2_dev_mp4_partaa": "a" * 32, "vox2_dev_mp4_partab": "b" * 32}
    listing.write_text("not a checksum line\n")
    with pytest.raises(download.DownloadError, match="sums.md5:1"):
        download.read_checksums(listing)
    parts = tmp_path / "evil.zip"
    parts.write_bytes(make_zip({"../outside.txt": b"x"}))
    with pytest.raises(download.DownloadError, match="outside"):
        download.extract(download.ARCHIVES["vox2_test_mp4"], [parts], tmp_path / "dest")
    assert not (tmp_path / "outside.txt").exists()
