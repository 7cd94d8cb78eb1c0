"""One process at a time on a testbed: an flock on STATE_DIR/exclusive.lock.

Two upgrade runs on the same hosts at once (another session's tests, or the benchmark) would
flip each other's stacks; the tests and the benchmark take this same lock, so they exclude
each other.
"""

from __future__ import annotations

import fcntl
import time
from pathlib import Path
from typing import IO


def hold(state_dir: str, timeout_s: float = 1800) -> IO:
    """The lock, held until the returned file is closed (or the process ends); TimeoutError when
    another process holds it longer than `timeout_s`."""
    Path(state_dir).mkdir(parents=True, exist_ok=True)
    f = open(Path(state_dir) / "exclusive.lock", "w")
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return f
        except BlockingIOError:
            if time.monotonic() > deadline:
                f.close()
                raise TimeoutError(f"{state_dir}/exclusive.lock held for {timeout_s:.0f}s by another run")
            time.sleep(1)
