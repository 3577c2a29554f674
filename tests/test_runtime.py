import os
import random

import numpy as np
import pytest
import torch

from helpers import runtime


@pytest.mark.parametrize("value, expected", [("", False), ("0", False), ("no", False),
                                             ("1", True), ("TRUE", True), ("yes", True)])
def test_quick_mode_reads_the_environment(monkeypatch, value, expected):
    monkeypatch.setenv(runtime.QUICK_ENV, value)
    assert runtime.quick_mode() is expected
    assert runtime.pick("full", "quick") == ("quick" if expected else "full")


def test_quick_mode_rejects_a_value_it_does_not_understand(monkeypatch):
    monkeypatch.setenv(runtime.QUICK_ENV, "fast")
    with pytest.raises(ValueError, match="COURSE_QUICK='fast' is not understood"):
        runtime.quick_mode()


def test_pick_device_falls_back_to_the_cpu_here():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert runtime.pick_device().type in (expected, "mps")


def test_pick_device_refuses_a_missing_or_unknown_device(monkeypatch):
    # Pretend there is no GPU at all, so that the test means the same on every machine.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(RuntimeError) as error:
        runtime.pick_device("cuda")
    message = str(error.value)
    assert message.startswith("device 'cuda' was asked for but is not available here: ")
    for remedy in ("in Colab, choose Runtime > Change runtime type > GPU", "install a CUDA build of PyTorch",
                   "pass 'cpu'"):
        assert remedy in message
    with pytest.raises(RuntimeError, match="'mps' was asked for .*Apple silicon.* pass 'cpu'"):
        runtime.pick_device("mps")
    assert runtime.pick_device() == torch.device("cpu")
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        runtime.pick_device("tpu")
    assert runtime.pick_device("cpu") == torch.device("cpu")


def test_seed_everything_repeats_every_generator():
    def draw():
        return random.random(), np.random.rand(), torch.rand(3)

    runtime.seed_everything(123)
    first = draw()
    runtime.seed_everything(123)
    second = draw()
    assert first[:2] == second[:2]
    assert torch.equal(first[2], second[2])
    runtime.seed_everything(124)
    assert draw()[0] != first[0]


def test_deterministic_mode_is_opt_in_and_can_be_switched_off(monkeypatch):
    # Set first, so that monkeypatch takes it away again: the notebooks tested after this would
    # otherwise inherit the variable that deterministic mode sets for cuBLAS.
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    runtime.seed_everything(0, deterministic=True)
    assert torch.are_deterministic_algorithms_enabled()
    runtime.seed_everything(0)
    assert not torch.are_deterministic_algorithms_enabled()


def test_timer_measures_the_block():
    import time

    with runtime.Timer("cpu") as t:
        time.sleep(0.05)
    assert 0.04 < t.seconds < 1.0
    assert repr(t).startswith("Timer(")


def test_run_facts_name_the_data_sources(monkeypatch):
    monkeypatch.setattr(runtime, "_data_sources", [])
    assert runtime.run_facts()["data_source"] == "none"
    runtime.record_data_source("generated stand-in")
    runtime.record_data_source("generated stand-in")
    facts = runtime.run_facts()
    assert facts["data_source"] == "generated stand-in"
    assert facts["torch"] == torch.__version__


def test_describe_run_warns_on_a_cpu_and_in_quick_mode(monkeypatch):
    monkeypatch.setenv(runtime.QUICK_ENV, "1")
    line = runtime.describe_run("cpu")
    assert line == ("Running on cpu (no GPU found). Quick mode: small data and short training, so the "
                    "numbers differ from the book's.")
    monkeypatch.setenv(runtime.QUICK_ENV, "0")
    line = runtime.describe_run("cpu")
    assert line.startswith("Running on cpu (no GPU found: this chapter runs, but slowly. In Colab choose "
                           "Runtime > Change runtime type > GPU, which restarts the notebook: then run it "
                           "again from its first cell.")
    assert "run %env COURSE_QUICK=1 and then the notebook from its first cell). Full run." in line
    assert runtime.describe_run("cpu", trains=False) == (
        "Running on cpu (no GPU found: this chapter trains nothing, so a CPU is enough). Full run.")
    # A chapter that trains less without a GPU says so, instead of "Full run."
    assert runtime.describe_run("cpu", smaller_without_gpu="3 epochs, not 10").endswith(
        ". A smaller run than the full one, which needs an NVIDIA GPU: 3 epochs, not 10.")
    monkeypatch.setattr(runtime, "device_name", lambda device: "cuda (NVIDIA H200)")
    assert runtime.describe_run("cuda", smaller_without_gpu="3 epochs, not 10") == (
        "Running on cuda (NVIDIA H200). Full run.")


def test_show_source_fences_dedented_code():
    from helpers.engine import Value
    from helpers.runtime import seed_everything, show_source

    shown = show_source(Value.__mul__, seed_everything).data
    assert shown.startswith("```python\ndef __mul__(self, other)") and shown.endswith("\n```")
    assert "\n\ndef seed_everything(" in shown


# Found by mutation testing: each test below fails on a small, plausible change to the code.


@pytest.mark.parametrize("value, expected", [(" 1 ", True), ("false", False), ("True", True)])
def test_quick_mode_reads_the_spellings_it_promises(monkeypatch, value, expected):
    monkeypatch.setenv(runtime.QUICK_ENV, value)
    assert runtime.quick_mode() is expected


def test_pick_device_prefers_a_gpu_and_names_it(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    assert runtime.pick_device() == torch.device("cuda")
    assert runtime.device_name("cuda") == "cuda (NVIDIA H200)"
    monkeypatch.setattr(runtime, "_data_sources", [])
    assert runtime.run_facts()["device"] == "cuda (NVIDIA H200)"


def test_deterministic_mode_sets_cudnn_and_cublas_and_is_undone(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", False)
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    try:
        runtime.seed_everything(0, deterministic=True)
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        runtime.seed_everything(0)
        assert not torch.backends.cudnn.deterministic
    finally:
        torch.use_deterministic_algorithms(False)


def test_synchronize_waits_for_the_gpu_it_is_given(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append(("cuda", device)))
    monkeypatch.setattr(torch.mps, "synchronize", lambda: calls.append(("mps", None)))
    runtime.synchronize("cuda")
    runtime.synchronize("mps")
    runtime.synchronize("cpu")
    runtime.synchronize(None)
    assert calls == [("cuda", torch.device("cuda")), ("mps", None)]


def test_the_timer_waits_for_the_gpu_before_reading_the_clock_both_times(monkeypatch):
    events = []
    monkeypatch.setattr(runtime, "synchronize", lambda device: events.append("sync"))
    real = runtime.time.perf_counter
    monkeypatch.setattr(runtime.time, "perf_counter", lambda: events.append("clock") or real())
    with runtime.Timer("cuda"):
        events.append("work")
    assert events == ["sync", "clock", "work", "sync", "clock"]


def test_run_facts_say_whether_the_run_was_quick(monkeypatch):
    monkeypatch.setenv(runtime.QUICK_ENV, "1")
    assert runtime.run_facts()["quick_mode"] is True
    monkeypatch.setenv(runtime.QUICK_ENV, "0")
    assert runtime.run_facts()["quick_mode"] is False
