"""Time the doctor's default diagnosis on the live GPU box (run by run_e2e.sh's `serve` phase).

    python3 tests/gpu/time_doctor.py OUT.json

Fifteen runs of `gptoss-doctor --json` (the deployed doctor on PATH), beside the floor the box
issue names: one `nvidia-smi -L` and one bare interpreter start. Then, to see where the time goes:
one `gptoss-doctor collect` (its per-collector seconds) and the doctor's slowest imports
(`-X importtime`). Writes and prints the medians.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time


def timed(argv: list[str]) -> tuple[float, int]:
    t = time.perf_counter()
    try:
        rc = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
    except OSError:  # no nvidia-smi (a rehearsal without a GPU)
        rc = 127
    return time.perf_counter() - t, rc


def main(out: str) -> int:
    runs = [timed(["gptoss-doctor", "--json"]) for _ in range(15)]
    secs = sorted(s for s, _ in runs)
    report = {
        "runs": [{"seconds": round(s, 4), "exit": rc} for s, rc in runs],
        "median_s": round(secs[len(secs) // 2], 4),
        "nvidia_smi_s": round(timed(["nvidia-smi", "-L"])[0], 4),
        "python_start_s": round(timed([sys.executable, "-c", "pass"])[0], 4),
    }
    snap = subprocess.run(["gptoss-doctor", "collect"], capture_output=True, text=True)
    try:
        d = json.loads(snap.stdout)
        report["collect"] = {"duration_s": d["duration_s"], "collector_seconds": d["collector_seconds"]}
    except (ValueError, KeyError) as e:
        report["collect"] = {"error": f"{e}: {snap.stderr[-300:]}"}
    doctor = shutil.which("gptoss-doctor")
    py = open(doctor).readline()[2:].strip() if doctor else sys.executable
    imp = subprocess.run([py, "-X", "importtime", "-m", "gptoss_doctor", "--json"], capture_output=True, text=True)
    rows = []
    for line in imp.stderr.splitlines():
        parts = line.split("|")
        if len(parts) == 3 and parts[1].strip().isdigit():
            rows.append((int(parts[1]), parts[2].rstrip()))
    report["slowest_imports_us"] = [[us, name] for us, name in sorted(rows, reverse=True)[:12]]
    with open(out, "w") as f:
        json.dump(report, f, indent=1)
    print("[e2e] doctor timing:", json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
