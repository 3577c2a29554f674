"""helpers.data: the three sources of CIFAR-10, their errors, splits, statistics and loaders."""

import os
import pickle
import re
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
import torchvision.datasets.cifar as tv_cifar
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from torch.utils.data import DataLoader, RandomSampler, SequentialSampler, TensorDataset

from helpers import data, runtime
from helpers.data import (CLASSES, DataSourceError, StandInCIFAR10, WithTransform, channel_mean_std,
                          cifar10_loaders, load_cifar10, make_loader, normalising_transform,
                          split_train_validation, to_tensor_transform)
from helpers.exercises import FAILED, PASSED, judge_answer


def make_tree(root: Path, per_class: int = 2, classes=CLASSES, size=(32, 32), fmt: str = "png",
              splits=("train", "test")) -> Path:
    """An image-folder tree like CIFAR-10's: root/<split>/<class>/<n>.<fmt>, each class its own colour."""
    for split in splits:
        for k, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                colour = (25 * k, 255 - 25 * k, (40 * i) % 256)
                Image.new("RGB", size, colour).save(folder / f"{i}.{fmt}")
    return root


@pytest.fixture(autouse=True)
def fresh_state(monkeypatch):
    """Each test starts with no announcement made, no data source recorded and no $CIFAR10_JPEG_DIR."""
    monkeypatch.setattr(data, "_announced", set())
    monkeypatch.setattr(runtime, "_data_sources", [])
    monkeypatch.delenv(data.JPEG_DIR_ENV, raising=False)


@pytest.fixture
def full_mode(monkeypatch):
    monkeypatch.setenv(runtime.QUICK_ENV, "0")


# --- The image-folder source ----------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["png", "jpg"])
def test_an_image_folder_tree_is_read_with_cifar10_class_order(tmp_path, fmt, capsys):
    make_tree(tmp_path, per_class=3, fmt=fmt)
    cifar = load_cifar10(tmp_path)
    assert (len(cifar.train), len(cifar.test)) == (30, 30)
    assert cifar.classes == list(CLASSES) and cifar.train.classes == list(CLASSES)
    image, label = cifar.train[3 * 4]  # sorted folders: index 12 is the first "deer" image
    assert isinstance(image, Image.Image) and image.size == (32, 32) and image.mode == "RGB"
    assert label == CLASSES.index("deer")
    assert capsys.readouterr().out == f"CIFAR-10 from the image folder {tmp_path}:\n  30 training and 30 test images\n"
    assert runtime.run_facts()["data_source"] == f"CIFAR-10: image folder {tmp_path}"


def test_the_source_is_announced_once_per_process(tmp_path, capsys):
    make_tree(tmp_path)
    load_cifar10(tmp_path)
    load_cifar10(tmp_path)
    assert capsys.readouterr().out.count("CIFAR-10 from the image folder") == 1


def test_the_environment_variable_gives_the_folder_in_full_mode(tmp_path, monkeypatch, full_mode, capsys):
    monkeypatch.setattr(data, "IMAGES_PER_CLASS", {"train": 2, "test": 2})  # a complete copy, in small
    make_tree(tmp_path / "mirror")
    monkeypatch.setenv(data.JPEG_DIR_ENV, str(tmp_path / "mirror"))
    cifar = load_cifar10()
    assert cifar.source == "image folder mirror (from $CIFAR10_JPEG_DIR)"
    assert "CIFAR-10 from the image folder mirror (from $CIFAR10_JPEG_DIR):\n  20 training" in capsys.readouterr().out
    assert str(tmp_path) not in cifar.source  # the machine's path stays out of the book


def test_quick_mode_uses_the_stand_in_even_when_the_variable_is_set(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(runtime.QUICK_ENV, "1")
    monkeypatch.setenv(data.JPEG_DIR_ENV, str(make_tree(tmp_path)))
    cifar = load_cifar10()
    assert isinstance(cifar.train, StandInCIFAR10)
    assert "STAND-IN for CIFAR-10" in capsys.readouterr().out
    assert runtime.run_facts()["data_source"] == "CIFAR-10: generated stand-in (quick mode)"


@pytest.mark.parametrize("damage, message", [
    (lambda root: None, "does not exist"),
    (lambda root: make_tree(root, splits=("train",)), "has no test/ folder (its folders: train)"),
    (lambda root: make_tree(root, classes=CLASSES[:8]), "missing ship, truck"),
    (lambda root: (make_tree(root), (root / "train" / "Cat").mkdir()), "unexpected Cat"),
    (lambda root: make_tree(root, size=(64, 48)), "is 64x48 pixels; CIFAR-10 images are 32x32"),
    (lambda root: (make_tree(root), [p.unlink() for p in (root / "test" / "frog").iterdir()]),
     "test/frog (given as image_folder) holds no .png, .jpg or .jpeg images (it holds no files)"),
    (lambda root: make_tree(root, fmt="webp"),
     "holds no .png, .jpg or .jpeg images (it holds only .webp files): only those files are read"),
    (lambda root: (make_tree(root), (root / "train" / "cat" / "0.png").write_bytes(b"not a png")),
     "0.png (given as image_folder) is not a readable image"),
])
def test_a_broken_image_folder_gets_a_clear_error(tmp_path, damage, message):
    root = tmp_path / "cifar"
    damage(root)
    with pytest.raises(DataSourceError, match=None) as error:
        load_cifar10(root)
    assert message in str(error.value)


def _truncate(path: Path) -> None:
    """Cut an image file short, as an interrupted copy does (noise, so that little of it is header)."""
    noise = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("damage, message", [
    (_truncate, r"is not a readable image \(.*truncated.*\): the file is damaged, often by a copy cut "
                r"short; copy the folder again \(or unpack the archive again\)$"),
    (lambda path: path.write_bytes(b"not a jpeg"),
     r"is not a readable image \(no image format recognised\): the file is damaged"),
    (lambda path: Image.new("RGB", (64, 64)).save(path), "is 64x64 pixels; CIFAR-10 images are 32x32"),
], ids=["truncated", "not an image", "wrong size"])
@pytest.mark.parametrize("split, workers", [("train", 0), ("test", 0), ("test", 1)])
def test_a_damaged_image_deep_in_the_tree_is_named_when_it_is_loaded(tmp_path, damage, message, split,
                                                                      workers):
    # Only the first image of each class is opened before loading; the others are checked as they
    # are read, and the error must still name the file, also when a worker process read it.
    make_tree(tmp_path, per_class=3, fmt="jpg")
    damaged = tmp_path / split / "dog" / "2.jpg"
    damage(damaged)
    with pytest.raises(DataSourceError) as error:
        loaders = cifar10_loaders(8, validation_size=6, image_folder=tmp_path, num_workers=workers)
        for loader in (loaders.train, loaders.validation, loaders.test):
            for _ in loader:
                pass
    # From a worker, the message also holds the worker's traceback, after a first line of its own.
    named = re.escape(f"{damaged} (given as image_folder) ") + message
    assert re.search(named, str(error.value), flags=re.IGNORECASE | re.MULTILINE), str(error.value)


@pytest.mark.parametrize("through_variable", [False, True])
def test_full_mode_refuses_a_partial_copy_naming_the_folder_and_the_counts(tmp_path, monkeypatch, full_mode,
                                                                           through_variable):
    make_tree(tmp_path / "cifar", per_class=3)
    if through_variable:
        monkeypatch.setenv(data.JPEG_DIR_ENV, str(tmp_path / "cifar"))
    with pytest.raises(DataSourceError) as error:
        load_cifar10() if through_variable else load_cifar10(tmp_path / "cifar")
    hint = "from $CIFAR10_JPEG_DIR" if through_variable else "given as image_folder"
    assert str(error.value).startswith(
        f"{tmp_path / 'cifar' / 'train' / 'airplane'} ({hint}) holds 3 images, but every class folder of "
        f"CIFAR-10's train/ split holds 5,000: copy the folder again in full (or unpack the archive again)")


def test_full_mode_finds_the_one_class_folder_cut_short(tmp_path, monkeypatch, full_mode):
    monkeypatch.setattr(data, "IMAGES_PER_CLASS", {"train": 3, "test": 3})
    make_tree(tmp_path, per_class=3)
    (tmp_path / "test" / "ship" / "2.png").unlink()
    with pytest.raises(DataSourceError, match=r"test/ship \(given as image_folder\) holds 2 images, but every "
                                              r"class folder of CIFAR-10's test/ split holds 3"):
        load_cifar10(tmp_path)


def test_quick_mode_accepts_a_small_copy_but_not_unequal_classes(tmp_path):
    make_tree(tmp_path, per_class=3)
    assert len(load_cifar10(tmp_path, announce=False).train) == 30
    (tmp_path / "train" / "horse" / "2.png").unlink()
    with pytest.raises(DataSourceError, match=r"the class folders of .*train \(given as image_folder\) hold "
                                              r"different numbers of images \(airplane 3, .* horse 2, ship 3, "
                                              r"truck 3\); .* the copy is incomplete"):
        load_cifar10(tmp_path)


def test_only_png_and_jpeg_files_are_read_and_counted_without_opening_them(tmp_path, monkeypatch):
    make_tree(tmp_path, per_class=2)
    for folder in (tmp_path / "train").iterdir():
        Image.new("RGB", (32, 32)).save(folder / "extra.webp")  # not read, not counted
        (folder / "notes.txt").write_text("not an image")
    opened = []
    real_open = data.Image.open
    monkeypatch.setattr(data.Image, "open", lambda *args, **kwargs: opened.append(args[0]) or real_open(*args, **kwargs))
    cifar = load_cifar10(tmp_path, announce=False)
    assert len(opened) == 20  # the first image of each class folder, for its size
    assert len(cifar.train) == 20 and not any(path.endswith(".webp") for path, _ in cifar.train.samples)


def test_macos_metadata_files_are_neither_loaded_nor_counted(tmp_path, monkeypatch, full_mode):
    # Finder leaves "._<name>" next to each file on some disks: no image, though it ends in .png.
    monkeypatch.setattr(data, "IMAGES_PER_CLASS", {"train": 2, "test": 2})
    make_tree(tmp_path, per_class=2)
    for path in list((tmp_path / "train").glob("*/*.png")):
        (path.parent / f"._{path.name}").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    cifar = load_cifar10(tmp_path, announce=False)
    assert len(cifar.train) == 20 and not any("._" in path for path, _ in cifar.train.samples)
    for folder in (tmp_path / "test").iterdir():
        [path.unlink() for path in folder.iterdir()]
        (folder / "._0.png").write_bytes(b"AppleDouble")
    with pytest.raises(DataSourceError, match=r"holds no \.png, \.jpg or \.jpeg images \(it holds only "
                                              r"\._\* \(macOS metadata\) files\)"):
        load_cifar10(tmp_path)


def test_classes_directly_under_the_root_are_a_wrong_layout(tmp_path):
    make_tree(tmp_path, splits=("flat",))
    flat = tmp_path / "flat"
    with pytest.raises(DataSourceError, match="has no train/ folder .*airplane, automobile.*point it at the folder"):
        load_cifar10(flat)


def test_a_torchvision_download_folder_is_told_apart(tmp_path):
    (tmp_path / "cifar-10-batches-py").mkdir()
    with pytest.raises(DataSourceError, match="torchvision's download .*load_cifar10\\(root="):
        load_cifar10(tmp_path)


def test_the_variable_pointing_nowhere_is_an_error_not_a_fallback(tmp_path, monkeypatch, full_mode):
    monkeypatch.setenv(data.JPEG_DIR_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(DataSourceError, match=r"nowhere \(from \$CIFAR10_JPEG_DIR\) does not exist"):
        load_cifar10()


# --- torchvision's download, without network ----------------------------------------------------------


def _fake_download(calls):
    """Stands in for torchvision's download: writes tiny CIFAR-10 batch files as the real archive has."""
    def download_and_extract_archive(url, download_root, filename=None, md5=None):
        calls.append((url, download_root))
        folder = Path(download_root) / "cifar-10-batches-py"
        folder.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            entry = {"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), "labels": [0, 1, 2, 3]}
            (folder / name).write_bytes(pickle.dumps(entry))
        (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": list(CLASSES)}))
    return download_and_extract_archive


def test_without_a_folder_full_mode_downloads_with_torchvision(tmp_path, monkeypatch, full_mode, capsys):
    calls = []
    monkeypatch.setattr(tv_cifar, "download_and_extract_archive", _fake_download(calls))
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda path, md5=None: os.path.isfile(path))
    cifar = load_cifar10(root=tmp_path)
    assert calls == [("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", str(tmp_path))]
    assert (len(cifar.train), len(cifar.test)) == (20, 4)
    image, label = cifar.train[1]
    assert image.size == (32, 32) and label == 1
    assert cifar.source == f"torchvision download in {tmp_path}"
    assert "CIFAR-10 from torchvision's download in" in capsys.readouterr().out
    assert runtime.run_facts()["data_source"].startswith("CIFAR-10: torchvision download")


def test_full_mode_without_network_or_folder_says_how_to_provide_the_data(tmp_path, monkeypatch, full_mode):
    def no_network(*args, **kwargs):
        raise URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(tv_cifar, "download_and_extract_archive", no_network)
    with pytest.raises(DataSourceError) as error:
        load_cifar10(root=tmp_path)
    message = str(error.value)
    for needed in ("could not be downloaded", "internet", "CIFAR10_JPEG_DIR", "train/<class>/*.png",
                   "COURSE_QUICK=1"):
        assert needed in message
    assert runtime.run_facts()["data_source"] == "none"
    assert "certificates" not in message


def test_a_download_refused_for_want_of_certificates_says_how_to_install_them(tmp_path, monkeypatch,
                                                                             full_mode):
    def no_certificates(*args, **kwargs):
        raise URLError("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: unable to get local "
                       "issuer certificate (_ssl.c:1000)")

    monkeypatch.setattr(tv_cifar, "download_and_extract_archive", no_certificates)
    with pytest.raises(DataSourceError) as error:
        load_cifar10(root=tmp_path)
    assert "Install Certificates.command" in str(error.value)
    assert "CIFAR10_JPEG_DIR" in str(error.value)  # the other ways stay on offer


# --- The stand-in -------------------------------------------------------------------------------------------


def test_the_stand_in_has_cifar10_shapes_classes_and_balance():
    standin = StandInCIFAR10(200, seed=3)
    assert standin.data.shape == (200, 32, 32, 3) and standin.data.dtype == np.uint8
    assert standin.classes == list(CLASSES)
    assert np.bincount(standin.targets).tolist() == [20] * 10
    image, label = standin[0]
    assert isinstance(image, Image.Image) and image.size == (32, 32)
    np.testing.assert_array_equal(StandInCIFAR10(200, seed=3).data, standin.data)
    assert not np.array_equal(StandInCIFAR10(200, seed=4).data, standin.data)


def test_the_stand_in_is_learnable_but_not_trivial():
    # Nearest class mean on raw pixels: far above chance (10%), below perfect.
    train, test = StandInCIFAR10(1000, seed=0), StandInCIFAR10(300, seed=1)
    x, y = torch.tensor(train.data).float().flatten(1), torch.tensor(train.targets)
    centroids = torch.stack([x[y == k].mean(0) for k in range(10)])
    test_x = torch.tensor(test.data).float().flatten(1)
    accuracy = (torch.cdist(test_x, centroids).argmin(1) == torch.tensor(test.targets)).float().mean()
    assert 0.5 < accuracy < 0.99


def test_stand_in_rejects_an_empty_size():
    with pytest.raises(ValueError, match="at least 1"):
        StandInCIFAR10(0)


# --- Splits, statistics, transforms, loaders ------------------------------------------------------------


def test_the_validation_split_is_disjoint_complete_and_seeded():
    dataset = TensorDataset(torch.arange(100))
    train, validation = split_train_validation(dataset, 20, seed=5)
    assert (len(train), len(validation)) == (80, 20)
    assert sorted(train.indices + validation.indices) == list(range(100))
    torch.manual_seed(123)  # the global generator does not matter
    assert split_train_validation(dataset, 20, seed=5)[1].indices == validation.indices
    assert split_train_validation(dataset, 20, seed=6)[1].indices != validation.indices


@pytest.mark.parametrize("size", [0, 100, -1])
def test_a_validation_size_that_leaves_nothing_is_refused(size):
    with pytest.raises(ValueError, match="validation_size must be between 1 and 99"):
        split_train_validation(TensorDataset(torch.arange(100)), size)


@pytest.mark.parametrize("size", [0.1, 10.0, None, True])
def test_a_validation_size_that_is_not_an_integer_is_refused(size):
    message = (r"validation_size is a number of examples and must be an integer, got "
               rf"{re.escape(repr(size))}: for a fraction of the dataset, pass e\.g\. "
               r"int\(0\.1 \* len\(dataset\)\)")
    with pytest.raises(TypeError, match=message):
        split_train_validation(TensorDataset(torch.arange(100)), size)


def test_a_numpy_integer_validation_size_is_accepted():
    train, validation = split_train_validation(TensorDataset(torch.arange(100)), np.int64(20))
    assert (len(train), len(validation)) == (80, 20)


def test_cifar10_loaders_refuses_a_fraction_and_says_when_the_default_does_not_fit(tmp_path, monkeypatch):
    monkeypatch.setenv(runtime.QUICK_ENV, "1")
    make_tree(tmp_path, per_class=4)
    with pytest.raises(TypeError, match=r"must be an integer, got 0\.1: .*int\(0\.1 \* len\(dataset\)\)"):
        cifar10_loaders(8, validation_size=0.1, image_folder=tmp_path, num_workers=0)
    message = (r"validation_size was not given, and its default in quick mode, 500, leaves no training "
               r"images of the 40: pass a validation_size between 1 and 39")
    with pytest.raises(ValueError, match=message):
        cifar10_loaders(8, image_folder=tmp_path, num_workers=0)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 12), height=st.integers(1, 5), batch_size=st.integers(1, 5), seed=st.integers(0, 99))
def test_channel_mean_std_streamed_equals_torch_std_mean(n, height, batch_size, seed):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, height, height + 1, generator=g) * torch.tensor([1.0, 0.5, 0.2])[:, None, None]
    mean, std = channel_mean_std(TensorDataset(images, torch.zeros(n)), batch_size=batch_size, num_workers=0)
    expected_std, expected_mean = torch.std_mean(images.double(), dim=(0, 2, 3), correction=0)
    torch.testing.assert_close(mean, expected_mean.float())
    torch.testing.assert_close(std, expected_std.float(), atol=1e-5, rtol=1e-4)


def test_channel_mean_std_wants_float_images():
    pil_like = TensorDataset(torch.zeros(4, 3, 2, 2, dtype=torch.uint8), torch.zeros(4))
    with pytest.raises(TypeError, match=r"got a torch.uint8 tensor of shape \(3, 2, 2\): .*to_tensor_transform"):
        channel_mean_std(pil_like, num_workers=0)
    # PIL images, as every dataset of load_cifar10 gives, are told the same (not the loader's error).
    with pytest.raises(TypeError, match=r"got a PIL.Image.Image: give the dataset a transform such as "
                                        r"to_tensor_transform\(\)"):
        channel_mean_std(StandInCIFAR10(10), num_workers=0)
    with pytest.raises(ValueError, match="the dataset is empty"):
        channel_mean_std(TensorDataset(torch.zeros(0, 3, 2, 2), torch.zeros(0)), num_workers=0)


def test_channel_mean_std_refuses_channels_last_images():
    with pytest.raises(ValueError, match=r"expected images \(C, H, W\) with C = 1 or 3 colour channels, got "
                                         r"shape \(32, 32, 3\): for channels-last images \(H, W, C\), use "
                                         r"image\.permute\(2, 0, 1\)"):
        channel_mean_std(TensorDataset(torch.rand(4, 32, 32, 3), torch.zeros(4)), num_workers=0)
    mean, std = channel_mean_std(TensorDataset(torch.rand(4, 1, 5, 5), torch.zeros(4)), num_workers=0)
    assert mean.shape == std.shape == (1,)  # grey images have one channel


def test_normalising_transform_computes_the_formula():
    image = Image.fromarray(np.arange(3 * 4 * 2, dtype=np.uint8).reshape(4, 2, 3) * 10)
    mean, std = torch.tensor([0.1, 0.2, 0.3]), torch.tensor([0.5, 0.25, 0.2])
    got = normalising_transform(mean, std)(image)
    raw = torch.tensor(np.asarray(image)).permute(2, 0, 1).float()
    torch.testing.assert_close(got, (raw / 255 - mean[:, None, None]) / std[:, None, None])
    assert type(got) is torch.Tensor  # a plain tensor, not a tv_tensors.Image
    torch.testing.assert_close(data.denormalise(got, mean, std), raw / 255)


@pytest.mark.parametrize("mean, std, message", [([0.5, 0.5], [0.2] * 3, "one value per colour channel"),
                                                ([0.5] * 3, [0.2, 0.0, 0.2], "std must be positive")])
def test_normalising_transform_rejects_bad_statistics(mean, std, message):
    with pytest.raises(ValueError, match=message):
        normalising_transform(mean, std)


@pytest.mark.parametrize("mean, std", [([125.3, 123.0, 113.9], [63.0, 62.1, 66.7]),  # CIFAR-10's, in 0-255
                                       ([0.49, 0.48, 0.45], [63.0, 62.1, 66.7]),
                                       ([0.49, -0.1, 0.45], [0.25] * 3),
                                       ([0.49, float("nan"), 0.45], [0.25] * 3)])
def test_normalising_transform_rejects_statistics_not_of_pixels_scaled_to_0_1(mean, std):
    message = (r"mean and std are statistics of pixels scaled to 0\.\.1 \(each mean in \[0, 1\], each std in "
               r"\(0, 1\]\), got mean .*: for statistics of 0-255 pixels, divide them by 255")
    with pytest.raises(ValueError, match=message):
        normalising_transform(mean, std)
    normalising_transform([0.0, 0.5, 1.0], [1.0, 0.5, 0.01])  # the limits are accepted


def test_make_loader_pins_memory_only_for_cuda_and_caps_workers():
    dataset = TensorDataset(torch.arange(10))
    assert make_loader(dataset, 4, shuffle=False, device="cpu").pin_memory is False
    assert make_loader(dataset, 4, shuffle=False, device="cuda").pin_memory is True
    assert make_loader(dataset, 4, shuffle=False, num_workers=10_000).num_workers == data.available_cpus()
    assert make_loader(dataset, 4, shuffle=False).num_workers == min(8, data.available_cpus())
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        make_loader(dataset, 0, shuffle=False)


def test_loaders_with_workers_give_every_example_once(tmp_path):
    make_tree(tmp_path, per_class=3)
    dataset = WithTransform(load_cifar10(tmp_path, announce=False).train, to_tensor_transform())
    labels = torch.cat([y for _, y in make_loader(dataset, 4, shuffle=True, num_workers=2)])
    assert sorted(labels.tolist()) == sorted(y for _, y in dataset)


def test_cifar10_loaders_end_to_end_on_an_image_folder(tmp_path):
    make_tree(tmp_path, per_class=4)
    loaders = cifar10_loaders(8, validation_size=10, image_folder=tmp_path, num_workers=0)
    images, labels = next(iter(loaders.train))
    assert images.shape == (8, 3, 32, 32) and images.dtype == torch.float32 and labels.dtype == torch.int64
    assert [len(loaders.train.dataset), len(loaders.validation.dataset), len(loaders.test.dataset)] == [30, 10, 40]
    # The statistics come from the 30 training images: normalised with them, those have mean 0, std 1.
    train_images = torch.stack([x for x, _ in loaders.train.dataset])
    std, mean = torch.std_mean(train_images, dim=(0, 2, 3), correction=0)
    torch.testing.assert_close(mean, torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(std, torch.ones(3), atol=1e-4, rtol=0)


def test_plot_image_grid_titles_and_marks_mistakes():
    import matplotlib.pyplot as plt

    images = torch.rand(3, 3, 32, 32)
    figure = data.plot_image_grid(images, [0, 1, 2], CLASSES, predictions=[0, 5, 2], columns=2)
    titles = [(ax.get_title(), ax.title.get_color()) for ax in figure.axes if ax.get_title()]
    assert titles[0][0] == "airplane\n-> airplane" and titles[1] == ("automobile\n-> dog", "tab:red")
    plt.close(figure)
    with pytest.raises(ValueError, match="3 images but 2 labels"):
        data.plot_image_grid(images, [0, 1], CLASSES)
    with pytest.raises(ValueError, match="3 labels but 2 predictions"):
        data.plot_image_grid(images, [0, 1, 2], CLASSES, predictions=[0, 1])


@pytest.mark.parametrize("labels, predictions, message", [
    ([0, 1, 10], None, r"labels holds the class index 10, outside 0\.\.9: there are 10 class names"),
    ([0, -1, 2], None, r"labels holds the class index -1, outside 0\.\.9"),  # not quietly "truck"
    (torch.tensor([0, 1, 2]), torch.tensor([0, 1, 12]), r"predictions holds the class index 12, outside 0\.\.9"),
])
def test_plot_image_grid_refuses_a_label_with_no_class_name(labels, predictions, message):
    import matplotlib.pyplot as plt

    figures = len(plt.get_fignums())
    with pytest.raises(ValueError, match=message):
        data.plot_image_grid(torch.rand(3, 3, 32, 32), labels, CLASSES, predictions=predictions)
    assert len(plt.get_fignums()) == figures  # refused before drawing anything


# --- The chapter's exercises: typical wrong answers get a precise verdict --------------------------------


def test_tensor_mean_std_exercise_names_the_usual_mistakes():
    def right(images):
        std, mean = torch.std_mean(images.float() / 255, dim=(0, 2, 3), correction=0)
        return mean, std

    def forgot_255(images):
        std, mean = torch.std_mean(images.float(), dim=(0, 2, 3), correction=0)
        return mean, std

    def sample_std(images):
        std, mean = torch.std_mean(images.float() / 255, dim=(0, 2, 3))
        return mean, std

    def per_image_std(images):
        x = images.float() / 255
        return x.mean(dim=(0, 2, 3)), x.std(dim=(2, 3), correction=0).mean(0)

    assert judge_answer("data.tensor_mean_std", right).status == PASSED
    for wrong, message in [(forgot_255, "item 0 \\(mean\\): expected .* raw 0-255 values: divide by 255"),
                           (sample_std, "item 1 \\(std\\): expected .*Bessel\'s correction"),
                           (per_image_std, "item 1 \\(std\\): expected .* average of each image\'s own std")]:
        verdict = judge_answer("data.tensor_mean_std", wrong)
        assert verdict.status == FAILED
        assert re.search(message, verdict.message), verdict.message
    verdict = judge_answer("data.tensor_mean_std", lambda images: images.float().mean())
    assert "expected a tuple of 2 items (mean, std), got tensor" in verdict.message


def test_batches_per_epoch_exercise_catches_forgetting_drop_last():
    def floor_always(num_samples, batch_size, drop_last=False):
        return num_samples // batch_size

    verdict = judge_answer("data.batches_per_epoch", floor_always)
    assert verdict.status == FAILED
    assert verdict.message.startswith("on 10 samples in batches of 4, expected 3, got 2")


# Found by mutation testing: each test below fails on a small, plausible change to the code.


@pytest.mark.parametrize("fmt", ["PNG", "JPG", "jpeg"])
def test_image_files_are_read_whatever_the_case_of_their_suffix(tmp_path, fmt):
    make_tree(tmp_path, per_class=2, fmt=fmt)
    assert len(load_cifar10(tmp_path, announce=False).train) == 20


def test_grayscale_image_files_are_read_as_rgb(tmp_path):
    make_tree(tmp_path, per_class=1)
    for path in tmp_path.glob("*/*/*.png"):
        Image.new("L", (32, 32), 77).save(path)
    image, _ = load_cifar10(tmp_path, announce=False).train[0]
    assert image.mode == "RGB"


def test_full_mode_refuses_a_class_folder_with_more_images_than_cifar10_has(tmp_path, monkeypatch, full_mode):
    monkeypatch.setattr(data, "IMAGES_PER_CLASS", {"train": 2, "test": 2})
    make_tree(tmp_path, per_class=2)
    Image.new("RGB", (32, 32)).save(tmp_path / "train" / "cat" / "copy.png")  # a merged second copy, say
    with pytest.raises(DataSourceError, match=r"train/cat \(given as image_folder\) holds 3 images, but every "
                                              r"class folder of CIFAR-10's train/ split holds 2"):
        load_cifar10(tmp_path)


def test_augmentation_runs_first_on_the_pil_image():
    seen = []
    transform = normalising_transform([0.5] * 3, [0.25] * 3, augment=[lambda image: seen.append(image) or image])
    transform(Image.new("RGB", (4, 4)))
    assert isinstance(seen[0], Image.Image)


def test_default_num_workers_is_one_per_core_up_to_eight(monkeypatch):
    monkeypatch.setattr(data, "available_cpus", lambda: 16)
    assert data.default_num_workers() == 8
    monkeypatch.setattr(data, "available_cpus", lambda: 3)
    assert data.default_num_workers() == 3


def test_make_loader_shuffles_drops_the_last_batch_and_refuses_negative_workers_as_asked():
    dataset = TensorDataset(torch.arange(10))
    assert len(make_loader(dataset, 4, shuffle=False, num_workers=0, drop_last=True)) == 2
    assert len(make_loader(dataset, 4, shuffle=False, num_workers=0)) == 3
    assert isinstance(make_loader(dataset, 4, shuffle=True, num_workers=0).sampler, RandomSampler)
    assert isinstance(make_loader(dataset, 4, shuffle=False, num_workers=0).sampler, SequentialSampler)
    with pytest.raises(ValueError, match="num_workers must be 0 or more, got -1"):
        make_loader(dataset, 4, shuffle=False, num_workers=-1)


def test_channel_mean_std_of_a_constant_channel_is_zero_not_nan():
    # E[x^2] - E[x]^2 comes out a hair below zero for some constants: the square root must not see it.
    images = torch.full((3, 3, 7, 7), 7 / 255)
    mean, std = channel_mean_std(TensorDataset(images, torch.zeros(3)), num_workers=0)
    torch.testing.assert_close(mean, torch.full((3,), 7 / 255))
    assert torch.equal(std, torch.zeros(3))


def test_only_the_training_loader_is_augmented_and_shuffled(tmp_path):
    make_tree(tmp_path, per_class=4)
    calls = []
    loaders = cifar10_loaders(8, validation_size=10, image_folder=tmp_path, num_workers=0,
                              augment=[lambda image: calls.append(1) or image])
    for loader in (loaders.validation, loaders.test):
        for _ in loader:
            pass
    assert calls == []
    for _ in loaders.train:
        pass
    assert len(calls) == 30
    assert isinstance(loaders.train.sampler, RandomSampler)
    assert isinstance(loaders.validation.sampler, SequentialSampler) and isinstance(loaders.test.sampler,
                                                                                     SequentialSampler)


def test_quick_mode_holds_out_500_images_by_default(monkeypatch):
    monkeypatch.setenv(runtime.QUICK_ENV, "1")
    loaders = cifar10_loaders(64, num_workers=0)
    assert (len(loaders.train.dataset), len(loaders.validation.dataset)) == (2000, 500)


def test_the_stand_in_shuffles_its_classes():
    assert data.StandInCIFAR10(40, seed=0).targets[:10] != list(range(10))


def test_the_worker_datasets_load_in_spawned_workers_as_on_macos_and_windows():
    # A worker started with "spawn" imports what it unpickles: a class from a notebook cell
    # would fail here, the module's classes load.
    from helpers.data import WhoLoadedMe, WorkerSeed

    assert [WhoLoadedMe(3)[i] for i in range(3)] == [(0, -1), (1, -1), (2, -1)]
    with pytest.raises(RuntimeError, match="num_workers=1 or more"):
        WorkerSeed()[0]
    loader = DataLoader(WorkerSeed(4), batch_size=1, num_workers=2, multiprocessing_context="spawn")
    ids, seeds, torch_seeds = (torch.cat(column) for column in zip(*loader))
    assert sorted(ids.tolist()) == [0, 0, 1, 1] and torch.equal(seeds, torch_seeds)
