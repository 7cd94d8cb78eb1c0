"""STAND-IN for vLLM's `python -m vllm.entrypoints.openai.api_server --model M ...`."""

import sys

if __name__ == "__main__":
    from vllm import _standin_server

    raise SystemExit(_standin_server.serve(sys.argv[1:], prog="api_server.py", positional_model=False))
