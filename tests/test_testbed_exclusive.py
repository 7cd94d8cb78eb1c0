"""gptoss_testbed.exclusive: the one lock the upgrade tests and the benchmark take on a testbed,
so two runs never upgrade the same hosts at once. Real flocks, held by real processes."""

from __future__ import annotations

import subprocess
import sys

from gptoss_testbed import exclusive

TRY_IN_CHILD = """
import sys
from gptoss_testbed import exclusive
try:
    exclusive.hold(sys.argv[1], timeout_s=0)
except TimeoutError as e:
    print(e); sys.exit(3)
print("held")
"""


def try_from_another_process(state_dir) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", TRY_IN_CHILD, str(state_dir)], capture_output=True, text=True,
                          timeout=60)


def test_a_held_testbed_refuses_another_process_until_released(tmp_path):
    state_dir = tmp_path / "state"  # created by hold
    lock = exclusive.hold(str(state_dir))
    try:
        busy = try_from_another_process(state_dir)
        assert busy.returncode == 3, busy
        assert f"{state_dir}/exclusive.lock held for 0s by another run" in busy.stdout
    finally:
        lock.close()
    free = try_from_another_process(state_dir)
    assert free.returncode == 0 and free.stdout.strip() == "held", free
