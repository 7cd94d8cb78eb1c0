"""Time the doctor's default diagnosis on the live GPU box (run by run_e2e.sh's `serve` phase).

    python3 tests/gpu/time_doctor.py OUT.json

Seven runs of `gptoss-doctor --json` (the deployed doctor on PATH), beside the floor the box
issue names: one `nvidia-smi -L` and one bare interpreter start. Writes and prints the medians.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time


def timed(argv: list[str]) -> tuple[float, int]:
    t = time.perf_counter()
    rc = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
    return time.perf_counter() - t, rc


def main(out: str) -> int:
    runs = [timed(["gptoss-doctor", "--json"]) for _ in range(7)]
    secs = sorted(s for s, _ in runs)
    report = {
        "runs": [{"seconds": round(s, 4), "exit": rc} for s, rc in runs],
        "median_s": round(secs[len(secs) // 2], 4),
        "nvidia_smi_s": round(timed(["nvidia-smi", "-L"])[0], 4),
        "python_start_s": round(timed([sys.executable, "-c", "pass"])[0], 4),
    }
    with open(out, "w") as f:
        json.dump(report, f, indent=1)
    print("[e2e] doctor timing:", json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
