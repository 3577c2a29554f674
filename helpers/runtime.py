"""Where and how the course's code runs: quick mode, device, seeds, timing; showing code.

Introduced in the preface and used by every chapter.

Quick mode (``COURSE_QUICK=1``) shrinks every notebook so that it runs on two CPU cores without
network: small data, one to three short epochs. The test suite runs in quick mode; readers get
the full run.
"""

from __future__ import annotations

import inspect
import json
import os
import random
import textwrap
import time
from datetime import date

import numpy as np
import torch

QUICK_ENV = "COURSE_QUICK"

# What a notebook's data came from, recorded by the data loaders so that the executed notebook
# can be stamped with it (see helpers.notebooks).
_data_sources: list[str] = []


def quick_mode() -> bool:
    """True when ``COURSE_QUICK`` is 1, true or yes (any case); False when it is unset, empty,
    0, false or no. Any other value raises ``ValueError``, rather than guess."""
    value = os.environ.get(QUICK_ENV, "").strip().lower()
    if value in ("", "0", "false", "no"):
        return False
    if value in ("1", "true", "yes"):
        return True
    raise ValueError(f"{QUICK_ENV}={value!r} is not understood: set it to 1 for quick mode or 0 (or unset) for the full run")


def pick(full, quick):
    """``quick`` in quick mode, ``full`` otherwise: ``epochs = pick(10, 1)``."""
    return quick if quick_mode() else full


# What to do when a device asked for by name is missing.
_MISSING_DEVICE_REMEDY = {
    "cuda": ("in Colab, choose Runtime > Change runtime type > GPU; elsewhere, on a machine with an "
             "NVIDIA GPU, install a CUDA build of PyTorch (see pytorch.org), or pass 'cpu'"),
    "mps": "it needs a Mac with Apple silicon and a recent macOS; elsewhere, pass 'cpu'",
}


def pick_device(prefer: str | None = None) -> torch.device:
    """The best available device: CUDA, then Apple's MPS, then the CPU.

    ``prefer`` ("cuda", "mps" or "cpu") asks for one device and fails loudly if it is missing,
    rather than quietly running somewhere slower.
    """
    available = {
        "cuda": torch.cuda.is_available(),
        "mps": torch.backends.mps.is_available(),
        "cpu": True,
    }
    if prefer is not None:
        if prefer not in available:
            raise ValueError(f"unknown device {prefer!r}: choose one of {sorted(available)}")
        if not available[prefer]:
            raise RuntimeError(f"device {prefer!r} was asked for but is not available here: "
                               f"{_MISSING_DEVICE_REMEDY[prefer]}")
        return torch.device(prefer)
    for name in ("cuda", "mps"):
        if available[name]:
            return torch.device(name)
    return torch.device("cpu")


def device_name(device: torch.device | str) -> str:
    """A readable name for a device, e.g. ``cuda (NVIDIA H200)`` or ``cpu``."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return device.type


def describe_run(device: torch.device | str | None = None, smaller_without_gpu: str = "",
                 trains: bool = True) -> str:
    """One line saying where and how this notebook runs, for the top of a chapter that uses data.

    On a CPU in a full run it says that training will be slow, and how to get a GPU in Colab or
    a small run (quick mode) instead; ``trains=False`` is for a chapter that trains nothing, which
    a CPU runs in full. In quick mode it says that the numbers are not the book's.
    ``smaller_without_gpu`` says what a chapter makes smaller without a CUDA GPU (``"3 epochs,
    not the article's 10"``), so that such a run is not called full.
    """
    device = torch.device(device) if device is not None else pick_device()
    line = f"Running on {device_name(device)}"
    if device.type == "cpu" and quick_mode():
        line += " (no GPU found)"
    elif device.type == "cpu" and not trains:
        line += " (no GPU found: this chapter trains nothing, so a CPU is enough)"
    elif device.type == "cpu":
        # Changing Colab's runtime starts a new machine: the installed helpers and every variable
        # are gone, so the reader must start again from the install cell.
        line += (" (no GPU found: this chapter runs, but slowly. In Colab choose Runtime > Change "
                 "runtime type > GPU, which restarts the notebook: then run it again from its first "
                 "cell. Or, for a small version that runs in a few minutes, run %env COURSE_QUICK=1 "
                 "and then the notebook from its first cell)")
    if quick_mode():
        line += ". Quick mode: small data and short training, so the numbers differ from the book's."
    elif device.type != "cuda" and smaller_without_gpu:
        line += f". A smaller run than the full one, which needs an NVIDIA GPU: {smaller_without_gpu}."
    else:
        line += ". Full run."
    return line


def show_source(*objects):
    """The source code of functions, classes or methods, as Markdown that the book shows as
    highlighted Python; a method loses its class's indentation."""
    from IPython.display import Markdown

    sources = [textwrap.dedent(inspect.getsource(obj)) for obj in objects]
    return Markdown("```python\n" + "\n\n".join(source.rstrip("\n") for source in sources) + "\n```")


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python's, NumPy's and PyTorch's generators (all devices) with one number.

    With ``deterministic=True`` PyTorch also picks deterministic kernels and raises on
    operations that have none: slower, but a rerun gives the same bits (it also sets
    ``CUBLAS_WORKSPACE_CONFIG``, which cuBLAS needs for that). The default, False, turns that
    mode off, even if it was on.
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds CUDA and MPS generators too
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.deterministic = deterministic
    if deterministic:
        torch.backends.cudnn.benchmark = False  # autotuning may pick a different kernel each run
        # cuBLAS needs this workspace setting to be deterministic; harmless elsewhere.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def synchronize(device: torch.device | str | None) -> None:
    """Wait until a GPU (CUDA or Apple's) has finished the work queued on it; nothing on a CPU."""
    device = torch.device(device) if device is not None else None
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device is not None and device.type == "mps":
        torch.mps.synchronize()


class Timer:
    """Wall-clock timer for a block of code that waits for the GPU before reading the clock.

    GPU kernels run asynchronously, so without a synchronisation the clock would measure only
    the time taken to *queue* the work. Pass the GPU's ``device``: without one nothing is
    synchronised, which is right only on a CPU.

    >>> with Timer() as t:
    ...     _ = sum(range(1000))
    >>> t.seconds >= 0
    True
    """

    def __init__(self, device: torch.device | str | None = None):
        self.device = torch.device(device) if device is not None else None
        self.seconds = float("nan")

    def __enter__(self) -> "Timer":
        synchronize(self.device)
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc_info) -> None:
        synchronize(self.device)
        self.seconds = time.perf_counter() - self._start

    def __repr__(self) -> str:
        return f"Timer({self.seconds:.3f} s)"


def record_data_source(description: str) -> None:
    """Note where this run's data came from (called by the data loaders)."""
    if description not in _data_sources:
        _data_sources.append(description)


def run_facts() -> dict:
    """The facts an executed notebook is stamped with: PyTorch's version, device, data, mode and
    date."""
    return {
        "torch": torch.__version__,
        "device": device_name(pick_device()),
        "data_source": "; ".join(_data_sources) or "none",
        "quick_mode": quick_mode(),
        "date": date.today().isoformat(),
    }


def print_run_facts_json() -> None:
    """Print ``run_facts()`` as one JSON line (read back by ``helpers.notebooks``)."""
    print(json.dumps(run_facts()))
