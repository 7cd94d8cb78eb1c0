"""Maintenance tool: re-check lifecycle.toml against the real vLLM wheels on PyPI.

Not part of the doctor wheel (maintainer tooling under scripts/). For each vLLM release it reads, over HTTP range requests (a
few hundred KiB of each ~400 MB wheel: the zip directory and three source files), which
`VLLM_*` names `vllm/envs.py` defines, which attention backend names the backend enum has, and
whether the flags and config keys the lifecycle rows name appear. It then prints every row
whose `lifecycle_status` disagrees with what the wheel holds (valid/deprecated = the name is
there; removed/not-yet = it is not).

    uv run --frozen python scripts/wheelcheck.py [--from 0.10.1] [--json OUT]

Only names whose presence can be read from the source are checked (see PROBES); rows marked
`upstream = false` or `only_in` pre-release builds are skipped (those builds are not on PyPI).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from packaging.version import Version

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "doctor"))  # run from a checkout
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _pypi import release_wheels, remote_zip  # noqa: E402

from gptoss_doctor.knowledge import KnowledgeError, load  # noqa: E402


def wheel_urls(name: str = "vllm") -> dict[str, str]:
    """Final release -> URL of its x86_64 manylinux wheel."""
    return {v: f["url"] for v, f in release_wheels(name, r"x86_64").items()}


_BACKEND_CLASS = re.compile(r"^class (_Backend|AttentionBackendEnum)\b.*?:\n((?:[ \t]+.*\n|\n)+)", re.M)
_MEMBER = re.compile(r"^    ([A-Z][A-Z0-9_]*)\s*=", re.M)
_ENV_KEY = re.compile(r'^\s*"(VLLM_[A-Z0-9_]+)"\s*:', re.M)


def read_wheel(url: str) -> dict:
    """What the remote wheel at `url` defines (see wheel_names)."""
    return wheel_names(remote_zip(url, buffer_size=1 << 20))


def wheel_names(z) -> dict:
    """The names a vLLM wheel defines: env vars, backend names, and source texts for flag probes."""
    names = set(z.namelist())

    def text(path: str) -> str:
        return z.read(path).decode("utf-8", "replace") if path in names else ""

    backends: set[str] = set()
    for path in ("vllm/attention/backends/registry.py", "vllm/v1/attention/backends/registry.py",
                 "vllm/platforms/interface.py"):
        for m in _BACKEND_CLASS.finditer(text(path)):
            backends |= set(_MEMBER.findall(m.group(2)))
    config_text = "".join(text(p) for p in sorted(names) if p.startswith("vllm/config/") and p.endswith(".py"))
    selector = text("vllm/attention/selector.py") + text("vllm/v1/attention/selector.py")
    if re.search(r'removesuffix\(\s*"_VLLM_V1"\s*\)', selector):
        # 0.11.0-0.12.0 accept the old suffixed names (with a warning) by stripping the suffix
        backends |= {f"{b}_VLLM_V1" for b in backends}
    return {
        "env_vars": sorted(set(_ENV_KEY.findall(text("vllm/envs.py")))),
        "attention_backends": sorted(backends),
        "arg_utils": text("vllm/engine/arg_utils.py"),
        "config": config_text or text("vllm/config.py"),
        "files": names,
    }


def _in_args(field: str) -> Callable[[dict], bool]:
    return lambda w: re.search(rf"\b{field}\b", w["arg_utils"]) is not None


def _in_config(key: str) -> Callable[[dict], bool]:
    return lambda w: re.search(rf"^\s+{key}\s*:", w["config"], re.M) is not None


# Flag rows whose presence the source shows. Others (combinations, values) are not probed.
PROBES: dict[str, Callable[[dict], bool]] = {
    "--async-scheduling": _in_args("async_scheduling"),
    "--cuda-graph-sizes": _in_args("cuda_graph_sizes"),
    "--max-cudagraph-capture-size": _in_args("max_cudagraph_capture_size"),
    "--stream-interval": _in_args("stream_interval"),
    "--attention-backend": _in_args("attention_backend"),
    "--moe-backend": _in_args("moe_backend"),
    "--fail-on-environ-validation": _in_args("fail_on_environ_validation"),
    "--quantization-config": lambda w: '"--quantization-config"' in w["arg_utils"],
    "--tool-server": lambda w: "tool_server" in w["arg_utils"] or any("tool_server" in f for f in w["files"]),
    # registered as "openai"; the module was renamed gptoss_tool_parser.py later
    "--tool-call-parser openai": lambda w: any(f.endswith(("/openai_tool_parser.py", "/gptoss_tool_parser.py")) for f in w["files"]),
    "--compilation-config full_cuda_graph": _in_config("full_cuda_graph"),
}


def observe(kb, versions: list[str], urls: dict[str, str]) -> dict[str, dict[str, bool]]:
    """version -> {row name: present?} for every probe-able lifecycle row."""

    def one(v: str) -> tuple[str, dict[str, bool]]:
        return v, presence(kb, read_wheel(urls[v]))

    with ThreadPoolExecutor(max_workers=3) as pool:
        return dict(pool.map(one, versions))


def presence(kb, w: dict) -> dict[str, bool]:
    """{lifecycle row name: does this wheel have it} for every row a wheel can show."""
    seen: dict[str, bool] = {}
    seen.update({n: n in w["env_vars"] for n in kb.env_vars if n.startswith("VLLM_")})
    seen.update({n: n in w["attention_backends"] for n in kb.attention_backends})
    seen.update({n: probe(w) for n, probe in PROBES.items() if n in kb.flags})
    return seen


def disagreements(kb, seen: dict[str, dict[str, bool]]) -> list[str]:
    out = []
    for v, names in seen.items():
        for name, present in names.items():
            lc = kb.lifecycle(name)
            if lc is None or not lc.upstream or lc.only_in:
                continue
            status = kb.lifecycle_status(lc, v)
            expected = status in ("valid", "deprecated")
            if expected != present:
                out.append(f"{name}: vllm {v}: knowledge says {status}, the wheel {'has' if present else 'lacks'} it")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="scripts/wheelcheck.py", description=__doc__.splitlines()[0])
    ap.add_argument("--from", dest="start", default="0.10.1", help="first vLLM release to read (default 0.10.1)")
    ap.add_argument("--only", nargs="*", help="just these releases")
    ap.add_argument("--json", help="also write what each wheel holds to this file")
    args = ap.parse_args(argv)
    try:
        kb = load()
        urls = wheel_urls()
    except (KnowledgeError, OSError) as e:
        print(f"wheelcheck: {e}", file=sys.stderr)
        return 2
    versions = args.only or sorted((v for v in urls if Version(v) >= Version(args.start)), key=Version)
    missing = [v for v in versions if v not in urls]
    if missing:
        print(f"wheelcheck: no x86_64 wheel on PyPI for {', '.join(missing)}", file=sys.stderr)
        return 2
    seen = observe(kb, versions, urls)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(seen, f, indent=1, sort_keys=True)
    bad = disagreements(kb, seen)
    for line in bad:
        print(line)
    print(f"{len(versions)} releases read, {len(bad)} disagreements", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
