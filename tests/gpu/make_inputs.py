"""Build the GPU end-to-end run's inputs under .gpu/ (ignored by git) from PyPI.

    python3 tests/gpu/make_inputs.py            # about 500 MB of downloads, a few minutes of xz

Makes what tests/gpu/README.md carries to the lent GPU machine, which has no network:
- .gpu/wh.part00..02: one tar.xz of the wheelhouse, split to fit the device tool's 64 MiB per
  call: vLLM 0.26.0 for CPython 3.12 (trimmed: see TRIM) and the packages the GPU image lacks
  (shared/notes/gpu-vllm-facts.md lists them; openai 3.57.0 also needs httpx2, httpcore2,
  truststore and jiter);
- .gpu/tools: pyinfra and its dependencies, uv (what `pyinfra @local` needs there);
- .gpu/extra: hatchling (the deploy builds the doctor wheel offline) and the doctor's dependencies.

The vLLM wheel is rewritten with its RECORD kept consistent and stored uncompressed, so that
xz compresses the whole wheelhouse well.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / ".gpu"
PART_BYTES = 55 * 2**20

PLATFORM_ARGS = [
    "--only-binary=:all:", "--no-deps", "--python-version", "3.12", "--implementation", "cp",
    *[a for n in ("2_17", "2_24", "2_27", "2_28", "2_31", "2_34", "2_35") for a in ("--platform", f"manylinux_{n}_x86_64")],
    "--platform", "manylinux2014_x86_64", "--platform", "manylinux1_x86_64",
]

WHEELHOUSE = [
    "vllm==0.26.0", "flashinfer-python==0.6.14", "llguidance==1.7.6", "openai-harmony==0.0.8",
    "apache-tvm-ffi==0.1.10", "openai==3.57.0", "httpx2==2.16.2", "httpcore2==2.16.2", "truststore",
    "jiter<1,>=0.16.0", "pydantic==2.14.4", "pydantic_core==2.50.5", "xgrammar==0.2.7", "pyzmq==27.3.0",
    "fastapi==0.136.3", "starlette==1.10.0", "uvicorn==0.54.0", "msgspec==0.22.0", "cbor2==6.3.0",
    "watchfiles==1.3.0", "compressed-tensors==0.17.0", "loguru==0.7.3",
    "model-hosting-container-standards==0.1.16", "jmespath==1.1.0", "pybase64==1.5.1",
    "opentelemetry-api==1.45.2", "prometheus-fastapi-instrumentator==8.1.0", "cachetools==8.0.2",
    "sniffio==1.3.1", "partial-json-parser==0.2.1.1.post7", "annotated-types==0.8.0",
    "typing-inspection==0.4.5", "setproctitle", "blake3", "depyf==0.20.0", "astor", "dill",
]
TOOLS = [
    "pyinfra==3.10.0", "gevent==26.9.0", "greenlet==3.5.6", "zope-event==6.2", "zope-interface==8.7",
    "paramiko==4.0.0", "bcrypt==5.0.0", "cryptography==50.0.2", "pynacl==1.6.2", "invoke==3.0.3",
    "typeguard==4.6.1", "distro==1.9.0", "types-paramiko==4.0.0.20260518", "uv==0.13.9", "cffi==2.1.1",
    "pycparser==3.12", "click==8.5.1",
]
EXTRA = [
    "hatchling==1.33.0", "pathspec==1.1.1", "pluggy==1.7.0", "trove-classifiers==2026.9.21.13", "tomlkit==0.15.2",
    "packaging==26.4", "rich==15.0.0", "markdown-it-py==4.3.0", "mdurl==0.1.2", "pygments==2.21.0",
    "jinja2==3.1.6", "markupsafe==3.0.4", "python-dateutil==2.9.0.post0", "six==1.17.0", "typing-extensions==4.16.0",
]

# What vLLM 0.26.0 does not need on a Hopper GPU with Python 3.12 (gpu-vllm-facts.md): FA2 is
# only tried under try/except there, the Rust frontend is optional, deep_gemm ships a build per
# Python, and the sm100 FMHA sources serve Blackwell only.
TRIM = [re.compile(p) for p in (
    r"^vllm/vllm_flash_attn/_vllm_fa2_C\.abi3\.so$",
    r"^vllm/vllm-rs$",
    r"^vllm/third_party/deep_gemm/_C\.cpython-3(10|11|13|14)-",
    r"^vllm/third_party/fmha_sm100/",
)]


def download(requirements: list[str], dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", *PLATFORM_ARGS, "-d", str(dest), *requirements],
                   check=True)


def trim_wheel(src: Path, dst: Path) -> int:
    """Copy `src` without the TRIM paths, RECORD rewritten, members stored; returns how many were dropped."""
    dropped: set[str] = set()
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED, allowZip64=True) as zout:
        for info in zin.infolist():
            name = info.filename
            if any(p.search(name) for p in TRIM):
                dropped.add(name)
                continue
            data = zin.read(name)
            if name.endswith(".dist-info/RECORD"):  # the last member: every drop is known by now
                kept = [line for line in data.decode().splitlines() if line.split(",")[0] not in dropped]
                data = ("\n".join(kept) + "\n").encode()
            member = zipfile.ZipInfo(name, date_time=info.date_time)
            member.external_attr = info.external_attr
            zout.writestr(member, data)
    with zipfile.ZipFile(dst) as z:
        bad = z.testzip()
    if bad:
        raise SystemExit(f"trimmed wheel {dst}: bad member {bad}")
    return len(dropped)


def main() -> int:
    OUT.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        raw, house = Path(tmp, "raw"), Path(tmp, "house")
        download(WHEELHOUSE, raw)
        house.mkdir()
        for whl in raw.glob("*.whl"):
            if whl.name.startswith("vllm-"):
                print(f"trimmed {trim_wheel(whl, house / whl.name)} files from {whl.name}")
            else:
                shutil.copy2(whl, house / whl.name)
        archive = Path(tmp, "wheelhouse.tar.xz")
        with archive.open("wb") as f:
            tar = subprocess.Popen(["tar", "-C", str(house), "-cf", "-", *sorted(p.name for p in house.iterdir())],
                                   stdout=subprocess.PIPE)
            subprocess.run(["xz", "-6", "-T0"], stdin=tar.stdout, stdout=f, check=True)
            if tar.wait():
                raise SystemExit("tar failed")
        for old in OUT.glob("wh.part*"):
            old.unlink()
        subprocess.run(["split", "-b", str(PART_BYTES), "-d", str(archive), str(OUT / "wh.part")], check=True)
    for name, reqs in (("tools", TOOLS), ("extra", EXTRA)):
        shutil.rmtree(OUT / name, ignore_errors=True)
        download(reqs, OUT / name)
    for p in sorted(OUT.iterdir()):
        size = sum(f.stat().st_size for f in p.rglob("*")) if p.is_dir() else p.stat().st_size
        print(f"{p.relative_to(ROOT)}  {size / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
