"""STAND-IN for PyTorch (the real CUDA build needs a GPU to be useful): the gptoss testbed's placeholder.

Only what the project reads exists: `torch.__version__`, `torch.version.cuda`, `torch.cuda.is_available()`.
"""

from torch import version  # noqa: F401
from torch.version import __version__  # noqa: F401


class cuda:  # noqa: N801 - mirrors the real module's name
    """No GPU on a testbed host."""

    @staticmethod
    def is_available() -> bool:
        return False

    @staticmethod
    def device_count() -> int:
        return 0
