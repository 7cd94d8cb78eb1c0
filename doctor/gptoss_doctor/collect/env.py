"""The box as the collectors see it: a root directory, environment variables and a process runner.

Everything a collector reads goes through an `Env`, so tests point it at a fake root in a
temporary directory (real files, real executables) instead of patching `open` or `subprocess`
(httpie's `Environment` idea). Paths written in the box's own files (`/etc/...`, an
`ExecStart=` binary, `CUDA_HOME`) are *box paths*; `env.path()` maps them under the root.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from ..records import field, frozen_record, record

DEFAULT_TIMEOUT_S = 5.0


class CommandError(RuntimeError):
    """A command that could not run or did not finish in time: the message is the fact's error."""


@frozen_record
class Completed:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    def tail(self, n: int = 400) -> str:
        text = (self.stderr.strip() or self.stdout.strip())
        return text[-n:]


@record
class Env:
    root: Path = Path("/")
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    timeout_s: float = DEFAULT_TIMEOUT_S
    # what several collectors read (the unit, the manifest): read once per collection, shared
    _memo: dict = field(default_factory=dict, repr=False, compare=False)
    _memo_lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def once(self, key: str, compute: Callable[[], Any]) -> Any:
        """`compute()` the first time `key` is asked for; its result (or its exception) after."""
        with self._memo_lock:
            if key not in self._memo:
                try:
                    self._memo[key] = (True, compute())
                except Exception as e:  # noqa: BLE001 - each caller sees the same failure
                    self._memo[key] = (False, e)
            ok, got = self._memo[key]
        if not ok:
            raise got
        return got

    def forget(self) -> None:
        """Drop what `once` remembered: a new collection reads the box afresh."""
        with self._memo_lock:
            self._memo.clear()

    def path(self, box_path: str | os.PathLike) -> Path:
        """The host path of a box path: `/etc/x` is `<root>/etc/x`."""
        p = Path(box_path)
        if self.root == Path("/") or not p.is_absolute():
            return p
        return self.root / p.relative_to("/")

    def read_text(self, box_path: str | os.PathLike, limit: int = 1 << 20) -> str:
        with open(self.path(box_path), encoding="utf-8", errors="replace") as f:
            return f.read(limit)

    def exists(self, box_path: str | os.PathLike) -> bool:
        return self.path(box_path).exists()

    def which(self, name: str) -> str | None:
        """The box path of `name` on the box's PATH (as `shutil.which`, under the root)."""
        for d in self.environ.get("PATH", os.defpath).split(os.pathsep):
            if not d:
                continue
            candidate = os.path.join(d, name)
            host = self.path(candidate)
            if host.is_file() and os.access(host, os.X_OK):
                return candidate
        return None

    def venv_of_binary(self, binary: str) -> str | None:
        """`/opt/x/bin/vllm` -> `/opt/x` when `/opt/x/pyvenv.cfg` exists (box paths)."""
        home = os.path.dirname(os.path.dirname(binary))
        return home if self.exists(f"{home}/pyvenv.cfg") else None

    def run(self, argv: list[str], timeout_s: float | None = None) -> Completed:
        """Run a box command (argv[0] a box path or a name on the box's PATH), bounded in time."""
        exe = argv[0] if "/" in argv[0] else self.which(argv[0])
        if exe is None:
            raise CommandError(f"{argv[0]}: not found on PATH")
        limit = self.timeout_s if timeout_s is None else timeout_s
        started = time.perf_counter()
        try:
            proc = subprocess.run(
                [str(self.path(exe)), *argv[1:]],
                capture_output=True,
                text=True,
                errors="replace",
                timeout=limit,
                env=dict(self.environ),
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            raise CommandError(f"`{' '.join(argv)}` did not finish in {limit:g} s") from None
        except OSError as e:
            raise CommandError(f"`{' '.join(argv)}`: {e.strerror or e}") from None
        return Completed(tuple(argv), proc.returncode, proc.stdout, proc.stderr, time.perf_counter() - started)
