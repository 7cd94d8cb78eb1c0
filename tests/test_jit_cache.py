"""Carried JIT caches (deploys/gptoss_deploy/jit_cache.py).

- Config: an archive of cache directories is read once on the controller (digest, file count);
  every unsafe or useless archive is one line naming the key, the value and how to make a good
  one, before any host is touched.
- The unpack command, run for real here as an unprivileged user on a real archive: the files
  land in that user's home under the cache directories, owned by the user, and the marker holds
  the archive's sha256 (tests/test_supervisor.py runs it through the whole deploy, twice).
"""

from __future__ import annotations

import hashlib
import io
import os
import pwd
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "deploys"))

from gptoss_deploy import config as C  # noqa: E402
from gptoss_deploy import jit_cache as J  # noqa: E402

DEBIAN = {"os_id": "debian", "os_like": None, "os_pretty": "Debian GNU/Linux 12 (bookworm)", "arch": "x86_64",
          "python_path": "/usr/bin/python3", "python_version": "3.11.2", "gpus": [], "nvswitch_count": 0}


def make_archive(path: Path, members: list[tuple[str, str, bytes]], mode: str = "w:gz") -> Path:
    """members: (name, kind, data) with kind 'file', 'dir', 'symlink' (data = target) or 'fifo'."""
    with tarfile.open(path, mode) as tar:
        for name, kind, data in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
                continue
            info.type = {"dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE, "fifo": tarfile.FIFOTYPE}[kind]
            if kind == "dir":
                info.mode = 0o755
            if kind == "symlink":
                info.linkname = data.decode()
            tar.addfile(info)
    return path


GOOD = [(".triton", "dir", b""), (".triton/cache/ab12/kernel.cubin", "file", b"\x7fELF" + b"k" * 60),
        ("cache/vllm/modelinfos/gpt.json", "file", b"{}"), (".cache/flashinfer/90/cached_ops/sampling.so", "file", b"so" * 40),
        ("./.nv/ComputeCache/index", "file", b"i")]


def test_a_good_archive_is_read_once_with_its_digest(tmp_path):
    path = make_archive(tmp_path / "jit.tgz", GOOD)
    got = J.check("gpu1", str(path))
    assert got.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert got.files == 4 and got.unpacked_bytes == 64 + 2 + 80 + 1
    assert J.check("gpu2", str(path)) is got  # every host names the same archive: read once
    assert J.check("gpu1", None) is None and J.check("gpu1", "") is None


@pytest.mark.parametrize("members, says", [
    ([("/etc/cron.d/x", "file", b"x")], "points outside the service's home"),
    ([(".triton/../../etc/passwd", "file", b"x")], "points outside the service's home"),
    ([("hf/hub/models--openai--gpt-oss-20b/x", "file", b"x")], "outside the cache directories"),
    ([(".triton", "dir", b""), (".triton/cache", "symlink", b"/etc")], "a link or device"),
    ([(".cache/fifo", "fifo", b"")], "a link or device"),
    ([(".triton", "dir", b""), (".nv", "dir", b"")], "holds no cache files"),
])
def test_an_unsafe_or_empty_archive_is_one_line(tmp_path, members, says):
    path = make_archive(tmp_path / "bad.tgz", members)
    with pytest.raises(C.ConfigError) as e:
        J.check("gpu1", str(path))
    msg = str(e.value)
    assert "\n" not in msg and "gpu1" in msg and "gptoss_jit_cache" in msg and str(path) in msg and says in msg
    assert "tar -czf" in msg  # how to make a good one


def test_a_missing_or_foreign_file_is_one_line(tmp_path):
    with pytest.raises(C.ConfigError, match=r"cannot be read on the controller \(No such file"):
        J.check("gpu1", str(tmp_path / "nope.tgz"))
    junk = tmp_path / "jit.tgz"
    junk.write_bytes(b"not a tar at all" * 100)
    with pytest.raises(C.ConfigError, match="is not a readable tar archive"):
        J.check("gpu1", str(junk))
    with pytest.raises(C.ConfigError, match="is not a path"):
        J.check("gpu1", 42)


def test_the_config_carries_it_and_a_bad_one_stops_validation(tmp_path, kb, key_file):
    data = {"gptoss_stack": "vllm-0.26.0", "gptoss_gpu_family": "H200", "gptoss_api_key_file": key_file}
    cfg = C.validate("gpu1", {**data, "gptoss_jit_cache": str(make_archive(tmp_path / "jit.tgz", GOOD))}, DEBIAN, kb)
    assert cfg.jit_cache.files == 4
    assert C.validate("gpu1", data, DEBIAN, kb).jit_cache is None
    with pytest.raises(C.ConfigError, match="gptoss_jit_cache"):
        C.validate("gpu1", {**data, "gptoss_jit_cache": str(tmp_path / "missing.tgz")}, DEBIAN, kb)


@pytest.fixture()
def world_enterable_dir():
    top = Path(tempfile.mkdtemp(dir="/var/tmp", prefix="gptoss-jit-test-"))  # pytest's tmp is 0700: nobody can't enter
    top.chmod(0o755)
    yield top
    shutil.rmtree(top, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="runuser needs root")
def test_the_unpack_command_runs_as_the_service_user(world_enterable_dir, monkeypatch):
    """The deploy's own command, with its paths pointed at a scratch home and a real user."""
    user, top = "nobody", world_enterable_dir
    home = top / "home"
    home.mkdir()
    os.chown(home, pwd.getpwnam(user).pw_uid, pwd.getpwnam(user).pw_gid)
    archive = make_archive(top / "jit.tgz", GOOD)
    archive.chmod(0o644)
    monkeypatch.setattr(J, "SERVICE_USER", user)
    monkeypatch.setattr(J, "STATE_DIR", str(home))
    monkeypatch.setattr(J, "ARCHIVE", str(archive))
    monkeypatch.setattr(J, "MARKER", str(home / ".jit-cache.sha256"))
    digest = J.read_archive(str(archive)).sha256
    subprocess.run(J.unpack_command(digest), shell=True, check=True)
    kernel = home / ".triton/cache/ab12/kernel.cubin"
    assert kernel.read_bytes().startswith(b"\x7fELF")
    assert kernel.stat().st_uid == pwd.getpwnam(user).pw_uid
    assert (home / ".nv/ComputeCache/index").is_file() and (home / "cache/vllm/modelinfos/gpt.json").is_file()
    assert (home / ".jit-cache.sha256").read_text().strip() == digest
