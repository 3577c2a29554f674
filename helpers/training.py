"""The training loop every chapter that trains uses: one epoch, evaluation, fit, checkpoints, curves.

Introduced in the chapter "The training loop: a CNN on CIFAR-10" (book/training.ipynb). In
short::

    model = SmallCNN().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    history = fit(model, loaders.train, loaders.validation,
                  nn.CrossEntropyLoss(), optimizer, device, epochs=10,
                  checkpoint_path="checkpoints/last.pt")
    plot_history(history)

Progress: in Jupyter, Colab or a terminal, ``train_one_epoch`` shows a live bar over the batches
in tqdm's format (``ProgressBar``); when the epoch ends, ``fit`` replaces it with the finished
bar and the epoch's losses and accuracies (``epoch_summary``). In a notebook that text is what
the output keeps, so a notebook executed without a reader stores the summaries, and the built
book shows them (a tqdm widget would be stored as "0%"). ``COURSE_EXECUTING=1`` skips the
redrawing when no one watches.
"""

from __future__ import annotations

import collections
import contextlib
import math
import numbers
import os
import random
import re
import sys
import time
import zipfile
from pathlib import Path
from typing import Any, Callable

import matplotlib.pyplot as plt
from matplotlib.ticker import PercentFormatter
import numpy as np
import torch
import torch.nn.functional as F  # the import the source article forgot
from torch import nn

from helpers.notebooks import ANSI_ESCAPE, EXECUTING_ENV
from helpers.runtime import Timer

CHECKPOINT_FORMAT = "helpers.training checkpoint"
CHECKPOINT_VERSION = 1
HISTORY_KEYS = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "seconds")


class SmallCNN(nn.Module):
    """The source article's CNN, made to run: LeNet-style, for CIFAR-10 images (N, 3, 32, 32).

    Two convolutions (5x5, ReLU, 2x2 max-pooling) take the image from 3x32x32 to 16x5x5; three
    linear layers map those 400 numbers to 120, 84 and finally 10 class scores (logits), (N, 10).
    62,006 parameters.
    """

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, kernel_size=5)  # 3x32x32 -> 6x28x28
        self.conv2 = nn.Conv2d(6, 16, kernel_size=5)  # 6x14x14 -> 16x10x10
        self.pool = nn.MaxPool2d(2, 2)  # halves height and width
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or tuple(x.shape[1:]) != (3, 32, 32):
            raise ValueError(f"SmallCNN takes images of shape (N, 3, 32, 32), got "
                             f"{tuple(x.shape)}" + (": add a batch dimension with x.unsqueeze(0)"
                                                    if tuple(x.shape) == (3, 32, 32) else ""))
        x = self.pool(F.relu(self.conv1(x)))  # (N, 6, 14, 14)
        x = self.pool(F.relu(self.conv2(x)))  # (N, 16, 5, 5)
        x = torch.flatten(x, 1)  # (N, 400); the article's x.view(-1, 400) hides a wrong shape
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)  # logits: CrossEntropyLoss applies the softmax itself


# --- Small pieces of the loop ----------------------------------------------------------------------


def to_device(batch: Any, device: torch.device | str) -> Any:
    """Move a tensor, or the tensors in a (nested) tuple, list or dict, to ``device``.

    Containers are rebuilt with their own type (a namedtuple keeps its fields).
    ``non_blocking=True``: a copy from pinned memory to a GPU is asynchronous with respect to the
    host, so the CPU does not wait for it and goes on queuing work (on one CUDA stream, the
    kernels queued after it still run after it). Elsewhere it is an ordinary copy.
    """
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (tuple, list)):
        items = [to_device(item, device) for item in batch]
        return type(batch)(*items) if hasattr(batch, "_fields") else type(batch)(items)
    if isinstance(batch, dict):
        return {key: to_device(value, device) for key, value in batch.items()}
    return batch


def count_correct(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """How many rows of ``outputs`` (N, classes) have their largest score at ``targets`` (N,).

    ``sum_i [argmax_k outputs[i, k] == targets[i]]``, as a 0-dim tensor on the outputs' device
    (reading it with ``.item()`` would wait for the GPU at every batch).
    """
    if outputs.dim() != 2 or targets.shape != outputs.shape[:1]:
        raise ValueError(f"expected outputs (N, classes) and targets (N,), got {tuple(outputs.shape)} "
                         f"and {tuple(targets.shape)}")
    return (outputs.argmax(dim=1) == targets).sum()


def _batch_size(targets: Any) -> int:
    if isinstance(targets, (tuple, list)):
        return _batch_size(targets[0])
    if isinstance(targets, dict):
        return _batch_size(next(iter(targets.values())))
    return len(targets)


def headless() -> bool:
    """True when a notebook is being executed with no reader watching (``COURSE_EXECUTING=1``)."""
    return os.environ.get(EXECUTING_ENV, "").strip() == "1"


def _in_notebook() -> bool:
    """True inside a Jupyter or Colab kernel (an IPython kernel, not a terminal IPython)."""
    if "ipykernel" not in sys.modules:
        return False
    from IPython import get_ipython

    shell = get_ipython()
    return shell is not None and hasattr(shell, "kernel")


class ProgressBar:
    """A progress bar over the batches of one epoch, in tqdm's format, where a reader sees it.

    In Jupyter or Colab it is one text output, redrawn in place at most twice a second, with
    the latest batch's loss; ``finish(text)`` replaces it for good, so an executed notebook
    stores that final text (the finished bar and the epoch's results) and the built book shows
    it, where a tqdm widget would have been stored as "0%". In a terminal it is a tqdm bar on
    stderr that ``finish`` clears before printing ``text``. ``live=None`` draws only where
    someone can watch: not with ``COURSE_EXECUTING=1``, nor into a file; ``finish`` still
    prints.
    """

    redraw_seconds = 0.5

    def __init__(self, total: int | None, description: str, live: bool | None = None):
        self.total, self.description = total, description
        self.count, self.loss = 0, None
        self.visible = _in_notebook() or sys.stderr.isatty()  # a reader's frontend exists
        self.live = live if live is not None else (self.visible and not headless())
        self._started = self._last_draw = time.perf_counter()
        self._elapsed = None  # frozen by freeze()
        self._display = self._tqdm = None
        if self.live and _in_notebook():
            from IPython.display import Pretty, display

            self._display = display(Pretty(self.text()), display_id=True)
        elif self.live:
            from tqdm.std import tqdm

            self._tqdm = tqdm(total=total, desc=description, unit="batch", leave=False)

    def text(self) -> str:
        """The bar as tqdm draws it: ``epoch 1/3:  45%|████▌     | 317/704 [00:05<00:06, ...]``."""
        from tqdm import tqdm

        elapsed = self._elapsed if self._elapsed is not None else time.perf_counter() - self._started
        postfix = f"loss={self.loss:.3f}" if self.loss is not None and self._elapsed is None else None
        return tqdm.format_meter(self.count, self.total, elapsed, prefix=self.description, unit="batch",
                                 postfix=postfix)

    def update(self, loss: torch.Tensor | float | None = None) -> None:
        """One more batch done; ``loss`` is read (``.item()``, a wait for the GPU) only to redraw."""
        self.count += 1
        if self._tqdm is not None:
            self._tqdm.update(1)
        now = time.perf_counter()
        if self.live and now - self._last_draw >= self.redraw_seconds:
            self._last_draw = now
            self.loss = (loss.detach().item() if isinstance(loss, torch.Tensor)
                         else None if loss is None else float(loss))
            if self._display is not None:
                from IPython.display import Pretty

                self._display.update(Pretty(self.text()))
            elif self._tqdm is not None and self.loss is not None:
                self._tqdm.set_postfix(loss=f"{self.loss:.3f}")

    finish_when_done = False  # set for a bar that no caller will finish

    def done(self) -> None:
        """The epoch's batches are done: stop the clock, and finish the bar if no one else will."""
        self.freeze()
        if self.finish_when_done:
            self.finish()

    def freeze(self) -> None:
        """Stop the clock: the epoch's batches are done."""
        if self._elapsed is None:
            self._elapsed = time.perf_counter() - self._started

    def finish(self, text: str | None = None) -> None:
        """Replace the bar with ``text`` (default: the finished bar), or print it."""
        self.freeze()
        text = self.text() if text is None else text
        if self._display is not None:
            from IPython.display import Pretty

            self._display.update(Pretty(text))
        else:
            if self._tqdm is not None:
                self._tqdm.close()
            print(text, flush=True)

    def clear(self) -> None:
        """Remove a live bar and show nothing in its place."""
        self.freeze()
        if self._display is not None:
            from IPython.display import Pretty

            self._display.update(Pretty(""))
        elif self._tqdm is not None:
            self._tqdm.close()  # leave=False: the line is wiped


def _total_batches(loader) -> int | None:
    try:
        return len(loader)
    except TypeError:  # an iterable dataset of unknown length
        return None


# --- One epoch of training, and evaluation --------------------------------------------------------


def _accumulators(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Zeroed running totals of loss and of correct answers, on ``device``."""
    dtype = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
    return (torch.zeros((), dtype=dtype, device=device),
            torch.zeros((), dtype=torch.int64, device=device))


def train_one_epoch(model: nn.Module, loader, loss_fn: Callable,
                    optimizer: torch.optim.Optimizer,
                    device: torch.device | str, *,
                    progress: bool | ProgressBar | None = None,
                    description: str = "train",
                    correct_fn: Callable | None = count_correct,
                    max_grad_norm: float | None = None) -> dict:
    """One pass over ``loader``, one optimizer step per batch.

    Returns ``{"loss", "accuracy", "samples"}``: the mean loss per sample
    (each batch's mean weighted by its size) and the fraction classified
    right, both while the weights were changing. ``correct_fn(outputs,
    targets)`` counts the right ones (None: accuracy is NaN). ``loss_fn``
    must average over the batch. ``max_grad_norm``: clip the gradient of
    all parameters together to at most this length before each step (None:
    no clipping). ``progress``: a ``ProgressBar`` (None: one where a reader
    can see it; True: always; False: none). Puts the model in training mode
    and leaves it there. Raises ``FloatingPointError`` at the end of the
    epoch if its mean loss is not finite (every batch has been stepped by
    then).
    """
    # Refuse slips up front.
    _check_arguments(model, loss_fn, optimizer, max_grad_norm)
    device = torch.device(device)
    model.train()  # dropout, batch norm and the like behave as in training
    bar = _bar_for(progress, loader, description)
    total_loss, total_correct = _accumulators(device)
    samples = 0
    for inputs, targets in loader:
        inputs = to_device(inputs, device)
        targets = to_device(targets, device)
        # backward() adds to .grad: clear it first.
        optimizer.zero_grad(set_to_none=True)
        outputs = model(inputs)  # forward pass
        loss = loss_fn(outputs, targets)  # mean loss of this batch
        loss.backward()  # its gradient with respect to every parameter
        if max_grad_norm is not None:  # caps the step a bad batch can take
            nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()  # update the parameters with it
        n = _batch_size(targets)
        total_loss += loss.detach() * n  # no .item(): it waits for the GPU
        if correct_fn is not None:
            total_correct += correct_fn(outputs.detach(), targets)
        samples += n
        bar.update(loss)  # read only when it redraws
    bar.done()  # stop its clock; finish it, unless fit will
    return _summary(total_loss, total_correct, samples, correct_fn,
                    training=True)


def _check_loss_fn(loss_fn: Callable) -> None:
    """Refuse a loss class instead of a loss, and one that does not average over the batch."""
    if isinstance(loss_fn, type):
        raise TypeError(f"loss_fn is the class {loss_fn.__name__}, not a loss: pass an instance, "
                        f"{loss_fn.__name__}()")
    reduction = getattr(loss_fn, "reduction", "mean")
    # "sum" would make the step size, and the mean loss, depend on the batch size; KLDivLoss's
    # "batchmean" is the batch's mean too.
    if reduction not in ("mean", "batchmean"):
        raise ValueError(f"loss_fn has reduction={reduction!r}, but the loop needs each batch's mean "
                         f"loss: create it with reduction='mean' (the default)")


def _check_arguments(model: nn.Module, loss_fn: Callable, optimizer: torch.optim.Optimizer,
                     max_grad_norm: float | None = None) -> None:
    """Refuse, before any step, what a learner passes by mistake: a loss class or a loss that does
    not average (``_check_loss_fn``), an optimizer made for another model, which would step
    those parameters, not these, and a clipping cap that is not a positive length."""
    _check_loss_fn(loss_fn)
    if max_grad_norm is not None and not _positive_length(max_grad_norm):
        # 0 would stop training, a negative cap turn every step uphill.
        raise ValueError(f"max_grad_norm is the largest length the gradient may keep, a positive "
                         f"number, got {max_grad_norm!r}: pass one such as 1.0, or None for no clipping")
    groups = getattr(optimizer, "param_groups", None)  # an optimizer of one's own may have none
    held = {id(p) for group in groups or [] for p in group["params"]}
    parameters = list(model.parameters())
    if groups is not None and parameters and not any(id(p) in held for p in parameters):
        raise ValueError("the optimizer holds none of the model's parameters, so training would not "
                         "change the model (was the model created again after the optimizer?): create "
                         "the optimizer again from this model, optimizer(model.parameters(), ...)")


def _positive_length(value: Any) -> bool:
    """A finite number above 0: Python's or NumPy's, not a bool."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return False
    try:
        value = float(value)
    except OverflowError:
        return False
    return math.isfinite(value) and value > 0


def _bar_for(progress, loader, description: str) -> ProgressBar:
    """``progress`` itself when it is a bar; else a bar of train_one_epoch's own, finished when the
    epoch is done where a reader sees it or when asked (True), drawing nothing with False."""
    if isinstance(progress, ProgressBar):
        return progress
    bar = ProgressBar(_total_batches(loader), description, live=progress)
    bar.finish_when_done = progress is True or (progress is None and bar.visible)
    return bar


@torch.no_grad()  # no graph: less memory, less time, no gradients by mistake
def evaluate(model: nn.Module, loader, loss_fn: Callable,
             device: torch.device | str, *,
             correct_fn: Callable | None = count_correct) -> dict:
    """Mean loss per sample and accuracy of ``model`` over ``loader``,
    in eval mode.

    Returns ``{"loss", "accuracy", "samples"}``; ``loss_fn`` must average
    over the batch. For a loss with class weights, whose batch mean divides
    by the batch's total weight, the result is near the loss over the
    whole set, not equal to it. The model's mode (train or eval) is
    restored afterwards, and its parameters are not touched.
    """
    _check_loss_fn(loss_fn)
    device = torch.device(device)
    was_training = model.training
    model.eval()  # dropout off, batch norm uses its running statistics
    total_loss, total_correct = _accumulators(device)
    samples = 0
    try:
        for inputs, targets in loader:
            inputs = to_device(inputs, device)
            targets = to_device(targets, device)
            outputs = model(inputs)
            n = _batch_size(targets)
            total_loss += loss_fn(outputs, targets) * n
            if correct_fn is not None:
                total_correct += correct_fn(outputs, targets)
            samples += n
    finally:
        model.train(was_training)
    return _summary(total_loss, total_correct, samples, correct_fn,
                    training=False)


def _summary(total_loss: torch.Tensor, total_correct: torch.Tensor, samples: int,
             correct_fn: Callable | None, training: bool) -> dict[str, float]:
    if samples == 0:
        raise ValueError("the loader gave no batches")
    mean_loss = total_loss.item() / samples
    if training and not math.isfinite(mean_loss):
        raise FloatingPointError(f"the training loss became {mean_loss} during this epoch: lower the "
                                 f"learning rate, check the inputs for NaN, or clip the gradients (max_grad_norm)")
    accuracy = total_correct.item() / samples if correct_fn is not None else math.nan
    return {"loss": mean_loss, "accuracy": accuracy, "samples": samples}


# --- Random state, checkpoints ------------------------------------------------------------------------


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be used: truncated, foreign, or made for another model."""


def rng_state() -> dict:
    """The state of Python's, NumPy's and PyTorch's (CPU and CUDA) random generators.

    In types that ``torch.load(..., weights_only=True)`` accepts (no NumPy arrays).
    """
    _, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    """Restore the generators from ``rng_state()``'s result (CUDA's only where CUDA is present)."""
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    numpy_state = state["numpy"]
    np.random.set_state(("MT19937", numpy_state["keys"].numpy().astype(np.uint32), numpy_state["position"],
                         numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _unwrapped(model: nn.Module) -> nn.Module:
    return getattr(model, "_orig_mod", model)  # torch.compile wraps the model; save the original


def save_checkpoint(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int, *,
                    scheduler=None, history: dict | None = None, loader_generator: torch.Generator | None = None) -> None:
    """Save everything needed to resume after ``epoch``: weights, optimizer, scheduler, history, RNG state.

    Written atomically: into a temporary file beside ``path``, flushed to disk, then renamed
    over ``path`` (``os.replace``), so a crash mid-write leaves the previous checkpoint intact.
    """
    if isinstance(model, torch.optim.Optimizer) and isinstance(optimizer, nn.Module):
        raise TypeError("the model and the optimizer are swapped: call save_checkpoint(path, model, "
                        "optimizer, epoch)")
    if not isinstance(model, nn.Module) or not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"save_checkpoint(path, model, optimizer, epoch) needs an nn.Module and a "
                        f"torch.optim optimizer, got {_a(type(model).__name__)} and "
                        f"{_a(type(optimizer).__name__)}")
    path = Path(path)
    state = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "epoch": int(epoch),
        "model": _unwrapped(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "optimizer_class": type(optimizer).__name__,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scheduler_class": type(scheduler).__name__ if scheduler is not None else None,
        "history": history if history is not None else {},
        "rng": rng_state(),
        "loader_generator": loader_generator.get_state() if loader_generator is not None else None,
    }
    for part in ("optimizer", "scheduler", "history"):  # where a NumPy number can come in from outside
        state[part] = _plain_numbers(state[part])
    temporary = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(temporary, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())  # on disk before the rename makes it the checkpoint
        # A file that load_checkpoint would refuse must not replace a good one: read it back first.
        try:
            torch.load(temporary, map_location="cpu", weights_only=True)
        except Exception as error:
            refused = _refused_object(ANSI_ESCAPE.sub("", str(error)))
            raise CheckpointError(f"{path} was not written: the checkpoint would hold Python objects that "
                                  f"weights_only loading refuses" + (f" ({refused})" if refused else "")
                                  + ": keep the history and the optimizer's settings to numbers, strings, "
                                  "lists, dicts and tensors") from None
        os.replace(temporary, path)  # atomic: readers see the old file or the new one, never half
    except BaseException as error:
        with contextlib.suppress(OSError):  # its folder may not even exist: the error below says why
            temporary.unlink(missing_ok=True)
        if isinstance(error, OSError):  # a full disk, a read-only folder, a folder named like the file
            if isinstance(error, PermissionError):
                advice = ("make the folder writable, or close the program that has the file open "
                          "(Windows cannot replace a file open elsewhere), or choose another "
                          "checkpoint_path")
            elif isinstance(error, (FileExistsError, NotADirectoryError, IsADirectoryError)):
                advice = "choose another checkpoint_path"
            else:
                advice = "free some space, or choose another checkpoint_path"
            raise CheckpointError(f"could not write the checkpoint {path} ({type(error).__name__}: "
                                  f"{error.strerror or error}); the previous checkpoint there, if any, is "
                                  f"unchanged: {advice}") from error
        raise


def _plain_numbers(value: Any) -> Any:
    """``value`` with NumPy's scalars (a learning rate from np.logspace, a loss from NumPy) as
    Python numbers, which weights_only loading accepts; NumPy's scalar types it refuses."""
    if isinstance(value, np.generic):
        return value.item()
    # Only plain containers are rebuilt: a Counter (MultiStepLR's milestones) cannot be rebuilt
    # from its items that way, and weights_only loading takes it as it is. It refuses a
    # defaultdict (a history built with one), which a plain dict replaces.
    if type(value) is dict or type(value) is collections.defaultdict:
        return {key: _plain_numbers(item) for key, item in value.items()}
    if type(value) in (tuple, list):
        return type(value)(_plain_numbers(item) for item in value)
    return value


_ZIP_START = b"PK\x03\x04"  # the first bytes of the zip archive torch.save writes
_LEGACY_START = b"\x80\x02\x8a\n"  # torch.save's older format: a pickle of its magic number
_RECOVER = ("restore it from a copy, or start the run again (fit with overwrite=True, or another "
            "checkpoint_path)")
_NEW_RUN = "start a new run (in fit: overwrite=True, or another checkpoint_path)"


def _refused_object(message: str) -> str:
    """What weights_only loading refused, from its error message ("Unsupported global: ..."), or ''."""
    refused = re.search(r"WeightsUnpickler error: (.*?)(?= Please use|\n|$)", message)
    return refused.group(1).strip() if refused else ""


def _describe_foreign(state: Any) -> str:
    if isinstance(state, dict):
        keys = ", ".join(str(k) for k in list(state)[:5]) + (", ..." if len(state) > 5 else "")
        hint = (": it looks like a bare state_dict; load it with model.load_state_dict(torch.load(path, "
                "weights_only=True))" if state and all(isinstance(v, torch.Tensor) for v in state.values()) else "")
        return f"{_a(type(state).__name__)} with keys {keys}{hint}"
    return _a(type(state).__name__)


def _a(noun: str) -> str:
    return ("an " if noun[:1].lower() in "aeiou" else "a ") + noun


def _read_checkpoint(path: Path) -> dict:
    """The checkpoint at ``path``, checked to be one that ``save_checkpoint`` wrote; restores nothing."""
    if not path.is_file():
        raise FileNotFoundError(f"there is no checkpoint file at {path}")
    with open(path, "rb") as f:
        start = f.read(len(_ZIP_START))
    is_zip = zipfile.is_zipfile(path)
    if start == _ZIP_START and not is_zip:
        raise CheckpointError(f"{path} is cut short: it starts as the zip archive torch.save writes, but "
                              f"the archive's end is missing (a crash, a full disk or a copy that stopped): "
                              f"{_RECOVER}")
    if is_zip:
        try:
            with zipfile.ZipFile(path) as archive:
                if not any(name.endswith("/data.pkl") for name in archive.namelist()):
                    raise CheckpointError(f"{path} is a zip archive but not a PyTorch checkpoint: it lacks "
                                          f"the data.pkl that torch.save writes into every file")
                # torch.load does not check the archive's checksums: a changed byte would load silently.
                damaged = archive.testzip()
        except zipfile.BadZipFile as error:
            raise CheckpointError(f"{path} is damaged and cannot be read ({error}): {_RECOVER}") from None
        if damaged is not None:
            raise CheckpointError(f"{path} is damaged: the bytes of its part {damaged} do not match "
                                  f"their checksum (changed on the disk or in a copy): {_RECOVER}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # UnpicklingError for refused objects, RuntimeError for a damaged archive
        message = ANSI_ESCAPE.sub("", str(error))  # torch emboldens part of it for terminals
        refused = _refused_object(message)
        # A file of another kind fails in the unpickler too, but names no refused object.
        if "weights only" in message.lower() and (refused or is_zip):
            raise CheckpointError(f"{path} holds Python objects that weights_only loading refuses, so it was "
                                  f"not written by save_checkpoint (loading it unsafely could run code)"
                                  + (f": {refused}" if refused else "")) from None
        if not is_zip and start != _LEGACY_START:
            raise CheckpointError(f"{path} is not a PyTorch checkpoint: it is neither the zip archive "
                                  f"torch.save writes nor torch's older format (another kind of file, or "
                                  f"one cut short): {_RECOVER}") from None
        first_line = message.strip().splitlines()[0] if message.strip() else ""
        raise CheckpointError(f"{path} is damaged and cannot be read ({type(error).__name__}: {first_line}): "
                              f"{_RECOVER}") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is a PyTorch file but not a checkpoint written by "
                              f"helpers.training.save_checkpoint: it holds {_describe_foreign(state)}")
    if state.get("version", 0) > CHECKPOINT_VERSION:
        raise CheckpointError(f"{path} has checkpoint version {state['version']}, newer than this code "
                              f"understands ({CHECKPOINT_VERSION}): update the helpers package")
    return state


def _comparable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()  # a learning rate may be a tensor (capturable or fused optimizers)
    if isinstance(value, (tuple, list)):
        return tuple(_comparable(item) for item in value)
    return value


def _changed_settings(state: dict, optimizer: torch.optim.Optimizer) -> list[tuple[str, Any, Any, str]]:
    """The optimizer settings that differ from the checkpoint's, as (key, saved, given, where):
    ("lr", 0.001, 0.1, ""), or with where " in parameter group 1".

    Every key of a parameter group but "params": lr, weight_decay, betas, ... A scheduler moves
    the learning rate as it steps (OneCycleLR and CyclicLR the momentum too, also inside a
    SequentialLR), so with one those current values are not compared; where the schedule starts
    is ("initial_lr", and OneCycleLR's "max_lr", ..., which the scheduler records in the group).
    """
    saved_groups, given_groups = state["optimizer"]["param_groups"], optimizer.param_groups
    if len(saved_groups) != len(given_groups):
        return []  # load_state_dict says so
    moved = set() if state.get("scheduler") is None else {"lr", "momentum", "betas"}
    changes = []
    for index, (saved, given) in enumerate(zip(saved_groups, given_groups)):
        where = f" in parameter group {index}" if len(given_groups) > 1 else ""
        for key, value in given.items():
            # Only keys both know: another version of torch may add a key (with its default).
            if key == "params" or key in moved or key not in saved:
                continue
            old, new = _comparable(saved[key]), _comparable(value)
            if old != new:
                changes.append((key, old, new, where))
    return changes


def _check_fits(path: Path, state: dict, optimizer, scheduler, new_settings: bool) -> None:
    """Refuse, before anything is restored, an optimizer or scheduler unlike the saved run's."""
    # Another optimizer's state loads without complaint (its parameter groups look alike) and
    # fails later, or silently changes settings: compare the classes before restoring anything.
    for role, given in (("optimizer", optimizer), ("scheduler", scheduler)):
        saved = state.get(f"{role}_class")
        if given is not None and saved is not None and saved != type(given).__name__:
            raise CheckpointError(
                f"{path} holds the state of {_a(saved)} {role}, but it is being loaded into "
                f"{_a(type(given).__name__)}: to resume from it, create {_a(saved)} {role}, as the run "
                f"that saved it did (or, to keep only the weights, load it without the {role})")
    saved_scheduler = state.get("scheduler_class") if state.get("scheduler") is not None else None
    if scheduler is not None and saved_scheduler is None:
        raise CheckpointError(f"{path} was saved by a run without a scheduler, but "
                              f"{_a(type(scheduler).__name__)} scheduler is given: to resume that run, leave the "
                              f"scheduler out; to train with a schedule, {_NEW_RUN}")
    if optimizer is not None and scheduler is None and saved_scheduler is not None:
        raise CheckpointError(f"{path} was saved by a run with {_a(saved_scheduler)} scheduler, but none is "
                              f"given, and the learning rate would stay where that schedule left it: to "
                              f"resume that run, create the {saved_scheduler} as it did and pass it too; "
                              f"to train without a schedule, {_NEW_RUN}")
    if new_settings and (saved_scheduler is not None or scheduler is not None):
        raise CheckpointError(f"{path}: new_settings=True cannot be used with a scheduler, whose schedule "
                              f"was computed from the run's settings (it would reset the learning rate "
                              f"the schedule had reached): resume with the same settings, or {_NEW_RUN}")
    changes = _changed_settings(state, optimizer) if optimizer is not None else []
    reshaping = [change for change in changes if _reshapes_state(optimizer, *change[:2])]
    if reshaping and new_settings:
        saved, given = _both_sides(reshaping)
        raise CheckpointError(f"{path} was trained with {saved}, but the optimizer given has {given}, which "
                              f"new_settings=True cannot change: that setting changes what the optimizer keeps "
                              f"for each parameter, which the checkpoint does not have. Resume with {saved}, "
                              f"or {_NEW_RUN}")
    if changes and not new_settings:
        saved, given = _both_sides(changes)
        advice = ("to go on from it with the new settings, pass new_settings=True; " if saved_scheduler is None
                  else "")
        raise CheckpointError(f"{path} was trained with {saved}, but the optimizer given has {given}: to "
                              f"resume that run, create the optimizer with the same settings; {advice}"
                              f"or {_NEW_RUN}")


def _both_sides(changes: list[tuple[str, Any, Any, str]]) -> tuple[str, str]:
    """"lr=0.001 and betas=(0.9, 0.999)" as saved, and the same keys as given."""
    return (_listed([f"{key}={saved!r}{where}" for key, saved, _, where in changes]),
            _listed([f"{key}={given!r}{where}" for key, _, given, where in changes]))


def _reshapes_state(optimizer: torch.optim.Optimizer, key: str, saved: Any) -> bool:
    """Whether changing setting ``key`` needs state the saved run never kept: Adam's amsgrad keeps
    a maximum, RMSprop's centered a mean gradient and its momentum a buffer; the optimizer's
    step would fail on the missing key."""
    if key in ("amsgrad", "centered"):
        return True
    return key == "momentum" and isinstance(optimizer, torch.optim.RMSprop) and saved == 0


def _listed(items: list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _cpu_copy(value: Any) -> Any:
    """A copy of a state_dict, its tensors cloned into the CPU's memory (not the GPU's)."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        copy = type(value)((key, _cpu_copy(item)) for key, item in value.items())
        if hasattr(value, "_metadata"):  # a model's state_dict: its modules' versions, for loading
            copy._metadata = value._metadata
        return copy
    if isinstance(value, (tuple, list)):
        return type(value)(_cpu_copy(item) for item in value)
    return value


def _restore(path: Path, state: dict, model, optimizer, scheduler, loader_generator, restore_rng: bool,
             new_settings: bool) -> None:
    """Restore the checkpoint (already checked by ``_check_fits``) into what is given; on any
    failure, put back everything as it was."""
    undo = []  # each step's way back, registered before the step: a failed load can leave half
    part = "model"
    try:
        if model is not None:
            model = _unwrapped(model)
            model_before = _cpu_copy(model.state_dict())
            undo.append(lambda: model.load_state_dict(model_before))
            model.load_state_dict(state["model"])
        if optimizer is not None:
            part = "optimizer"
            optimizer_before = _cpu_copy(optimizer.state_dict())
            undo.append(lambda: optimizer.load_state_dict(optimizer_before))
            given_settings = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
            optimizer.load_state_dict(state["optimizer"])
            if new_settings:  # the state (Adam's averages, ...) from the checkpoint, the settings as given
                for group, settings in zip(optimizer.param_groups, given_settings):
                    group.update(settings)
        if scheduler is not None:
            part = "scheduler"
            scheduler_before = _cpu_copy(scheduler.state_dict())
            undo.append(lambda: scheduler.load_state_dict(scheduler_before))
            scheduler.load_state_dict(state["scheduler"])
        if loader_generator is not None and state.get("loader_generator") is not None:
            part = "loader generator"
            generator_before = loader_generator.get_state()
            undo.append(lambda: loader_generator.set_state(generator_before))
            loader_generator.set_state(state["loader_generator"])
        if restore_rng:
            part = "random generators"
            rng_before = rng_state()
            undo.append(lambda: set_rng_state(rng_before))
            set_rng_state(state["rng"])
    except BaseException as error:
        for put_back in reversed(undo):
            put_back()
        if isinstance(error, (RuntimeError, ValueError, KeyError, TypeError)):
            raise CheckpointError(f"{path} does not fit the {part}, so nothing was restored: {error}") from None
        raise


def load_checkpoint(path: str | Path, model: nn.Module | None = None, optimizer: torch.optim.Optimizer | None = None,
                    *, scheduler=None, restore_rng: bool = True, loader_generator: torch.Generator | None = None,
                    new_settings: bool = False) -> dict:
    """Read a checkpoint written by ``save_checkpoint`` and restore what is given into it.

    Loads with ``torch.load(..., weights_only=True)``: tensors and plain containers only, never
    arbitrary Python objects. Restores ``model``, ``optimizer``, ``scheduler`` and ``loader_generator``
    when given, and the global random generators when ``restore_rng``. Returns the checkpoint
    (``"epoch"``, ``"history"``, ...).

    Raises ``FileNotFoundError`` when there is no file at ``path``, and ``CheckpointError``, saying
    what is wrong, for a file that is damaged or not such a checkpoint, or that does not fit what is
    given: another model, another class of optimizer or scheduler, a scheduler given where the run
    had none (or, with an optimizer, the reverse), or an optimizer whose settings (lr, weight_decay,
    ...; with a scheduler, where its schedule starts) differ from the run's, which the checkpoint's
    would silently replace. ``new_settings=True`` keeps the given optimizer's settings instead (its
    state, such as Adam's averages, still comes from the checkpoint), to go on with a lower learning
    rate, say; not with a scheduler. When it raises, everything given is left as it was.
    """
    path = Path(path)
    state = _read_checkpoint(path)
    _check_fits(path, state, optimizer, scheduler, new_settings)
    _restore(path, state, model, optimizer, scheduler, loader_generator, restore_rng, new_settings)
    return state


# --- Many epochs ---------------------------------------------------------------------------------------


def empty_history() -> dict[str, list]:
    """A history with no epochs: one list per ``HISTORY_KEYS`` entry."""
    return {key: [] for key in HISTORY_KEYS}


def epoch_summary(bar: str, train: dict, val: dict | None) -> str:
    """Two lines per epoch: the finished bar over the training batches, then the results.

    For example::

        epoch 1/3: 100%|██████████| 704/704 [00:12<00:00, 58.59batch/s]
          train loss 1.652, accuracy 39.4% | validation loss 1.407, accuracy 49.7%
    """
    results = f"  train loss {train['loss']:.3f}, accuracy {train['accuracy']:.1%}"
    if val is not None:
        results += f" | validation loss {val['loss']:.3f}, accuracy {val['accuracy']:.1%}"
    return f"{bar}\n{results}"


def fit(model: nn.Module, train_loader, val_loader, loss_fn: Callable, optimizer: torch.optim.Optimizer,
        device: torch.device | str, epochs: int, *, checkpoint_path: str | Path | None = None,
        resume: bool = False, overwrite: bool = False, new_settings: bool = False, scheduler=None,
        verbose: bool = True, max_grad_norm: float | None = None,
        on_epoch_end: Callable[[int, dict], bool | None] | None = None,
        correct_fn: Callable | None = count_correct) -> dict[str, list]:
    """Train for epochs ``1..epochs``, evaluating on ``val_loader`` (may be None) after each.

    Returns the history: per epoch, ``HISTORY_KEYS`` (``train_loss``, ``val_accuracy``, ...;
    ``seconds`` is the epoch's wall time). After every epoch, with ``checkpoint_path``, saves a
    checkpoint (``save_checkpoint``); a file already there is refused (``CheckpointError``)
    unless ``resume=True`` or ``overwrite=True``. With ``resume=True`` and a checkpoint at that
    path, training continues after the epoch it holds, with its weights, optimizer and scheduler
    state, history and random state. It then ends exactly as the uninterrupted run would have,
    provided that the loader has no ``persistent_workers`` (their random state is not saved),
    that ``on_epoch_end`` keeps no state of its own (an early-stopping object starts afresh),
    and that the device is the CPU, or a CUDA GPU with deterministic algorithms (MPS's generator
    is not saved).

    Resuming refuses (``CheckpointError``, saying what differs), before it changes anything, an
    optimizer or scheduler unlike the saved run's: another class, a scheduler where the run had
    none or the reverse, or other settings (lr, weight_decay, ...; with a scheduler, where its
    schedule starts), which the checkpoint's would otherwise silently replace.
    ``new_settings=True`` goes on with the given optimizer's settings instead (a lower learning
    rate after a NaN loss, say; not with a scheduler). It also refuses (``ValueError``)
    ``epochs`` no larger than the epochs the checkpoint holds: there is nothing left to train.
    An epoch whose mean loss is NaN or infinite stops training with a ``FloatingPointError`` that
    says how to go on; so do weights or a validation loss that are not finite at the end of an epoch
    (its last steps diverged), before that epoch's checkpoint would replace the last good one.

    ``scheduler`` steps once per epoch (``ReduceLROnPlateau`` with the validation loss), so a
    schedule counts epochs: a ``OneCycleLR`` made for a step per batch would stay near its start.
    ``max_grad_norm`` clips the gradients (``train_one_epoch``). ``on_epoch_end(epoch, history)``
    returning True stops early (the checkpoint of that epoch is still written). ``verbose`` prints
    two lines per epoch (``epoch_summary``); ``verbose=False`` shows nothing, not even a progress bar.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    if resume and checkpoint_path is None:
        raise ValueError("resume=True needs the checkpoint_path to resume from")
    if new_settings and not resume:
        raise ValueError("new_settings=True changes the settings of a run being resumed: pass resume=True too")
    _check_scheduler(scheduler, epochs, val_loader)
    _check_arguments(model, loss_fn, optimizer, max_grad_norm)  # before a checkpoint is read
    if checkpoint_path is not None:
        _check_checkpoint_path(checkpoint_path)
    if checkpoint_path is not None and not resume and not overwrite and Path(checkpoint_path).exists():
        raise CheckpointError(f"{checkpoint_path} exists already, and a new run would overwrite it: pass "
                              f"resume=True to continue the run it holds, another checkpoint_path to keep "
                              f"it, or overwrite=True to replace it")
    state = None
    if resume and Path(checkpoint_path).exists():
        state = _read_checkpoint(Path(checkpoint_path))
        if state["epoch"] >= epochs:
            raise ValueError(f"nothing left to train: the checkpoint {checkpoint_path} already has "
                             f"{state['epoch']} epochs, and epochs={epochs} asks for {epochs} in all: to "
                             f"train on, pass a larger epochs; to use the trained model, load it with "
                             f"load_checkpoint(path, model)")
        _check_fits(Path(checkpoint_path), state, optimizer, scheduler, new_settings)  # before any change
    model.to(device)  # before restoring: the optimizer's state goes to the parameters' device
    generator = getattr(train_loader, "generator", None)
    history, first_epoch = empty_history(), 1
    if state is not None:
        _restore(Path(checkpoint_path), state, model, optimizer, scheduler, generator, restore_rng=True,
                 new_settings=new_settings)
        history, first_epoch = state["history"], state["epoch"] + 1
        if verbose:
            print(f"resumed from {checkpoint_path} after epoch {state['epoch']}")
    elif resume and verbose:  # say so: a mistyped path would otherwise start over unnoticed
        print(f"no checkpoint at {checkpoint_path} yet: starting a new run")
    live = None if verbose else False  # a live bar where a reader can see one; none when quiet
    for epoch in range(first_epoch, epochs + 1):
        bar = ProgressBar(_total_batches(train_loader), f"epoch {epoch:>{len(str(epochs))}}/{epochs}", live=live)
        with Timer(device) as epoch_time:
            try:
                train = train_one_epoch(model, train_loader, loss_fn, optimizer, device, progress=bar,
                                        correct_fn=correct_fn, max_grad_norm=max_grad_norm)
            except FloatingPointError as error:  # a NaN loss: say what became of the model, and what next
                advice = _after_nan(model, epoch, checkpoint_path, scheduler)
                raise FloatingPointError(f"{error}. {advice}") from None
            val = evaluate(model, val_loader, loss_fn, device, correct_fn=correct_fn) if val_loader is not None else None
        finite_weights = _all_finite(model.parameters())
        if not finite_weights or (val is not None and not math.isfinite(val["loss"])):
            # The training loss is measured before each step: the last steps can still diverge. Stop
            # before this epoch's checkpoint replaces the last good one.
            what = ("the weights became NaN or infinite" if not finite_weights
                    else f"the validation loss became {val['loss']}")
            advice = _after_nan(model, epoch, checkpoint_path, scheduler)
            unsaved = ", and its checkpoint was not written" if checkpoint_path is not None else ""
            raise FloatingPointError(f"{what} by the end of epoch {epoch}{unsaved}: lower the learning rate, "
                                     f"check the inputs for NaN, or clip the gradients (max_grad_norm). {advice}")
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            scheduler.step(val["loss"])  # it lowers the rate when the validation loss stalls
        elif scheduler is not None:
            scheduler.step()
        for key, value in zip(HISTORY_KEYS, (epoch, train["loss"], train["accuracy"],
                                             val["loss"] if val else math.nan,
                                             val["accuracy"] if val else math.nan, epoch_time.seconds)):
            history[key].append(value)
        if verbose:
            bar.finish(epoch_summary(bar.text(), train, val))
        else:
            bar.clear()
        stop = bool(on_epoch_end(epoch, history)) if on_epoch_end is not None else False
        if checkpoint_path is not None:  # last, so the saved random state is the one the next epoch starts from
            save_checkpoint(checkpoint_path, model, optimizer, epoch, scheduler=scheduler, history=history,
                            loader_generator=generator)
        if stop:
            break
    return history


def _all_finite(tensors) -> bool:
    """Whether every element of every tensor is finite; one wait per device, not one per tensor."""
    by_device: dict[torch.device, list[torch.Tensor]] = {}  # a model may be split across devices
    for t in tensors:
        by_device.setdefault(t.device, []).append(torch.isfinite(t).all())
    return all(bool(torch.stack(checks).all()) for checks in by_device.values())


def _check_scheduler(scheduler, epochs: int, val_loader) -> None:
    """Refuse, before the first epoch, a scheduler that stepping once per epoch would misuse."""
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau) and val_loader is None:
        raise ValueError("ReduceLROnPlateau steps with the validation loss, and val_loader is None: "
                         "give fit a val_loader, or use another scheduler")
    if isinstance(scheduler, torch.optim.lr_scheduler.OneCycleLR) and scheduler.total_steps < epochs:
        # PyTorch would raise at the last step, after an epoch of training. One longer than epochs
        # may be an interrupted run's, so it is not refused, but one made for every batch would
        # stay near its first rate: hence the docstring's warning.
        raise ValueError(f"this OneCycleLR is made for {scheduler.total_steps} steps, but fit steps the "
                         f"scheduler once per epoch, {epochs} times: create it with total_steps=epochs")


def _check_checkpoint_path(checkpoint_path: str | Path) -> None:
    """Refuse, before the first epoch, a checkpoint path that cannot be written as a file."""
    path = Path(checkpoint_path)
    if path.is_dir() or str(checkpoint_path).endswith(("/", os.sep)):
        raise ValueError(f"checkpoint_path {checkpoint_path} is a folder: give a file in it, such as "
                         f"{path / 'last.pt'}")
    existing = path.parent
    while not existing.exists() and existing != existing.parent:  # the folder that save would create in
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise CheckpointError(f"cannot write the checkpoint {checkpoint_path}: {existing} is not a folder "
                              f"this process may write in: choose another checkpoint_path")


def _after_nan(model: nn.Module, epoch: int, checkpoint_path, scheduler) -> str:
    """What the model in memory is after a NaN loss in ``epoch``, and where to go on from."""
    broken = not _all_finite(model.parameters())
    now = ("The model in memory now holds NaN or infinite weights" if broken
           else "The model in memory has taken this epoch's steps")
    if checkpoint_path is None or epoch == 1:  # no checkpoint of this run yet
        return f"{now}: create it again and start over with a lower learning rate"
    if scheduler is not None:  # new_settings cannot change a scheduled run
        return (f"{now}; {checkpoint_path} holds the run after epoch {epoch - 1}, but its schedule was "
                f"computed for the old learning rate: start a new run with a lower one")
    return (f"{now}; {checkpoint_path} holds the run after epoch {epoch - 1}: to go on from there with a lower "
            f"learning rate, call fit again with an optimizer created with it, resume=True and "
            f"new_settings=True (the checkpoint replaces the weights)")


# --- Curves --------------------------------------------------------------------------------------------


def plot_history(history: dict[str, list], axes=None):
    """Loss and accuracy per epoch, training and validation, side by side; returns the figure."""
    if not history.get("epoch"):
        raise ValueError("the history has no epochs to plot")
    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    epochs = history["epoch"]
    for ax, what in zip(axes, ("loss", "accuracy")):
        ax.plot(epochs, history[f"train_{what}"], "o-", label="training")
        if not all(math.isnan(v) for v in history[f"val_{what}"]):
            ax.plot(epochs, history[f"val_{what}"], "s-", label="validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel(what)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0].set_title("loss")
    axes[1].set_title("accuracy")
    if all(0 <= v <= 1 for v in history["train_accuracy"] + history["val_accuracy"] if not math.isnan(v)):
        # As many decimals as the ticks need: 0.425 reads 42.5%, not 42%.
        axes[1].yaxis.set_major_formatter(PercentFormatter(xmax=1))
    figure = axes[0].figure
    figure.tight_layout()
    return figure
