"""STAND-IN for vLLM's `vllm` console script (vllm.entrypoints.cli.main:main)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from vllm import _standin_server

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["--version"], ["-v"]):
        print(_standin_server.DATA["version"])
        return 0
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: vllm [-h] [-v] {chat,complete,serve,bench,collect-env,run-batch} ...")
        return 0
    if argv[0] != "serve":
        print(f"usage: vllm [-h] [-v] {{chat,complete,serve,bench,collect-env,run-batch}} ...\n"
              f"vllm: error: argument subparser: invalid choice: '{argv[0]}' (stand-in: only 'serve')",
              file=sys.stderr)
        return 2
    return _standin_server.serve(argv[1:], prog="vllm serve", positional_model=True)


if __name__ == "__main__":
    raise SystemExit(main())
