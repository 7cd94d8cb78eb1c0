"""Read members of a wheel on PyPI without downloading it: HTTP range requests on the zip.

Maintainer tooling (scripts/), not part of the doctor wheel. Used by gen_stacks.py and
wheelcheck.py. A vLLM wheel is 200-400 MB; its zip directory, METADATA and a few source files
are a few hundred KiB, and the CUDA version string of its compiled library sits in the first
tens of MB of that member, which is read as a stream and dropped once the string is found.
"""

from __future__ import annotations

import io
import json
import re
import urllib.request
import zipfile

from packaging.utils import parse_wheel_filename
from packaging.version import InvalidVersion, Version

SIMPLE = "https://pypi.org/simple/{name}/"
PROJECT_PAGE = "https://pypi.org/project/{name}/{version}/"
ACCEPT = {"Accept": "application/vnd.pypi.simple.v1+json"}
TIMEOUT = 120


class RangeFile(io.RawIOBase):
    """A read-only, seekable view of a remote file, one HTTP range request per read."""

    def __init__(self, url: str) -> None:
        self.url, self.pos = url, 0
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=TIMEOUT) as r:
            self.size = int(r.headers["Content-Length"])

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def seek(self, off: int, whence: int = 0) -> int:
        self.pos = off if whence == 0 else self.pos + off if whence == 1 else self.size + off
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readinto(self, b) -> int:
        n = min(len(b), self.size - self.pos)
        if n <= 0:
            return 0
        req = urllib.request.Request(self.url, headers={"Range": f"bytes={self.pos}-{self.pos + n - 1}"})
        with urllib.request.urlopen(req, timeout=TIMEOUT) as r:
            data = r.read()
        b[: len(data)] = data
        self.pos += len(data)
        return len(data)


def remote_zip(url: str, buffer_size: int = 1 << 22) -> zipfile.ZipFile:
    return zipfile.ZipFile(io.BufferedReader(RangeFile(url), buffer_size=buffer_size))


def wheel_files(name: str) -> list[dict]:
    """The simple-index JSON file entries of a project (filename, url, yanked, ...)."""
    req = urllib.request.Request(SIMPLE.format(name=name), headers=ACCEPT)
    with urllib.request.urlopen(req, timeout=TIMEOUT) as r:
        return [f for f in json.load(r)["files"] if f["filename"].endswith(".whl")]


def release_wheels(name: str, tag_pattern: str = r"x86_64") -> dict[str, dict]:
    """Final release -> its first non-yanked wheel whose filename matches `tag_pattern`."""
    out: dict[str, dict] = {}
    for f in wheel_files(name):
        fn = f["filename"]
        if f.get("yanked") or not re.search(tag_pattern, fn):
            continue
        try:
            _, v, _, _ = parse_wheel_filename(fn)
        except (ValueError, InvalidVersion):  # odd names on the index are skipped
            continue
        if v.is_prerelease or v.is_devrelease or v.local:
            continue
        out.setdefault(str(v), f)
    return dict(sorted(out.items(), key=lambda kv: Version(kv[0])))


def scan_member(z: zipfile.ZipFile, member: str, pattern: bytes, limit: int | None = None,
                chunk: int = 1 << 22) -> tuple[bytes | None, int]:
    """The first match of `pattern` in a (decompressed) member, read as a stream, and the
    number of bytes read; stops at the match or after `limit` bytes."""
    rx = re.compile(pattern)
    seen, tail = 0, b""
    with z.open(member) as f:
        while True:
            block = f.read(chunk)
            if not block:
                return None, seen
            m = rx.search(tail + block)
            seen += len(block)
            if m:
                return m.group(0), seen
            tail = block[-256:]
            if limit is not None and seen >= limit:
                return None, seen
