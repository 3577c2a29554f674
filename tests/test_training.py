"""helpers.training: the model, one epoch, evaluation, fit, checkpoints (bitwise resume), curves."""

import copy
import math
import os
import re
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from helpers import training
from helpers.data import StandInCIFAR10, WithTransform, make_loader, normalising_transform
from helpers.exercises import FAILED, PASSED, judge_answer
from helpers.runtime import seed_everything
from helpers.training import (CheckpointError, SmallCNN, count_correct, evaluate, fit, load_checkpoint,
                              plot_history, save_checkpoint, to_device, train_one_epoch)

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def standin():
    """A tiny, deterministic slice of the quick-mode stand-in: 192 training and 64 validation images."""
    transform = normalising_transform([0.5] * 3, [0.25] * 3)
    train = WithTransform(Subset(StandInCIFAR10(256, seed=0), range(192)), transform)
    validation = WithTransform(Subset(StandInCIFAR10(256, seed=0), range(192, 256)), transform)
    return train, validation


def _run(standin, epochs, checkpoint=None, resume=False, seed=0, num_workers=0):
    """One training run from ``seed``; returns the model, optimizer and history."""
    train, validation = standin
    seed_everything(seed)
    model = SmallCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    history = fit(model, make_loader(train, 32, shuffle=True, num_workers=num_workers),
                  make_loader(validation, 64, shuffle=False, num_workers=num_workers), nn.CrossEntropyLoss(),
                  optimizer, CPU, epochs, checkpoint_path=checkpoint, resume=resume, verbose=False)
    return model, optimizer, history


def _assert_same_state(a: dict, b: dict):
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key
        elif isinstance(a[key], dict):
            _assert_same_state(a[key], b[key])
        else:
            assert a[key] == b[key], key


# --- The model ------------------------------------------------------------------------------------


def test_small_cnn_shapes_and_parameter_count():
    model = SmallCNN()
    assert model(torch.zeros(5, 3, 32, 32)).shape == (5, 10)
    assert sum(p.numel() for p in model.parameters()) == 62006


@pytest.mark.parametrize("shape, message", [((3, 32, 32), "add a batch dimension"),
                                            ((2, 1, 28, 28), r"got \(2, 1, 28, 28\)")])
def test_small_cnn_says_what_input_it_wants(shape, message):
    with pytest.raises(ValueError, match=r"takes images of shape \(N, 3, 32, 32\)"):
        SmallCNN()(torch.zeros(shape))
    with pytest.raises(ValueError, match=message):
        SmallCNN()(torch.zeros(shape))


# --- One epoch and evaluation -------------------------------------------------------------------------


def test_count_correct_and_to_device():
    outputs = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    assert count_correct(outputs, torch.tensor([1, 1, 1])).item() == 2
    with pytest.raises(ValueError, match=r"expected outputs \(N, classes\) and targets \(N,\)"):
        count_correct(outputs, torch.tensor([[1], [1], [1]]))
    moved = to_device({"x": (torch.ones(1), [torch.zeros(1)]), "name": "kept"}, CPU)
    assert moved["name"] == "kept" and isinstance(moved["x"], tuple) and isinstance(moved["x"][1], list)


def test_train_one_epoch_learns_and_evaluate_changes_nothing(standin):
    train, validation = standin
    seed_everything(0)
    model = SmallCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = DataLoader(train, batch_size=32, shuffle=True)
    val_loader = DataLoader(validation, batch_size=50)  # batches of 50 and 14
    before = evaluate(model, val_loader, nn.CrossEntropyLoss(), CPU)
    for _ in range(4):
        result = train_one_epoch(model, loader, nn.CrossEntropyLoss(), optimizer, CPU, progress=False)
    assert result["samples"] == 192 and set(result) == {"loss", "accuracy", "samples"}
    model.eval()  # evaluate puts the mode back as it found it
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    gradients = {name: p.grad.clone() for name, p in model.named_parameters()}  # of the last step
    assert all(g.abs().sum() > 0 for g in gradients.values())
    after = evaluate(model, val_loader, nn.CrossEntropyLoss(), CPU)
    assert not model.training
    _assert_same_state(weights, model.state_dict())
    _assert_same_state(gradients, {name: p.grad for name, p in model.named_parameters()})
    assert after["loss"] < before["loss"] and after["accuracy"] > 0.3  # chance is 0.1
    # The evaluation loss is the mean over samples, not over batches.
    inputs = torch.stack([x for x, _ in validation])
    targets = torch.tensor([y for _, y in validation])
    with torch.no_grad():
        whole = nn.functional.cross_entropy(model(inputs), targets).item()
    assert math.isclose(after["loss"], whole, rel_tol=1e-5)
    assert after["accuracy"] == count_correct(model(inputs), targets).item() / 64


def test_train_one_epoch_trains_in_training_mode_whatever_mode_it_finds():
    # A model left in eval mode (by an evaluation, say) must be switched back: dropout on.
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 2))
    model.eval()
    modes = []
    model[1].register_forward_hook(lambda module, args, output: modes.append(module.training))
    loader = DataLoader(TensorDataset(torch.randn(8, 4), torch.randint(0, 2, (8,))), batch_size=4)
    train_one_epoch(model, loader, nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=0.1), CPU,
                    progress=False)
    assert modes == [True, True] and model.training


def test_evaluate_records_no_graph_and_restores_training_mode(standin):
    model = SmallCNN()
    seen = []
    model.register_forward_hook(lambda module, args, output: seen.append((torch.is_grad_enabled(), module.training)))
    evaluate(model, DataLoader(standin[1], batch_size=64), nn.CrossEntropyLoss(), CPU)
    assert seen == [(False, False)] and model.training


def test_a_loss_that_becomes_nan_stops_training_with_advice():
    model = nn.Linear(2, 2)
    loader = DataLoader(TensorDataset(torch.tensor([[1.0, float("nan")]] * 4), torch.zeros(4, dtype=torch.long)),
                        batch_size=2)
    with pytest.raises(FloatingPointError, match="training loss became nan .* lower the learning rate"):
        train_one_epoch(model, loader, nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=0.1), CPU,
                        progress=False)


# --- Resuming: bitwise the same as never stopping ------------------------------------------------------


@pytest.mark.parametrize("interrupt_after", [1, 2])
def test_a_resumed_run_ends_bitwise_equal_to_an_uninterrupted_one(standin, tmp_path, interrupt_after):
    model, optimizer, history = _run(standin, epochs=3)
    checkpoint = tmp_path / "run" / "last.pt"
    _run(standin, epochs=interrupt_after, checkpoint=checkpoint)  # "crashes" after this epoch
    # A new process: another seed, other initial weights; everything comes from the checkpoint.
    resumed, resumed_optimizer, resumed_history = _run(standin, epochs=3, checkpoint=checkpoint, resume=True, seed=123)
    _assert_same_state(model.state_dict(), resumed.state_dict())
    _assert_same_state(optimizer.state_dict()["state"], resumed_optimizer.state_dict()["state"])
    for key in ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy"):
        assert history[key] == resumed_history[key], key
    assert load_checkpoint(checkpoint, restore_rng=False)["epoch"] == 3


def test_resuming_with_loader_workers_and_a_loader_generator(standin, tmp_path):
    # Workers draw their seeds from the generator too; a generator given to the loader is checkpointed.
    train, validation = standin

    def run(epochs, resume, seed):
        seed_everything(seed)
        model = SmallCNN()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        loader = DataLoader(train, batch_size=32, shuffle=True, num_workers=2,
                            generator=torch.Generator().manual_seed(7) if not resume else torch.Generator())
        fit(model, loader, None, nn.CrossEntropyLoss(), optimizer, CPU, epochs,
            checkpoint_path=tmp_path / "g.pt" if epochs < 3 or resume else None, resume=resume,
            verbose=False)
        return model

    reference = run(3, False, 0)
    run(1, False, 0)
    _assert_same_state(reference.state_dict(), run(3, True, 5).state_dict())


def test_resume_without_a_checkpoint_yet_starts_from_scratch(standin, tmp_path):
    _, _, history = _run(standin, epochs=1, checkpoint=tmp_path / "new.pt", resume=True)
    assert history["epoch"] == [1] and (tmp_path / "new.pt").exists()


def test_a_new_run_refuses_to_overwrite_a_checkpoint_unless_told(standin, tmp_path):
    checkpoint = tmp_path / "last.pt"
    _run(standin, epochs=1, checkpoint=checkpoint)
    before = checkpoint.read_bytes()
    with pytest.raises(CheckpointError, match=rf"{re.escape(str(checkpoint))} exists already, .*resume=True .*"
                                              rf"another checkpoint_path .*overwrite=True"):
        _run(standin, epochs=2, checkpoint=checkpoint)
    assert checkpoint.read_bytes() == before
    train, _ = standin
    model = SmallCNN()
    fit(model, make_loader(train, 64, shuffle=True, num_workers=0), None, nn.CrossEntropyLoss(),
        torch.optim.Adam(model.parameters()), CPU, 2, checkpoint_path=checkpoint, overwrite=True, verbose=False)
    assert load_checkpoint(checkpoint, restore_rng=False)["epoch"] == 2


def _fit_slice(standin, epochs, checkpoint, make_optimizer=None, make_scheduler=None, seed=0,
               loss_fn=nn.CrossEntropyLoss(), **options):
    """A short fit on the stand-in slice; returns the model, optimizer, scheduler and history."""
    seed_everything(seed)
    model = SmallCNN()
    optimizer = (make_optimizer or (lambda p: torch.optim.Adam(p, lr=1e-3)))(model.parameters())
    scheduler = make_scheduler(optimizer) if make_scheduler else None
    history = fit(model, make_loader(standin[0], 64, shuffle=True, num_workers=0), None, loss_fn, optimizer, CPU,
                  epochs, checkpoint_path=checkpoint, scheduler=scheduler,
                  verbose=False, **options)
    return model, optimizer, scheduler, history


def _sgd(lr):
    return lambda parameters: torch.optim.SGD(parameters, lr=lr, momentum=0.9)


def _one_cycle(max_lr):  # moves the learning rate and the momentum at every step
    return lambda optimizer: torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lr, total_steps=3)


def test_a_one_cycle_schedule_inside_a_sequential_one_resumes(standin, tmp_path):
    def warm_then_cycle(optimizer):  # the cycled momentum is in the inner scheduler's state
        return torch.optim.lr_scheduler.SequentialLR(optimizer, [
            torch.optim.lr_scheduler.LinearLR(optimizer, total_iters=1), _one_cycle(0.1)(optimizer)], milestones=[1])

    model, *_ = _fit_slice(standin, 3, None, _sgd(0.1), warm_then_cycle)
    checkpoint = tmp_path / "sequential.pt"
    _fit_slice(standin, 2, checkpoint, _sgd(0.1), warm_then_cycle)
    resumed, *_ = _fit_slice(standin, 3, checkpoint, _sgd(0.1), warm_then_cycle, seed=5, resume=True)
    _assert_same_state(model.state_dict(), resumed.state_dict())


def test_a_run_with_a_schedule_resumes_and_a_changed_one_is_refused(standin, tmp_path):
    # The saved learning rate and momentum are where the schedule had moved them, unlike a new
    # optimizer's: that is no change of settings. Where the schedule starts is.
    model, optimizer, scheduler, history = _fit_slice(standin, 3, None, _sgd(0.1), _one_cycle(0.1))
    checkpoint = tmp_path / "cycle.pt"
    _fit_slice(standin, 1, checkpoint, _sgd(0.1), _one_cycle(0.1))
    before = checkpoint.read_bytes()
    with pytest.raises(CheckpointError, match=r"was trained with initial_lr=0.004, max_lr=0.1 and min_lr=4e-07, "
                                              r"but the optimizer given has initial_lr=0.008, max_lr=0.2 and "
                                              r"min_lr=8e-07: to resume that run"):
        _fit_slice(standin, 3, checkpoint, _sgd(0.1), _one_cycle(0.2), resume=True)
    # Even with nothing changed: new settings would reset the rate the schedule had reached.
    with pytest.raises(CheckpointError, match="new_settings=True cannot be used with a scheduler"):
        _fit_slice(standin, 3, checkpoint, _sgd(0.1), _one_cycle(0.1), resume=True, new_settings=True)
    assert checkpoint.read_bytes() == before
    resumed, resumed_optimizer, resumed_scheduler, resumed_history = _fit_slice(
        standin, 3, checkpoint, _sgd(0.1), _one_cycle(0.1), seed=5, resume=True)
    _assert_same_state(model.state_dict(), resumed.state_dict())
    assert resumed_history["train_loss"] == history["train_loss"]
    assert resumed_optimizer.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]
    assert resumed_scheduler.last_epoch == scheduler.last_epoch == 3


def test_resuming_with_another_learning_rate_is_refused_unless_asked(standin, tmp_path):
    checkpoint = tmp_path / "run.pt"
    _fit_slice(standin, 1, checkpoint)
    before = checkpoint.read_bytes()
    seed_everything(1)
    model = SmallCNN()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match="run.pt was trained with lr=0.001, but the optimizer given has "
                                              "lr=0.0001: to resume that run, create the optimizer with the same "
                                              "settings; to go on from it with the new settings, pass "
                                              "new_settings=True"):
        fit(model, make_loader(standin[0], 64, shuffle=True, num_workers=0), None, nn.CrossEntropyLoss(),
            torch.optim.Adam(model.parameters(), lr=1e-4), CPU, 2, checkpoint_path=checkpoint, resume=True,
            verbose=False)
    _assert_same_state(weights, model.state_dict())
    assert checkpoint.read_bytes() == before
    _, optimizer, _, history = _fit_slice(standin, 2, checkpoint, lambda p: torch.optim.Adam(p, lr=1e-4),
                                          resume=True, new_settings=True)
    assert history["epoch"] == [1, 2] and optimizer.param_groups[0]["lr"] == 1e-4
    assert optimizer.state_dict()["state"][0]["step"] == 6  # Adam's step count went on from the checkpoint's 3
    saved = load_checkpoint(checkpoint, restore_rng=False)["optimizer"]["param_groups"][0]
    assert saved["lr"] == 1e-4  # what the run now trains with


@pytest.mark.parametrize("epochs", [1, 2])
def test_resuming_a_run_that_has_its_epochs_already_says_so(standin, tmp_path, epochs):
    checkpoint = tmp_path / "done.pt"
    _fit_slice(standin, 2, checkpoint)
    model = SmallCNN()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=rf"nothing left to train: the checkpoint .*done.pt already has 2 epochs, "
                                         rf"and epochs={epochs} asks for {epochs} in all: to train on, pass a larger "
                                         rf"epochs; to use the trained model, load it with load_checkpoint"):
        fit(model, make_loader(standin[0], 64, shuffle=True, num_workers=0), None, nn.CrossEntropyLoss(),
            torch.optim.Adam(model.parameters(), lr=1e-3), CPU, epochs, checkpoint_path=checkpoint, resume=True)
    _assert_same_state(weights, model.state_dict())


def _nan_from_epoch_2(batches_per_epoch):
    calls = []

    def loss_fn(outputs, targets):
        calls.append(1)
        loss = nn.functional.cross_entropy(outputs, targets)
        return loss * math.nan if len(calls) > batches_per_epoch else loss

    return loss_fn


def test_a_nan_loss_in_fit_says_the_model_is_spoilt_and_how_to_go_on(standin, tmp_path):
    checkpoint = tmp_path / "nan.pt"
    train = make_loader(standin[0], 64, shuffle=True, num_workers=0)  # 3 batches
    seed_everything(0)
    model = SmallCNN()
    with pytest.raises(FloatingPointError, match=r"training loss became nan .* clip the gradients \(max_grad_norm\)\. The model in "
                                                 r"memory now holds NaN or infinite weights; .*nan.pt holds the run "
                                                 r"after epoch 1: to go on from there with a lower learning rate, "
                                                 r"call fit again with an optimizer created with it, resume=True and "
                                                 r"new_settings=True"):
        fit(model, train, None, _nan_from_epoch_2(3), torch.optim.SGD(model.parameters(), lr=0.1), CPU, 3,
            checkpoint_path=checkpoint, verbose=False)
    assert not all(torch.isfinite(p).all() for p in model.parameters())
    # The advice works: the same model, an optimizer with a lower rate, and the checkpoint.
    history = fit(model, train, None, nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=0.01), CPU, 3,
                  checkpoint_path=checkpoint, resume=True, new_settings=True, verbose=False)
    assert history["epoch"] == [1, 2, 3] and all(torch.isfinite(p).all() for p in model.parameters())
    # Without a checkpoint of the run, or with a schedule, starting over is the way.
    for options, advice in [({}, "create it again and start over with a lower learning rate"),
                            ({"checkpoint_path": tmp_path / "s.pt", "make_scheduler": _one_cycle(0.1)},
                             "s.pt holds the run after epoch 1, but its schedule was computed for the old learning "
                             "rate: start a new run with a lower one")]:
        with pytest.raises(FloatingPointError, match=advice):
            _fit_slice(standin, 3, options.pop("checkpoint_path", None), _sgd(0.1), loss_fn=_nan_from_epoch_2(3),
                       **options)


def test_fit_argument_errors(standin):
    with pytest.raises(ValueError, match="resume=True needs the checkpoint_path"):
        _run(standin, epochs=1, resume=True)
    with pytest.raises(ValueError, match="epochs must be at least 1"):
        _run(standin, epochs=0)
    with pytest.raises(ValueError, match="new_settings=True changes the settings of a run being resumed: pass "
                                         "resume=True too"):
        _fit_slice(standin, 1, None, new_settings=True)


def test_early_stopping_callback_and_scheduler(standin, tmp_path):
    train, validation = standin
    model = SmallCNN()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    history = fit(model, DataLoader(train, batch_size=64), None, nn.CrossEntropyLoss(), optimizer, CPU, 5,
                  checkpoint_path=tmp_path / "c.pt", scheduler=scheduler, verbose=False,
                  on_epoch_end=lambda epoch, history: epoch == 2)
    assert history["epoch"] == [1, 2] and all(math.isnan(v) for v in history["val_loss"])
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.025)
    state = load_checkpoint(tmp_path / "c.pt", restore_rng=False)
    assert state["epoch"] == 2 and state["scheduler"]["last_epoch"] == 2


# --- Checkpoint files ---------------------------------------------------------------------------------------


@pytest.fixture
def saved(tmp_path):
    model = SmallCNN()
    optimizer = torch.optim.Adam(model.parameters())
    path = tmp_path / "last.pt"
    save_checkpoint(path, model, optimizer, epoch=4, history={"epoch": [1, 2, 3, 4]})
    return path, model, optimizer


def test_a_checkpoint_holds_what_resuming_needs_and_loads_weights_only(saved, monkeypatch):
    path, model, optimizer = saved
    calls = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(k) or real_load(*a, **k))
    other = SmallCNN()
    state = load_checkpoint(path, other, torch.optim.Adam(other.parameters()), restore_rng=False)
    assert calls[0]["weights_only"] is True
    assert {"format", "version", "epoch", "model", "optimizer", "scheduler", "history", "rng"} <= set(state)
    assert set(state["rng"]) == {"python", "numpy", "torch", "cuda"} and state["epoch"] == 4
    _assert_same_state(model.state_dict(), other.state_dict())


def test_rng_state_round_trips():
    import random

    import numpy as np

    state = training.rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(1))
    random.random(), np.random.rand(), torch.rand(1)
    training.set_rng_state(state)
    assert (random.random(), np.random.rand()) == expected[:2] and torch.equal(torch.rand(1), expected[2])


def test_a_crash_while_saving_keeps_the_last_good_checkpoint(saved, monkeypatch):
    path, model, optimizer = saved
    good = path.read_bytes()

    def crashing_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", crashing_save)
    with pytest.raises(CheckpointError, match=rf"could not write the checkpoint {re.escape(str(path))} \(OSError: No "
                                              rf"space left on device\); the previous checkpoint there, if any, is "
                                              rf"unchanged"):
        save_checkpoint(path, model, optimizer, epoch=5)
    assert path.read_bytes() == good
    assert os.listdir(path.parent) == ["last.pt"]  # no partial file left behind
    monkeypatch.undo()
    assert load_checkpoint(path, restore_rng=False)["epoch"] == 4


def test_a_checkpoint_that_cannot_be_replaced_says_why_and_keeps_the_old_one(saved, monkeypatch):
    path, model, optimizer = saved
    good = path.read_bytes()

    def locked(source, target):  # as on Windows, when another program has the file open
        raise PermissionError(13, "Access is denied")

    monkeypatch.setattr(os, "replace", locked)
    with pytest.raises(CheckpointError, match=r"\(PermissionError: Access is denied\); the previous checkpoint "
                                              r"there, if any, is unchanged: make the folder writable, or close "
                                              r"the program that has the file open"):
        save_checkpoint(path, model, optimizer, epoch=5)
    assert path.read_bytes() == good
    assert not list(path.parent.glob(".*partial"))


def _write_zip(path):
    import zipfile

    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("notes/readme.txt", "not a checkpoint")


def _flip_a_byte(path):
    """Change one byte inside the largest tensor's data, as a failing disk or copy might."""
    import zipfile

    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        largest = max(archive.infolist(), key=lambda info: info.file_size)
        position = bytes(raw).index(archive.read(largest)) + largest.file_size // 2
    raw[position] ^= 0xFF
    path.write_bytes(bytes(raw))


def _legacy(path, state=None):
    """Save in torch's older format (not a zip archive), which torch.load still reads."""
    torch.save(state if state is not None else SmallCNN().state_dict(), path, _use_new_zipfile_serialization=False)


RECOVER = r"restore it from a copy, or start the run again \(fit with overwrite=True, or another checkpoint_path\)"


@pytest.mark.parametrize("damage, message", [
    (lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]),
     "is cut short: it starts as the zip archive torch.save writes, but the archive's end is missing .*: " + RECOVER),
    (lambda p: p.write_text("epoch 3, loss 1.2"),
     "is not a PyTorch checkpoint: it is neither the zip archive torch.save writes nor torch's older format .*: "
     + RECOVER),
    (_flip_a_byte, r"is damaged: the bytes of its part archive/data/\d+ do not match their checksum .*: " + RECOVER),
    (lambda p: (_legacy(p), p.write_bytes(p.read_bytes()[:-100])), "is damaged and cannot be read .*: " + RECOVER),
    (lambda p: torch.save(SmallCNN().state_dict(), p), "holds an OrderedDict with keys conv1.weight.*bare state_dict"),
    (_legacy, "holds an OrderedDict with keys conv1.weight.*bare state_dict"),
    (lambda p: torch.save({"epoch": 3, "weights": [1, 2]}, p), "not a checkpoint written by helpers.training.save_checkpoint"),
    (lambda p: torch.save({"f": re.compile("x")}, p),
     "weights_only loading refuses.*: Unsupported global: GLOBAL re._compile was not an allowed global"),
    (_write_zip, "is a zip archive but not a PyTorch checkpoint: it lacks the data.pkl"),
])
def test_a_truncated_or_foreign_file_gets_a_clear_error(saved, damage, message):
    path = saved[0]
    damage(path)
    with pytest.raises(CheckpointError, match=message) as error:
        load_checkpoint(path, SmallCNN())
    assert "\x1b" not in str(error.value) and "two options" not in str(error.value)  # torch's advice, cut


@pytest.mark.parametrize("other", [torch.optim.SGD, torch.optim.AdamW])
def test_a_checkpoint_of_another_optimizer_is_refused_before_anything_is_restored(saved, other):
    # Adam's state loads into SGD or AdamW without complaint: SGD fails later on 'momentum', and
    # AdamW silently takes Adam's weight_decay of 0.
    path = saved[0]
    model = SmallCNN()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = other(model.parameters(), lr=0.1)
    name = other.__name__
    with pytest.raises(CheckpointError, match=rf"holds the state of an Adam optimizer, but it is being loaded "
                                              rf"into an? {name}: to resume from it, create an Adam optimizer"):
        load_checkpoint(path, model, optimizer, restore_rng=False)
    _assert_same_state(weights, model.state_dict())  # untouched
    assert load_checkpoint(path, model, restore_rng=False)["optimizer_class"] == "Adam"  # weights alone: fine


def test_a_checkpoint_of_another_scheduler_is_refused(tmp_path):
    model = SmallCNN()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    save_checkpoint(tmp_path / "s.pt", model, optimizer, 1,
                    scheduler=torch.optim.lr_scheduler.StepLR(optimizer, step_size=1))
    other = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.9)
    with pytest.raises(CheckpointError, match="holds the state of a StepLR scheduler, but it is being loaded "
                                              "into an ExponentialLR"):
        load_checkpoint(tmp_path / "s.pt", model, optimizer, scheduler=other, restore_rng=False)


def test_a_checkpoint_in_torchs_older_format_loads(saved):
    # torch.save(..., _use_new_zipfile_serialization=False) writes no zip archive; torch.load reads it.
    path, model, _ = saved
    _legacy(path, torch.load(path, weights_only=True))
    other = SmallCNN()
    assert load_checkpoint(path, other, restore_rng=False)["epoch"] == 4
    _assert_same_state(model.state_dict(), other.state_dict())


def _snapshot(model, optimizer):
    """Copies of the weights, the optimizer's state and its settings, for _assert_untouched."""
    return copy.deepcopy((model.state_dict(), optimizer.state_dict()))


def _assert_untouched(model, optimizer, before):
    weights, optimizer_state = before
    _assert_same_state(weights, model.state_dict())
    _assert_same_state(optimizer_state["state"], optimizer.state_dict()["state"])
    assert optimizer_state["param_groups"] == optimizer.state_dict()["param_groups"]


@pytest.fixture
def trained(tmp_path):
    """A checkpoint after two steps of Adam (lr 1e-3), so that the optimizer has a state to restore."""
    seed_everything(0)
    model = SmallCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(2):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3])).backward()
        optimizer.step()
    path = tmp_path / "trained.pt"
    save_checkpoint(path, model, optimizer, epoch=2, loader_generator=torch.Generator().manual_seed(3))
    return path, model, optimizer


def _one_adam_step(model, optimizer):
    """A step, so that the optimizer has a state of its own that a load would replace."""
    nn.functional.cross_entropy(model(torch.randn(2, 3, 32, 32)), torch.tensor([0, 1])).backward()
    optimizer.step()


def test_an_optimizer_with_other_settings_is_refused_or_kept_on_request(trained):
    path, saved_model, saved_optimizer = trained
    model = SmallCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1, weight_decay=0.01)
    _one_adam_step(model, optimizer)
    before = _snapshot(model, optimizer)
    with pytest.raises(CheckpointError, match=r"trained.pt was trained with lr=0.001 and weight_decay=0, but the "
                                              r"optimizer given has lr=0.1 and weight_decay=0.01: to resume that "
                                              r"run, create the optimizer with the same settings; to go on from it "
                                              r"with the new settings, pass new_settings=True; or start a new run "
                                              r"\(in fit: overwrite=True, or another checkpoint_path\)"):
        load_checkpoint(path, model, optimizer, restore_rng=False)
    _assert_untouched(model, optimizer, before)
    # On request: the weights and Adam's averages from the checkpoint, the settings as given.
    load_checkpoint(path, model, optimizer, restore_rng=False, new_settings=True)
    _assert_same_state(saved_model.state_dict(), model.state_dict())
    _assert_same_state(saved_optimizer.state_dict()["state"], optimizer.state_dict()["state"])
    assert (optimizer.param_groups[0]["lr"], optimizer.param_groups[0]["weight_decay"]) == (0.1, 0.01)
    # The same settings load as before, and only the weights need no optimizer at all.
    same = torch.optim.Adam(model.parameters(), lr=1e-3)
    load_checkpoint(path, model, same, restore_rng=False)
    assert same.param_groups[0]["lr"] == 1e-3


@pytest.mark.parametrize("saved_one, given_one, message", [
    (False, True, "was saved by a run without a scheduler, but a StepLR scheduler is given: to resume that run, "
                  "leave the scheduler out; to train with a schedule, start a new run"),
    (True, False, "was saved by a run with a StepLR scheduler, but none is given, and the learning rate would stay "
                  "where that schedule left it: to resume that run, create the StepLR as it did and pass it too"),
])
def test_a_scheduler_given_or_left_out_unlike_the_saved_run_is_refused(tmp_path, saved_one, given_one, message):
    def scheduled(optimizer, on):
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5) if on else None

    model = SmallCNN()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    save_checkpoint(tmp_path / "s.pt", model, optimizer, 1, scheduler=scheduled(optimizer, saved_one))
    other = SmallCNN()
    other_optimizer = torch.optim.SGD(other.parameters(), lr=0.1)
    other_scheduler = scheduled(other_optimizer, given_one)
    before = _snapshot(other, other_optimizer)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(tmp_path / "s.pt", other, other_optimizer, scheduler=other_scheduler, restore_rng=False)
    _assert_untouched(other, other_optimizer, before)
    load_checkpoint(tmp_path / "s.pt", other, restore_rng=False)  # the weights alone: no optimizer, no schedule


def test_a_checkpoint_that_fits_the_model_but_not_the_optimizer_changes_nothing(trained):
    # The weights load first; the optimizer, over fc3 only, does not fit: the weights are put back.
    path = trained[0]
    model = SmallCNN()
    optimizer = torch.optim.Adam(model.fc3.parameters(), lr=1e-3)
    _one_adam_step(model, optimizer)
    before = _snapshot(model, optimizer)
    with pytest.raises(CheckpointError, match="does not fit the optimizer, so nothing was restored: .*size"):
        load_checkpoint(path, model, optimizer, restore_rng=False)
    _assert_untouched(model, optimizer, before)


def test_a_failure_at_the_last_step_of_a_load_puts_everything_back(trained, monkeypatch):
    set_rng_state, failed = training.set_rng_state, []

    def fails_once_half_done(state):  # the checkpoint's random state, set in part, then an error
        set_rng_state(state)
        if not failed:
            failed.append(True)
            raise RuntimeError("this machine cannot take that random state")

    monkeypatch.setattr(training, "set_rng_state", fails_once_half_done)
    path = trained[0]
    model = SmallCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    _one_adam_step(model, optimizer)
    before = _snapshot(model, optimizer)
    generator = torch.Generator().manual_seed(123)
    generator_state, random_state = generator.get_state(), torch.get_rng_state()
    with pytest.raises(CheckpointError, match="does not fit the random generators, so nothing was restored"):
        load_checkpoint(path, model, optimizer, loader_generator=generator)
    _assert_untouched(model, optimizer, before)
    assert torch.equal(generator.get_state(), generator_state)
    assert torch.equal(torch.get_rng_state(), random_state)
    _one_adam_step(model, optimizer)  # the optimizer still steps the model's parameters


def test_a_checkpoint_for_another_model_or_a_missing_file(saved, tmp_path):
    path = saved[0]
    with pytest.raises(CheckpointError, match=r"does not fit the model, so nothing was restored: Error\(s\) in "
                                              r"loading state_dict for Linear"):
        load_checkpoint(path, nn.Linear(2, 2), restore_rng=False)
    with pytest.raises(FileNotFoundError, match="there is no checkpoint file at"):
        load_checkpoint(tmp_path / "nope.pt")


# --- Progress and curves --------------------------------------------------------------------------------


def test_fit_prints_the_finished_bar_and_the_results_per_epoch(standin, capsys, monkeypatch):
    monkeypatch.setenv(training.EXECUTING_ENV, "1")
    train, validation = standin
    model = SmallCNN()
    fit(model, DataLoader(train, batch_size=64), DataLoader(validation, batch_size=64), nn.CrossEntropyLoss(),
        torch.optim.Adam(model.parameters()), CPU, 2)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and all(len(line) <= 80 for line in lines)
    assert re.fullmatch(r"epoch 1/2: 100%\|█+\| 3/3 \[\d\d:\d\d<00:00, +[\d.]+(batch/s|s/batch)\]", lines[0])
    assert re.fullmatch(r"  train loss \d\.\d{3}, accuracy \d+\.\d% \| validation loss \d\.\d{3}, "
                        r"accuracy \d+\.\d%", lines[1]), lines[1]


def test_the_bar_is_drawn_only_where_someone_watches(monkeypatch, capsys):
    monkeypatch.setenv(training.EXECUTING_ENV, "1")
    assert training.ProgressBar(3, "x").live is False
    monkeypatch.delenv(training.EXECUTING_ENV)
    bar = training.ProgressBar(3, "x")  # under pytest: no notebook, stderr is not a terminal
    assert not bar.visible and not bar.live
    bar.finish()
    assert capsys.readouterr().out == "x:   0%|          | 0/3 [00:00<?, ?batch/s]\n"


def test_train_one_epoch_alone_shows_its_bar_only_when_asked(standin, capsys):
    model = SmallCNN()
    loader = DataLoader(standin[1], batch_size=32)
    args = (model, loader, nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=0.01), CPU)
    train_one_epoch(*args)
    assert capsys.readouterr() == ("", "")  # no reader here, so no bar
    train_one_epoch(*args, progress=True, description="warm-up")
    out, err = capsys.readouterr()
    assert re.fullmatch(r"warm-up: 100%\|██████████\| 2/2 \[\d\d:\d\d<00:00, .*\]\n", out), out
    assert "warm-up" in err  # the live tqdm bar, on stderr, cleared at the end


def test_train_one_epoch_finishes_its_own_bar_where_a_reader_sees_it_and_never_a_callers(standin, capsys,
                                                                                         monkeypatch):
    # A notebook executed for the book (headless): the bar is not live, but the finished bar is
    # printed where a reader will see the page. A bar the caller passed is the caller's to finish.
    monkeypatch.setattr(training, "_in_notebook", lambda: True)
    monkeypatch.setenv(training.EXECUTING_ENV, "1")
    model = SmallCNN()
    loader = DataLoader(standin[1], batch_size=32)
    args = (model, loader, nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=0.01), CPU)
    train_one_epoch(*args, description="alone")
    out, _ = capsys.readouterr()
    assert re.fullmatch(r"alone: 100%\|██████████\| 2/2 \[\d\d:\d\d<00:00, .*\]\n", out), out
    bar = training.ProgressBar(len(loader), "owned")
    train_one_epoch(*args, progress=bar)
    assert capsys.readouterr() == ("", "") and bar.count == 2


NOTEBOOK_FIT = """\
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from helpers.training import SmallCNN, fit
torch.manual_seed(0)
data = TensorDataset(torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,)))
model = SmallCNN()
history = fit(model, DataLoader(data, batch_size=16), DataLoader(data, batch_size=32),
              nn.CrossEntropyLoss(), torch.optim.Adam(model.parameters()), "cpu", 2)
"""


def test_an_executed_notebook_stores_the_summaries_not_a_widget(monkeypatch):
    # What the book shows: each epoch's bar, redrawn while training, ends as its summary.
    import nbclient
    import nbformat

    monkeypatch.delenv(training.EXECUTING_ENV, raising=False)
    quiet = "_ = fit(model, DataLoader(data, batch_size=16), None, nn.CrossEntropyLoss(), " \
            "torch.optim.Adam(model.parameters()), 'cpu', 1, verbose=False)"
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(NOTEBOOK_FIT),
                                               nbformat.v4.new_code_cell(quiet)])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbclient.NotebookClient(notebook, timeout=120, kernel_name="python3").execute()
    outputs = notebook.cells[0].outputs
    assert [o.output_type for o in outputs] == ["display_data", "display_data"]
    for epoch, output in enumerate(outputs, 1):
        assert set(output.data) == {"text/plain"}  # no widget
        bar, results = output.data["text/plain"].splitlines()
        assert re.fullmatch(rf"epoch {epoch}/2: 100%\|█+\| 4/4 \[\d\d:\d\d<00:00, .*batch.*\]", bar), bar
        assert results.startswith("  train loss ") and "| validation loss " in results
    # verbose=False: nothing at all, not even an emptied bar.
    assert notebook.cells[1].outputs == []


def test_plot_history_draws_four_curves():
    import matplotlib.pyplot as plt

    history = {"epoch": [1, 2], "train_loss": [2.0, 1.5], "train_accuracy": [0.3, 0.5],
               "val_loss": [1.8, 1.6], "val_accuracy": [0.35, 0.45], "seconds": [1.0, 1.0]}
    figure = plot_history(history)
    assert [len(ax.lines) for ax in figure.axes] == [2, 2]
    plt.close(figure)
    # Accuracy ticks every 2.5 points: each label reads its own value (0.425 is 42.5%, not 42%).
    figure = plot_history({**history, "train_accuracy": [0.3, 0.5], "val_accuracy": [0.35, 0.45]})
    figure.canvas.draw()
    ax = figure.axes[1]
    ticks = [(value, label.get_text()) for value, label in zip(ax.get_yticks(), ax.get_yticklabels())]
    assert any(label.endswith(".5%") for _, label in ticks), ticks
    for value, label in ticks:
        assert label.endswith("%") and float(label[:-1]) == pytest.approx(100 * value), ticks
    plt.close(figure)
    with pytest.raises(ValueError, match="no epochs"):
        plot_history(training.empty_history())


# --- The chapter's exercises: typical wrong answers get a precise verdict ------------------------------------


def test_mean_loss_exercise_names_each_usual_mistake():
    def evaluate_loss(model, loader, loss_fn, *, eval_mode=True, no_grad=True, weighted=True, restore=True):
        if eval_mode:
            model.eval()
        with torch.set_grad_enabled(not no_grad):
            losses = [(loss_fn(model(x), y).item(), len(y)) for x, y in loader]
        if restore:
            model.train()
        if weighted:
            return sum(l * n for l, n in losses) / sum(n for _, n in losses)
        return sum(l for l, _ in losses) / len(losses)

    assert judge_answer("training.mean_loss", evaluate_loss).status == PASSED
    for mistake, message in [({"weighted": False}, "mean of the three batch means"),
                             ({"eval_mode": False}, "call model.eval()"),
                             ({"no_grad": False}, "torch.no_grad()"),
                             ({"restore": False}, "left in eval mode")]:
        verdict = judge_answer("training.mean_loss", lambda m, l, f: evaluate_loss(m, l, f, **mistake))
        assert verdict.status == FAILED and message in verdict.message, verdict.message


def test_conv_output_size_exercise_catches_a_forgotten_padding_or_dilation():
    def size_for(kernel_span):
        def answer(size, kernel_size, stride=1, padding=0, dilation=1):
            return (size + 2 * padding - kernel_span(kernel_size, dilation)) // stride + 1
        return answer

    assert judge_answer("training.conv_output_size", size_for(lambda k, d: d * (k - 1) + 1)).status == PASSED
    verdict = judge_answer("training.conv_output_size", lambda size, kernel_size, stride=1, padding=0, dilation=1:
                           (size - kernel_size) // stride + 1)
    assert verdict.message.startswith("on size 32, kernel 3, padding 1, expected 32, got 30")
    verdict = judge_answer("training.conv_output_size", size_for(lambda k, d: k))
    assert verdict.message.startswith("on size 32, kernel 3, dilation 2, expected 28, got 30. That is the size "
                                      "without dilation"), verdict.message
    verdict = judge_answer("training.conv_output_size", size_for(lambda k, d: d * k))
    assert verdict.message.startswith("on size 32, kernel 3, dilation 2, expected 28, got 27. That takes the "
                                      "kernel to cover dilation * kernel_size pixels"), verdict.message
    verdict = judge_answer("training.conv_output_size", lambda size, kernel_size, stride=1, padding=0:
                           (size + 2 * padding - kernel_size) // stride + 1)  # the chapter's output_side
    assert verdict.message.startswith("on size 32, kernel 3, dilation 2, the answer raised TypeError"), verdict.message
    assert "unexpected keyword argument 'dilation'" in verdict.message


# Found by mutation testing: each test below fails on a small, plausible change to the code.


def test_to_device_moves_every_tensor_in_nested_containers():
    meta = torch.device("meta")  # a device other than the CPU, on every machine
    moved = to_device({"x": (torch.ones(1), [torch.zeros(1)]), "y": torch.ones(2), "name": "kept"}, meta)
    assert moved["y"].device == meta and moved["x"][0].device == meta and moved["x"][1][0].device == meta
    assert moved["name"] == "kept"


class _WithWeights(Dataset):
    """Targets that are a pair (class, weight), as a weighted loss wants them."""

    def __init__(self, n):
        self.x, self.y, self.w = torch.randn(n, 3), torch.randint(0, 2, (n,)), torch.rand(n)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], (self.y[i], self.w[i])


def test_train_one_epoch_counts_the_samples_of_targets_that_are_a_tuple():
    model = nn.Linear(3, 2)
    loader = DataLoader(_WithWeights(10), batch_size=4)  # batches of 4, 4 and 2; targets [y, w]
    weighted = lambda outputs, targets: (nn.functional.cross_entropy(outputs, targets[0], reduction="none")
                                         * targets[1]).mean()
    result = train_one_epoch(model, loader, weighted, torch.optim.SGD(model.parameters(), lr=0.1), CPU,
                             progress=False, correct_fn=None)
    assert result["samples"] == 10


def test_train_one_epoch_is_the_plain_loop_and_weighs_each_batch_by_its_size():
    # The reference loop, written out: zero the gradients, forward, backward, step, per batch.
    torch.manual_seed(0)
    model = nn.Linear(3, 4)
    reference = copy.deepcopy(model)
    loader = DataLoader(TensorDataset(torch.randn(10, 3), torch.randint(0, 4, (10,))), batch_size=4)  # 4, 4, 2
    result = train_one_epoch(model, loader, nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=0.5),
                             CPU, progress=False)
    optimizer, total, correct = torch.optim.SGD(reference.parameters(), lr=0.5), 0.0, 0
    for x, y in loader:
        optimizer.zero_grad()
        outputs = reference(x)
        loss = nn.functional.cross_entropy(outputs, y)
        loss.backward()
        optimizer.step()
        total += loss.item() * len(y)
        correct += (outputs.argmax(1) == y).sum().item()
    for a, b in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b)
    assert math.isclose(result["loss"], total / 10, rel_tol=1e-6)  # per sample, not per batch
    assert result["accuracy"] == correct / 10


def test_an_empty_loader_is_refused_with_a_clear_error():
    model = nn.Linear(2, 2)
    empty = DataLoader(TensorDataset(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long)), batch_size=4)
    with pytest.raises(ValueError, match="the loader gave no batches"):
        evaluate(model, empty, nn.CrossEntropyLoss(), CPU)
    with pytest.raises(ValueError, match="the loader gave no batches"):
        train_one_epoch(model, empty, nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=0.1), CPU,
                        progress=False)


def test_evaluate_reports_a_nan_loss_instead_of_raising():
    model = nn.Linear(2, 2)
    loader = DataLoader(TensorDataset(torch.tensor([[1.0, float("nan")]] * 4), torch.zeros(4, dtype=torch.long)),
                        batch_size=2)
    assert math.isnan(evaluate(model, loader, nn.CrossEntropyLoss(), CPU)["loss"])


def test_without_a_correct_fn_the_accuracy_is_nan_everywhere(standin):
    train, validation = standin
    model = SmallCNN()
    loader = DataLoader(validation, batch_size=32)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    assert math.isnan(train_one_epoch(model, loader, nn.CrossEntropyLoss(), optimizer, CPU, progress=False,
                                      correct_fn=None)["accuracy"])
    assert math.isnan(evaluate(model, loader, nn.CrossEntropyLoss(), CPU, correct_fn=None)["accuracy"])
    history = fit(model, loader, loader, nn.CrossEntropyLoss(), optimizer, CPU, 1, verbose=False, correct_fn=None)
    assert math.isnan(history["train_accuracy"][0]) and math.isnan(history["val_accuracy"][0])
    assert history["seconds"][0] > 0  # each epoch's wall time is recorded


def test_headless_execution_draws_no_bar_even_where_a_terminal_could_show_one(monkeypatch):
    monkeypatch.setattr(training.sys.stderr, "isatty", lambda: True)  # as in a terminal
    monkeypatch.setenv(training.EXECUTING_ENV, "1")
    assert training.ProgressBar(3, "x").live is False
    monkeypatch.delenv(training.EXECUTING_ENV)
    bar = training.ProgressBar(3, "x")
    assert bar.visible and bar.live
    bar.clear()


def test_a_live_bar_shows_the_latest_loss_and_the_finished_bar_does_not(capsys):
    bar = training.ProgressBar(3, "x", live=True)  # a tqdm bar on stderr here
    bar.redraw_seconds = 0  # redraw at every batch
    bar.update(torch.tensor(1.5))
    # train_one_epoch passes the loss itself, which requires a gradient: reading it must not warn.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bar.update(torch.tensor(1.25, requires_grad=True) * 1)
    assert "loss=1.250" in bar.text()
    bar.update(1.125)  # a number read with .item() already
    assert "loss=1.125" in bar.text()
    bar.finish()
    out = capsys.readouterr().out
    assert out.startswith("x: 100%|") and "loss" not in out


def test_a_checkpoint_is_on_the_disk_before_it_replaces_the_previous_one(saved, monkeypatch):
    path, model, optimizer = saved
    events, real_fsync, real_replace = [], os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: events.append("fsync") or real_fsync(fd))
    monkeypatch.setattr(os, "replace", lambda src, dst: events.append(("replace", src == path or str(src) == str(path)))
                        or real_replace(src, dst))
    save_checkpoint(path, model, optimizer, epoch=5)
    assert events == ["fsync", ("replace", False)]  # a temporary file, synced, then renamed over the old one
    assert load_checkpoint(path, restore_rng=False)["epoch"] == 5


def test_a_compiled_models_checkpoint_loads_into_the_plain_model_and_back(tmp_path):
    model = SmallCNN()
    compiled = torch.compile(model)  # compiles at its first call only: nothing runs here
    save_checkpoint(tmp_path / "c.pt", compiled, torch.optim.Adam(compiled.parameters()), 1)
    plain = SmallCNN()
    load_checkpoint(tmp_path / "c.pt", plain, restore_rng=False)  # no "_orig_mod." in the names
    for name, value in model.state_dict().items():
        assert torch.equal(plain.state_dict()[name], value)
    other = torch.compile(SmallCNN())
    load_checkpoint(tmp_path / "c.pt", other, restore_rng=False)
    assert torch.equal(other._orig_mod.fc3.weight, model.fc3.weight)


def test_a_checkpoint_from_a_newer_version_is_refused(saved):
    path = saved[0]
    state = torch.load(path, weights_only=True)
    state["version"] = training.CHECKPOINT_VERSION + 1
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"has checkpoint version 2, newer than this code understands \(1\): "
                                              r"update the helpers package"):
        load_checkpoint(path, SmallCNN(), restore_rng=False)


def test_an_adam_run_with_a_one_cycle_schedule_resumes(standin, tmp_path):
    # OneCycleLR cycles Adam's betas (its momentum): the saved betas differ from a new optimizer's.
    def adam(parameters):
        return torch.optim.Adam(parameters, lr=1e-3)

    model, *_ = _fit_slice(standin, 3, None, adam, _one_cycle(0.01))
    checkpoint = tmp_path / "adam.pt"
    _fit_slice(standin, 1, checkpoint, adam, _one_cycle(0.01))
    resumed, *_ = _fit_slice(standin, 3, checkpoint, adam, _one_cycle(0.01), seed=5, resume=True)
    for name, value in model.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], value), name


def test_a_scheduled_run_with_other_settings_is_not_told_to_use_new_settings(standin, tmp_path):
    checkpoint = tmp_path / "cycle.pt"
    _fit_slice(standin, 1, checkpoint, lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9), _one_cycle(0.1))
    with pytest.raises(CheckpointError) as error:
        _fit_slice(standin, 3, checkpoint, lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9), _one_cycle(0.2),
                   resume=True)
    assert str(error.value).endswith("to resume that run, create the optimizer with the same settings; or start a "
                                     "new run (in fit: overwrite=True, or another checkpoint_path)")
    assert "new_settings=True" not in str(error.value)  # it would be refused with a scheduler


def test_a_failed_load_puts_the_scheduler_back_too(tmp_path, monkeypatch):
    model = SmallCNN()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    for _ in range(2):
        optimizer.step()
        scheduler.step()
    save_checkpoint(tmp_path / "s.pt", model, optimizer, 2, scheduler=scheduler)
    other = SmallCNN()
    other_optimizer = torch.optim.SGD(other.parameters(), lr=0.1)
    other_scheduler = torch.optim.lr_scheduler.StepLR(other_optimizer, step_size=1, gamma=0.5)
    before = copy.deepcopy(other_scheduler.state_dict())

    set_rng_state, failed = training.set_rng_state, []

    def fails(state):  # the first call (the checkpoint's state) fails; the undo's goes through
        if not failed:
            failed.append(True)
            raise RuntimeError("this machine cannot take that random state")
        set_rng_state(state)

    monkeypatch.setattr(training, "set_rng_state", fails)
    with pytest.raises(CheckpointError, match="does not fit the random generators, so nothing was restored"):
        load_checkpoint(tmp_path / "s.pt", other, other_optimizer, scheduler=other_scheduler)
    assert other_scheduler.state_dict() == before and other_optimizer.param_groups[0]["lr"] == 0.1


def test_a_loader_generator_given_for_a_checkpoint_that_has_none_is_left_alone(saved):
    path = saved[0]  # saved without a loader generator
    generator = torch.Generator().manual_seed(7)
    state = generator.get_state()
    load_checkpoint(path, SmallCNN(), loader_generator=generator, restore_rng=False)
    assert torch.equal(generator.get_state(), state)


def test_load_checkpoint_without_restore_rng_leaves_the_random_generators_alone(saved):
    path, model = saved[0], SmallCNN()
    torch.rand(5)  # move on from the state the checkpoint holds
    before = torch.get_rng_state()
    load_checkpoint(path, model, restore_rng=False)
    assert torch.equal(torch.get_rng_state(), before)
    load_checkpoint(path, model)  # restore_rng=True: the checkpoint's state
    assert not torch.equal(torch.get_rng_state(), before)


def test_plot_history_leaves_out_a_validation_curve_that_was_never_measured():
    import matplotlib.pyplot as plt

    nan = math.nan
    history = {"epoch": [1, 2], "train_loss": [2.0, 1.5], "train_accuracy": [0.3, 0.5],
               "val_loss": [nan, nan], "val_accuracy": [nan, nan], "seconds": [1.0, 1.0]}
    figure = plot_history(history)
    assert [len(ax.lines) for ax in figure.axes] == [1, 1]
    plt.close(figure)


def test_fit_records_the_losses_and_accuracies_that_evaluate_gives(standin):
    from helpers.runtime import seed_everything

    train, validation = standin
    seed_everything(0)
    model = SmallCNN()
    val_loader = DataLoader(validation, batch_size=64)
    history = fit(model, DataLoader(train, batch_size=64), val_loader, nn.CrossEntropyLoss(),
                  torch.optim.Adam(model.parameters()), CPU, 1, verbose=False)
    result = evaluate(model, val_loader, nn.CrossEntropyLoss(), CPU)
    assert history["val_loss"] == [result["loss"]] and history["val_accuracy"] == [result["accuracy"]]


def test_a_nan_loss_in_the_first_epoch_says_whether_the_weights_are_spoilt_and_to_start_over(standin, tmp_path):
    def nan_value_finite_gradient(outputs, targets):  # NaN in the value only: the steps stay finite
        return nn.functional.cross_entropy(outputs, targets) + torch.tensor(math.nan)

    model = SmallCNN()
    with pytest.raises(FloatingPointError) as error:
        fit(model, DataLoader(standin[1], batch_size=32), None, nan_value_finite_gradient,
            torch.optim.SGD(model.parameters(), lr=0.01), CPU, 2, checkpoint_path=tmp_path / "first.pt",
            verbose=False)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert str(error.value).endswith("The model in memory has taken this epoch's steps: create it again and start "
                                     "over with a lower learning rate")  # no checkpoint "after epoch 0"


def test_finishing_a_terminal_bar_closes_it():
    bar = training.ProgressBar(3, "x", live=True)  # a tqdm bar on stderr here
    bar.update()
    bar.update()
    bar.finish()
    assert bar._tqdm.disable  # closed: tqdm has wiped its line (leave=False)


# --- Mistakes a learner makes with fit and save_checkpoint ------------------------------------------


def test_an_optimizer_of_another_model_is_refused(standin):
    # Running a notebook's model cell again after the optimizer's: the loop would train nothing.
    model = SmallCNN()
    optimizer = torch.optim.SGD(SmallCNN().parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"the optimizer holds none of the model's parameters, so training would "
                                         r"not change the model .*create the optimizer again from this model"):
        fit(model, make_loader(standin[0], 64, shuffle=False, num_workers=0), None, nn.CrossEntropyLoss(), optimizer, CPU, 1,
            verbose=False)
    # An optimizer of part of the model (fine-tuning the last layer) is fine.
    train_one_epoch(model, make_loader(standin[0], 64, shuffle=False, num_workers=0), nn.CrossEntropyLoss(),
                    torch.optim.SGD(list(model.parameters())[-2:], lr=0.1), CPU, progress=False)


@pytest.mark.parametrize("loss_fn, error, message", [
    (nn.CrossEntropyLoss, TypeError, r"loss_fn is the class CrossEntropyLoss, not a loss: pass an instance, "
                                     r"CrossEntropyLoss\(\)"),
    (nn.CrossEntropyLoss(reduction="sum"), ValueError, r"loss_fn has reduction='sum', but the loop needs each "
                                                       r"batch's mean loss: create it with reduction='mean'"),
])
def test_a_loss_that_is_not_the_batchs_mean_is_refused(standin, loss_fn, error, message):
    model = SmallCNN()
    loader = make_loader(standin[0], 64, shuffle=False, num_workers=0)
    with pytest.raises(error, match=message):
        train_one_epoch(model, loader, loss_fn, torch.optim.SGD(model.parameters(), lr=0.1), CPU, progress=False)
    with pytest.raises(error, match=message):
        evaluate(model, loader, loss_fn, CPU)


def test_numpy_numbers_in_the_settings_and_history_are_saved_as_plain_numbers(tmp_path):
    np = pytest.importorskip("numpy")
    model = SmallCNN()
    optimizer = torch.optim.SGD(model.parameters(), lr=np.logspace(-3, -1, 3)[0])  # a learning-rate sweep
    path = tmp_path / "np.pt"
    save_checkpoint(path, model, optimizer, 1, history={"train_loss": [np.float64(2.3)]})
    state = load_checkpoint(path, model, torch.optim.SGD(model.parameters(), lr=0.001), restore_rng=False)
    assert state["history"]["train_loss"] == [2.3] and type(state["history"]["train_loss"][0]) is float


def test_a_checkpoint_that_could_not_be_loaded_is_not_written(saved):
    path, model, optimizer = saved
    good = path.read_bytes()
    with pytest.raises(CheckpointError, match=r"last.pt was not written: the checkpoint would hold Python objects "
                                              r"that weights_only loading refuses \(.*PosixPath.*\): keep the "
                                              r"history .* to numbers, strings, lists, dicts and tensors"):
        save_checkpoint(path, model, optimizer, 5, history={"data": path.parent})
    assert path.read_bytes() == good and os.listdir(path.parent) == ["last.pt"]


def test_swapped_arguments_to_save_checkpoint_are_refused(saved):
    path, model, optimizer = saved
    good = path.read_bytes()
    with pytest.raises(TypeError, match=r"the model and the optimizer are swapped: call save_checkpoint\(path, "
                                        r"model, optimizer, epoch\)"):
        save_checkpoint(path, optimizer, model, 5)
    with pytest.raises(TypeError, match=r"needs an nn.Module and a torch.optim optimizer, got an OrderedDict and an Adam"):
        save_checkpoint(path, model.state_dict(), optimizer, 5)
    assert path.read_bytes() == good


def test_a_step_that_diverges_at_the_end_of_an_epoch_does_not_replace_the_last_checkpoint(standin, tmp_path):
    # The training loss is measured before each step, so it stays finite when the epoch's last
    # step blows the weights up; the validation loss and the weights show it.
    checkpoint = tmp_path / "run.pt"
    train = make_loader(Subset(standin[0], range(64)), 64, shuffle=False, num_workers=0)  # one batch per epoch
    validation = make_loader(standin[1], 64, shuffle=False, num_workers=0)
    seed_everything(0)
    model = SmallCNN()
    fit(model, train, validation, nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=0.1), CPU, 1,
        checkpoint_path=checkpoint, verbose=False)
    good = checkpoint.read_bytes()
    with pytest.raises(FloatingPointError, match=r"(the weights became NaN or infinite|the validation loss became "
                                                 r"(nan|inf)) by the end of epoch 2, and its checkpoint was not "
                                                 r"written: lower the learning rate.*run.pt holds the run after "
                                                 r"epoch 1"):
        fit(model, train, validation, nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=1e30), CPU, 3,
            checkpoint_path=checkpoint, resume=True, new_settings=True, verbose=False)
    assert checkpoint.read_bytes() == good


@pytest.mark.parametrize("saved_settings, given_settings, message", [
    (dict(amsgrad=False), dict(amsgrad=True), "amsgrad=False, but the optimizer given has amsgrad=True"),
    (dict(centered=False), dict(centered=True), "centered=False, but the optimizer given has centered=True"),
    (dict(momentum=0.0), dict(momentum=0.9), "momentum=0.0, but the optimizer given has momentum=0.9"),
])
def test_new_settings_cannot_add_state_the_run_never_kept(standin, tmp_path, saved_settings, given_settings,
                                                           message):
    # Adam's amsgrad keeps a running maximum, RMSprop's centered a mean gradient and its momentum
    # a buffer: from a checkpoint without them, the first step would fail on a missing key.
    kind = torch.optim.Adam if "amsgrad" in saved_settings else torch.optim.RMSprop
    checkpoint = tmp_path / "run.pt"
    _fit_slice(standin, 1, checkpoint, lambda p: kind(p, lr=1e-3, **saved_settings))
    with pytest.raises(CheckpointError, match=rf"{message}, which new_settings=True cannot change: .*Resume with "
                                              rf"{message.split(',')[0]}, or start a new run"):
        _fit_slice(standin, 2, checkpoint, lambda p: kind(p, lr=1e-3, **given_settings), resume=True,
                   new_settings=True)
    # The settings that keep the same state still change.
    _fit_slice(standin, 2, checkpoint, lambda p: kind(p, lr=1e-4, **saved_settings), resume=True,
               new_settings=True)


def test_a_checkpoint_path_that_is_a_folder_is_refused_before_training(standin, tmp_path):
    for path in (tmp_path, f"{tmp_path}/new/"):
        with pytest.raises(ValueError, match=rf"checkpoint_path {re.escape(str(path))} is a folder: give a file in "
                                             rf"it, such as .*last.pt"):
            _fit_slice(standin, 1, path)
    assert os.listdir(tmp_path) == []


def test_resuming_from_a_path_with_no_checkpoint_says_it_starts_a_new_run(standin, tmp_path, capsys):
    model = SmallCNN()
    fit(model, make_loader(Subset(standin[0], range(64)), 64, shuffle=False, num_workers=0), None, nn.CrossEntropyLoss(),
        torch.optim.SGD(model.parameters(), lr=0.1), CPU, 1, checkpoint_path=tmp_path / "typo.pt", resume=True)
    assert capsys.readouterr().out.startswith(f"no checkpoint at {tmp_path / 'typo.pt'} yet: starting a new run\n")


def test_a_multistep_schedule_resumes_with_its_milestones(standin, tmp_path):
    # MultiStepLR keeps its milestones in a Counter, which a rebuilt-from-items copy would count
    # instead of copy: the learning rate would then never decay after resuming.
    def schedule(optimizer):
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[1, 2], gamma=0.1)

    _, optimizer, _, _ = _fit_slice(standin, 3, None, _sgd(0.1), schedule)
    checkpoint = tmp_path / "steps.pt"
    _fit_slice(standin, 1, checkpoint, _sgd(0.1), schedule)
    _, resumed, scheduler, _ = _fit_slice(standin, 3, checkpoint, _sgd(0.1), schedule, resume=True)
    assert resumed.param_groups[0]["lr"] == pytest.approx(optimizer.param_groups[0]["lr"]) == pytest.approx(1e-3)
    assert scheduler.milestones == {1: 1, 2: 1}


def test_a_history_built_with_a_defaultdict_is_saved_as_a_dict(saved):
    import collections

    path, model, optimizer = saved
    save_checkpoint(path, model, optimizer, 5, history=collections.defaultdict(list, {"epoch": [1]}))
    assert load_checkpoint(path, restore_rng=False)["history"]["epoch"] == [1]


def test_a_checkpoint_whose_folder_is_a_file_is_refused_by_name(saved, tmp_path):
    path, model, optimizer = saved
    (tmp_path / "runs").write_text("a file, not a folder")
    with pytest.raises(CheckpointError, match=r"could not write the checkpoint .*runs/last.pt \((FileExistsError|"
                                              r"NotADirectoryError)"):
        save_checkpoint(tmp_path / "runs" / "last.pt", model, optimizer, 5)


def test_what_the_argument_checks_let_through(standin):
    model = SmallCNN()
    loader = make_loader(Subset(standin[0], range(64)), 64, shuffle=False, num_workers=0)

    class OwnSGD:  # an optimizer of one's own, without torch.optim's param_groups
        def __init__(self, parameters):
            self.parameters = list(parameters)

        def zero_grad(self, set_to_none=True):
            for p in self.parameters:
                p.grad = None

        @torch.no_grad()
        def step(self):
            for p in self.parameters:
                p -= 0.01 * p.grad

    before = [p.detach().clone() for p in model.parameters()]
    train_one_epoch(model, loader, nn.CrossEntropyLoss(), OwnSGD(model.parameters()), CPU, progress=False)
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters()))

    def kl_on_log_softmax(outputs, targets):  # KLDivLoss's "batchmean" is the batch's mean
        return nn.KLDivLoss(reduction="batchmean")(outputs.log_softmax(1), nn.functional.one_hot(targets, 10).float())

    kl = nn.KLDivLoss(reduction="batchmean")
    training._check_loss_fn(kl)
    train_one_epoch(model, loader, kl_on_log_softmax, torch.optim.SGD(model.parameters(), lr=0.01), CPU,
                    progress=False)


def test_finite_weights_are_all_checked():
    assert training._all_finite([torch.ones(2), torch.ones(3, dtype=torch.float64)]) is True
    assert training._all_finite([torch.ones(2), torch.tensor([math.nan])]) is False
    assert training._all_finite([torch.tensor([math.inf]), torch.ones(2)]) is False
    assert training._all_finite([]) is True


def test_to_device_keeps_a_namedtuples_fields():
    from collections import namedtuple

    from helpers.training import to_device

    Batch = namedtuple("Batch", "images labels")
    moved = to_device(Batch(torch.ones(2, 3), [torch.zeros(2)]), "cpu")
    assert isinstance(moved, Batch) and moved.images.shape == (2, 3) and isinstance(moved.labels, list)


# --- Gradient clipping and schedulers that fit steps once per epoch -----------------------------------


def test_max_grad_norm_caps_every_step_and_fit_passes_it_on(standin):
    # With plain SGD a step is lr times the gradient: clipped to 1e-3, no step moves the weights
    # further than lr * 1e-3, where an unclipped step on this data moves them much further.
    def distance_moved(run, **options):
        seed_everything(0)
        model = SmallCNN()
        start = torch.cat([p.detach().flatten() for p in model.parameters()])
        run(model, torch.optim.SGD(model.parameters(), lr=0.1), **options)
        return (torch.cat([p.detach().flatten() for p in model.parameters()]) - start).norm().item()

    loader = DataLoader(standin[0], batch_size=64)  # 3 batches, 3 steps

    def one_epoch(model, optimizer, **options):
        train_one_epoch(model, loader, nn.CrossEntropyLoss(), optimizer, CPU, progress=False, **options)

    def one_fit(model, optimizer, **options):
        fit(model, loader, None, nn.CrossEntropyLoss(), optimizer, CPU, 1, verbose=False, **options)

    for run in (one_epoch, one_fit):
        assert distance_moved(run) > 0.01
        assert distance_moved(run, max_grad_norm=1e-3) <= 3 * 0.1 * 1e-3 * (1 + 1e-4)


def test_reduce_lr_on_plateau_steps_with_the_validation_loss(standin):
    train, validation = standin
    seed_everything(0)
    model = SmallCNN()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    stepped_with = []

    class Recording(torch.optim.lr_scheduler.ReduceLROnPlateau):
        def step(self, metrics, *args, **kwargs):
            stepped_with.append(metrics)
            super().step(metrics, *args, **kwargs)

    # A threshold no epoch can beat: every epoch after the first counts as a plateau.
    plateau = Recording(optimizer, factor=0.5, patience=0, threshold=100.0, threshold_mode="abs")
    history = fit(model, DataLoader(train, batch_size=64), DataLoader(validation, batch_size=64),
                  nn.CrossEntropyLoss(), optimizer, CPU, 3, scheduler=plateau, verbose=False)
    assert stepped_with == history["val_loss"]
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.025)
    with pytest.raises(ValueError, match="ReduceLROnPlateau steps with the validation loss, and val_loader is None"):
        fit(model, DataLoader(train, batch_size=64), None, nn.CrossEntropyLoss(), optimizer, CPU, 3,
            scheduler=plateau, verbose=False)


@pytest.mark.parametrize("cap", [0, -1.0, math.nan, math.inf, "1.0", True, 10**400])
def test_a_clipping_cap_that_is_not_a_positive_length_is_refused_before_any_step(standin, cap):
    model = SmallCNN()
    before = copy.deepcopy(model.state_dict())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = DataLoader(standin[0], batch_size=64)
    for run in (lambda: train_one_epoch(model, loader, nn.CrossEntropyLoss(), optimizer, CPU, progress=False,
                                        max_grad_norm=cap),
                lambda: fit(model, loader, None, nn.CrossEntropyLoss(), optimizer, CPU, 1, verbose=False,
                            max_grad_norm=cap)):
        with pytest.raises(ValueError, match=r"max_grad_norm is the largest length the gradient may keep"):
            run()
    _assert_same_state(model.state_dict(), before)


def test_a_one_cycle_schedule_shorter_than_the_run_is_refused_before_training(standin):
    model = SmallCNN()
    before = copy.deepcopy(model.state_dict())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, total_steps=2)
    with pytest.raises(ValueError, match="made for 2 steps, but fit steps the scheduler once per epoch, 3 times"):
        fit(model, DataLoader(standin[0], batch_size=64), None, nn.CrossEntropyLoss(), optimizer, CPU, 3,
            scheduler=schedule, verbose=False)
    _assert_same_state(model.state_dict(), before)


def test_a_clipping_cap_fit_refuses_is_refused_before_a_checkpoint_is_restored(standin, tmp_path):
    checkpoint = tmp_path / "last.pt"
    _fit_slice(standin, 1, checkpoint)
    model = SmallCNN()
    before, random_state = copy.deepcopy(model.state_dict()), torch.get_rng_state()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    with pytest.raises(ValueError, match="max_grad_norm is the largest length"):
        fit(model, DataLoader(standin[0], batch_size=64), None, nn.CrossEntropyLoss(), optimizer, CPU, 2,
            checkpoint_path=checkpoint, resume=True, verbose=False, max_grad_norm=0)
    _assert_same_state(model.state_dict(), before)
    assert torch.equal(torch.get_rng_state(), random_state)


@pytest.mark.parametrize("cap", [1, 0.5, np.float32(1.0), np.int64(2)])
def test_any_positive_number_is_a_clipping_cap(standin, cap):
    model = SmallCNN()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    result = train_one_epoch(model, DataLoader(standin[0], batch_size=64), nn.CrossEntropyLoss(), optimizer, CPU,
                             progress=False, max_grad_norm=cap)
    assert result["samples"] == len(standin[0])
