"""Put what tests/gpu/run_e2e.sh brought back from the GPU machine under tests/fixtures/gpu/.

    python3 tests/gpu/import_fixtures.py [--dest DIR] FIXTURES.tar.gz [results.json]

Only logs, JSON and text members are taken, flat; a member holding something shaped like an
API key (`VLLM_API_KEY=` with a value, `Bearer <token>`) is refused, so nothing secret is committed.
"""

from __future__ import annotations

import re
import shutil
import sys
import tarfile
from pathlib import Path

DEST = Path(__file__).resolve().parents[1] / "fixtures" / "gpu"
KEEP = (".log", ".json", ".jsonl", ".txt", ".service")
SECRET = re.compile(r"VLLM_API_KEY=(?!<redacted>)\S|Bearer (?!<redacted>)[A-Za-z0-9]")


def main(argv: list[str]) -> int:
    dest = DEST
    if argv[:1] == ["--dest"] and len(argv) > 1:
        dest, argv = Path(argv[1]), argv[2:]
    if not argv or not Path(argv[0]).is_file():
        print("usage: import_fixtures.py FIXTURES.tar.gz [results.json]  (the files run_e2e.sh left in $OUT)", file=sys.stderr)
        return 2
    dest.mkdir(parents=True, exist_ok=True)
    taken = []
    with tarfile.open(argv[0]) as tar:
        for m in tar.getmembers():
            name = Path(m.name).name
            if not m.isfile() or not name.endswith(KEEP):
                continue
            text = tar.extractfile(m).read().decode("utf-8", errors="replace")
            if SECRET.search(text):
                print(f"import_fixtures: {m.name} holds something like an API key; not imported (redact it first)", file=sys.stderr)
                return 1
            (dest / name).write_text(text)
            taken.append(name)
    if len(argv) > 1:
        shutil.copy(argv[1], dest / "results.json")
        taken.append("results.json")
    print(f"imported {len(taken)} files into {dest}: {', '.join(sorted(taken))}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
