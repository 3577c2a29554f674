"""helpers.distributed: DDP under torchrun with Gloo, on the CPU.

The central test starts two processes with torchrun and checks that two processes with batch B
each end with the same weights as one process with batch 2B, within a stated tolerance (not
bitwise: the sums of per-example gradients run in a different order), and that the tolerance is
meaningful (a different effective batch misses it by far).
"""

import dataclasses
import re
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch.utils.data.distributed import DistributedSampler

from helpers import distributed, exercises
from helpers.data import CIFAR10Data, StandInCIFAR10
from helpers.distributed import (DistributedContext, OptionError, TrainConfig, check_batches, choose_backend,
                                 init_distributed, parse_args, quiet_environment, shard_loader, torchrun_command,
                                 train)
from helpers.exercises import FAILED, PASSED, judge_answer
from helpers.training import SmallCNN, load_checkpoint

# Two processes with batch B against one with 2B: float32 sums in another order, over 32 steps.
ATOL, RTOL = 1e-5, 1e-4
COMMON = ["--device", "cpu", "--data", "standin", "--num-images", "1024", "--epochs", "2", "--lr", "0.05"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def group_of_one(monkeypatch):
    """This test process as a process group of one (Gloo), as torchrun would set it up."""
    for name, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                        "MASTER_PORT": str(_free_port())}.items():
        monkeypatch.setenv(name, value)
    context = init_distributed("cpu")
    yield context
    dist.destroy_process_group()


def _train_in_this_process(context, batch_size, tmp_path, name):
    config = TrainConfig(epochs=2, batch_size=batch_size, lr=0.05, data="standin", num_images=1024,
                         save_weights=str(tmp_path / name), device="cpu")
    train(config, context)
    return torch.load(tmp_path / name, weights_only=True)


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """torchrun with two processes of batch 32 (Gloo), rank 0 saving a checkpoint and the weights."""
    folder = tmp_path_factory.mktemp("ddp")
    done = subprocess.run(torchrun_command(2, "--batch-size", "32", *COMMON, "--checkpoint",
                                           str(folder / "checkpoint.pt"), "--save-weights", str(folder / "two.pt")),
                          capture_output=True, text=True, env=quiet_environment(), cwd=folder, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return folder, done.stdout, done.stderr


def test_two_processes_with_batch_b_end_where_one_process_with_2b_does(two_processes, group_of_one, tmp_path, capsys):
    folder, _, _ = two_processes
    two = torch.load(folder / "two.pt", weights_only=True)
    one = _train_in_this_process(group_of_one, 64, tmp_path, "one.pt")
    for name in one:
        torch.testing.assert_close(two[name], one[name], atol=ATOL, rtol=RTOL)
    # The tolerance means something: one process with batch 32 (another effective batch) misses it by far.
    other = _train_in_this_process(group_of_one, 32, tmp_path, "other.pt")
    assert max((other[name] - one[name]).abs().max().item() for name in one) > 1e-2
    assert "1 process(es), backend gloo" in capsys.readouterr().out


def test_train_reshuffles_every_epoch(group_of_one, tmp_path, monkeypatch):
    # Without set_epoch every epoch repeats the first one's order: the two-process test cannot see
    # that, since both of its runs would repeat it alike.
    orders = []
    sampler_order = DistributedSampler.__iter__

    def recorded(sampler):
        orders.append(list(sampler_order(sampler)))
        return iter(orders[-1])

    monkeypatch.setattr(DistributedSampler, "__iter__", recorded)
    _train_in_this_process(group_of_one, 64, tmp_path, "weights.pt")
    assert len(orders) == 2 and sorted(orders[0]) == sorted(orders[1])
    assert orders[0] != orders[1]


def test_only_rank_0_prints_and_writes_and_the_output_is_clean(two_processes):
    folder, stdout, stderr = two_processes
    assert stderr == ""  # no warnings from torchrun, Gloo or the workers
    lines = stdout.splitlines()
    assert lines[:3] == ["2 process(es), backend gloo, on cpu",
                         "training data: 1024 images of the generated stand-in for CIFAR-10",
                         "effective batch 2 x 32 = 64 examples, 16 steps per epoch"]
    assert [re.match(r"epoch (\d)/2: training loss \d\.\d{4}, accuracy [\d.]+%, over 1024 examples$", line)
            is not None for line in lines[3:]] == [True, True]
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint.pt", "two.pt"]  # no partial files
    state = load_checkpoint(folder / "checkpoint.pt", restore_rng=False)
    assert state["epoch"] == 2
    assert all(torch.equal(state["model"][name], value)
               for name, value in torch.load(folder / "two.pt", weights_only=True).items())


def test_an_existing_file_is_refused_by_every_rank_before_any_training(tmp_path):
    checkpoint = tmp_path / "checkpoint.pt"
    checkpoint.write_bytes(b"an earlier run")
    done = subprocess.run(torchrun_command(2, "--device", "cpu", "--num-images", "64", "--batch-size", "16",
                                           "--epochs", "1", "--checkpoint", str(checkpoint)),
                          capture_output=True, text=True, env=quiet_environment(), cwd=tmp_path, timeout=120)
    assert done.returncode != 0 and done.stdout == ""  # refused before the header: nothing trained
    refusal = (f"helpers.distributed: error: --checkpoint {checkpoint} exists already, and a new run would "
               f"overwrite it: pass another --checkpoint to keep it, or --overwrite to replace it")
    assert done.stderr.count(refusal) == 1, done.stderr[-3000:]  # said by rank 0 alone
    assert "[rank" not in done.stderr  # no rank died with a traceback (timeout above: none hung)
    assert checkpoint.read_bytes() == b"an earlier run"


def test_every_rank_stops_on_rank_0s_verdict_about_its_files(monkeypatch, tmp_path):
    # Only rank 0 writes, so only it looks at the paths; the others raise what it found.
    def from_rank_0(objects, src):
        assert src == 0 and objects == [None]
        objects[0] = "rank 0's verdict"

    monkeypatch.setattr(distributed.dist, "broadcast_object_list", from_rank_0)
    rank_1 = DistributedContext(1, 1, 2, torch.device("cpu"), "gloo")
    with pytest.raises(OptionError, match="rank 0's verdict"):
        distributed.check_outputs(TrainConfig(checkpoint=str(tmp_path / "new" / "checkpoint.pt")), rank_1)
    assert not (tmp_path / "new").exists()  # rank 1 made no folder


def _no_training(*args, **kwargs):
    pytest.fail("training started although the run was to be refused")


@pytest.mark.parametrize("option, path, message", [
    ("save_weights", "weights.pt", r"--save-weights \S+weights.pt exists already, and a new run would overwrite "
                                   r"it: pass another --save-weights to keep it, or --overwrite to replace it"),
    ("checkpoint", "folder", r"--checkpoint \S+folder is a folder: give a file name"),
    ("save_weights", "a-file/weights.pt", r"--save-weights \S+a-file/weights.pt: its folder cannot be created")])
def test_outputs_that_cannot_be_written_are_refused_before_training(group_of_one, tmp_path, monkeypatch, option,
                                                                     path, message):
    (tmp_path / "weights.pt").write_bytes(b"an earlier run")
    (tmp_path / "folder").mkdir()
    (tmp_path / "a-file").write_text("not a folder")
    monkeypatch.setattr(distributed, "train_one_epoch", _no_training)
    paths = {"checkpoint": str(tmp_path / "new" / "checkpoint.pt"), option: str(tmp_path / path)}
    config = TrainConfig(epochs=1, batch_size=32, num_images=64, device="cpu", **paths)
    with pytest.raises(OptionError, match=message):
        train(config, group_of_one)
    assert (tmp_path / "weights.pt").read_bytes() == b"an earlier run"
    if "cannot be created" not in message:  # a refused file leaves no new folder behind
        assert not (tmp_path / "new").exists()


def test_overwrite_replaces_the_files_and_missing_folders_are_made_first(group_of_one, tmp_path):
    checkpoint, weights = tmp_path / "checkpoint.pt", tmp_path / "new" / "folder" / "weights.pt"
    checkpoint.write_bytes(b"an earlier run")
    train(TrainConfig(epochs=1, batch_size=32, num_images=64, checkpoint=str(checkpoint), save_weights=str(weights),
                      overwrite=True, device="cpu"), group_of_one)
    assert load_checkpoint(checkpoint, restore_rng=False)["epoch"] == 1
    assert torch.load(weights, weights_only=True).keys() == SmallCNN().state_dict().keys()
    assert parse_args(["--overwrite"])[1].overwrite and not parse_args([])[1].overwrite


def test_too_few_images_for_one_batch_per_rank_are_refused_with_what_to_change(group_of_one, capsys):
    with pytest.raises(OptionError, match=re.escape(
            "10 training images shared by 2 process(es) give each 5 per epoch, less than one batch of 32 (a smaller "
            "last batch is dropped): use --batch-size 5 or less, or at least 64 training images (--num-images), or "
            "fewer processes")):
        check_batches(10, 32, 2)
    with pytest.raises(OptionError, match=r"give each 0 per epoch.*: use at least 4 training images \(--num-images\), "
                                          r"or fewer processes$"):
        check_batches(1, 2, 2)
    with pytest.raises(OptionError, match="give each 31 per epoch"):  # drop_last: 63 images give 31 each
        check_batches(63, 32, 2)
    check_batches(64, 32, 2)
    # Both commands check before they print anything.
    config = TrainConfig(epochs=1, batch_size=32, num_images=10, device="cpu")
    for command in (train, distributed.demo):
        with pytest.raises(OptionError, match="use --batch-size 10 or less, or at least 32 training images"):
            command(config, group_of_one)
    assert capsys.readouterr().out == ""


def test_the_header_names_the_data_and_says_when_it_is_the_stand_in(group_of_one, monkeypatch, capsys):
    monkeypatch.setenv("COURSE_QUICK", "1")  # --data cifar10 loads the stand-in
    train(TrainConfig(epochs=1, batch_size=32, num_images=64, data="cifar10", device="cpu"), group_of_one)
    assert ("training data: 64 images of the generated stand-in for CIFAR-10, not CIFAR-10: quick mode "
            "(COURSE_QUICK=1) is on") in capsys.readouterr().out.splitlines()
    # Where real CIFAR-10 is loaded, its source is named.
    real = CIFAR10Data(torch.utils.data.Subset(StandInCIFAR10(20), range(20)), None, [], "torchvision download in /x")
    monkeypatch.setattr("helpers.data.load_cifar10", lambda announce: real)
    dataset, source = distributed.cifar10_tensors(8)
    assert len(dataset) == 8 and source == "CIFAR-10 from the torchvision download in /x"


def test_the_shards_of_the_ranks_are_disjoint_cover_the_data_and_change_with_set_epoch():
    dataset = torch.utils.data.TensorDataset(torch.arange(40))
    loaders = [shard_loader(dataset, 4, DistributedContext(rank, rank, 2, torch.device("cpu"), "gloo"), seed=1)
               for rank in range(2)]
    epochs = []
    for epoch in range(2):
        shards = []
        for loader in loaders:
            loader.sampler.set_epoch(epoch)
            shards.append(torch.cat([batch[0] for batch in loader]).tolist())
        assert not set(shards[0]) & set(shards[1]) and sorted(shards[0] + shards[1]) == list(range(40))
        assert all(len(loader) == 5 for loader in loaders)
        epochs.append(shards)
    assert epochs[0][0] != epochs[1][0]


def test_all_mean_weights_by_samples(group_of_one):
    assert distributed.all_mean(0.25, 8, group_of_one) == pytest.approx(0.25)
    assert group_of_one.is_main and group_of_one.backend == "gloo"


def test_clear_errors_outside_torchrun_and_for_bad_options(monkeypatch):
    for name in distributed.TORCHRUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(RuntimeError, match="lacks RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT: start "
                                           "this with torchrun"):
        init_distributed("cpu")
    assert choose_backend("cpu") == ("gloo", torch.device("cpu"))
    with pytest.raises(ValueError, match="device must be 'auto', 'cuda' or 'cpu', got 'tpu'"):
        choose_backend("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA GPU: pass --device cpu"):
            choose_backend("cuda")
        assert choose_backend("auto")[0] == "gloo"
    with pytest.raises(SystemExit):
        parse_args(["--batch-size", "0"])
    with pytest.raises(SystemExit):
        parse_args(["--num-images", "0"])
    command, config = parse_args(["demo", "--epochs", "3", "--data", "cifar10"])
    assert command == "demo" and config.epochs == 3 and config.data == "cifar10"


def test_cifar10_trains_on_every_image_unless_told_otherwise():
    # The chapter's multi-GPU commands give --data cifar10 and no --num-images.
    assert parse_args(["--data", "cifar10", "--batch-size", "64"])[1].image_count is None
    assert parse_args(["--data", "cifar10", "--num-images", "500"])[1].image_count == 500
    assert parse_args([])[1].image_count == distributed.STAND_IN_IMAGES == 1024
    assert parse_args(["--data", "standin", "--num-images", "10"])[1].image_count == 10


@pytest.mark.parametrize("local_rank, order", [(0, ["load", "barrier"]), (1, ["barrier", "load"])])
def test_cifar10_is_downloaded_by_local_rank_0_of_every_machine(monkeypatch, local_rank, order):
    # Global rank 9 is on the second machine (8 processes each): its local rank decides.
    events = []
    monkeypatch.setattr(distributed.dist, "barrier", lambda: events.append("barrier"))
    monkeypatch.setattr(distributed, "cifar10_tensors", lambda limit: events.append("load") or (limit, "source"))
    context = DistributedContext(9 - local_rank, local_rank, 16, torch.device("cpu"), "gloo")
    assert distributed.training_data(TrainConfig(data="cifar10"), context) == (None, "source")  # all images
    assert events == order


def test_the_torchrun_command_and_its_environment():
    command = torchrun_command(2, "demo", python="python")
    assert command == ["python", "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m",
                       "helpers.distributed", "demo"]
    assert quiet_environment()["OMP_NUM_THREADS"] == "1"


# --- The chapter's exercises: typical wrong answers get a precise message ----------------------------------------


def _shard(n, world, rank, epoch, seed=0, drop_last=False, use_epoch=True, use_drop_last=True,
           block=False, pad_once=False):
    """shard_indices, right by default; each flag makes one usual mistake."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + (epoch if use_epoch else 0))).tolist()
    total = n // world * world if drop_last and use_drop_last else -(-n // world) * world
    if pad_once:  # pads with the order's first indices only: too short when the padding exceeds n
        order += order[:total - n]
    else:
        order = (order * -(-total // n))[:total]
    if block:
        return order[rank * (total // world):(rank + 1) * (total // world)]
    return order[rank::world]


def test_shard_exercise_agrees_with_the_sampler_and_names_each_usual_mistake():
    assert judge_answer("distributed.shard_indices", _shard).status == PASSED
    for mistake, message in [
            ({"use_epoch": False}, "That is the order of epoch 0: the order must change every epoch"),
            ({"pad_once": True}, "on 1 example, 3 ranks, rank 2, epoch 0 (fewer examples than ranks), expected "
                                 "1 index, got 0: the padding (2 indices) is longer than the order (1)"),
            ({"use_drop_last": False}, "Those are the indices for drop_last=False: with drop_last=True the "
                                       "order is not padded but cut"),
            ({"block": True}, "got a contiguous block of the shuffled order")]:
        verdict = judge_answer("distributed.shard_indices", lambda *a, m=mistake, **k: _shard(*a, **k, **m))
        assert verdict.status == FAILED and message in verdict.message, verdict.message


def test_the_shard_exercise_asks_for_what_the_sampler_does_when_padding_exceeds_the_data():
    # DistributedSampler repeats the whole order when there are fewer examples than ranks.
    cases = exercises._distributed_shard_cases()
    assert any(-(-n // world) * world - n > n for (n, world, _, _) in (c.args for c in cases))
    assert {c.kwargs.get("drop_last", False) for c in cases} == {False, True}
    assert exercises._distributed_sampler_indices(1, 3, 2, 0) == [0] != _shard(1, 3, 2, 0, pad_once=True)


def _accumulate(model, loss_fn, inputs, targets, micro_batches, divide=True, zero=True):
    if zero:
        model.zero_grad()
    for x, y in zip(inputs.chunk(micro_batches), targets.chunk(micro_batches)):
        loss = loss_fn(model(x), y)
        (loss / micro_batches if divide else loss).backward()
    return [p.grad.clone() for p in model.parameters()]


def test_accumulation_exercise_names_each_usual_mistake():
    assert judge_answer("distributed.accumulated_gradients", _accumulate).status == PASSED
    in_float64 = judge_answer("distributed.accumulated_gradients",  # right, in another dtype
                              lambda *a: [g.double() for g in _accumulate(*a)])
    assert in_float64.status == PASSED, in_float64.message
    def whole_batch(model, loss_fn, inputs, targets, micro_batches):  # right gradients, no accumulation
        model.zero_grad()
        loss_fn(model(inputs), targets).backward()
        return [p.grad.clone() for p in model.parameters()]

    verdict = judge_answer("distributed.accumulated_gradients", whole_batch)
    assert verdict.status == FAILED and verdict.message.startswith(
        "on 12 examples in 3 micro-batches of 4, the model ran forward passes on batches of [12]: run forward "
        "and backward on each of the 3 micro-batches of 4 in turn"), verdict.message
    for mistake, message in [({"divide": False}, "the gradients are 3 times too large"),
                             ({"zero": False}, "zero it first")]:
        verdict = judge_answer("distributed.accumulated_gradients",
                               lambda *a, m=mistake: _accumulate(*a, **m))
        assert verdict.status == FAILED and message in verdict.message, verdict.message


def test_a_forward_pass_under_no_grad_besides_the_micro_batches_is_allowed():
    def logging_too(model, loss_fn, inputs, targets, micro_batches):  # prints the whole batch's loss
        with torch.no_grad():
            loss_fn(model(inputs), targets)
        return _accumulate(model, loss_fn, inputs, targets, micro_batches)

    verdict = judge_answer("distributed.accumulated_gradients", logging_too)
    assert verdict.status == PASSED, verdict.message


def test_shard_indices_may_be_numpy_or_tensor_integers_but_not_floats():
    def shard(n, world, rank, epoch, seed=0, drop_last=False):
        return _shard(n, world, rank, epoch, seed=seed, drop_last=drop_last)

    for kind in (np.int64, torch.tensor):
        verdict = judge_answer("distributed.shard_indices", lambda *a, k=kind, **kw: [k(i) for i in shard(*a, **kw)])
        assert verdict.status == PASSED, verdict.message
    verdict = judge_answer("distributed.shard_indices", lambda *a, **kw: [float(i) for i in shard(*a, **kw)])
    assert verdict.status == FAILED and "expected a list of ints" in verdict.message


# Found by mutation testing: each test below fails on a small, plausible change to the code.


def test_a_rank_other_than_0_neither_prints_nor_writes(group_of_one, tmp_path, capsys):
    # This process plays rank 8 of 16: the first process of a second machine (local rank 0), which trains on its
    # shard but leaves the printing and the files to global rank 0.
    rank_8 = dataclasses.replace(group_of_one, rank=8, world_size=16)
    assert not rank_8.is_main
    train(TrainConfig(epochs=1, batch_size=16, num_images=256, checkpoint=str(tmp_path / "checkpoint.pt"),
                      save_weights=str(tmp_path / "weights.pt"), device="cpu"), rank_8)
    assert capsys.readouterr().out == "" and list(tmp_path.iterdir()) == []


def test_all_mean_sums_over_the_ranks_then_divides_by_all_their_samples(group_of_one, monkeypatch):
    # Another rank with 24 samples of mean 0.75, added to what this rank (8 samples of mean 0.25) contributes.
    real_all_reduce = dist.all_reduce

    def with_another_rank(tensor, *args, **kwargs):
        real_all_reduce(tensor, *args, **kwargs)
        tensor += torch.tensor([0.75 * 24, 24.0], dtype=tensor.dtype)

    monkeypatch.setattr(distributed.dist, "all_reduce", with_another_rank)
    assert distributed.all_mean(0.25, 8, group_of_one) == pytest.approx((0.25 * 8 + 0.75 * 24) / 32)


def test_shard_loader_follows_the_global_rank_and_the_seed_and_cuts_uneven_data():
    # 43 examples on 2 ranks in batches of 4: 21 each (one example cut, none repeated), 5 full batches. Each rank is
    # alone on its machine (local rank 0): its global rank picks its shard.
    for rank in range(2):
        loader = shard_loader(torch.utils.data.TensorDataset(torch.arange(43)), 4,
                              DistributedContext(rank, 0, 2, torch.device("cpu"), "gloo"), seed=1)
        expected = list(DistributedSampler(range(43), num_replicas=2, rank=rank, shuffle=True, seed=1,
                                           drop_last=True))
        assert len(loader.sampler) == len(expected) == 21 and len(loader) == 5
        assert torch.cat([batch[0] for batch in loader]).tolist() == expected[:20]


def test_train_uses_the_configured_learning_rate_and_momentum(group_of_one, tmp_path):
    checkpoint = tmp_path / "checkpoint.pt"
    train(TrainConfig(epochs=1, batch_size=32, num_images=64, lr=0.01, momentum=0.5, checkpoint=str(checkpoint),
                      device="cpu"), group_of_one)
    group = load_checkpoint(checkpoint, restore_rng=False)["optimizer"]["param_groups"][0]
    assert (group["lr"], group["momentum"]) == (0.01, 0.5)


def test_every_option_reaches_the_config_and_epochs_must_be_at_least_1():
    with pytest.raises(SystemExit):
        parse_args(["--epochs", "0"])
    _, config = parse_args(["--lr", "0.1", "--seed", "3", "--device", "cpu", "--epochs", "1"])
    assert (config.lr, config.seed, config.device, config.epochs) == (0.1, 3, "cpu", 1)


@pytest.mark.parametrize("option, value, message", [
    ("--lr", "-1", "--lr must be a positive number, got -1.0: e.g. --lr 0.05"),
    ("--lr", "0", "--lr must be a positive number, got 0.0"),
    ("--lr", "nan", "--lr must be a positive number, got nan"),
    ("--lr", "inf", "--lr must be a positive number, got inf"),
    ("--seed", "-1", "--seed must be between 0 and 2**32 - 1, got -1: e.g. --seed 0"),
    ("--seed", str(2**32), f"--seed must be between 0 and 2**32 - 1, got {2**32}"),
    ("--epochs", "0", "--epochs must be at least 1"),
    ("--batch-size", "0", "--batch-size must be at least 1"),
    ("--num-images", "-5", "--num-images must be at least 1"),
])
def test_an_option_that_cannot_work_is_refused_by_the_parser_with_the_reason(option, value, message, capsys):
    with pytest.raises(SystemExit) as raised:
        parse_args([option, value])
    assert raised.value.code == 2  # argparse's usage error
    assert f"error: {message}" in capsys.readouterr().err


def test_a_bad_option_stops_main_before_it_joins_a_process_group(monkeypatch, capsys):
    joined = []
    monkeypatch.setattr(distributed, "init_distributed", lambda device: joined.append(device))
    with pytest.raises(SystemExit):
        distributed.main(["--lr", "-1"])
    assert joined == [] and "--lr must be a positive number" in capsys.readouterr().err


def test_the_extreme_learning_rates_and_seeds_that_work_are_accepted():
    for lr, seed in (("1e-8", "0"), ("10", str(2**32 - 1))):
        _, config = parse_args(["--lr", lr, "--seed", seed])
        assert (config.lr, config.seed) == (float(lr), int(seed))


def test_the_remedies_for_too_few_images_fit_the_case():
    with pytest.raises(OptionError, match=re.escape("give each 1 per epoch, less than one batch of 2 (a smaller last "
                                                    "batch is dropped): use --batch-size 1 or less, or")):
        check_batches(2, 2, 2)
    with pytest.raises(OptionError, match=re.escape("use --batch-size 10 or less, or at least 32 training images "
                                                    "(--num-images)") + "$"):  # one process: not "fewer processes"
        check_batches(10, 32, 1)


def test_every_rank_waits_at_a_barrier_after_each_checkpoint(group_of_one, tmp_path, monkeypatch):
    events = []
    monkeypatch.setattr(distributed, "save_checkpoint", lambda *args: events.append("save"))
    monkeypatch.setattr(distributed.dist, "barrier", lambda: events.append("barrier"))
    train(TrainConfig(epochs=2, batch_size=32, num_images=64, checkpoint=str(tmp_path / "checkpoint.pt"),
                      device="cpu"), group_of_one)
    assert events == ["save", "barrier", "save", "barrier"]


def test_a_local_rank_without_its_gpu_is_refused(monkeypatch):
    for name, value in {"RANK": "2", "LOCAL_RANK": "2", "WORLD_SIZE": "4", "MASTER_ADDR": "127.0.0.1",
                        "MASTER_PORT": "29500"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(distributed, "choose_backend", lambda device: ("nccl", None))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda *args, **kwargs: pytest.fail("joined a group"))
    with pytest.raises(RuntimeError, match="local rank 2 needs GPU 2, but this machine has 2: start at most that many"):
        init_distributed("cuda")


def test_main_runs_the_command_asked_for_and_always_leaves_the_group(monkeypatch, capsys):
    events = []
    monkeypatch.setattr(distributed, "init_distributed",
                        lambda device: DistributedContext(0, 0, 1, torch.device("cpu"), "gloo"))
    monkeypatch.setattr(distributed.dist, "destroy_process_group", lambda: events.append("left"))
    monkeypatch.setattr(distributed, "demo", lambda config, context: events.append("demo"))
    monkeypatch.setattr(distributed, "train", lambda config, context: events.append("train"))
    assert distributed.main(["demo"]) == 0 and distributed.main([]) == 0
    assert events == ["demo", "left", "train", "left"]

    def refused(config, context):
        raise OptionError("the reason")

    monkeypatch.setattr(distributed, "train", refused)
    assert distributed.main([]) == 2 and events[-1] == "left"
    assert capsys.readouterr().err == "helpers.distributed: error: the reason\n"


def test_init_distributed_joins_with_the_global_rank_from_torchrun(monkeypatch):
    # Process 1 of the second machine, 8 processes per machine: global rank 9, local rank 1.
    for name, value in {"RANK": "9", "LOCAL_RANK": "1", "WORLD_SIZE": "16", "MASTER_ADDR": "127.0.0.1",
                        "MASTER_PORT": "29500"}.items():
        monkeypatch.setenv(name, value)
    joined = {}
    monkeypatch.setattr(distributed.dist, "init_process_group",
                        lambda backend, **kwargs: joined.update(kwargs, backend=backend))
    context = init_distributed("cpu")
    assert joined == {"backend": "gloo", "rank": 9, "world_size": 16, "device_id": None}
    assert (context.rank, context.local_rank, context.world_size, context.is_main) == (9, 1, 16, False)


def test_the_stand_in_data_follows_the_seed():
    rank_0 = DistributedContext(0, 0, 1, torch.device("cpu"), "gloo")
    first, again, other = (distributed.training_data(TrainConfig(seed=seed, num_images=8), rank_0)[0].tensors[0]
                           for seed in (0, 0, 1))
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_quiet_environment_turns_libuv_off_on_windows_only(monkeypatch):
    monkeypatch.delenv("USE_LIBUV", raising=False)
    monkeypatch.setattr(sys, "platform", "linux")
    assert "USE_LIBUV" not in quiet_environment() and quiet_environment()["OMP_NUM_THREADS"] == "1"
    monkeypatch.setattr(sys, "platform", "win32")
    assert quiet_environment()["USE_LIBUV"] == "0"
    monkeypatch.setenv("USE_LIBUV", "1")  # a reader's own choice is kept
    assert quiet_environment()["USE_LIBUV"] == "1"
