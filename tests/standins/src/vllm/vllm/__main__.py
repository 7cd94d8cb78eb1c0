"""STAND-IN for vLLM: `python -m vllm` runs the same CLI as the `vllm` script."""

from vllm.entrypoints.cli.main import main

raise SystemExit(main())
