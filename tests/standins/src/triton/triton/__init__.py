"""STAND-IN for Triton (real kernels need a GPU): the gptoss testbed's placeholder.

Both the `triton` and the `pytorch-triton` stand-in wheels install this package, as the real
ones do: two of them in one venv overwrite each other's files (the duplicate-Triton failure).
"""

from triton._version import __version__  # noqa: F401
