"""CIFAR-10 for the course: loading it (three ways), normalising it, splitting it, batching it.

Introduced in the chapter "Loading data: datasets, loaders and CIFAR-10" (book/data.ipynb);
the training and evaluation chapters build their loaders with ``cifar10_loaders``.

Where the images come from, in this order (``load_cifar10`` prints which one it used, once per
process, and records it with ``helpers.runtime.record_data_source``):

1. an image-folder tree ``train/<class>/*`` and ``test/<class>/*`` (``.png`` or ``.jpg``/``.jpeg``
   files, 32x32), read with ``torchvision.datasets.ImageFolder``, when given as ``image_folder=``
   or, in full mode, by the environment variable ``CIFAR10_JPEG_DIR`` (for machines behind a
   firewall or with a mirror). Outside quick mode every class folder must hold all of CIFAR-10's
   images (5,000 for training, 1,000 for testing); in quick mode smaller copies are accepted, as
   long as every class of a split holds the same number. Either way a copy cut short is refused,
   and a damaged or wrong-sized image file is named in the error when it is read;
2. in quick mode (``COURSE_QUICK=1``), a small generated stand-in with CIFAR-10's shapes and
   classes, announced as such. Quick mode ignores ``CIFAR10_JPEG_DIR``, so that the tests run
   fast and the same on every machine;
3. otherwise torchvision's download (170 MB, once), what readers in Colab get. Without network
   this fails with an error that says how to provide the data: there is no silent fallback.

Every dataset returned here yields ``(PIL image, class index)``; transforms are applied by
``WithTransform`` so that the training and the validation part of one dataset can be transformed
differently (augmentation for one, not the other).
"""

from __future__ import annotations

import colorsys
import functools
import math
import numbers
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, Subset, get_worker_info, random_split
from torchvision.transforms import v2

from helpers import runtime

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
JPEG_DIR_ENV = "CIFAR10_JPEG_DIR"
DEFAULT_DOWNLOAD_ROOT = Path("~/.cache/pytorch-course/cifar10")
# Size of the quick-mode stand-in: large enough to learn something in one short epoch.
STAND_IN_SIZES = {"train": 2500, "test": 500}
# Images per class in CIFAR-10's splits: what a complete image-folder copy holds.
IMAGES_PER_CLASS = {"train": 5000, "test": 1000}
# The files an image folder is read from; ImageFolder would also take .webp, .bmp, ..., but the
# counts below must see exactly the files that are loaded.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

_announced: set[str] = set()


class DataSourceError(RuntimeError):
    """CIFAR-10 could not be found or read; the message says how to provide it."""


@dataclass
class CIFAR10Data:
    """The two official splits, as datasets of ``(PIL image, class index)``, and where they came from."""

    train: Dataset
    test: Dataset
    classes: list[str]
    source: str  # one line, e.g. "image folder cifar10-jpeg (from $CIFAR10_JPEG_DIR)"


# --- Source 1: an image-folder tree -------------------------------------------------------------


def _check_image_folder(root: Path, hint: str) -> None:
    """Raise ``DataSourceError`` unless ``root`` holds train/ and test/ with the ten class folders."""
    if not root.is_dir():
        raise DataSourceError(f"the CIFAR-10 image folder {root} ({hint}) does not exist or is not a folder")
    if (root / "cifar-10-batches-py").is_dir():
        raise DataSourceError(f"{root} ({hint}) holds torchvision's download (cifar-10-batches-py), not an "
                              f"image-folder tree: pass it as load_cifar10(root={str(root)!r}) instead")
    for split in ("train", "test"):
        if not (root / split).is_dir():
            found = sorted(p.name for p in root.iterdir() if p.is_dir())
            raise DataSourceError(
                f"the CIFAR-10 image folder {root} ({hint}) has no {split}/ folder (its folders: "
                f"{', '.join(found) or 'none'}). Expected {root}/train/<class>/*.png and "
                f"{root}/test/<class>/*.png, with the ten classes {', '.join(CLASSES)}; point it at the "
                f"folder that contains train/ and test/")
        folders = {p.name for p in (root / split).iterdir() if p.is_dir()}
        missing, extra = sorted(set(CLASSES) - folders), sorted(folders - set(CLASSES))
        if missing or extra:
            parts = [f"missing {', '.join(missing)}"] if missing else []
            parts += [f"unexpected {', '.join(extra)}"] if extra else []
            raise DataSourceError(f"{root / split} ({hint}) must hold exactly one folder per CIFAR-10 class "
                                  f"({', '.join(CLASSES)}): {'; '.join(parts)}")
        counts = {}
        for name in CLASSES:
            folder = root / split / name
            files = [entry.name for entry in os.scandir(folder) if entry.is_file()]
            images = sorted(file_name for file_name in files if _is_image_file(file_name))
            if not images:
                others = sorted({"._* (macOS metadata)" if file_name.startswith("._")
                                 else Path(file_name).suffix.lower() or file_name for file_name in files})
                found = f"it holds only {', '.join(others)} files" if others else "it holds no files"
                raise DataSourceError(f"{folder} ({hint}) holds no .png, .jpg or .jpeg images ({found}): "
                                      f"only those files are read. Copy CIFAR-10's images there again, "
                                      f"as PNG or JPEG files")
            counts[name] = len(images)
            _load_rgb(folder / images[0], hint)  # a tree of other images is refused before any loading
        _check_counts(root / split, counts, IMAGES_PER_CLASS[split], hint)


def _is_image_file(name: str) -> bool:
    # "._15000.jpg" is not an image but the metadata file macOS leaves next to 15000.jpg on some disks.
    return name.lower().endswith(IMAGE_SUFFIXES) and not Path(name).name.startswith("._")


def _check_counts(folder: Path, counts: dict[str, int], expected: int, hint: str) -> None:
    """Refuse a split whose class folders do not all hold ``expected`` images (in quick mode: the same number).

    Files are counted by listing the folders, without opening them: a copy cut short shows as
    folders with fewer images than CIFAR-10 has.
    """
    redo = ("copy the folder again in full (or unpack the archive again) and check that the copy "
            "ended without errors")
    if runtime.quick_mode():
        if len(set(counts.values())) > 1:
            listed = ", ".join(f"{name} {count}" for name, count in counts.items())
            raise DataSourceError(f"the class folders of {folder} ({hint}) hold different numbers of images "
                                  f"({listed}); CIFAR-10's classes are all the same size, so the copy is "
                                  f"incomplete: {redo}")
        return
    for name, count in counts.items():
        if count != expected:
            raise DataSourceError(f"{folder / name} ({hint}) holds {count:,} images, but every class folder of "
                                  f"CIFAR-10's {folder.name}/ split holds {expected:,}: {redo}")


def _image_folder_splits(root: Path, hint: str) -> tuple[Dataset, Dataset]:
    from torchvision.datasets import ImageFolder

    _check_image_folder(root, hint)
    # ImageFolder numbers the classes in sorted order, which is CIFAR-10's own order.
    # Every image is checked as it is loaded (opening all 60,000 here would take long): a damaged
    # file deep in the tree gets an error naming it, not the image library's bare one.
    splits = tuple(ImageFolder(str(root / split), loader=functools.partial(_load_rgb, hint=hint),
                               is_valid_file=_is_image_file)
                   for split in ("train", "test"))
    for split in splits:
        assert tuple(split.classes) == CLASSES, split.classes
    return splits


def _load_rgb(path: str | Path, hint: str) -> Image.Image:
    """The image file ``path`` of an image-folder tree as a 32x32 RGB image, or a ``DataSourceError``
    that names the file and says what to do."""
    try:
        with open(path, "rb") as f:
            image = Image.open(f).convert("RGB")
    except OSError as error:  # also PIL's UnidentifiedImageError, and the error of a truncated file
        reason = "no image format recognised" if isinstance(error, UnidentifiedImageError) else error
        raise DataSourceError(f"{path} ({hint}) is not a readable image ({reason}): the file is damaged, "
                              f"often by a copy cut short; copy the folder again (or unpack the archive "
                              f"again)") from None
    if image.size != (32, 32):
        raise DataSourceError(f"{path} ({hint}) is {image.size[0]}x{image.size[1]} pixels; CIFAR-10 images "
                              f"are 32x32: is this really CIFAR-10? Copy CIFAR-10's images there again")
    return image


# --- Source 2: the quick-mode stand-in ------------------------------------------------------------


class StandInCIFAR10(Dataset):
    """A generated stand-in for CIFAR-10, for quick mode: same shapes, classes and interface.

    Each class has its own colour (ten hues) and its own stripe pattern (an angle and a
    frequency); every image gets a random phase, colour jitter and pixel noise. A small CNN
    learns it in one short epoch, so quick runs show a falling loss, but it says nothing about
    how a model does on CIFAR-10. Like torchvision's ``CIFAR10`` it has ``data`` (uint8,
    ``(N, 32, 32, 3)``), ``targets`` and ``classes``, and yields ``(PIL image, class index)``.
    """

    def __init__(self, num_images: int, seed: int = 0, transform: Callable | None = None):
        if num_images < 1:
            raise ValueError(f"num_images must be at least 1, got {num_images}")
        g = torch.Generator().manual_seed(seed)
        labels = torch.arange(num_images) % len(CLASSES)
        labels = labels[torch.randperm(num_images, generator=g)]  # balanced classes, shuffled
        hues = torch.tensor([colorsys.hsv_to_rgb(k / len(CLASSES), 0.55, 0.75) for k in range(len(CLASSES))])
        colour = hues[labels] + 0.08 * torch.randn(num_images, 3, generator=g)  # (N, 3)
        angle = labels * math.pi / len(CLASSES)
        frequency = 2 * math.pi * (2 + labels % 3) / 32
        phase = 2 * math.pi * torch.rand(num_images, generator=g)
        y, x = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
        along = x * angle.cos()[:, None, None] + y * angle.sin()[:, None, None]  # (N, 32, 32)
        stripes = torch.sin(frequency[:, None, None] * along + phase[:, None, None])
        images = (colour[:, :, None, None] + 0.18 * stripes[:, None]
                  + 0.12 * torch.randn(num_images, 3, 32, 32, generator=g))
        self.data = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        self.targets = labels.tolist()
        self.classes = list(CLASSES)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        image = Image.fromarray(self.data[index])
        return (self.transform(image) if self.transform else image), self.targets[index]


# --- Source 3: torchvision's download ---------------------------------------------------------------


def _torchvision_splits(root: Path) -> tuple[Dataset, Dataset]:
    from torchvision.datasets import CIFAR10

    try:
        return CIFAR10(str(root), train=True, download=True), CIFAR10(str(root), train=False, download=True)
    except (OSError, RuntimeError) as error:  # URLError is an OSError
        certificates = ""
        if "CERTIFICATE_VERIFY_FAILED" in str(error):  # the internet is there; Python's certificates are not
            certificates = ("Python has no certificates to check the download with: with python.org's "
                            "Python on a Mac, run \"Install Certificates.command\" in its folder under "
                            "/Applications, then try again. ")
        raise DataSourceError(
            f"CIFAR-10 could not be downloaded into {root} ({type(error).__name__}: {error}). "
            f"{certificates}Provide it in one of three ways: (1) run where the internet is reachable (torchvision "
            f"downloads 170 MB once); (2) put a copy as an image-folder tree, train/<class>/*.png and "
            f"test/<class>/*.png, on this machine and set the environment variable {JPEG_DIR_ENV} to "
            f"that folder (or pass image_folder=...); (3) for a small generated stand-in instead of "
            f"CIFAR-10, set {runtime.QUICK_ENV}=1 (quick mode)") from error


# --- The one entry point -----------------------------------------------------------------------------


def load_cifar10(image_folder: str | Path | None = None, *, root: str | Path = DEFAULT_DOWNLOAD_ROOT,
                 announce: bool = True) -> CIFAR10Data:
    """CIFAR-10's training and test splits, from the first source that applies (see the module).

    ``image_folder`` (or, in full mode, ``$CIFAR10_JPEG_DIR``) names an image-folder tree;
    ``root`` is where torchvision's download goes. Prints the source once per process
    (``announce=False`` keeps quiet) and records it for the notebook's stamp.
    """
    if image_folder is not None:
        folder = Path(image_folder).expanduser()
        train, test = _image_folder_splits(folder, "given as image_folder")
        source = f"image folder {folder}"
        headline = f"CIFAR-10 from the image folder {folder}"
    elif runtime.quick_mode():
        train = StandInCIFAR10(STAND_IN_SIZES["train"], seed=0)
        test = StandInCIFAR10(STAND_IN_SIZES["test"], seed=1)
        source = "generated stand-in (quick mode)"
        headline = "A generated STAND-IN for CIFAR-10 (quick mode): stripes and noise, not photos"
    elif os.environ.get(JPEG_DIR_ENV):
        folder = Path(os.environ[JPEG_DIR_ENV]).expanduser()
        train, test = _image_folder_splits(folder, f"from ${JPEG_DIR_ENV}")
        # The folder's name, not its full path: the path is this machine's business.
        source = f"image folder {folder.name} (from ${JPEG_DIR_ENV})"
        headline = f"CIFAR-10 from the {source}"
    else:
        root = Path(root).expanduser()
        train, test = _torchvision_splits(root)
        source = f"torchvision download in {root}"
        headline = f"CIFAR-10 from torchvision's download in {root}"
    runtime.record_data_source(f"CIFAR-10: {source}")
    message = f"{headline}:\n  {len(train)} training and {len(test)} test images"
    if announce and message not in _announced:
        _announced.add(message)
        print(message)
    return CIFAR10Data(train, test, list(CLASSES), source)


# --- Transforms, splits, statistics ---------------------------------------------------------------


class WithTransform(Dataset):
    """``dataset`` with ``transform`` applied to each image: ``(transform(image), label)``."""

    def __init__(self, dataset: Dataset, transform: Callable):
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        image, label = self.dataset[index]
        return self.transform(image), label


def to_tensor_transform() -> v2.Compose:
    """PIL image (H, W, 3) of uint8 -> float tensor (3, H, W) in [0, 1]: ``x / 255``."""
    return v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.ToPureTensor()])


def normalising_transform(mean: Sequence[float] | torch.Tensor, std: Sequence[float] | torch.Tensor,
                          augment: Sequence[Callable] = ()) -> v2.Compose:
    """PIL image -> normalised tensor (3, H, W): ``(x / 255 - mean[c]) / std[c]`` per channel ``c``.

    ``augment`` (e.g. ``[v2.RandomHorizontalFlip()]``) runs first, on the image.
    """
    mean, std = torch.as_tensor(mean, dtype=torch.float32), torch.as_tensor(std, dtype=torch.float32)
    if mean.shape != (3,) or std.shape != (3,):
        raise ValueError(f"mean and std need one value per colour channel (shape (3,)), got shapes "
                         f"{tuple(mean.shape)} and {tuple(std.shape)}")
    if (std <= 0).any():
        raise ValueError(f"std must be positive, got {std.tolist()}")
    # The pixels are scaled to 0..1 before they are normalised: statistics of 0-255 pixels would
    # turn every image into values around -2. (The "not" also catches NaN.)
    if not (((mean >= 0) & (mean <= 1)).all() and (std <= 1).all()):
        raise ValueError(f"mean and std are statistics of pixels scaled to 0..1 (each mean in [0, 1], each "
                         f"std in (0, 1]), got mean {mean.tolist()} and std {std.tolist()}: for statistics "
                         f"of 0-255 pixels, divide them by 255")
    return v2.Compose([*augment, v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
                       v2.Normalize(mean.tolist(), std.tolist()), v2.ToPureTensor()])


def denormalise(images: torch.Tensor, mean: Sequence[float] | torch.Tensor,
                std: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """Undo the normalisation: ``x * std[c] + mean[c]``, for images (..., 3, H, W)."""
    mean = torch.as_tensor(mean, dtype=images.dtype, device=images.device)[:, None, None]
    std = torch.as_tensor(std, dtype=images.dtype, device=images.device)[:, None, None]
    return images * std + mean


def split_train_validation(dataset: Dataset, validation_size: int, seed: int = 0) -> tuple[Subset, Subset]:
    """Hold out ``validation_size`` examples of ``dataset``, chosen at random with ``seed``.

    Returns ``(train, validation)``, disjoint subsets that together cover ``dataset``; the same
    seed always gives the same split, whatever the global random state.
    """
    n = len(dataset)
    if not isinstance(validation_size, numbers.Integral) or isinstance(validation_size, bool):
        raise TypeError(f"validation_size is a number of examples and must be an integer, got "
                        f"{validation_size!r}: for a fraction of the dataset, pass e.g. "
                        f"int(0.1 * len(dataset))")
    if not 0 < validation_size < n:
        raise ValueError(f"validation_size must be between 1 and {n - 1} for a dataset of {n} examples, "
                         f"got {validation_size}")
    train, validation = random_split(dataset, [n - validation_size, validation_size],
                                     generator=torch.Generator().manual_seed(seed))
    return train, validation


# The chapter's two datasets for watching worker processes. They live in this module, not in a
# notebook cell, because a DataLoader worker on macOS or Windows, or on Linux from Python 3.14,
# starts as a fresh Python process ("spawn", "forkserver"): it can import a class from a module,
# but it cannot find one that a notebook cell defined.


class WhoLoadedMe(Dataset):
    """Example i is (i, the id of the worker process that loaded it), with
    id -1 for the main process."""

    def __init__(self, n: int = 12):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[int, int]:
        info = get_worker_info()  # None in the main process
        return i, -1 if info is None else info.id


class WorkerSeed(Dataset):
    """Example i is (worker id, the seed the loader gave that worker, its torch generator's
    seed); only for a loader with workers."""

    def __init__(self, n: int = 4):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[int, int, int]:
        info = get_worker_info()
        if info is None:
            raise RuntimeError("WorkerSeed reports a worker's seed: use it in a DataLoader with "
                               "num_workers=1 or more")
        return info.id, info.seed, torch.initial_seed()


def available_cpus() -> int:
    """CPU cores this process may use (its affinity, where the system tells)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def default_num_workers() -> int:
    """Worker processes for loading: one per usable core, at most 8 (beyond that it rarely helps)."""
    return min(8, available_cpus())


def make_loader(dataset: Dataset, batch_size: int, *, shuffle: bool, num_workers: int | None = None,
                device: torch.device | str | None = None, drop_last: bool = False) -> DataLoader:
    """A ``DataLoader`` with the course's defaults.

    ``num_workers`` defaults to ``default_num_workers()`` and is capped at the usable cores;
    ``pin_memory`` is on only for a CUDA ``device`` (from page-locked host memory the copy to the
    GPU is faster, and ``.to(device, non_blocking=True)`` returns before it is done, so the CPU
    goes on queuing work instead of waiting; elsewhere pinning would only warn). No
    generator is given to the loader: shuffling draws from PyTorch's global generator, whose
    state ``helpers.training`` checkpoints, so that a resumed run shuffles as an uninterrupted one.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    workers = default_num_workers() if num_workers is None else num_workers
    if workers < 0:
        raise ValueError(f"num_workers must be 0 or more, got {num_workers}")
    workers = min(workers, available_cpus())  # more would only compete for the same cores (and warn)
    pin = device is not None and torch.device(device).type == "cuda"
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=workers,
                      pin_memory=pin, drop_last=drop_last)


def channel_mean_std(dataset: Dataset, batch_size: int = 500,
                     num_workers: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and standard deviation over every pixel of every image of ``dataset``.

    ``dataset`` yields ``(image, label)`` with images ``(C, H, W)`` as float tensors.
    ``mean[c] = sum(x[:, c]) / M`` and ``std[c] = sqrt(sum(x[:, c]**2) / M - mean[c]**2)``, with
    ``M = N * H * W`` (the population standard deviation), accumulated in float64 batch by batch
    so that the whole dataset never has to fit in memory. Returns two float32 tensors (C,).
    """
    if len(dataset) == 0:
        raise ValueError("the dataset is empty")
    # Checked on the first image, before any batch: a PIL image would fail inside the loader's
    # batching, with an error that does not say what to do.
    first = dataset[0][0]
    if not isinstance(first, torch.Tensor) or not torch.is_floating_point(first) or first.dim() != 3:
        got = (f"a {first.dtype} tensor of shape {tuple(first.shape)}" if isinstance(first, torch.Tensor)
               else f"a {type(first).__module__}.{type(first).__qualname__}")
        raise TypeError(f"expected images (C, H, W) as float tensors, got {got}: give the dataset a "
                        f"transform such as to_tensor_transform()")
    if first.shape[0] not in (1, 3):
        raise ValueError(f"expected images (C, H, W) with C = 1 or 3 colour channels, got shape "
                         f"{tuple(first.shape)}: for channels-last images (H, W, C), use "
                         f"image.permute(2, 0, 1)")
    total = total_squares = None
    count = 0
    for images, _ in make_loader(dataset, batch_size, shuffle=False, num_workers=num_workers):
        images = images.double()
        batch_sum, batch_squares = images.sum(dim=(0, 2, 3)), images.square().sum(dim=(0, 2, 3))
        total = batch_sum if total is None else total + batch_sum
        total_squares = batch_squares if total_squares is None else total_squares + batch_squares
        count += images.numel() // images.shape[1]
    mean = total / count
    std = (total_squares / count - mean.square()).clamp_min(0).sqrt()
    return mean.float(), std.float()


# --- Everything a chapter that trains needs ---------------------------------------------------------


@dataclass
class CIFAR10Loaders:
    """Training, validation and test loaders of normalised CIFAR-10, and what they were built from."""

    train: DataLoader
    validation: DataLoader
    test: DataLoader
    classes: list[str]
    mean: torch.Tensor  # (3,), from the training part only
    std: torch.Tensor
    source: str


def cifar10_loaders(batch_size: int = 64, *, validation_size: int | None = None, seed: int = 0,
                    num_workers: int | None = None, device: torch.device | str | None = None,
                    augment: Sequence[Callable] = (),
                    image_folder: str | Path | None = None) -> CIFAR10Loaders:
    """Load CIFAR-10 (``load_cifar10``), hold out a validation split, normalise, and batch.

    ``validation_size`` defaults to 5000 images (500 in quick mode), held out of the training
    split with ``seed``. The per-channel mean and std are computed on the remaining training
    images only, so nothing about the validation or test images leaks into training.
    ``augment`` transforms apply to the training images only, to the PIL image before it is
    normalised (so the padding of ``v2.RandomCrop`` is black). The training loader shuffles;
    validation and test loaders keep their order.
    """
    data = load_cifar10(image_folder)
    if validation_size is None:
        validation_size = runtime.pick(5000, 500)
        if validation_size >= len(data.train):  # a small image folder, say
            mode = " in quick mode" if runtime.quick_mode() else ""
            raise ValueError(f"validation_size was not given, and its default{mode}, {validation_size}, "
                             f"leaves no training images of the {len(data.train)}: pass a validation_size "
                             f"between 1 and {len(data.train) - 1}")
    train_part, validation_part = split_train_validation(data.train, validation_size, seed)
    mean, std = channel_mean_std(WithTransform(train_part, to_tensor_transform()), num_workers=num_workers)
    plain = normalising_transform(mean, std)
    return CIFAR10Loaders(
        train=make_loader(WithTransform(train_part, normalising_transform(mean, std, augment)), batch_size,
                          shuffle=True, num_workers=num_workers, device=device),
        validation=make_loader(WithTransform(validation_part, plain), batch_size, shuffle=False,
                               num_workers=num_workers, device=device),
        test=make_loader(WithTransform(data.test, plain), batch_size, shuffle=False,
                         num_workers=num_workers, device=device),
        classes=data.classes, mean=mean, std=std, source=data.source)


# --- Looking at images --------------------------------------------------------------------------------


def plot_image_grid(images, labels: Sequence[int], classes: Sequence[str], *,
                    predictions: Sequence[int] | None = None, mean=None, std=None, columns: int = 8,
                    size: float = 1.3):
    """Show images in a grid, each titled with its class name; returns the figure.

    ``images``: a tensor (N, 3, H, W) (normalised ones are undone with ``mean`` and ``std``) or a
    list of PIL images. With ``predictions``, titles read "true -> predicted", red when they differ.
    """
    if isinstance(images, torch.Tensor):
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape (N, 3, H, W), got {tuple(images.shape)}")
        if mean is not None and std is not None:
            images = denormalise(images, mean, std)
        pictures = [img.permute(1, 2, 0).clamp(0, 1).cpu().numpy() for img in images]
    else:
        pictures = [np.asarray(img) for img in images]
    if len(pictures) != len(labels):
        raise ValueError(f"{len(pictures)} images but {len(labels)} labels")
    if predictions is not None and len(predictions) != len(labels):
        raise ValueError(f"{len(labels)} labels but {len(predictions)} predictions")
    for name, values in (("labels", labels), ("predictions", () if predictions is None else predictions)):
        outside = [int(value) for value in values if not 0 <= int(value) < len(classes)]
        if outside:  # a negative one would quietly pick a class from the end of the names
            raise ValueError(f"{name} holds the class index {outside[0]}, outside 0..{len(classes) - 1}: "
                             f"there are {len(classes)} class names, and labels are indices into them")
    rows = math.ceil(len(pictures) / columns)
    title_height = 0.25 if predictions is None else 0.5  # "true\n-> predicted" takes two lines
    fig, axes = plt.subplots(rows, columns, figsize=(size * columns, (size + title_height) * rows),
                             squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= len(pictures):
            continue
        ax.imshow(pictures[i], interpolation="nearest")
        title, colour = classes[int(labels[i])], "black"
        if predictions is not None:
            title += f"\n-> {classes[int(predictions[i])]}"
            colour = "black" if int(predictions[i]) == int(labels[i]) else "tab:red"
        ax.set_title(title, fontsize=10, color=colour)
    fig.tight_layout()
    return fig
