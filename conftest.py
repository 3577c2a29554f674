"""pytest set-up for the whole repository (unit tests in tests/, notebooks in book/)."""

import os
from pathlib import Path

# Quick mode (small data, one to three short epochs, CPU-sized) for every notebook nbval runs. Set here,
# before nbval starts any kernel, so that the kernels inherit it.
os.environ.setdefault("COURSE_QUICK", "1")
# Like `python -m helpers.notebooks execute`, so that nbval sees what produced the stored outputs.
os.environ.setdefault("COURSE_EXECUTING", "1")
# The checkout's own helpers for every process the tests start (notebook kernels, torchrun's
# workers), whatever copy of the package the environment has installed.
ROOT = Path(__file__).resolve().parent
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))


def pytest_configure(config):
    # The sanitize file in pyproject.toml's addopts is relative to the repository's root, but nbval
    # opens it from the folder pytest was started in: make it absolute, so that a notebook can be
    # tested from anywhere (`cd book && python -m pytest losses.ipynb`).
    sanitize = getattr(config.option, "nbval_sanitize_with", None)
    if sanitize and not Path(sanitize).is_absolute():
        config.option.nbval_sanitize_with = str(ROOT / sanitize)
