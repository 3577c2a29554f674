"""Code for the course *Training and evaluating models with PyTorch*.

Each module is introduced by one chapter of the book, and its docstring names it.
Import the module you need, e.g. ``from helpers.runtime import pick_device``.
"""

import re
import warnings
from importlib import metadata

__version__ = "0.1.0"

# The oldest torch the whole course was run on. On older ones some chapters break: 2.6 and 2.7
# can hang when the distributed chapter's processes leave their group (fixed in 2.8), and older
# ones differ in APIs the course uses. pyproject.toml asks for the same. Colab installs the
# helpers without their dependencies, so there only this warning tells a reader.
MINIMUM_TORCH = (2, 8)


def torch_is_too_old(version: str) -> bool:
    """Whether a torch version string (``"2.7.1+cu126"``) is older than ``MINIMUM_TORCH``."""
    found = re.match(r"(\d+)\.(\d+)", version)
    if found is None:
        return False  # a build we cannot read: let it run rather than guess
    return (int(found[1]), int(found[2])) < MINIMUM_TORCH


def _warn_if_torch_is_too_old() -> None:
    # From the installed package's metadata, so that importing helpers does not import torch.
    try:
        version = metadata.version("torch")
    except metadata.PackageNotFoundError:
        return  # the first `import torch` says so
    if torch_is_too_old(version):
        minimum = ".".join(map(str, MINIMUM_TORCH))
        warnings.warn(
            f"the course needs torch {minimum} or newer, and this is torch {version}: some "
            f"chapters may fail or hang. Upgrade with `pip install -U torch torchvision`, "
            f"then restart the kernel.", stacklevel=2)


_warn_if_torch_is_too_old()
