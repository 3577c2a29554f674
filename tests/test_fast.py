"""helpers.fast: data on the device, GPU-style augmentation, ResNet9, timing, the ladder's steps.

There is no GPU in CI: these tests run every helper on the CPU with tiny sizes, including the code
path of the chapter's full run (compiled steps with a stand-in compiler backend), and check that
the steps that need CUDA are skipped with a reason rather than crashing.
"""

import logging
import math
import re
import subprocess
import sys
import warnings

import matplotlib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.data import Subset

from helpers import fast, runtime
from helpers.data import (CIFAR10Data, StandInCIFAR10, WithTransform, channel_mean_std, make_loader,
                          to_tensor_transform)
from helpers.exercises import FAILED, PASSED, judge_answer
from helpers.fast import (Autocast, DeviceLoader, DeviceTimer, FlipAndCrop, FlipAverage, ResNet9, Residual,
                          StepResult, benchmark_steps, bf16_compile_skip, captured_stderr, channel_stats,
                          cifar10_on_device, crop_at, cuda_only, dataset_to_tensors, describe_measurements,
                          normalise, plot_results, profile_steps, random_crop, random_flip, random_subset,
                          results_table, run_step, speedups, training_step)
from helpers.runtime import seed_everything
from helpers.training import SmallCNN

matplotlib.use("Agg")
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny():
    """192 training and 64 test images of the stand-in, as normalised tensors on the CPU."""
    images, labels = dataset_to_tensors(StandInCIFAR10(256, seed=0))
    mean, std = channel_stats(images[:192])
    x = normalise(images, mean, std)
    return x[:192], labels[:192], x[192:], labels[192:]


# --- Data ------------------------------------------------------------------------------------------------


def test_decoding_through_a_loader_gives_the_pixels_the_array_holds():
    standin = StandInCIFAR10(40, seed=3)
    direct, labels = dataset_to_tensors(standin)  # reads .data
    decoded, decoded_labels = dataset_to_tensors(Subset(standin, range(40)), batch_size=16, num_workers=0)
    assert direct.dtype == torch.uint8 and direct.shape == (40, 3, 32, 32)
    assert torch.equal(direct, decoded) and torch.equal(labels, decoded_labels)


def test_channel_stats_agree_with_the_data_chapter():
    standin = StandInCIFAR10(64, seed=1)
    images, _ = dataset_to_tensors(standin)
    mean, std = channel_stats(images)
    expected_mean, expected_std = channel_mean_std(WithTransform(standin, to_tensor_transform()), num_workers=0)
    torch.testing.assert_close(mean, expected_mean)
    torch.testing.assert_close(std, expected_std)
    with pytest.raises(TypeError, match="expected uint8 images"):
        channel_stats(images.float())


def test_channel_stats_is_the_population_standard_deviation():
    # Two pixels per channel, where dividing by N - 1 instead of N doubles the variance.
    images = torch.tensor([[[[0, 255]], [[51, 102]], [[255, 255]]]], dtype=torch.uint8)  # (1, 3, 1, 2)
    mean, std = channel_stats(images)
    torch.testing.assert_close(mean, torch.tensor([0.5, 0.3, 1.0]))
    torch.testing.assert_close(std, torch.tensor([0.5, 0.1, 0.0]), rtol=0, atol=1e-7)


def test_normalise_is_the_formula():
    images = torch.randint(0, 256, (3, 3, 4, 4), dtype=torch.uint8)
    mean, std = torch.tensor([0.4, 0.5, 0.6]), torch.tensor([0.2, 0.25, 0.3])
    expected = (images.float() / 255 - mean[:, None, None]) / std[:, None, None]
    torch.testing.assert_close(normalise(images, mean, std), expected)
    assert normalise(images, mean, std, torch.bfloat16).dtype == torch.bfloat16


@pytest.mark.parametrize("n, batch, drop_last, batches", [(10, 4, False, 3), (10, 4, True, 2), (8, 4, True, 2)])
def test_a_device_loader_serves_every_example_once_per_epoch(n, batch, drop_last, batches):
    images = torch.arange(n, dtype=torch.float32)[:, None, None, None].expand(n, 3, 2, 2).contiguous()
    loader = DeviceLoader(images, torch.arange(n), batch, shuffle=True, drop_last=drop_last)
    assert len(loader) == batches
    torch.manual_seed(0)
    epoch_1 = [(x, y) for x, y in loader]
    epoch_2 = [y for _, y in loader]
    seen = torch.cat([y for _, y in epoch_1])
    assert len(epoch_1) == batches and len(set(seen.tolist())) == len(seen) == min(n, batches * batch)
    for x, y in epoch_1:  # images and labels stay paired
        assert torch.equal(x[:, 0, 0, 0], y.float())
    assert not torch.equal(seen, torch.cat(epoch_2)[:len(seen)])  # a new order each epoch
    in_order = torch.cat([y for _, y in DeviceLoader(images, torch.arange(n), batch, shuffle=False)])
    assert torch.equal(in_order, torch.arange(n))


def test_a_device_loader_applies_its_augmentation_and_says_what_is_wrong():
    images = torch.zeros(6, 3, 4, 4)
    loader = DeviceLoader(images, torch.arange(6), 3, shuffle=False, augment=lambda x: x + 1)
    assert all((x == 1).all() for x, _ in loader)
    with pytest.raises(ValueError, match="6 images but 5 labels"):
        DeviceLoader(images, torch.arange(5), 2, shuffle=True)
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        DeviceLoader(images, torch.arange(6), 0, shuffle=True)
    with pytest.raises(ValueError, match="drop_last=True would give no batch"):
        DeviceLoader(images, torch.arange(6), 8, shuffle=True, drop_last=True)


# --- Augmentation --------------------------------------------------------------------------------------------


def _crops_one_by_one(images, padding, top, left):
    h, w = images.shape[-2:]
    padded = F.pad(images, (padding,) * 4, mode="reflect")
    return torch.stack([padded[i, :, t:t + h, l:l + w] for i, (t, l) in enumerate(zip(top.tolist(), left.tolist()))])


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 5), channels=st.integers(1, 3), height=st.integers(4, 9), width=st.integers(4, 9),
       padding=st.integers(0, 3), seed=st.integers(0, 10_000))
def test_crop_at_is_a_loop_of_slices(n, channels, height, width, padding, seed):
    padding = min(padding, height - 1, width - 1)
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, channels, height, width, generator=g)
    top = torch.randint(0, 2 * padding + 1, (n,), generator=g)
    left = torch.randint(0, 2 * padding + 1, (n,), generator=g)
    torch.testing.assert_close(crop_at(images, padding, top, left), _crops_one_by_one(images, padding, top, left))


def test_crop_at_on_images_that_are_not_square():
    # Rows and columns of different lengths: an implementation that swaps H and W cannot pass.
    images = torch.randn(3, 2, 6, 9)
    top, left = torch.tensor([0, 4, 2]), torch.tensor([3, 0, 4])
    out = crop_at(images, 2, top, left)
    assert out.shape == (3, 2, 6, 9)
    torch.testing.assert_close(out, _crops_one_by_one(images, 2, top, left))


def test_crop_keeps_the_memory_format_and_checks_its_offsets():
    images = torch.randn(4, 3, 8, 8)
    last = images.contiguous(memory_format=torch.channels_last)
    top = left = torch.tensor([0, 1, 2, 4])
    assert crop_at(last, 2, top, left).is_contiguous(memory_format=torch.channels_last)
    assert crop_at(images, 2, top, left).is_contiguous()
    assert random_crop(images, 2).shape == images.shape
    with pytest.raises(ValueError, match=r"offsets must lie in \[0, 4\]"):
        crop_at(images, 2, torch.tensor([0, 1, 2, 5]), left)
    with pytest.raises(ValueError, match="one offset per image"):
        crop_at(images, 2, top[:3], left)
    with pytest.raises(ValueError, match="padding must be between 0 and 7"):
        crop_at(images, 8, top, left)
    # Without padding the only window is the image itself; other offsets are still an error.
    zeros = torch.zeros(4, dtype=torch.int64)
    assert crop_at(images, 0, zeros, zeros) is images
    with pytest.raises(ValueError, match=r"offsets must lie in \[0, 0\]"):
        crop_at(images, 0, top, left)
    with pytest.raises(ValueError, match="one offset per image"):
        crop_at(images, 0, zeros[:3], zeros)


def test_random_flip_mirrors_some_images_and_leaves_the_others():
    torch.manual_seed(0)
    images = torch.randn(64, 3, 4, 4)
    flipped = random_flip(images)
    mirrored = [torch.equal(a, b.flip(2)) for a, b in zip(flipped, images)]
    kept = [torch.equal(a, b) for a, b in zip(flipped, images)]
    assert all(m or k for m, k in zip(mirrored, kept)) and 10 < sum(mirrored) < 54
    assert torch.equal(random_flip(images, p=0.0), images)
    assert torch.equal(random_flip(images, p=1.0), images.flip(3))
    out = FlipAndCrop(2)(images)
    assert out.shape == images.shape and "padding=2" in repr(FlipAndCrop(2))


# --- Models -------------------------------------------------------------------------------------------------------


def test_resnet9_shapes_parameters_and_errors():
    model = ResNet9()
    assert sum(p.numel() for p in model.parameters()) == 6_573_120
    narrow = ResNet9(widths=(4, 8, 8, 16), logit_scale=1.0)
    assert narrow(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    scaled = ResNet9(widths=(4, 8, 8, 16), logit_scale=0.125)
    scaled.load_state_dict(narrow.state_dict())
    x = torch.randn(2, 3, 32, 32)
    narrow.eval(), scaled.eval()
    torch.testing.assert_close(scaled(x), narrow(x) * 0.125)
    with pytest.raises(ValueError, match=r"RGB images \(N, 3, H, W\), got \(3, 32, 32\)"):
        narrow(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match="four positive channel counts"):
        ResNet9(widths=(4, 8, 16))


def test_which_ops_autocast_puts_in_bf16_on_the_cpu():
    """What Autocast's docstring says of the CPU: the convolution runs in bf16, and so do the ops
    that are on no list (ReLU, pooling, batch norm, additions); sum and softmax stay bf16 there
    (on CUDA they are on the float32 list); the loss outside sees float32 logits."""
    x = torch.randn(2, 3, 8, 8)
    conv, norm = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = conv(x)
        outputs = [y, F.relu(y), F.max_pool2d(y, 2), norm(y), y + y, y.sum(), y.softmax(dim=1)]
    assert all(out.dtype == torch.bfloat16 for out in outputs), [out.dtype for out in outputs]
    assert norm.weight.dtype == torch.float32
    assert Autocast(SmallCNN())(torch.randn(2, 3, 32, 32)).dtype == torch.float32


def test_residual_autocast_and_flip_average():
    body = nn.Linear(5, 5)
    x = torch.randn(3, 5)
    torch.testing.assert_close(Residual(body)(x), x + body(x))
    model = SmallCNN()
    images = torch.randn(2, 3, 32, 32)
    out = Autocast(model)(images)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, model(images), atol=0.05, rtol=0.05)  # bf16 is close, not equal
    torch.testing.assert_close(FlipAverage(model)(images), (model(images) + model(images.flip(3))) / 2)


# --- Timing, stderr ---------------------------------------------------------------------------------------------


def test_device_timer_on_the_cpu_and_its_misuse():
    with DeviceTimer(CPU) as timer:
        sum(range(10_000))
    assert timer.seconds > 0 and not timer.uses_events
    assert DeviceTimer("cuda").uses_events  # constructing one needs no GPU
    with pytest.raises(RuntimeError, match="after the `with` block"):
        DeviceTimer("cuda").seconds


def test_benchmark_steps_times_each_step_after_the_warm_up(tiny):
    train_x, train_y, _, _ = tiny
    model = SmallCNN()
    loader = DeviceLoader(train_x, train_y, 32, shuffle=True)
    result = benchmark_steps(model, loader, nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=0.01),
                             CPU, warmup=2, steps=9)  # more steps than one epoch has: it wraps around
    assert len(result.step_seconds) == 9 and result.warmup_seconds > 0 and result.batch_size == 32
    assert result.images_per_second == pytest.approx(32 / result.median_seconds)
    with pytest.raises(ValueError, match="steps >= 1"):
        benchmark_steps(model, loader, nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=0.01),
                        CPU, steps=0)


def test_captured_stderr_collects_warnings_logs_prints_and_child_processes():
    logger = logging.getLogger("helpers-test-captured")
    handler = logging.StreamHandler(sys.stderr)
    logger.addHandler(handler)
    try:
        with captured_stderr() as text, warnings.catch_warnings():
            # As outside pytest, which records warnings itself: shown on sys.stderr when raised.
            warnings.simplefilter("always")
            warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: (
                sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line)))
            warnings.warn("a python warning", UserWarning)
            logger.warning("a log record")
            print("a print to stderr", file=sys.stderr)
            subprocess.run([sys.executable, "-c", "import os; os.write(2, b'a child process\\n')"], check=True)
    finally:
        logger.removeHandler(handler)
    for message in ("a python warning", "a log record", "a print to stderr", "a child process"):
        assert message in text.getvalue()
    assert handler.stream is sys.stderr  # put back


# --- The steps of the ladder --------------------------------------------------------------------------------------


def test_run_step_trains_measures_and_puts_the_initial_weights_back_after_the_warm_up(tiny, capsys):
    train_x, train_y, test_x, test_y = tiny
    train = DeviceLoader(train_x, train_y, 32, shuffle=True, drop_last=True)
    test = DeviceLoader(test_x, test_y, 64, shuffle=False)

    def trained(warmup_steps):
        seed_everything(0)
        model = SmallCNN()
        in_order = DeviceLoader(train_x, train_y, 32, shuffle=False, drop_last=True)  # draws no random numbers
        run_step("adam", model, in_order, test, device=CPU, epochs=2, warmup_steps=warmup_steps,
                 make_optimizer=lambda m: torch.optim.Adam(m.parameters(), 1e-3), verbose=False)
        return model

    seed_everything(0)
    result = run_step("adam", SmallCNN(), train, test, device=CPU, epochs=2,
                      make_optimizer=lambda m: torch.optim.Adam(m.parameters(), 1e-3))
    assert result.images == 2 * 6 * 32 and len(result.train_losses) == 2
    assert result.train_seconds > 0 and result.warmup_seconds > 0 and 0 <= result.test_accuracy <= 1
    assert result.images_per_second == pytest.approx(result.images / result.train_seconds)
    assert result.line() in capsys.readouterr().out
    # The warm-up leaves no trace in the weights or the optimizer: with or without it, training
    # ends at the same weights (given a loader that draws no random numbers during the warm-up).
    with_warmup, without = trained(3), trained(0)
    for a, b in zip(with_warmup.parameters(), without.parameters()):
        torch.testing.assert_close(a, b)


def test_run_step_steps_the_schedule_after_every_optimizer_step(tiny):
    train_x, train_y, test_x, test_y = tiny
    train = DeviceLoader(train_x, train_y, 64, shuffle=True, drop_last=True)
    test = DeviceLoader(test_x, test_y, 64, shuffle=False)
    seen = {}

    def schedule(optimizer, total_steps):
        seen["total"] = total_steps
        seen["optimizer"] = optimizer
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + step))

    result = run_step("sgd", ResNet9(widths=(4, 4, 8, 8)), train, test, device=CPU, epochs=2,
                      make_optimizer=lambda m: torch.optim.SGD(m.parameters(), lr=0.1), make_scheduler=schedule,
                      loss_fn=nn.CrossEntropyLoss(label_smoothing=0.2), verbose=False)
    assert seen["total"] == 2 * 3 and result.epochs == 2
    assert seen["optimizer"].param_groups[0]["lr"] == pytest.approx(0.1 / (1 + 6))


def test_steps_that_need_cuda_are_skipped_with_a_reason(tiny, capsys):
    train_x, train_y, test_x, test_y = tiny
    reason = cuda_only(CPU, "CUDA graphs")
    assert reason == "CUDA graphs needs a CUDA GPU, and this run is on cpu."
    assert cuda_only(torch.device("cuda"), "CUDA graphs") is None
    result = run_step("graphs", SmallCNN(), DeviceLoader(train_x, train_y, 64, shuffle=True), None, device=CPU,
                      epochs=3, make_optimizer=lambda m: torch.optim.SGD(m.parameters(), lr=0.1),
                      compile_mode="reduce-overhead", skip=reason)
    assert result.skipped == reason and math.isnan(result.train_seconds) and result.trained_model is None
    assert capsys.readouterr().out == f"graphs: skipped. {reason}\n"


def test_compiled_bf16_is_skipped_on_gpus_without_bf16_instructions(monkeypatch):
    monkeypatch.setattr(fast.runtime, "device_name", lambda device: "cuda (Tesla T4)")
    reason = bf16_compile_skip("cuda", "Compiling in bf16", capability=(7, 5))
    assert reason == ("Compiling in bf16 needs a GPU with bfloat16 instructions (compute capability 8.0 "
                      "or higher, from the A100 on), and this run is on cuda (Tesla T4), of compute "
                      "capability 7.5.")
    assert "GPU" in reason  # the chapter's table cell checks that every skip names the GPU
    assert bf16_compile_skip("cuda", "x", capability=(7, 0)) is not None  # the V100
    for capability in [(8, 0), (8, 6), (9, 0), (10, 0)]:  # A100, RTX 30xx, H100 and H200, B200
        assert bf16_compile_skip("cuda", "x", capability=capability) is None
    assert bf16_compile_skip(CPU, "x") is None  # no capability is asked for off CUDA


def test_the_compiled_steps_run_through_run_step(tiny, monkeypatch):
    """The full run's compiled steps, on the CPU: the same code path, with a compiler backend that
    needs no C++ or Triton compilation (AOTAutograd without Inductor), so that it takes seconds."""
    train_x, train_y, test_x, test_y = tiny
    real_compile = torch.compile
    modes = []

    def stand_in_compile(model, mode=None):
        modes.append(mode)
        return real_compile(model, backend="aot_eager")

    monkeypatch.setattr(fast.torch, "compile", stand_in_compile)
    torch._dynamo.reset()
    last = train_x.contiguous(memory_format=torch.channels_last)
    train = DeviceLoader(last, train_y, 32, shuffle=True, drop_last=True, augment=FlipAndCrop(2))
    test = DeviceLoader(test_x, test_y, 64, shuffle=False)
    seed_everything(0)
    model = SmallCNN().to(memory_format=torch.channels_last)
    result = run_step("compiled", Autocast(model), train, test, device=CPU, epochs=1, compile_mode="default",
                      make_optimizer=lambda m: torch.optim.Adam(m.parameters(), 1e-3),
                      eval_model=FlipAverage(Autocast(model)), verbose=False)
    assert modes == ["default"] and result.trained_model is not None
    assert result.trained_model is not model and result.test_accuracy > 0
    assert result.messages == "", result.messages
    torch._dynamo.reset()


def test_profile_steps_on_the_cpu(tiny):
    train_x, train_y, _, _ = tiny
    model = SmallCNN()
    with warnings.catch_warnings():
        # As outside pytest, which records warnings itself: shown on sys.stderr when raised.
        warnings.simplefilter("always")
        warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: (
            sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line)))
        report = profile_steps(model, DeviceLoader(train_x, train_y, 32, shuffle=True), nn.CrossEntropyLoss(),
                               torch.optim.SGD(model.parameters(), lr=0.01), CPU, steps=3, top=4)
    assert report.steps == 3 and report.device_busy_seconds is None and len(report.top) == 4
    assert 0 < report.waiting_for_data_seconds < report.wall_seconds
    text = str(report)
    assert text.startswith("3 steps, ") and "waiting for the next batch" in text and "GPU" not in text
    assert report.messages == ""  # the profiler's routine notices are left out


def test_the_profilers_clears_events_notice_is_left_out(tiny, monkeypatch):
    # torch 2.11 (the GPU machine's) warns so at every profile; torch 2.14 does not, so the
    # warning is made here, where the profiler starts.
    import torch.profiler

    enter = torch.profiler.profile.__enter__

    def enter_with_notice(self):
        warnings.warn("Warning: Profiler clears events at the end of each cycle.", UserWarning)
        return enter(self)

    monkeypatch.setattr(torch.profiler.profile, "__enter__", enter_with_notice)
    train_x, train_y, _, _ = tiny
    model = SmallCNN()
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # shown on sys.stderr, as outside pytest
        warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: (
            sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line)))
        report = profile_steps(model, DeviceLoader(train_x, train_y, 32, shuffle=True), nn.CrossEntropyLoss(),
                               torch.optim.SGD(model.parameters(), lr=0.01), CPU, steps=2, top=2)
    assert report.messages == ""


def test_only_the_profilers_routine_notices_are_left_out():
    text = ("USDT:2026-11-28 18:39:28 8164:8164 SyncActivityProfilerHandler.cpp:39] profiler_start\n"
            "a real warning\n"
            "STAGE:2024-01-01 10:00:00 1:1 ActivityProfilerController.cpp:312] Completed Stage: Warm Up\n")
    assert fast._without_profiler_notices(text) == "a real warning\n"
    no_gpu = "ERROR:2026-11-28 18:49:42 10795:10795 DeviceProperties.cpp:56] gpuGetDeviceCount failed with code 35\n"
    expected = "" if not torch.cuda.is_available() else no_gpu
    assert fast._without_profiler_notices(no_gpu) == expected


def test_the_gpus_busy_time_counts_each_kernel_once_and_leaves_out_the_marked_ranges():
    # What prof.events() holds for one step on a GPU: two kernels, a copy, and the profiler's
    # projections of the two record_function ranges onto the GPU's timeline.
    from torch.autograd import DeviceType
    from torch.autograd.profiler_util import FunctionEvent

    def on_gpu(name, start_us, end_us, marked=False):
        return FunctionEvent(0, name, 0, start_us, end_us, device_type=DeviceType.CUDA,
                             use_device="cuda", is_user_annotation=marked)

    add = ("void at::native::(anonymous namespace)::vectorized_elementwise_kernel<4, "
           "at::native::CUDAFunctor_add<c10::BFloat16> >(int, at::native::CUDAFunctor_add<c10::BFloat16>)")
    events = [on_gpu("Memcpy HtoD (Pinned -> Device)", 0, 10), on_gpu("next batch", 0, 10, marked=True),
              on_gpu("void cudnn::conv_kernel<float>(float const*)", 20, 120), on_gpu(add, 125, 140),
              on_gpu(add, 141, 145), on_gpu("training step", 20, 145, marked=True),
              FunctionEvent(0, "aten::add", 0, 125, 140)]  # a CPU event
    busy, ranked = fast.gpu_kernel_times(events)
    assert busy == pytest.approx(129e-6)
    assert [(label, calls) for label, calls, _ in ranked] == [
        ("conv_kernel<float>", 1), ("vectorized_elementwise_kernel<4, CUDAFunctor_add<BFloat16> >", 2),
        ("Memcpy HtoD (Pinned -> Device)", 1)]
    assert ranked[1][2] == pytest.approx(19e-6)


def test_kernels_of_one_template_keep_apart_in_the_profile():
    # Names as kernel_label leaves them: alike for their first 45 characters and more.
    mul = ("elementwise_kernel<128, 2, gpu_kernel_impl_nocast<BinaryFunctor<float, float, float, "
           "MulFunctor<float> > >(TensorIteratorBase&){lambda(int)#1}>")
    add = mul.replace("MulFunctor", "AddFunctor")
    wide = ("sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc_tilesize128x128x64_"
            "warpgroupsize1x1x1_execute_segment_k_off_kernel__5x_cudnn")
    narrow = wide.replace("tilesize128x", "tilesize64x")
    alone = "vectorized_elementwise_kernel<4, CUDAFunctor_add<BFloat16> >"
    labels = fast.short_labels([mul, add, wide, narrow, alone, "Memcpy HtoD (Pinned -> Device)"])
    assert len(set(labels)) == 6 and all(len(label) <= 48 for label in labels)
    assert "MulFunctor" in labels[0] and "AddFunctor" in labels[1]
    assert "tilesize128x" in labels[2] and "tilesize64x" in labels[3]
    assert labels[0].startswith("elementwise_kern") and labels[2].startswith("sm90_xmma")
    assert labels[4] == alone[:45] + "..."  # like no other name: simply cut
    assert labels[5] == "Memcpy HtoD (Pinned -> Device)"  # short names are kept whole


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(alphabet="ab<>, .(2)", max_size=70), unique=True, max_size=8),
       st.integers(min_value=12, max_value=60))
def test_short_labels_are_short_and_never_merge_two_names(names, width):
    labels = fast.short_labels(names, width)
    assert len(labels) == len(names) and len(set(labels)) == len(names)
    assert all(len(label) <= width for label in labels)
    assert all(label == name for name, label in zip(names, labels) if len(name) <= width)


def test_profile_steps_through_a_loader_with_worker_processes():
    standin = WithTransform(StandInCIFAR10(64, seed=0), to_tensor_transform())
    model = SmallCNN()
    loader = make_loader(standin, 16, shuffle=True, num_workers=1)
    report = profile_steps(model, loader, nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=0.01),
                           CPU, steps=2)
    assert report.steps == 2 and report.messages == ""


def test_the_profile_starts_after_the_loader_and_a_warm_up_step(tiny, monkeypatch):
    import torch.profiler

    happened = []

    class RecordingLoader:
        def __init__(self, loader):
            self.loader = loader

        def __iter__(self):
            happened.append("loader started")
            return iter(self.loader)

    class RecordingSGD(torch.optim.SGD):
        def step(self, closure=None):
            happened.append("step")
            return super().step(closure)

    enter = torch.profiler.profile.__enter__

    def entering(self):
        happened.append("profile started")
        return enter(self)

    monkeypatch.setattr(torch.profiler.profile, "__enter__", entering)
    train_x, train_y, _, _ = tiny
    model = SmallCNN()
    report = profile_steps(model, RecordingLoader(DeviceLoader(train_x, train_y, 32, shuffle=True)),
                           nn.CrossEntropyLoss(), RecordingSGD(model.parameters(), lr=0.01), CPU, steps=2)
    assert happened == ["loader started", "step", "profile started", "step", "step"]
    assert report.steps == 2


def test_table_speedups_chart_and_the_sentence_about_the_run(monkeypatch):
    results = [StepResult("one", 64, 2, train_seconds=8.0, warmup_seconds=1.0, images=100, test_accuracy=0.5),
               StepResult("two", 512, 2, train_seconds=2.0, warmup_seconds=9.0, images=100, test_accuracy=0.52),
               StepResult("three", 512, 2, skipped="CUDA graphs needs a CUDA GPU, and this run is on cpu.")]
    assert speedups(results)[:2] == [1.0, 4.0] and math.isnan(speedups(results)[2])
    table = results_table(results, "the caption")
    assert table.startswith("**the caption**")
    assert "| two | 512 | 2 | 2.00 s | 9.00 s | 50 | 52.0% | 4.0x |" in table
    assert "| three | 512 | 2 | skipped | | | | |" in table
    assert table.endswith("Skipped: three: CUDA graphs needs a CUDA GPU, and this run is on cpu.")
    figure = plot_results(results, title="t")
    assert [t.get_text() for t in figure.axes[0].get_yticklabels()] == ["three", "two", "one"]
    figure.canvas.draw()  # seconds on the log axis as plain numbers, and no minor labels to collide
    assert {t.get_text() for t in figure.axes[0].get_xticklabels() if t.get_visible()} >= {"1", "2", "5", "10"}
    assert not any(t.get_text() for t in figure.axes[0].get_xticklabels(minor=True))
    matplotlib.pyplot.close(figure)
    monkeypatch.setenv(runtime.QUICK_ENV, "1")
    sentence = describe_measurements(CPU, "generated stand-in (quick mode)")
    assert sentence.startswith("These outputs (data: generated stand-in (quick mode)) are not from the full run on "
                               "a GPU that this chapter is about: it ran on cpu, not on an NVIDIA GPU, so the steps "
                               "that need CUDA are skipped and the sizes are smaller; it ran in quick mode"), sentence
    assert sentence.endswith("Their times say nothing about a GPU.")
    monkeypatch.setenv(runtime.QUICK_ENV, "0")
    sentence = describe_measurements(CPU, "image folder cifar10-jpeg")
    assert "(data: image folder cifar10-jpeg)" in sentence and "quick mode" not in sentence, sentence
    monkeypatch.setattr(fast.runtime, "device_name", lambda device: "cuda (NVIDIA H200)")
    assert describe_measurements("cuda", "image folder x") == (
        "These are measurements on cuda (NVIDIA H200), full run, with CIFAR-10 (image folder x).")


# --- The chapter's exercises: typical wrong answers get a precise message ----------------------------------------


def _smoothed(logits, targets, smoothing, ignore_index=-100, spread_over=None, mean_over="kept"):
    keep = targets != ignore_index
    k = logits.shape[1]
    onehot = F.one_hot(targets.where(keep, 0), k).float()
    if spread_over == "others":
        q = (1 - smoothing) * onehot + smoothing / (k - 1) * (1 - onehot)
    else:
        q = (1 - smoothing) * onehot + smoothing / k
    per_row = -(q * F.log_softmax(logits, dim=1)).sum(dim=1)
    if mean_over == "all":
        return (per_row * keep).sum() / len(targets)
    return per_row[keep].mean()  # the mean of no rows is NaN, as in F.cross_entropy


def test_the_smoothing_exercise_checks_ignored_targets_as_pytorch_does():
    logits, targets = torch.randn(4, 5), torch.tensor([1, -100, 3, -100])
    torch.testing.assert_close(_smoothed(logits, targets, 0.2),
                               F.cross_entropy(logits, targets, label_smoothing=0.2))
    assert torch.isnan(F.cross_entropy(logits, torch.full((4,), -100), label_smoothing=0.2))
    assert judge_answer("fast_training.smoothed_cross_entropy", _smoothed).status == PASSED


def test_smoothing_exercise_names_each_usual_mistake():
    name = "fast_training.smoothed_cross_entropy"
    for answer, message in [
        (lambda l, t, s, ignore_index=-100: _smoothed(l, t, s, ignore_index, "others"),
         "spreads the smoothing over the 3 wrong classes only"),
        (lambda l, t, s, ignore_index=-100: _smoothed(l, t, s, ignore_index) * (t != ignore_index).sum(),
         "That is the sum over the rows"),
        (lambda l, t, s, ignore_index=-100: _smoothed(l, t, 0.0, ignore_index),
         "That is the plain cross-entropy"),
        (lambda l, t, s, ignore_index=-100: _smoothed(l, t, s, ignore_index, mean_over="all"),
         "That divides by all 6 rows; the mean is over the 5 rows"),
        (lambda l, t, s, ignore_index=-100: _smoothed(l, t, s, ignore_index=-100),
         "The rows whose target is 2 (ignore_index) are counted"),
        (lambda l, t, s, ignore_index=-100: _smoothed(l, t, s, ignore_index).nan_to_num(0.0),
         "F.cross_entropy gives NaN (0 / 0), and so should yours"),
        (lambda l, t, s, ignore_index=-100: _smoothed(l, t, s, ignore_index).reshape(1),
         "Return a 0-dim tensor"),
        (lambda l, t, s, ignore_index=-100: float(_smoothed(l, t, s, ignore_index)),
         "expected a tensor, got float"),
        (lambda l, t, s: _smoothed(l, t, s), "takes 3 positional arguments but 4 were given"),
    ]:
        verdict = judge_answer(name, answer)
        assert verdict.status == FAILED and message in verdict.message, verdict.message


def test_the_smoothing_exercise_refuses_the_function_it_asks_to_write():
    # The text says "without calling it": an answer that does fails, and the function is put back.
    for answer in (lambda l, t, s, ignore_index=-100: F.cross_entropy(l, t, label_smoothing=s,
                                                                      ignore_index=ignore_index),
                   lambda l, t, s, ignore_index=-100: nn.CrossEntropyLoss(label_smoothing=s,
                                                                          ignore_index=ignore_index)(l, t)):
        verdict = judge_answer("fast_training.smoothed_cross_entropy", answer)
        assert verdict.status == FAILED
        assert verdict.message.endswith("the exercise asks for the loss without calling F.cross_entropy, but the "
                                        "answer called F.cross_entropy"), verdict.message
    logits, targets = torch.randn(4, 5), torch.tensor([1, 0, 3, 2])
    torch.testing.assert_close(F.cross_entropy(logits, targets), _smoothed(logits, targets, 0.0))


def _crops(images, padding, top, left, mode="reflect", swap_sizes=False):
    n, _, h, w = images.shape
    if swap_sizes:  # the height taken for the width and back: right only on square images
        h, w = w, h
    padded = F.pad(images, (padding,) * 4, mode=mode)
    rows = top[:, None] + torch.arange(h)
    cols = left[:, None] + torch.arange(w)
    return padded[torch.arange(n)[:, None, None], :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def test_crop_exercise_names_each_usual_mistake():
    assert judge_answer("fast_training.crop_batch", _crops).status == PASSED
    # The text says "no Python loop over the images": right crops, one image at a time, fail.
    def one_by_one(images, padding, top, left):
        return torch.cat([_crops(images[i:i + 1], padding, top[i:i + 1], left[i:i + 1])
                          for i in range(len(images))])

    def in_numpy(images, padding, top, left):  # a loop that runs no torch operation per image
        n, _, h, w = images.shape
        padded = F.pad(images, (padding,) * 4, mode="reflect").numpy()
        crops = np.stack([padded[i, :, t:t + h, l:l + w] for i, (t, l) in enumerate(zip(top.tolist(),
                                                                                        left.tolist()))])
        return torch.from_numpy(crops)

    for answer in (one_by_one, in_numpy):
        verdict = judge_answer("fast_training.crop_batch", answer)
        assert verdict.status == FAILED and verdict.message.startswith("the answer runs ") and (
            "for 16: a Python loop over the images" in verdict.message), verdict.message
    for answer, message in [
        (lambda i, p, t, l: _crops(i, p, t, l, mode="constant"), "pad by mirroring the border"),
        (lambda i, p, t, l: _crops(i, p, l, t), "top[i] moves the window down"),
        (lambda i, p, t, l: _crops(i, p, t, l).permute(0, 2, 3, 1), "permute it to (N, C, H, W)"),
        # The gather's (N, H, W, C) given the right shape by reshape: the right numbers, misplaced.
        (lambda i, p, t, l: _crops(i, p, t, l).permute(0, 2, 3, 1).reshape(i.shape),
         "reshape or view only relabel the memory in place"),
    ]:
        verdict = judge_answer("fast_training.crop_batch", answer)
        assert verdict.status == FAILED and message in verdict.message, verdict.message


def test_the_crop_exercise_fails_an_answer_that_swaps_height_and_width():
    square = torch.randn(2, 3, 5, 5), 1, torch.tensor([0, 2]), torch.tensor([1, 2])
    assert torch.equal(_crops(*square, swap_sizes=True), _crops(*square))
    verdict = judge_answer("fast_training.crop_batch",
                           lambda i, p, t, l: _crops(i, p, t, l, swap_sizes=True))
    assert verdict.status == FAILED, verdict.message
    assert verdict.message.startswith("on 3 images of 2x6x9"), verdict.message


def test_the_hints_point_to_the_idea_without_giving_the_answers_code():
    from helpers.exercises import EXERCISES

    for name, pieces_of_the_answer in [
            ("fast_training.smoothed_cross_entropy", ["log_softmax(", ".mean()", "smoothing / ", "[keep]"]),
            ("fast_training.crop_batch", ["torch.arange(", "[:, None]", "permute("])]:
        hint = EXERCISES[name].hint
        assert not [piece for piece in pieces_of_the_answer if piece in hint], hint


# Found by mutation testing: each test below fails on a small, plausible change to the code.


def test_a_dataset_with_a_transform_is_decoded_through_it():
    plain = StandInCIFAR10(8, seed=0)
    mirrored = StandInCIFAR10(8, seed=0, transform=lambda image: image.transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    assert torch.equal(dataset_to_tensors(mirrored, num_workers=0)[0], dataset_to_tensors(plain)[0].flip(3))


@pytest.mark.parametrize("limit", [0, -1, 0.5, True])
def test_a_limit_that_is_not_a_number_of_images_is_refused(limit):
    images, labels = torch.zeros(20, 3, 2, 2), torch.arange(20)
    with pytest.raises(ValueError, match=rf"limit is a number of images and must be None or an integer of at "
                                         rf"least 1, got {re.escape(repr(limit))}: pass None to keep them all"):
        random_subset(images, labels, limit, seed=0)
    with pytest.raises(ValueError, match="train_limit is a number of images"):
        cifar10_on_device("cpu", cifar=None, train_limit=limit)  # refused before any data is loaded


def test_random_subset_is_random_seeded_and_paired():
    images, labels = torch.arange(100).float(), torch.arange(100)
    kept_images, kept_labels = random_subset(images, labels, 10, seed=0)
    assert torch.equal(kept_images.long(), kept_labels) and len(set(kept_labels.tolist())) == 10
    assert not torch.equal(kept_labels, torch.arange(10))  # not the first ten: an image folder is sorted by class
    assert torch.equal(random_subset(images, labels, 10, seed=0)[1], kept_labels)


def test_cifar10_on_device_normalises_with_the_training_images_and_keeps_the_limits():
    cifar = CIFAR10Data(StandInCIFAR10(40, seed=0), StandInCIFAR10(30, seed=1), ["c"] * 10, "stand-in")
    result = cifar10_on_device(CPU, cifar, train_limit=20, test_limit=10)
    assert (len(result.train_labels), len(result.test_labels)) == (20, 10)
    train_u8, train_y = random_subset(*dataset_to_tensors(cifar.train), 20, 0)
    mean, std = channel_stats(train_u8)
    torch.testing.assert_close(result.mean, mean)
    torch.testing.assert_close(result.std, std)


def test_a_device_loader_refuses_tensors_on_two_devices_and_allows_one_whole_batch():
    with pytest.raises(ValueError, match="images are on meta but labels on cpu"):
        DeviceLoader(torch.zeros(4, 3, 2, 2, device="meta"), torch.arange(4), 2, shuffle=False)
    assert len(DeviceLoader(torch.zeros(6, 3, 2, 2), torch.arange(6), 6, shuffle=True, drop_last=True)) == 1


def test_random_crop_reaches_every_offset_on_both_axes():
    # 300 copies of one image; each crop is matched to the window (top, left) it was cut from.
    torch.manual_seed(0)
    images = torch.randn(1, 1, 5, 5).expand(300, 1, 5, 5).contiguous()
    windows = {(t, l): crop_at(images[:1], 2, torch.tensor([t]), torch.tensor([l]))[0]
               for t in range(5) for l in range(5)}
    seen = {next(offset for offset, window in windows.items() if torch.equal(crop, window))
            for crop in random_crop(images, 2)}
    assert seen == set(windows)  # every shift of -2..2 pixels, down and right, drawn independently
    with pytest.raises(ValueError, match="padding must be between 0 and 4"):
        random_crop(images, 5)


def test_flip_and_crop_flips_and_crops():
    torch.manual_seed(0)
    images = torch.randn(8, 3, 6, 6)
    assert torch.equal(FlipAndCrop(padding=0, flip_probability=1.0)(images), images.flip(3))
    assert not torch.equal(FlipAndCrop(padding=2, flip_probability=0.0)(images), images)


def test_resnet9_blocks_are_conv_bn_relu_and_residual_where_it_says():
    assert (fast.conv_bn(3, 4)(torch.randn(2, 3, 5, 5)) >= 0).all()  # ends in a ReLU
    model = ResNet9(widths=(4, 8, 16, 32))  # four different widths: no layer can be skipped unnoticed
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert isinstance(model.layer1[2], Residual) and isinstance(model.layer3[2], Residual)
    with pytest.raises(ValueError, match="four positive channel counts"):
        ResNet9(widths=(4, 0, 8, 8))


def test_an_empty_loader_is_an_error_not_a_hang_or_a_stopiteration():
    model = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="the loader gave no batches"):
        benchmark_steps(model, [], nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=0.1), CPU,
                        warmup=0, steps=1)


def test_training_step_starts_from_fresh_gradients():
    model = nn.Linear(3, 2)
    for p in model.parameters():
        p.grad = torch.full_like(p, 100.0)  # left over from somewhere else
    reference = nn.Linear(3, 2)
    reference.load_state_dict(model.state_dict())
    x, y = torch.randn(4, 3), torch.tensor([0, 1, 0, 1])
    training_step(model, x, y, nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=0.1))
    nn.functional.cross_entropy(reference(x), y).backward()
    for p, q in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad)


def test_run_step_stops_at_the_target_accuracy_and_sums_the_epochs_times(tiny, monkeypatch):
    train_x, train_y, test_x, test_y = tiny

    class OneSecond:  # every epoch takes exactly one second
        def __init__(self, device):
            self.seconds = 1.0

        def __enter__(self):
            return self

        def __exit__(self, *exc_info):
            pass

    monkeypatch.setattr(fast, "DeviceTimer", OneSecond)
    evaluated = []
    eval_model = SmallCNN()
    eval_model.register_forward_hook(lambda *args: evaluated.append(1))
    common = dict(device=CPU, make_optimizer=lambda m: torch.optim.SGD(m.parameters(), lr=0.01), verbose=False,
                  warmup_steps=0)
    loader = DeviceLoader(train_x, train_y, 64, shuffle=True)
    test = DeviceLoader(test_x, test_y, 64, shuffle=False)
    result = run_step("t", SmallCNN(), loader, test, epochs=3, target_accuracy=0.0, eval_model=eval_model, **common)
    assert (result.epochs, len(result.train_losses), result.train_seconds) == (1, 1, 1.0) and result.reached_target
    assert evaluated  # the accuracy is eval_model's
    result = run_step("t", SmallCNN(), loader, test, epochs=3, **common)
    assert (result.epochs, result.train_seconds) == (3, 3.0)
    with pytest.raises(ValueError, match="epochs must be at least 1"):
        run_step("t", SmallCNN(), loader, test, epochs=0, **common)


def test_step_result_line_and_target():
    result = StepResult("s", 64, 1, train_seconds=2.0, warmup_seconds=1.0, images=100, test_accuracy=0.9,
                        target_accuracy=0.9, messages="a warning\nmore\n")
    assert result.reached_target  # reaching the target exactly counts
    line = result.line()
    assert line.startswith("s: 1 epoch in 2.00 s") and "reached the target 90.0%" in line
    assert "PyTorch wrote 2 line(s) to stderr\n  meanwhile; the first: a warning" in line


def test_a_quick_run_on_a_gpu_is_not_called_a_full_run(monkeypatch):
    monkeypatch.setenv(runtime.QUICK_ENV, "1")
    monkeypatch.setattr(fast.runtime, "device_name", lambda device: "cuda (NVIDIA H200)")
    sentence = describe_measurements("cuda", "generated stand-in (quick mode)")
    assert sentence.startswith("These outputs (data: generated stand-in (quick mode)) are not from the full run on "
                               "a GPU that this chapter is about: it ran in quick mode (small sizes)."), sentence


def test_the_profile_ranks_operators_not_its_own_markers(tiny):
    train_x, train_y, _, _ = tiny
    model = SmallCNN()
    report = fast.profile_steps(model, DeviceLoader(train_x, train_y, 32, shuffle=True), nn.CrossEntropyLoss(),
                                torch.optim.SGD(model.parameters(), lr=0.01), CPU, steps=2, top=50)
    assert not {"next batch", "training step"} & {name for name, _, _ in report.top}
