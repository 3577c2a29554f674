"""Training fast on a GPU: data kept on the device, augmentation there, a better network, timing.

Introduced in the chapter "Making training fast, measured step by step" (book/fast_training.ipynb).
The chapter changes one thing at a time and measures each change with ``run_step``::

    data = cifar10_on_device(device)
    train = DeviceLoader(data.train_images, data.train_labels, 512,
                         shuffle=True, drop_last=True)
    test = DeviceLoader(data.test_images, data.test_labels, 1000,
                        shuffle=False)
    result = run_step(
        "bf16", Autocast(SmallCNN().to(device)), train, test,
        device=device, epochs=10,
        make_optimizer=lambda m: torch.optim.Adam(m.parameters(), 3e-3))

Times come from ``DeviceTimer``: CUDA events on a GPU (they measure the GPU's own timeline),
``time.perf_counter`` elsewhere. The first steps of every run (where ``torch.compile`` compiles,
cuDNN picks its algorithms and CUDA graphs are recorded) are timed separately from training.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import io
import logging
import math
import numbers
import os
import re
import statistics
import sys
import tempfile
import textwrap
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import matplotlib.pyplot as plt
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from helpers import runtime
from helpers.data import CIFAR10Data, WithTransform, load_cifar10, make_loader
from helpers.training import evaluate, to_device, train_one_epoch

# --- Data: decoded once, kept on the device as tensors --------------------------------------------


def dataset_to_tensors(dataset, *, batch_size: int = 500,
                       num_workers: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode a dataset of ``(PIL image, label)`` into uint8 images (N, 3, H, W) and labels (N,).

    Datasets that hold their pixels as an array (torchvision's ``CIFAR10``, the stand-in) are
    read directly; others (an image folder of JPEGs) are decoded once by a ``DataLoader``.
    """
    from torchvision.transforms import v2

    pixels = getattr(dataset, "data", None)
    if (isinstance(pixels, np.ndarray) and pixels.dtype == np.uint8 and pixels.ndim == 4
            and hasattr(dataset, "targets") and getattr(dataset, "transform", None) is None):
        images = torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous()  # (N, H, W, 3) -> (N, 3, H, W)
        return images, torch.as_tensor(dataset.targets, dtype=torch.int64)
    loader = make_loader(WithTransform(dataset, v2.PILToTensor()), batch_size, shuffle=False,
                         num_workers=num_workers)
    batches = list(loader)
    del loader
    # A DataLoader iterator left for the garbage collector can be inherited by the worker
    # processes of the next loader, which then print tracebacks when they collect it.
    gc.collect()
    if not batches:
        raise ValueError("the dataset is empty")
    images = torch.cat([b[0] for b in batches])
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
        raise TypeError(f"expected RGB images that decode to uint8 (3, H, W), got {images.dtype} "
                        f"batches of shape {tuple(images.shape)}")
    return images, torch.cat([torch.as_tensor(b[1]) for b in batches]).to(torch.int64)


def channel_stats(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and (population) standard deviation of uint8 images (N, 3, H, W) / 255.

    The same numbers as ``helpers.data.channel_mean_std``, computed from one tensor: float32 (3,).
    """
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise TypeError(f"expected uint8 images (N, C, H, W), got {images.dtype} of shape {tuple(images.shape)}")
    x = images.double() / 255
    return x.mean(dim=(0, 2, 3)).float(), x.std(dim=(0, 2, 3), unbiased=False).float()


def normalise(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 images (N, 3, H, W) -> ``(x / 255 - mean[c]) / std[c]`` in ``dtype``, on their device."""
    mean = torch.as_tensor(mean, dtype=torch.float32, device=images.device)[:, None, None]
    std = torch.as_tensor(std, dtype=torch.float32, device=images.device)[:, None, None]
    return ((images.float() / 255 - mean) / std).to(dtype)


@dataclass
class DeviceData:
    """CIFAR-10 normalised with the training images' statistics, as tensors on one device."""

    train_images: torch.Tensor  # (N, 3, 32, 32), float32
    train_labels: torch.Tensor  # (N,), int64
    test_images: torch.Tensor
    test_labels: torch.Tensor
    mean: torch.Tensor  # (3,), on the CPU
    std: torch.Tensor
    classes: list[str]
    source: str


def _check_limit(name: str, limit: Any) -> None:
    """Refuse a limit that is not a number of images: 0 would leave none (and NaN statistics), -1
    would quietly drop one image as a slice does, and 0.5 fails inside the slicing."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, numbers.Integral) or limit < 1):
        raise ValueError(f"{name} is a number of images and must be None or an integer of at least 1, got "
                         f"{limit!r}: pass None to keep them all")


def random_subset(images: torch.Tensor, labels: torch.Tensor, limit: int | None, seed: int):
    """``limit`` of the ``(images, labels)`` pairs, chosen at random with ``seed`` (all of them
    when ``limit`` is None or not smaller than their number)."""
    _check_limit("limit", limit)
    if limit is None or limit >= len(labels):
        return images, labels
    # A random subset, not the first images: an image folder lists its images class by class.
    keep = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))[:limit]
    return images[keep], labels[keep]


def cifar10_on_device(device: torch.device | str, cifar: CIFAR10Data | None = None, *,
                      train_limit: int | None = None, test_limit: int | None = None,
                      num_workers: int | None = None, seed: int = 0) -> DeviceData:
    """CIFAR-10 (``cifar``, or ``helpers.data.load_cifar10()``) decoded once and moved to ``device``.

    The whole training split, 50,000 images of 3x32x32 float32, takes 614 MB. ``train_limit``
    and ``test_limit`` keep a random subset (chosen with ``seed``), for small machines.
    """
    _check_limit("train_limit", train_limit)  # before decoding 60,000 images, not after
    _check_limit("test_limit", test_limit)
    device = torch.device(device)
    cifar = cifar if cifar is not None else load_cifar10()
    train_u8, train_y = random_subset(*dataset_to_tensors(cifar.train, num_workers=num_workers), train_limit, seed)
    test_u8, test_y = random_subset(*dataset_to_tensors(cifar.test, num_workers=num_workers), test_limit, seed)
    mean, std = channel_stats(train_u8)
    return DeviceData(
        train_images=normalise(train_u8.to(device), mean, std), train_labels=train_y.to(device),
        test_images=normalise(test_u8.to(device), mean, std), test_labels=test_y.to(device),
        mean=mean, std=std, classes=list(cifar.classes), source=cifar.source)


class DeviceLoader:
    """Batches ``(images[i], labels[i])`` cut from tensors that already sit on the device.

    No worker processes, no copies from the CPU: one gather per batch, on the device. With
    ``shuffle`` the order is a new ``torch.randperm`` every epoch, drawn from PyTorch's generator
    for that device (``seed_everything`` seeds it). ``augment`` transforms each training batch
    (e.g. ``FlipAndCrop()``), on the device. Usable wherever a ``DataLoader`` is, such as
    ``helpers.training.train_one_epoch`` and ``evaluate``.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, *, shuffle: bool,
                 drop_last: bool = False, augment: Callable[[torch.Tensor], torch.Tensor] | None = None):
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        if images.device != labels.device:
            raise ValueError(f"images are on {images.device} but labels on {labels.device}: move both")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if drop_last and batch_size > len(labels):
            raise ValueError(f"batch_size {batch_size} is larger than the {len(labels)} examples, so "
                             f"drop_last=True would give no batch at all")
        self.images, self.labels = images, labels
        self.batch_size, self.shuffle, self.drop_last, self.augment = batch_size, shuffle, drop_last, augment

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n, size = len(self.labels), self.batch_size
        # A new order every epoch, drawn on the device itself.
        device = self.images.device
        order = (torch.randperm(n, device=device) if self.shuffle
                 else torch.arange(n, device=device))
        for start in range(0, len(self) * size, size):
            index = order[start:start + size]
            images, labels = self.images[index], self.labels[index]  # gathers
            if self.augment is not None:
                images = self.augment(images)
            yield images, labels


# --- Augmentation on the device, a whole batch at a time --------------------------------------------


def random_flip(images: torch.Tensor, p: float = 0.5) -> torch.Tensor:
    """Mirror each image (N, C, H, W) left-right with probability ``p``, independently."""
    flip = torch.rand(len(images), device=images.device) < p
    return torch.where(flip[:, None, None, None], images.flip(3), images)


def crop_at(images: torch.Tensor, padding: int, top: torch.Tensor, left: torch.Tensor) -> torch.Tensor:
    """Pad each image (N, C, H, W) by ``padding`` pixels (reflection), then cut the H x W window
    whose corner is at ``(top[i], left[i])`` of the padded image i, with 0 <= top, left <= 2 * padding.

    One gather for the whole batch: ``out[i, c, y, x] = padded[i, c, top[i] + y, left[i] + x]``.
    """
    n, c, h, w = images.shape
    if padding < 0 or padding >= min(h, w):
        raise ValueError(f"padding must be between 0 and {min(h, w) - 1} for {h}x{w} images, got {padding}")
    if top.shape != (n,) or left.shape != (n,):
        raise ValueError(f"top and left need one offset per image, shape ({n},); got {tuple(top.shape)} "
                         f"and {tuple(left.shape)}")
    # Reading the offsets waits for the device: random_crop, which draws valid ones, skips this.
    if n and (int(top.min()) < 0 or int(left.min()) < 0
              or int(top.max()) > 2 * padding or int(left.max()) > 2 * padding):
        raise ValueError(f"offsets must lie in [0, {2 * padding}] for padding {padding}")
    if padding == 0:  # the only window is the image itself
        return images
    return _crop(images, padding, top, left)


def _crop(images: torch.Tensor, padding: int, top: torch.Tensor, left: torch.Tensor) -> torch.Tensor:
    n, c, h, w = images.shape
    padded = F.pad(images, (padding, padding, padding, padding), mode="reflect")
    rows = top.to(images.device)[:, None] + torch.arange(h, device=images.device)  # (N, H)
    cols = left.to(images.device)[:, None] + torch.arange(w, device=images.device)  # (N, W)
    which = torch.arange(n, device=images.device)[:, None, None]
    # Indices in dims 0, 2 and 3 around a slice in dim 1: the result comes out as (N, H, W, C).
    crops = padded[which, :, rows[:, :, None], cols[:, None, :]]
    return crops.permute(0, 3, 1, 2).contiguous(memory_format=_memory_format(images))


def _memory_format(images: torch.Tensor) -> torch.memory_format:
    if images.dim() == 4 and not images.is_contiguous() and images.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def random_crop(images: torch.Tensor, padding: int) -> torch.Tensor:
    """Shift each image by up to ``padding`` pixels each way: ``crop_at`` with random offsets."""
    if padding == 0:
        return images
    if padding < 0 or padding >= min(images.shape[-2:]):
        raise ValueError(f"padding must be between 0 and {min(images.shape[-2:]) - 1} for images of shape "
                         f"{tuple(images.shape)}, got {padding}")
    top = torch.randint(0, 2 * padding + 1, (len(images),), device=images.device)
    left = torch.randint(0, 2 * padding + 1, (len(images),), device=images.device)
    return _crop(images, padding, top, left)


class FlipAndCrop:
    """The standard CIFAR-10 augmentation on a batch on the device: ``random_crop(random_flip(x))``."""

    def __init__(self, padding: int = 4, flip_probability: float = 0.5):
        self.padding, self.flip_probability = padding, flip_probability

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return random_crop(random_flip(images, self.flip_probability), self.padding)

    def __repr__(self) -> str:
        return f"FlipAndCrop(padding={self.padding}, flip_probability={self.flip_probability})"


# --- Models ---------------------------------------------------------------------------------------------


def conv_bn(in_channels: int, out_channels: int) -> nn.Sequential:
    """3x3 convolution (same size, no bias: batch norm adds its own) -> batch norm -> ReLU."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class Residual(nn.Module):
    """``x + body(x)``: the body learns a correction to its input, and the gradient has a short path."""

    def __init__(self, body: nn.Module):
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResNet9(nn.Module):
    """A ResNet-9-style network for CIFAR-10 images (N, 3, 32, 32) -> logits (N, 10).

    ``prep`` (32x32) -> ``layer1`` (conv, pool to 16x16, residual block of two convs) ->
    ``layer2`` (conv, pool to 8x8) -> ``layer3`` (conv, pool to 4x4, residual block) -> global
    max-pool -> linear -> multiplied by ``logit_scale``. Every conv is ``conv_bn``. With the
    default widths (64, 128, 256, 512) it has 6,573,120 parameters. The small ``logit_scale``
    keeps the first softmax outputs near uniform, which lets a high learning rate work from the start.
    """

    def __init__(self, num_classes: int = 10, widths: Sequence[int] = (64, 128, 256, 512),
                 logit_scale: float = 0.125):
        super().__init__()
        if len(widths) != 4 or min(widths) < 1:
            raise ValueError(f"widths needs four positive channel counts, got {tuple(widths)}")
        c0, c1, c2, c3 = widths
        self.prep = conv_bn(3, c0)
        self.layer1 = nn.Sequential(conv_bn(c0, c1), nn.MaxPool2d(2),
                                    Residual(nn.Sequential(conv_bn(c1, c1), conv_bn(c1, c1))))
        self.layer2 = nn.Sequential(conv_bn(c1, c2), nn.MaxPool2d(2))
        self.layer3 = nn.Sequential(conv_bn(c2, c3), nn.MaxPool2d(2),
                                    Residual(nn.Sequential(conv_bn(c3, c3), conv_bn(c3, c3))))
        self.head = nn.Sequential(nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(c3, num_classes, bias=False))
        self.logit_scale = logit_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"ResNet9 expects a batch of RGB images (N, 3, H, W), got {tuple(x.shape)}")
        x = self.layer3(self.layer2(self.layer1(self.prep(x))))
        return self.head(x) * self.logit_scale


class Autocast(nn.Module):
    """``model`` run under ``torch.autocast`` in ``dtype`` (bfloat16 by default); float32 logits out.

    Autocast changes the dtype only of the ops on its lists (PyTorch's "Autocast Op Reference",
    in the docs of ``torch.amp``; the lists are in ATen's ``autocast_mode.h``): matrix products,
    convolutions and linear layers run in ``dtype``; on CUDA, the ops on the float32 list (``sum``,
    ``softmax``, ``log_softmax``, ``exp``, ``log`` and most losses among them) run in float32, while
    on the CPU the list is a different one, without ``sum``, ``softmax``, ``log_softmax``, ``exp``
    or ``log``: of bf16 inputs, those stay bf16 there. Every other op runs in the dtype of its
    inputs: the ReLUs, the pooling, batch normalisation (its weights stay float32) and the
    residual additions of a network all run in ``dtype``. The logits are cast to float32 here, so
    the loss, computed outside, is float32 on every device.
    """

    def __init__(self, model: nn.Module, dtype: torch.dtype = torch.bfloat16):
        super().__init__()
        self.model, self.dtype = model, dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, dtype=self.dtype):
            logits = self.model(x)
        return logits.float()


class FlipAverage(nn.Module):
    """Test-time augmentation: the mean of the logits for each image and its mirror image."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.model(x) + self.model(x.flip(3))) / 2


# --- Timing on the device's clock ---------------------------------------------------------------------------


class DeviceTimer:
    """Times a block of work on the device's clock.

    On a CUDA GPU with events: the CPU only queues GPU work, so a CPU
    clock read after the block would measure the queueing. An event is
    recorded *into the queue* and marks the moment the GPU reaches it;
    ``seconds`` waits for the end event, once, when first read, so timers
    can run back to back and be read at the end. Elsewhere it reads
    ``time.perf_counter`` (after waiting for Apple's GPU on "mps").
    """

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self.uses_events = self.device.type == "cuda"
        self._seconds: float | None = None

    def __enter__(self) -> "DeviceTimer":
        if self.uses_events:
            self._start = torch.cuda.Event(enable_timing=True)
            self._start.record()  # queued, like a kernel
        else:
            runtime.synchronize(self.device)  # Apple's GPU (no events)
            self._start_time = time.perf_counter()
        return self

    def __exit__(self, *exc_info) -> None:
        if self.uses_events:
            self._end = torch.cuda.Event(enable_timing=True)
            self._end.record()
        else:
            runtime.synchronize(self.device)  # Apple's GPU (no events)
            self._seconds = time.perf_counter() - self._start_time

    @property
    def seconds(self) -> float:
        if self._seconds is None:
            if not self.uses_events or not hasattr(self, "_end"):
                raise RuntimeError("read DeviceTimer.seconds after the "
                                   "`with` block has ended")
            self._end.synchronize()  # wait for the GPU to get there
            milliseconds = self._start.elapsed_time(self._end)
            self._seconds = milliseconds / 1000
        return self._seconds


def _endless(loader) -> Iterator:
    while True:
        yielded = False
        for batch in loader:
            yielded = True
            yield batch
        if not yielded:
            raise ValueError("the loader gave no batches")


def training_step(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, loss_fn: Callable,
                  optimizer: torch.optim.Optimizer) -> torch.Tensor:
    """One optimizer step on one batch, as in ``helpers.training.train_one_epoch``; the loss, detached."""
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(model(inputs), targets)
    loss.backward()
    optimizer.step()
    return loss.detach()


@dataclass
class StepBenchmark:
    """Times of single training steps: the first ``warmup`` steps together, then each step alone."""

    warmup_seconds: float  # compilation, cuDNN's choice of algorithms, CUDA graph recording
    step_seconds: list[float]
    batch_size: int

    @property
    def median_seconds(self) -> float:
        return statistics.median(self.step_seconds)

    @property
    def images_per_second(self) -> float:
        return self.batch_size / self.median_seconds


def benchmark_steps(model: nn.Module, loader, loss_fn: Callable, optimizer: torch.optim.Optimizer,
                    device: torch.device | str, *, warmup: int = 5, steps: int = 20) -> StepBenchmark:
    """Time ``warmup`` training steps together, then ``steps`` steps one by one; each step includes
    fetching its batch. The warm-up's total is ``warmup_seconds``, apart from the steady steps.

    Each step gets its own ``DeviceTimer``; they are read at the end, so no step waits for the GPU.
    The model and optimizer are trained by these steps: benchmark a copy if that matters.
    """
    if warmup < 0 or steps < 1:
        raise ValueError(f"need warmup >= 0 and steps >= 1, got warmup={warmup}, steps={steps}")
    device = torch.device(device)
    model.train()
    batches = _endless(loader)
    with runtime.Timer(device) as first:
        for _ in range(warmup):
            inputs, targets = to_device(next(batches), device)
            training_step(model, inputs, targets, loss_fn, optimizer)
    timers, batch_size = [], 0
    for _ in range(steps):
        with DeviceTimer(device) as timer:
            inputs, targets = to_device(next(batches), device)
            training_step(model, inputs, targets, loss_fn, optimizer)
        timers.append(timer)
        batch_size = max(batch_size, len(targets))
    del batches
    gc.collect()
    return StepBenchmark(first.seconds, [t.seconds for t in timers], batch_size)


# --- Anything PyTorch prints while a step runs is kept and shown, not lost on stderr -----------------------


@contextlib.contextmanager
def captured_stderr() -> Iterator[io.StringIO]:
    """Collect what is written to stderr inside the block: Python warnings, log records, and
    the output of C++ code and of child processes (file descriptor 2). Yields a ``StringIO``
    that holds it all when the block ends. Used so that a message from PyTorch about a step ends
    up in that step's result, where the chapter shows it, rather than scattered on stderr.
    """
    buffer = io.StringIO()
    sys.stderr.flush()
    with tempfile.TemporaryFile(mode="w+b") as fd_file:
        saved_fd = os.dup(2)
        os.dup2(fd_file.fileno(), 2)
        # Log handlers keep the stream they were created with: point those at the buffer too.
        loggers = [logging.root, *(logger for logger in logging.root.manager.loggerDict.values()
                                   if isinstance(logger, logging.Logger))]
        handlers = [h for logger in loggers for h in logger.handlers
                    if isinstance(h, logging.StreamHandler) and h.stream in (sys.stderr, sys.__stderr__)]
        streams = [h.setStream(buffer) for h in handlers]
        try:
            with contextlib.redirect_stderr(buffer):
                yield buffer
        finally:
            for handler, stream in zip(handlers, streams):
                handler.setStream(stream)
            sys.stderr.flush()
            os.dup2(saved_fd, 2)
            os.close(saved_fd)
            fd_file.seek(0)
            buffer.write(fd_file.read().decode(errors="replace"))


# --- One step of the ladder ---------------------------------------------------------------------------------


@dataclass
class StepResult:
    """What one configuration achieved: training time, warm-up time, test accuracy."""

    name: str
    batch_size: int
    epochs: int
    train_seconds: float = math.nan  # the epochs, timed on the device, evaluation excluded
    warmup_seconds: float = math.nan  # the warm-up steps before them (compilation included)
    images: int = 0  # training images seen
    test_accuracy: float = math.nan
    train_losses: list[float] = field(default_factory=list)
    target_accuracy: float | None = None  # train until the test accuracy reaches it
    skipped: str | None = None  # why this step did not run here
    messages: str = ""  # what PyTorch wrote to stderr meanwhile
    trained_model: nn.Module | None = field(default=None, repr=False)  # compiled, if it was

    @property
    def images_per_second(self) -> float:
        return self.images / self.train_seconds if self.images else math.nan

    @property
    def reached_target(self) -> bool:
        """Whether a run with a target accuracy reached it (False without a target)."""
        return self.target_accuracy is not None and self.test_accuracy >= self.target_accuracy

    def line(self) -> str:
        """One line for a reader: the numbers, or why there are none (and any stderr text)."""
        if self.skipped:
            return textwrap.fill(f"{self.name}: skipped. {self.skipped}", 79, subsequent_indent="  ",
                                 break_on_hyphens=False)
        # Non-breaking spaces keep "1.23 s" on one line when wrapped (textwrap splits on ASCII spaces).
        epochs = f"{self.epochs}\u00a0epoch{'s' if self.epochs != 1 else ''}"
        text = (f"{self.name}: {epochs} in {self.train_seconds:.2f}\u00a0s (after "
                f"{self.warmup_seconds:.2f}\u00a0s of warm-up), {self.images_per_second:,.0f}\u00a0images/s, "
                f"test accuracy {self.test_accuracy:.1%}")
        if self.target_accuracy is not None:
            text += (f" ({'reached' if self.reached_target else 'short of'} the target "
                     f"{self.target_accuracy:.1%})")
        lines = self.messages.strip().splitlines()
        if lines:
            text += f". PyTorch wrote {len(lines)} line(s) to stderr meanwhile; the first: {lines[0][:200]}"
        return textwrap.fill(text, 79, subsequent_indent="  ",
                             break_on_hyphens=False).replace("\u00a0", " ")


def run_step(name: str, model: nn.Module, train_loader, test_loader, *,
             device: torch.device | str, epochs: int,
             make_optimizer: Callable[[nn.Module], torch.optim.Optimizer],
             make_scheduler: Callable | None = None,
             loss_fn: Callable | None = None, compile_mode: str | None = None,
             warmup_steps: int = 3, eval_model: nn.Module | None = None,
             target_accuracy: float | None = None, skip: str | None = None,
             verbose: bool = True) -> StepResult:
    """Train ``model`` for ``epochs`` with ``train_one_epoch``, timed.

    1. Warm up: ``warmup_steps`` steps with a throw-away optimizer, timed
       together (``torch.compile(model, mode=compile_mode)`` compiles
       here); then the initial weights are put back, in place.
    2. Train ``epochs`` epochs with a fresh ``make_optimizer(model)``,
       each timed by a ``DeviceTimer``. ``make_scheduler(optimizer,
       total_steps)`` is stepped after every optimizer step.
    3. Measure the test accuracy of ``eval_model`` (default: ``model``).
       With ``target_accuracy``, measure it after every epoch (untimed)
       and stop as soon as it is reached: ``epochs`` is then the most.

    With ``skip`` (a reason), nothing runs and the result says why.
    Whatever PyTorch writes to stderr meanwhile ends up in ``messages``.
    """
    batch_size = getattr(train_loader, "batch_size", None) or 0
    result = StepResult(name, batch_size, epochs, skipped=skip,
                        target_accuracy=target_accuracy)
    if skip is None:
        if epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {epochs}")
        loss_fn = loss_fn if loss_fn is not None else nn.CrossEntropyLoss()
        eval_model = eval_model if eval_model is not None else model
        with captured_stderr() as messages:
            measure_training(result, model, train_loader, test_loader,
                             torch.device(device), make_optimizer,
                             make_scheduler, loss_fn, compile_mode,
                             warmup_steps, eval_model)
        result.messages = _without_profiler_notices(messages.getvalue())
    if verbose:
        print(result.line())
    return result


def measure_training(result: StepResult, model: nn.Module, train_loader,
                     test_loader, device: torch.device,
                     make_optimizer: Callable, make_scheduler: Callable | None,
                     loss_fn: Callable, compile_mode: str | None,
                     warmup_steps: int, eval_model: nn.Module) -> None:
    """The measurement behind ``run_step``; fills in ``result``."""
    trained = (torch.compile(model, mode=compile_mode) if compile_mode
               else model)
    initial = copy.deepcopy(model.state_dict())
    # Worker processes are forked: no stray loader iterators for them
    # to inherit (see dataset_to_tensors). Collecting takes a while.
    forks = getattr(train_loader, "num_workers", 0) > 0
    if forks:
        gc.collect()
    result.warmup_seconds = 0.0
    if warmup_steps > 0:
        model.train()
        throw_away = make_optimizer(model)
        batches = _endless(train_loader)
        with runtime.Timer(device) as warmup:  # waits for the GPU
            for _ in range(warmup_steps):
                inputs, targets = to_device(next(batches), device)
                training_step(trained, inputs, targets, loss_fn, throw_away)
        del batches, throw_away
        if forks:
            gc.collect()
        result.warmup_seconds = warmup.seconds
    # In place: compiled code and recorded CUDA graphs stay valid.
    model.load_state_dict(initial)
    optimizer = make_optimizer(model)
    if make_scheduler is not None:
        steps = result.epochs * len(train_loader)
        scheduler = make_scheduler(optimizer, steps)
        optimizer.register_step_post_hook(lambda *_: scheduler.step())
    timers, most_epochs = [], result.epochs
    for epoch in range(1, most_epochs + 1):
        with DeviceTimer(device) as timer:
            stats = train_one_epoch(trained, train_loader, loss_fn,
                                    optimizer, device, progress=False,
                                    correct_fn=None)
        timers.append(timer)
        result.train_losses.append(stats["loss"])
        result.images += stats["samples"]
        if forks:
            gc.collect()
        if result.target_accuracy is not None or epoch == most_epochs:
            result.epochs = epoch  # outside the timers: not training time
            result.test_accuracy = evaluate(
                eval_model, test_loader, nn.CrossEntropyLoss(),
                device)["accuracy"]
            if result.reached_target:
                break
    result.train_seconds = sum(t.seconds for t in timers)
    result.trained_model = trained


# Kineto (the profiler's engine) announces its start and stop on stderr in some versions, and,
# on a machine without a GPU driver, that it found no GPU.
_PROFILER_NOTICE = re.compile(r"^\s*(USDT|STAGE):.*\.cpp:\d+\]")
_NO_GPU_NOTICE = re.compile(r"^\s*ERROR:.*DeviceProperties\.cpp:\d+\] gpuGetDeviceCount failed")


def _without_profiler_notices(text: str) -> str:
    """``text`` without the profiler's routine notices (all other lines are kept)."""
    no_gpu = not torch.cuda.is_available()
    return "".join(line for line in text.splitlines(keepends=True)
                   if not _PROFILER_NOTICE.match(line) and not (no_gpu and _NO_GPU_NOTICE.match(line)))


def cuda_only(device: torch.device | str, what: str) -> str | None:
    """None on a CUDA device, else the reason ``what`` is skipped here (for ``run_step(skip=...)``)."""
    device = torch.device(device)
    if device.type == "cuda":
        return None
    return f"{what} needs a CUDA GPU, and this run is on {runtime.device_name(device)}."


def bf16_compile_skip(device: torch.device | str, what: str,
                      capability: tuple[int, int] | None = None) -> str | None:
    """None unless ``device`` is a CUDA GPU of compute capability below 8.0 (the T4 of Colab's
    free tier, the V100), where ``what``, compiled code in bfloat16, is skipped: then the reason,
    for ``run_step(skip=...)``. ``capability`` is ``torch.cuda.get_device_capability(device)``
    unless given, so that the decision can be tested without such a GPU (the reason also names
    the GPU, through ``runtime.device_name``, which a test without CUDA must replace).

    Such GPUs have no bf16 instructions: Triton's kernels for them fail ("Feature '.bf16' requires
    .target sm_80 or higher"), and recent versions of Inductor refuse to compile bf16 graphs for
    them ("does not support bfloat16 compilation natively, skipping"), so that the step would not
    be what it says. Devices other than CUDA GPUs get None: their compilers do not need this.
    """
    device = torch.device(device)
    if device.type != "cuda":
        return None
    major, minor = capability if capability is not None else torch.cuda.get_device_capability(device)
    if (major, minor) >= (8, 0):
        return None
    return (f"{what} needs a GPU with bfloat16 instructions (compute capability 8.0 or higher, "
            f"from the A100 on), and this run is on {runtime.device_name(device)}, of compute "
            f"capability {major}.{minor}.")


# --- Tables, charts, profiles --------------------------------------------------------------------------------


def speedups(results: Sequence[StepResult]) -> list[float]:
    """``t_1 / t_k`` for each result: how many times faster than the first step."""
    base = results[0].train_seconds
    return [base / r.train_seconds if not r.skipped and r.train_seconds > 0 else math.nan for r in results]


def results_table(results: Sequence[StepResult], caption: str) -> str:
    """A Markdown table of the results, one row per step, under ``caption``; skipped steps are
    listed below it, with their reasons."""
    rows = [f"**{caption}**", "",
            "| step | batch | epochs | training time | warm-up | images/s | test accuracy | speed-up |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    notes = []
    for result, speedup in zip(results, speedups(results)):
        if result.skipped:
            rows.append(f"| {result.name} | {result.batch_size} | {result.epochs} | skipped | | | | |")
            notes.append(f"{result.name}: {result.skipped}")
            continue
        rows.append(f"| {result.name} | {result.batch_size} | {result.epochs} | {result.train_seconds:.2f} s | "
                    f"{result.warmup_seconds:.2f} s | {result.images_per_second:,.0f} | "
                    f"{result.test_accuracy:.1%} | {speedup:.1f}x |")
    if notes:
        rows += ["", "Skipped: " + " ".join(notes)]
    return "\n".join(rows)


def plot_results(results: Sequence[StepResult], title: str = ""):
    """Training time (log scale) and test accuracy per step, as horizontal bars; returns the figure."""
    shown = list(results)[::-1]  # the first step at the top
    names = [r.name for r in shown]
    fig, (time_ax, acc_ax) = plt.subplots(1, 2, figsize=(9, 0.45 * len(results) + 1.4), sharey=True)
    y = np.arange(len(shown))
    seconds = [r.train_seconds if not r.skipped else 0 for r in shown]
    accuracies = [100 * r.test_accuracy if not r.skipped else 0 for r in shown]
    time_ax.barh(y, seconds, color="tab:blue")
    acc_ax.barh(y, accuracies, color="tab:green")
    positive = [s for s in seconds if s > 0]
    if positive:
        time_ax.set_xscale("log")
        time_ax.set_xlim(min(positive) / 2, max(positive) * 3)
        # Seconds as plain numbers at 1, 2, 5, 10, ...: matplotlib's own labels of a log axis
        # over less than two decades are powers of ten, and its minor ones collide.
        time_ax.xaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
        time_ax.xaxis.set_major_formatter(FuncFormatter(lambda seconds, _: f"{seconds:g}"))
        time_ax.xaxis.set_minor_formatter(NullFormatter())
    for i, r in enumerate(shown):
        if r.skipped:
            time_ax.text(time_ax.get_xlim()[0] * 1.1, i, "skipped", va="center", fontsize=9)
        else:
            time_ax.text(r.train_seconds * 1.05, i, f"{r.train_seconds:.2f} s", va="center", fontsize=9)
            acc_ax.text(100 * r.test_accuracy + 1, i, f"{r.test_accuracy:.1%}", va="center", fontsize=9)
    time_ax.set_yticks(y, names)
    time_ax.set_xlabel("training time, seconds (log scale)")
    acc_ax.set_xlabel("test accuracy, %")
    acc_ax.set_xlim(0, 110)
    for ax in (time_ax, acc_ax):
        ax.grid(axis="x", alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


@dataclass
class ProfileReport:
    """Where the time of some training steps went, from ``torch.profiler``."""

    steps: int
    wall_seconds: float
    waiting_for_data_seconds: float  # the CPU inside "next batch": fetching, decoding, copying
    device_busy_seconds: float | None  # the GPU running kernels and copies (None without CUDA)
    top: list[tuple[str, int, float]]  # (name, calls, seconds): kernels (kernel_label) on a GPU, operators on a CPU
    messages: str = ""  # what the profiler or PyTorch wrote to stderr meanwhile

    def __str__(self) -> str:
        per_step = self.wall_seconds / self.steps
        lines = [f"{self.steps} steps, {1000 * per_step:.2f} ms per step",
                 f"  waiting for the next batch: {1000 * self.waiting_for_data_seconds / self.steps:.2f} "
                 f"ms per step ({self.waiting_for_data_seconds / self.wall_seconds:.0%})"]
        if self.device_busy_seconds is not None:
            lines.append(f"  the GPU busy: {1000 * self.device_busy_seconds / self.steps:.2f} ms per step "
                         f"({self.device_busy_seconds / self.wall_seconds:.0%})")
        where = "GPU kernels and copies" if self.device_busy_seconds is not None else "operators (CPU, self time)"
        lines.append(f"the {len(self.top)} {where} that took longest:")
        for (_, calls, seconds), label in zip(self.top, short_labels([name for name, _, _ in self.top])):
            lines.append(f"  {label:<48} {calls:>5} calls {1000 * seconds / self.steps:8.3f} ms/step")
        if self.messages.strip():
            lines.append(textwrap.fill(f"(stderr meanwhile: {self.messages.strip().splitlines()[0][:200]})", 79,
                                       break_on_hyphens=False))
        return "\n".join(lines)


def kernel_label(name: str) -> str:
    """A CUDA kernel's name without what C++ kernels share: ``void``, namespaces, the arguments.

    ``void at::native::(anonymous namespace)::elementwise_kernel<...>(int, ...)`` becomes
    ``elementwise_kernel<...>``: cut to a column's width, full names would all look alike.
    Other names (``Memcpy HtoD (Pinned -> Device)``, Triton's kernels) are kept as they are.
    """
    if not name.startswith("void "):
        return name
    name = re.sub(r"(\(anonymous namespace\)|\w+)::", "", name[len("void "):])
    if name.endswith(")"):  # drop the argument list: from its '(' to the end
        depth = 0
        for i in range(len(name) - 1, -1, -1):
            depth += {")": 1, "(": -1}.get(name[i], 0)
            if depth == 0:
                name = name[:i].rstrip() or name
                break
    return name


def short_labels(names: Sequence[str], width: int = 48) -> list[str]:
    """Each name cut to at most ``width`` characters, keeping names that differ apart.

    Kernels of one template differ late in their names (``elementwise_kernel<128, 2, ...,
    MulFunctor<float> > >`` and ``..., AddFunctor<float> > >``), so cutting every name after the
    same number of characters would make them look alike. A long name that shares a start that
    long with another keeps its first characters and then the stretch where it first differs.
    """
    labels = []
    for name in names:
        if len(name) <= width:
            labels.append(name)
            continue
        # Where this name first differs from the other name it shares the longest start with.
        differs_at = max((len(os.path.commonprefix([name, other])) for other in names if other != name),
                         default=0)
        if differs_at < width - 3:
            labels.append(name[:width - 3] + "...")
            continue
        head = width // 3
        start = max(head, differs_at - 8)
        room = width - head - 3  # what is left after the head and its "..."
        stretch = name[start:start + room]
        if start + room < len(name):
            stretch = stretch[:-3] + "..."
        labels.append(name[:head] + "..." + stretch)
    # Names alike even there (as long and differing only further on) are numbered, not merged.
    seen: dict[str, int] = {}
    for i, label in enumerate(labels):
        seen[label] = seen.get(label, 0) + 1
        if seen[label] > 1:
            suffix = f" ({seen[label]})"
            labels[i] = label[:width - len(suffix)] + suffix
    return labels


def gpu_kernel_times(events) -> tuple[float, list[tuple[str, int, float]]]:
    """The GPU's busy seconds and (label, calls, seconds) per kernel label, longest first.

    ``events`` is ``prof.events()``. On a GPU the profiler also lays each ``record_function``
    range over the GPU's timeline, as an event on the CUDA device: those are left out, or the
    "training step" range would count every kernel inside it a second time.
    """
    from torch.autograd import DeviceType

    kernels = {}
    for event in events:
        if event.device_type == DeviceType.CUDA and not event.is_user_annotation:
            label = kernel_label(event.name)
            calls, total = kernels.get(label, (0, 0.0))
            kernels[label] = (calls + 1, total + event.time_range.elapsed_us() / 1e6)
    busy = sum(total for _, total in kernels.values())
    return busy, sorted(((label, c, t) for label, (c, t) in kernels.items()), key=lambda x: -x[2])


def profile_steps(model: nn.Module, loader, loss_fn: Callable, optimizer: torch.optim.Optimizer,
                  device: torch.device | str, *, steps: int = 10, top: int = 6) -> ProfileReport:
    """Run ``steps`` training steps under ``torch.profiler`` and summarise where the time went.

    One step runs first, unprofiled, as a warm-up. Fetching each batch is marked "next batch"
    (``record_function``), so the report can say how long the loop waited for data. On a GPU it
    also sums the kernels' own times (busy time). The steps train the model, as any training
    steps do.
    """
    from torch.profiler import ProfilerActivity, profile, record_function

    device = torch.device(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    model.train()
    batches = _endless(loader)
    gc.collect()
    with captured_stderr() as messages, warnings.catch_warnings():  # kept in the report, shown with it
        # A routine notice of some versions (torch 2.11 among them), at every profile: not news.
        warnings.filterwarnings("ignore", message="Warning: Profiler clears events", category=UserWarning)
        # The warm-up step starts the loader's worker processes before the profile: starting them
        # is a one-off cost, not the steady wait for data the report is about, and processes
        # forked while the profiler traces CUDA would inherit its hooks.
        training_step(model, *to_device(next(batches), device), loss_fn, optimizer)
        with profile(activities=activities) as prof:
            with DeviceTimer(device) as wall:
                for _ in range(steps):
                    with record_function("next batch"):
                        inputs, targets = to_device(next(batches), device)
                    with record_function("training step"):
                        training_step(model, inputs, targets, loss_fn, optimizer)
            wall_seconds = wall.seconds  # waits for the GPU, inside the profile
    del batches
    gc.collect()
    averages = prof.key_averages()
    waiting = sum(e.cpu_time_total for e in averages if e.key == "next batch") / 1e6
    if device.type == "cuda":
        busy, ranked = gpu_kernel_times(prof.events())
    else:
        busy = None
        ranked = sorted(((e.key, e.count, e.self_cpu_time_total / 1e6) for e in averages
                         if e.key not in ("next batch", "training step")), key=lambda x: -x[2])
    return ProfileReport(steps, wall_seconds, waiting, busy, ranked[:top],
                         _without_profiler_notices(messages.getvalue()))


# --- The run's own facts, for the chapter's text -------------------------------------------------------------


def describe_measurements(device: torch.device | str, data_source: str) -> str:
    """One sentence saying what the numbers of this run are, and what they are not."""
    device = torch.device(device)
    where = runtime.device_name(device)
    if device.type == "cuda" and not runtime.quick_mode():
        return f"These are measurements on {where}, full run, with CIFAR-10 ({data_source})."
    reasons = []
    if device.type != "cuda":
        reasons.append(f"it ran on {where}, not on an NVIDIA GPU, so the steps that need CUDA are skipped "
                       "and the sizes are smaller")
    if runtime.quick_mode():
        reasons.append("it ran in quick mode (small sizes)")
    return (f"These outputs (data: {data_source}) are not from the full run on a GPU that this chapter is "
            "about: " + "; ".join(reasons) + ". Their times say nothing about a GPU.")
