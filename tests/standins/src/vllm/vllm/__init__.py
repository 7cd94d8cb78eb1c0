"""STAND-IN for vLLM (which needs a GPU): the gptoss testbed's fake with vLLM's CLI and HTTP surface.

Built into a wheel named `vllm` by tests/standins/build.py; standard library only.
"""

from vllm._version import __version__, __version_tuple__  # noqa: F401
