"""Downloads the VoxCeleb archives: resumable, retried, MD5-verified, split parts joined and extracted.

    python -m dataset.download --base-url URL --out data/voxceleb vox2_dev_mp4 vox2_test_mp4
    VOXCELEB_USER=... VOXCELEB_PASSWORD=... python -m dataset.download --base-url URL --out data/voxceleb \\
        vox1_dev_wav vox1_test_wav vox1_dense_frames --checksums my_md5s.txt
    python -m dataset.download --list

VoxCeleb is behind the username and password that its owners send on request, together with the address the
files are served from (``--base-url``: mirrors change, so there is no default; a file is fetched from
``BASE_URL/FILE_NAME``). The credentials come from ``--user`` / ``--password``, else from ``VOXCELEB_USER`` /
``VOXCELEB_PASSWORD``, else from a prompt; they are sent as HTTP basic auth and are never printed or written.

Per dataset (``--list`` shows them with their files):

1. every file is downloaded to ``OUT/parts/FILE.partial`` and continued with an HTTP range request after an
   interruption (a dropped connection is retried ``--retries`` times with growing pauses; a rerun continues
   too); a complete file is renamed to ``OUT/parts/FILE``;
2. each file is checked against its MD5: the published ones (``PUBLISHED_MD5``) or those of ``--checksums FILE``
   (lines ``MD5  NAME``, as ``md5sum`` writes them). A mismatch stops with an error naming the file, which is kept
   as ``FILE.md5-mismatch`` for inspection (a rerun downloads it again). A file without a known checksum is
   accepted and its MD5 is recorded, with a warning;
3. split archives (``..._partaa``, ``..._partab``, ...) are read as one archive without writing the joined copy
   (no second 250 GB on disk); the archive is extracted into ``OUT/DATASET/``, resumably: a member already there
   with its size is not written again, others are written under a hidden name and renamed;
4. ``OUT/manifest.json`` records every verified file (size, MD5, where it came from, without credentials) and every
   finished extraction; a rerun skips what the manifest and the disk agree is done.

A wrong password (HTTP 401/403), a missing file (404), a server that keeps dropping the connection, or a full disk
each end the command with one line naming the file and the cause (exit status 1), and nothing downloaded so far
is lost: the next run continues from the bytes on disk.
"""
from __future__ import annotations

import argparse
import errno
import getpass
import hashlib
import io
import json
import os
import re
import shutil
import sys
import tarfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import requests
from tqdm import tqdm

from dataset.pipeline.output import atomic_write_json

MANIFEST = "manifest.json"
PARTS_DIR = "parts"
CHUNK = 1 << 20
# Network reads: a dropped connection loses the read in flight (urllib3 discards a short read), so reads are small.
NETWORK_CHUNK = 1 << 16


@dataclass(frozen=True)
class Archive:
    """One dataset as served: its files (several for a split archive, joined in this order) and their format."""

    name: str
    files: tuple[str, ...]
    kind: str            # "zip" or "tar.gz"
    description: str


def _split(stem: str, count: int) -> tuple[str, ...]:
    # split(1)'s suffixes: partaa, partab, ...
    return tuple(f"{stem}_parta{chr(ord('a') + i)}" for i in range(count))


ARCHIVES: dict[str, Archive] = {a.name: a for a in (
    Archive("vox2_dev_mp4", _split("vox2_dev_mp4", 9), "zip", "VoxCeleb2 dev videos (5,994 identities, ~255 GB)"),
    Archive("vox2_test_mp4", ("vox2_test_mp4.zip",), "zip", "VoxCeleb2 test videos (118 identities)"),
    Archive("vox2_dev_aac", _split("vox2_dev_aac", 8), "zip", "VoxCeleb2 dev audio (aac, ~72 GB)"),
    Archive("vox2_test_aac", ("vox2_test_aac.zip",), "zip", "VoxCeleb2 test audio (aac)"),
    Archive("vox1_dev_wav", _split("vox1_dev_wav", 4), "zip", "VoxCeleb1 dev audio (wav, ~30 GB)"),
    Archive("vox1_test_wav", ("vox1_test_wav.zip",), "zip", "VoxCeleb1 test audio (wav)"),
    Archive("vox1_dense_frames", ("dense-face-frames.tar.gz",), "tar.gz",
            "VoxCeleb1 pre-extracted dense face frames"),
)}

# MD5s published with the archives (as collected in clovaai/voxceleb_trainer's lists/fileparts.txt). The mp4 parts'
# were not found in public sources: pass them with --checksums once you have them from the dataset's owners.
PUBLISHED_MD5: dict[str, str] = {
    "vox1_dev_wav_partaa": "e395d020928bc15670b570a21695ed96",
    "vox1_dev_wav_partab": "bbfaaccefab65d82b21903e81a8a8020",
    "vox1_dev_wav_partac": "017d579a2a96a077f40042ec33e51512",
    "vox1_dev_wav_partad": "7bb1e9f70fddc7a678fa998ea8b3ba19",
    "vox1_test_wav.zip": "185fdc63c3c739954633d50379a3d102",
    "vox2_dev_aac_partaa": "da070494c573e5c0564b1d11c3b20577",
    "vox2_dev_aac_partab": "17fe6dab2b32b48abaf1676429cdd06f",
    "vox2_dev_aac_partac": "1de58e086c5edf63625af1cb6d831528",
    "vox2_dev_aac_partad": "5a043eb03e15c5a918ee6a52aad477f9",
    "vox2_dev_aac_partae": "cea401b624983e2d0b2a87fb5d59aa60",
    "vox2_dev_aac_partaf": "fc886d9ba90ab88e7880ee98effd6ae9",
    "vox2_dev_aac_partag": "d160ecc3f6ee3eed54d55349531cb42e",
    "vox2_dev_aac_partah": "6b84a81b9af72a9d9eecbb3b1f602e65",
    "vox2_test_aac.zip": "0d2b3ea430a821c33263b5ea37ede312",
}


class DownloadError(RuntimeError):
    """A file cannot be fetched, verified or extracted; the message is one line naming the file and the cause."""


# ----------------------------------------------------------------------------------------------------------------
# Checksums and the manifest
# ----------------------------------------------------------------------------------------------------------------


def read_checksums(path: Path) -> dict[str, str]:
    """``{file name: md5}`` from an ``md5sum``-style file (``MD5  NAME`` or ``NAME MD5``; ``#`` comments)."""
    checksums = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        fields = line.split("#", 1)[0].replace("*", " ").split()
        if not fields:
            continue
        digests = [f for f in fields if re.fullmatch(r"[0-9a-fA-F]{32}", f)]
        names = [f for f in fields if f not in digests]
        if len(digests) != 1 or len(names) != 1:
            raise DownloadError(f"{path}:{number}: expected 'MD5  NAME', got {line.strip()!r}")
        checksums[PurePosixPath(names[0]).name] = digests[0].lower()
    return checksums


def file_md5(path: Path, desc: str | None = None) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f, tqdm(total=path.stat().st_size, unit="B", unit_scale=True, desc=desc,
                                     disable=desc is None, leave=False) as bar:
        while block := f.read(CHUNK):
            digest.update(block)
            bar.update(len(block))
    return digest.hexdigest()


def load_manifest(out: Path) -> dict:
    path = out / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else {"files": {}, "extracted": {}}


def save_manifest(out: Path, manifest: dict) -> None:
    atomic_write_json(out / MANIFEST, manifest)


# ----------------------------------------------------------------------------------------------------------------
# Downloading one file
# ----------------------------------------------------------------------------------------------------------------


# A full disk, a full quota, or a file-size limit: the same for the user (free space, run again).
NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def _disk_error(err: OSError, path: Path, have: int) -> DownloadError:
    if err.errno in NO_SPACE:
        return DownloadError(f"{path.name}: no space left for it in {path.parent} ({err.strerror}); the "
                             f"{have:,} bytes downloaded so far are kept: free space and run again")
    return DownloadError(f"{path.name}: cannot write {path} ({err.strerror or err})")


def _http_error(response: requests.Response, name: str, url: str) -> DownloadError:
    status = response.status_code
    if status in (401, 403):
        return DownloadError(f"{name}: the server refused the username and password (HTTP {status}); check them "
                             "(--user/--password, or VOXCELEB_USER/VOXCELEB_PASSWORD)")
    if status == 404:
        return DownloadError(f"{name}: not found at {url} (HTTP 404); is --base-url the address you were sent?")
    return DownloadError(f"{name}: HTTP {status} {response.reason} from {url}")


def fetch(session: requests.Session, url: str, target: Path, *, retries: int = 5, timeout: float = 60.0,
          pause: float = 2.0) -> Path:
    """Downloads ``url`` to ``target``, continuing ``target.partial`` with range requests; returns ``target``.

    A dropped connection or a timeout is retried up to ``retries`` times (pauses of ``pause``, 2 x ``pause``, ...
    seconds), each time from the bytes already on disk. HTTP errors are not retried: they do not go away."""
    partial = target.with_name(target.name + ".partial")
    target.parent.mkdir(parents=True, exist_ok=True)
    failures = 0
    while True:
        have = partial.stat().st_size if partial.exists() else 0
        headers = {"Range": f"bytes={have}-"} if have else {}
        try:
            with session.get(url, headers=headers, stream=True, timeout=timeout) as response:
                if response.status_code == 416 and have:
                    # Nothing after the bytes we have: the file was complete when the last run stopped.
                    partial.replace(target)
                    return target
                if response.status_code not in (200, 206):
                    raise _http_error(response, target.name, url)
                if response.status_code == 200 and have:
                    have = 0  # the server ignored the range: start over rather than append a second copy
                length = response.headers.get("Content-Length")
                total = have + int(length) if length is not None else None
                _write_body(response, partial, have, total, target.name)
            if total is None or partial.stat().st_size == total:
                partial.replace(target)
                return target
            raise requests.exceptions.ChunkedEncodingError(
                f"connection closed after {partial.stat().st_size:,} of {total:,} bytes")
        except (requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError,
                requests.exceptions.Timeout) as err:
            failures += 1
            if failures > retries:
                kept = partial.stat().st_size if partial.exists() else 0
                raise DownloadError(f"{target.name}: the connection kept failing ({failures} attempts; last: "
                                    f"{_first_line(err)}); {kept:,} bytes are kept in {partial}, run again to "
                                    "continue") from err
            time.sleep(pause * 2 ** (failures - 1))


def _write_body(response: requests.Response, partial: Path, have: int, total: int | None, name: str) -> None:
    try:
        with open(partial, "ab" if have else "wb") as f, \
                tqdm(total=total, initial=have, unit="B", unit_scale=True, desc=name, dynamic_ncols=True) as bar:
            for block in response.iter_content(NETWORK_CHUNK):
                f.write(block)
                bar.update(len(block))
            f.flush()
            os.fsync(f.fileno())
    except requests.exceptions.RequestException:
        raise  # network trouble (requests' exceptions are OSErrors too): fetch retries it
    except OSError as err:
        raise _disk_error(err, partial, partial.stat().st_size if partial.exists() else have) from err


def _first_line(err: BaseException) -> str:
    return (str(err).splitlines() or [type(err).__name__])[0][:200]


def download_file(session: requests.Session, base_url: str, name: str, out: Path, manifest: dict,
                  checksums: dict[str, str], **fetch_options) -> None:
    """Fetches and verifies one file into ``out/parts`` (skipped when the manifest and the disk agree it is done)."""
    target = out / PARTS_DIR / name
    done = manifest["files"].get(name)
    if done and target.is_file() and target.stat().st_size == done["size"]:
        return
    url = f"{base_url.rstrip('/')}/{name}"
    fetch(session, url, target, **fetch_options)
    actual = file_md5(target, desc=f"md5 {name}")
    expected = checksums.get(name)
    if expected is not None and actual != expected:
        kept = target.with_name(name + ".md5-mismatch")
        target.replace(kept)
        raise DownloadError(f"{name}: MD5 {actual} does not match the expected {expected}; the file is kept as "
                            f"{kept} for inspection, and the next run downloads it again")
    if expected is None:
        print(f"warning: no checksum known for {name}; recorded its MD5 {actual} (pass --checksums to verify)",
              file=sys.stderr)
    manifest["files"][name] = {"size": target.stat().st_size, "md5": actual, "verified": expected is not None,
                               "url": url}
    save_manifest(out, manifest)


# ----------------------------------------------------------------------------------------------------------------
# Joining and extracting
# ----------------------------------------------------------------------------------------------------------------


class JoinedParts(io.RawIOBase):
    """Read-only, seekable view of files laid end to end: a split archive read as the archive it was cut from,
    without writing the joined copy (``cat`` would need the archive's size again in free space)."""

    def __init__(self, paths: list[Path]):
        super().__init__()
        self._files = [open(p, "rb") for p in paths]
        self._starts = [0]
        for p in paths:
            self._starts.append(self._starts[-1] + p.stat().st_size)
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._starts[-1]}[whence]
        self._position = max(0, base + offset)
        return self._position

    def tell(self) -> int:
        return self._position

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        filled = 0
        while filled < len(view) and self._position < self._starts[-1]:
            part = next(i for i in range(len(self._files)) if self._position < self._starts[i + 1])
            handle = self._files[part]
            handle.seek(self._position - self._starts[part])
            count = handle.readinto(view[filled:filled + min(len(view) - filled,
                                                             self._starts[part + 1] - self._position)])
            if not count:
                break
            filled += count
            self._position += count
        return filled

    def close(self) -> None:
        for f in self._files:
            f.close()
        super().close()


def _safe_member_path(dest: Path, name: str) -> Path:
    relative = PurePosixPath(name)
    if relative.is_absolute() or ".." in relative.parts:
        raise DownloadError(f"archive member {name!r} would be written outside {dest}; refusing to extract it")
    return dest.joinpath(*relative.parts)


def _write_member(source, path: Path, size: int) -> bool:
    """Writes one member under a hidden name and renames it; False when it is already there with its size."""
    if path.is_file() and path.stat().st_size == size:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    hidden = path.with_name(f".{path.name}.partial")
    try:
        with open(hidden, "wb") as f:
            shutil.copyfileobj(source, f, CHUNK)
    except OSError as err:
        raise _disk_error(err, path, 0) from err
    hidden.replace(path)
    return True


def extract(archive: Archive, parts: list[Path], dest: Path) -> int:
    """Extracts the (joined) archive into ``dest``; members already there with their size are kept. Returns the
    number of members written."""
    written = 0
    if archive.kind == "zip":
        with JoinedParts(parts) as joined, io.BufferedReader(joined, CHUNK) as buffered:
            try:
                with zipfile.ZipFile(buffered) as bundle:
                    members = [m for m in bundle.infolist() if not m.is_dir()]
                    for member in tqdm(members, desc=f"extracting {archive.name}", unit="file", dynamic_ncols=True):
                        path = _safe_member_path(dest, member.filename)
                        if not (path.is_file() and path.stat().st_size == member.file_size):
                            with bundle.open(member) as source:
                                written += _write_member(source, path, member.file_size)
            except (zipfile.BadZipFile, EOFError) as err:
                raise DownloadError(f"{archive.name}: not a readable zip archive ({err})") from err
        return written
    try:
        with JoinedParts(parts) as joined, io.BufferedReader(joined, CHUNK) as buffered, \
                tarfile.open(fileobj=buffered, mode="r:gz") as bundle:
            for member in tqdm(bundle, desc=f"extracting {archive.name}", unit="file", dynamic_ncols=True):
                if not member.isfile():
                    continue
                path = _safe_member_path(dest, member.name)
                if not (path.is_file() and path.stat().st_size == member.size):
                    written += _write_member(bundle.extractfile(member), path, member.size)
    except (tarfile.TarError, EOFError, OSError) as err:
        if isinstance(err, OSError) and err.errno in NO_SPACE:
            raise _disk_error(err, dest, 0) from err
        raise DownloadError(f"{archive.name}: not a readable tar.gz archive ({err})") from err
    return written


# ----------------------------------------------------------------------------------------------------------------
# The command
# ----------------------------------------------------------------------------------------------------------------


def download(names: list[str], out: Path, base_url: str, user: str, password: str, *,
             checksums: dict[str, str] | None = None, extract_archives: bool = True, retries: int = 5,
             timeout: float = 60.0, pause: float = 2.0) -> dict:
    """Downloads, verifies and extracts the archives ``names`` (keys of ``ARCHIVES``) into ``out``; returns the
    manifest. Raises ``DownloadError`` (one line) on the first file that cannot be completed."""
    unknown = [n for n in names if n not in ARCHIVES]
    if unknown:
        raise DownloadError(f"unknown dataset {', '.join(unknown)}; valid: {', '.join(ARCHIVES)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    known = {**PUBLISHED_MD5, **(checksums or {})}
    manifest = load_manifest(out)
    with requests.Session() as session:
        session.auth = (user, password)
        for name in names:
            archive = ARCHIVES[name]
            for file_name in archive.files:
                download_file(session, base_url, file_name, out, manifest, known, retries=retries,
                              timeout=timeout, pause=pause)
            if not extract_archives or manifest["extracted"].get(name):
                continue
            parts = [out / PARTS_DIR / f for f in archive.files]
            written = extract(archive, parts, out / name)
            manifest["extracted"][name] = {"folder": name, "members_written": written}
            save_manifest(out, manifest)
            print(f"{name}: extracted into {out / name}")
    return manifest


def credentials(args: argparse.Namespace) -> tuple[str, str]:
    """User and password from the flags, the environment or a prompt (never echoed)."""
    user = args.user or os.environ.get("VOXCELEB_USER")
    password = args.password or os.environ.get("VOXCELEB_PASSWORD")
    if not user:
        if not sys.stdin.isatty():
            raise DownloadError("no username: pass --user or set VOXCELEB_USER")
        user = input("VoxCeleb username: ")
    if not password:
        if not sys.stdin.isatty():
            raise DownloadError("no password: pass --password or set VOXCELEB_PASSWORD")
        password = getpass.getpass("VoxCeleb password: ")
    return user, password


def main(argv: list[str] | None = None) -> int:
    from dataset.pipeline.runner import bounded

    parser = argparse.ArgumentParser(prog="python -m dataset.download", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("datasets", nargs="*", metavar="DATASET", help=f"any of: {', '.join(ARCHIVES)}")
    parser.add_argument("--out", type=Path, help="download folder (parts/, one folder per dataset, manifest.json)")
    parser.add_argument("--base-url", help="address the files are served from (sent with your credentials)")
    parser.add_argument("--user", help="username (default: $VOXCELEB_USER, else a prompt)")
    parser.add_argument("--password", help="password (default: $VOXCELEB_PASSWORD, else a prompt; a flag is "
                                           "visible to other users of the machine in the process list)")
    parser.add_argument("--checksums", type=Path, help="MD5 file (md5sum format) for files without published ones")
    parser.add_argument("--no-extract", action="store_true", help="only download and verify")
    parser.add_argument("--retries", type=bounded(int, 0), default=5,
                        help="retries per file after a dropped connection (default 5)")
    parser.add_argument("--timeout", type=bounded(float, above=0.0), default=60.0,
                        help="seconds without data before a connection counts as dropped (default 60)")
    parser.add_argument("--list", action="store_true", help="list the datasets and their files, then exit")
    args = parser.parse_args(argv)
    if args.list:
        for archive in ARCHIVES.values():
            print(f"{archive.name:18s} {archive.description}: {', '.join(archive.files)}")
        return 0
    if not args.datasets or args.out is None or not args.base_url:
        parser.error("give the DATASETs, --out and --base-url (or --list)")
    try:
        checksums = read_checksums(args.checksums) if args.checksums else None
        user, password = credentials(args)
        manifest = download(args.datasets, args.out, args.base_url, user, password, checksums=checksums,
                            extract_archives=not args.no_extract, retries=args.retries, timeout=args.timeout)
    except (DownloadError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: run the same command again to continue", file=sys.stderr)
        return 130
    print(f"done: {len(manifest['files'])} files verified or recorded, manifest {args.out / MANIFEST}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
