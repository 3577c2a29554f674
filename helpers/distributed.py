"""Training on several processes with DistributedDataParallel: one script, launched by torchrun.

Introduced in the chapter "Scaling out with DistributedDataParallel" (book/distributed.ipynb). It
runs as::

    torchrun --standalone --nproc-per-node=2 -m helpers.distributed \\
        --epochs 2 --batch-size 32

``torchrun`` starts the processes and gives each one its rank in environment variables;
``init_distributed`` reads them and joins the process group (NCCL between GPUs, Gloo between
CPU processes); ``train`` runs the course's ``train_one_epoch`` on a ``DistributedDataParallel``
model, each process on its own shard of the data (``DistributedSampler``), and only rank 0
prints and writes files. ``python -m helpers.distributed --help`` lists the options.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

from helpers.runtime import seed_everything
from helpers.training import SmallCNN, save_checkpoint, train_one_epoch

TORCHRUN_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
STAND_IN_IMAGES = 1024  # the stand-in's default size: enough to show the mechanics in seconds
STAND_IN = "the generated stand-in for CIFAR-10"  # helpers.data.StandInCIFAR10


class OptionError(ValueError):
    """The script's options cannot work as given; the message says what to change."""


@dataclass
class DistributedContext:
    """Who this process is in the group, and what it computes on."""

    rank: int  # 0 .. world_size - 1, unique across all machines
    local_rank: int  # 0 .. processes on this machine - 1: which GPU to use
    world_size: int
    device: torch.device
    backend: str  # "nccl" or "gloo"

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that prints and writes files."""
        return self.rank == 0


def choose_backend(device: str = "auto") -> tuple[str, torch.device | None]:
    """``("nccl", None)`` where CUDA GPUs are to be used, else ``("gloo", cpu)``.

    ``device``: "auto" (CUDA when available), "cuda" or "cpu". With NCCL no device is returned:
    ``init_distributed`` picks the GPU of the process's local rank.
    """
    if device not in ("auto", "cuda", "cpu"):
        raise ValueError(f"device must be 'auto', 'cuda' or 'cpu', got {device!r}")
    if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' was asked for, but this machine has no CUDA GPU: pass "
                               "--device cpu to run on the CPU with Gloo, or run on a machine with "
                               "NVIDIA GPUs and a CUDA build of PyTorch")
        return "nccl", None
    return "gloo", torch.device("cpu")


def init_distributed(device: str = "auto") -> DistributedContext:
    """Join the process group that ``torchrun`` set up for this process.

    torchrun puts ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``
    and ``MASTER_PORT`` in each process's environment. On GPUs the process
    takes the GPU numbered by its local rank, and the backend is NCCL; on
    CPUs the backend is Gloo. Call ``dist.destroy_process_group()`` at the end.
    """
    missing = [name for name in TORCHRUN_VARIABLES if name not in os.environ]
    if missing:
        raise RuntimeError(
            f"the environment lacks {', '.join(missing)}: start this with "
            f"torchrun (e.g. `torchrun --standalone --nproc-per-node=2 -m "
            f"helpers.distributed`), which sets them for every process")
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    world_size = int(os.environ["WORLD_SIZE"])
    backend, chosen = choose_backend(device)
    if backend == "nccl":
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(
                f"local rank {local_rank} needs GPU {local_rank}, but this "
                f"machine has {torch.cuda.device_count()}: start at most that "
                f"many processes per machine")
        chosen = torch.device("cuda", local_rank)
        torch.cuda.set_device(chosen)  # this process's GPU, for NCCL too
    # Meets the other processes at MASTER_ADDR:MASTER_PORT (from torchrun).
    dist.init_process_group(backend, rank=rank, world_size=world_size,
                            device_id=chosen if backend == "nccl" else None)
    return DistributedContext(rank, local_rank, world_size, chosen, backend)


def _normalised_tensors(dataset, limit: int | None = None) -> TensorDataset:
    """``dataset``'s images (a random ``limit`` of them) decoded once and normalised with their
    own per-channel statistics, as a ``TensorDataset`` of images (N, 3, H, W) and labels (N,)."""
    from helpers.fast import channel_stats, dataset_to_tensors, normalise, random_subset

    images, labels = random_subset(*dataset_to_tensors(dataset, num_workers=0), limit, seed=0)
    mean, std = channel_stats(images)
    return TensorDataset(normalise(images, mean, std), labels)


def stand_in_tensors(num_images: int, seed: int = 0) -> tuple[TensorDataset, str]:
    """The quick-mode stand-in for CIFAR-10 (``helpers.data.StandInCIFAR10``), normalised (the
    same on every rank), and what it is (``STAND_IN``)."""
    from helpers.data import StandInCIFAR10

    return _normalised_tensors(StandInCIFAR10(num_images, seed=seed)), STAND_IN


def cifar10_tensors(limit: int | None = None) -> tuple[TensorDataset, str]:
    """CIFAR-10's training split (``helpers.data.load_cifar10``, quiet), normalised, and where it
    came from: in quick mode that is the stand-in, and the description says so."""
    from helpers.data import StandInCIFAR10, load_cifar10

    cifar = load_cifar10(announce=False)
    if isinstance(cifar.train, StandInCIFAR10):
        source = f"{STAND_IN}, not CIFAR-10: quick mode (COURSE_QUICK=1) is on"
    else:
        source = f"CIFAR-10 from the {cifar.source}"
    return _normalised_tensors(cifar.train, limit), source


def training_data(config: "TrainConfig",
                  context: DistributedContext) -> tuple[TensorDataset, str]:
    """The training examples, the same on every rank (each loads them),
    and where they came from, in words.

    CIFAR-10 may have to be downloaded, once per machine: local rank 0 of
    each machine does that while every other process waits at a barrier of
    the whole group, so that no two processes of a machine write the same
    files. (With one folder shared by all the machines, only global rank 0
    should download.)
    """
    if config.data == "standin":
        return stand_in_tensors(config.image_count, config.seed)
    if config.data != "cifar10":
        raise ValueError(f"data must be 'standin' or 'cifar10', "
                         f"got {config.data!r}")
    downloads = context.local_rank == 0  # one process per machine
    if not downloads:
        dist.barrier()  # until every machine's local rank 0 has the files
    dataset, source = cifar10_tensors(config.image_count)
    if downloads:
        dist.barrier()  # then let the others read them
    return dataset, source


def shard_loader(dataset, batch_size: int, context: DistributedContext, seed: int = 0) -> DataLoader:
    """A loader over this rank's shard: ``DistributedSampler`` gives rank r the positions
    r, r + W, r + 2W, ... of one shuffled order that every rank draws from the same seed.

    ``drop_last=True`` on both: every rank takes the same number of equal batches, so their
    all-reduces pair up. Call ``loader.sampler.set_epoch(epoch)`` before each epoch.
    """
    sampler = DistributedSampler(dataset, num_replicas=context.world_size, rank=context.rank,
                                 shuffle=True, seed=seed, drop_last=True)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=True, num_workers=0)


def all_mean(value: float, weight: int, context: DistributedContext) -> float:
    """The mean over all ranks of ``value``, each weighted by its ``weight`` (e.g. its samples)."""
    totals = torch.tensor([value * weight, float(weight)], dtype=torch.float64,
                          device=context.device)
    dist.all_reduce(totals)  # sum over the ranks, the result on every rank
    return (totals[0] / totals[1]).item()


@dataclass
class TrainConfig:
    """What one distributed run trains, and where rank 0 writes: the script's arguments
    (``momentum`` has no option: the script keeps 0.9).

    ``batch_size`` is per process (the effective batch is ``batch_size * world_size``); ``data``
    is "standin" or "cifar10", and ``num_images`` their number (None: 1024 stand-in images, or
    all of CIFAR-10's training set). Rank 0 saves a checkpoint to ``checkpoint`` after every epoch
    and the final weights to ``save_weights``; ``overwrite`` lets it replace those files.
    """

    epochs: int = 2
    batch_size: int = 32  # per process; the effective batch is batch_size * world_size
    lr: float = 0.05
    momentum: float = 0.9
    seed: int = 0
    data: str = "standin"  # "standin" or "cifar10"
    num_images: int | None = None  # None: 1024 stand-in images, or all of CIFAR-10's training set
    checkpoint: str | None = None  # rank 0 saves here after every epoch
    save_weights: str | None = None  # rank 0 saves the final state_dict here
    overwrite: bool = False  # replace the two files above if they exist
    device: str = "auto"

    @property
    def image_count(self) -> int | None:
        """How many training images to use; None means all of them (CIFAR-10)."""
        if self.num_images is not None:
            return self.num_images
        return STAND_IN_IMAGES if self.data == "standin" else None


def _output_problem(config: TrainConfig) -> str | None:
    """Why the files of ``--checkpoint`` and ``--save-weights`` cannot be
    written, or None; then (and only then) creates their folders."""
    paths = {option: Path(name) for option, name in
             (("--checkpoint", config.checkpoint),
              ("--save-weights", config.save_weights)) if name is not None}
    for option, path in paths.items():
        if path.is_dir():
            return f"{option} {path} is a folder: give a file name"
        if path.exists() and not config.overwrite:
            return (f"{option} {path} exists already, and a new run would "
                    f"overwrite it: pass another {option} to keep it, or "
                    f"--overwrite to replace it")
    for option, path in paths.items():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            return f"{option} {path}: its folder cannot be created ({error})"
    return None


def check_outputs(config: TrainConfig, context: DistributedContext) -> None:
    """Before any training, rank 0 (which writes the files) checks where
    they go; every rank raises its verdict (``OptionError``), so that all
    stop together instead of waiting for rank 0 at a barrier."""
    verdict = [_output_problem(config) if context.is_main else None]
    dist.broadcast_object_list(verdict, src=0)  # rank 0's, on every rank
    if verdict[0] is not None:
        raise OptionError(verdict[0])


def check_batches(num_images: int, batch_size: int, world_size: int) -> None:
    """Refuse (``OptionError``) a run in which a rank would get no batch: each
    rank gets ``num_images // world_size`` images per epoch, and the loader
    drops a last batch smaller than ``batch_size``."""
    per_rank = num_images // world_size
    if per_rank >= batch_size:
        return
    remedies = [f"at least {batch_size * world_size} training images "
                f"(--num-images)"]
    if per_rank >= 1:
        remedies.insert(0, f"--batch-size {per_rank} or less")
    if world_size > 1:
        remedies.append("fewer processes")
    raise OptionError(
        f"{num_images} training images shared by {world_size} process(es) "
        f"give each {per_rank} per epoch, less than one batch of "
        f"{batch_size} (a smaller last batch is dropped): use "
        f"{', or '.join(remedies)}")


def train(config: TrainConfig, context: DistributedContext) -> nn.Module:
    """Train ``SmallCNN`` with SGD under DDP; returns the trained model.

    Every rank computes the mean loss over its own ``batch_size`` examples
    and its gradient; DDP averages the gradients of all ranks during
    ``backward()``, so every rank applies the same update: the one for
    the mean loss over ``batch_size * world_size`` examples.
    """
    check_outputs(config, context)  # rank 0's files, before any work
    dataset, source = training_data(config, context)
    check_batches(len(dataset), config.batch_size, context.world_size)
    loader = shard_loader(dataset, config.batch_size, context, config.seed)
    seed_everything(config.seed)  # DDP also copies rank 0's weights to all
    model = SmallCNN().to(context.device)
    gpu = [context.device.index] if context.device.type == "cuda" else None
    ddp_model = DistributedDataParallel(model, device_ids=gpu)
    optimizer = torch.optim.SGD(ddp_model.parameters(), lr=config.lr,
                                momentum=config.momentum)
    world = context.world_size
    if context.is_main:  # one process speaks for all
        print(f"{world} process(es), backend {context.backend}, on "
              f"{context.device.type}",
              f"training data: {len(dataset)} images of {source}",
              f"effective batch {world} x {config.batch_size} = "
              f"{world * config.batch_size} examples, "
              f"{len(loader)} steps per epoch", sep="\n", flush=True)
    for epoch in range(config.epochs):
        loader.sampler.set_epoch(epoch)  # reshuffle, the same on all ranks
        stats = train_one_epoch(ddp_model, loader, nn.CrossEntropyLoss(),
                                optimizer, context.device, progress=False)
        # Each rank saw its own shard: average the numbers over all ranks.
        loss = all_mean(stats["loss"], stats["samples"], context)
        accuracy = all_mean(stats["accuracy"], stats["samples"], context)
        if context.is_main:
            print(f"epoch {epoch + 1}/{config.epochs}: training loss "
                  f"{loss:.4f}, accuracy {accuracy:.1%}, over "
                  f"{stats['samples'] * world} examples", flush=True)
            if config.checkpoint:  # the bare model, without the DDP wrapper
                save_checkpoint(config.checkpoint, model, optimizer, epoch + 1)
        dist.barrier()  # nobody runs ahead of a checkpoint being written
    if context.is_main and config.save_weights:
        torch.save(model.state_dict(), config.save_weights)
    return model


def demo_all_reduce(context: DistributedContext) -> None:
    """Each rank holds a different tensor; after ``all_reduce`` every rank holds their sum.
    Rank 0 gathers and prints what every rank had before and after."""
    mine = torch.tensor([1.0, 10.0], device=context.device) * (context.rank + 1)
    before = mine.clone()
    dist.all_reduce(mine, op=dist.ReduceOp.SUM)
    rows = [None] * context.world_size
    dist.all_gather_object(rows, (context.rank, before.tolist(), mine.tolist()))
    if context.is_main:
        for rank, was, now in rows:
            print(f"rank {rank}: before {was}, after all_reduce(SUM) {now}")


def shard_report(dataset, config: TrainConfig, context: DistributedContext) -> None:
    """Rank 0 prints which example indices each rank gets in its first batch, for two epochs."""
    loader = shard_loader(dataset, config.batch_size, context, config.seed)
    seen = {}
    for epoch in range(2):
        loader.sampler.set_epoch(epoch)
        seen[epoch] = next(iter(loader))[0].tolist()
    rows = [None] * context.world_size
    dist.all_gather_object(rows, (context.rank, len(loader.sampler), seen))
    if context.is_main:
        for rank, count, first in rows:
            print(f"rank {rank}: {count} examples per epoch; first batches of epochs 1 and 2: "
                  f"{first[0]}, {first[1]}")


def demo(config: TrainConfig, context: DistributedContext) -> None:
    """``demo_all_reduce``, then ``shard_report`` (refused up front when a rank would get no batch)."""
    # Indices only, no images: for CIFAR-10 without --num-images, the stand-in's count.
    indices = TensorDataset(torch.arange(config.image_count or STAND_IN_IMAGES))
    check_batches(len(indices), config.batch_size, context.world_size)
    demo_all_reduce(context)
    shard_report(indices, config, context)


def parse_args(argv: list[str] | None = None) -> tuple[str, TrainConfig]:
    parser = argparse.ArgumentParser(prog="torchrun [options] -m helpers.distributed",
                                     description="Train the course's SmallCNN with DistributedDataParallel.")
    parser.add_argument("command", nargs="?", default="train", choices=["train", "demo"],
                        help="train (the default), or demo: an all-reduce and the shards of each rank")
    parser.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    parser.add_argument("--batch-size", type=int, default=TrainConfig.batch_size,
                        help="examples per process per step")
    parser.add_argument("--lr", type=float, default=TrainConfig.lr)
    parser.add_argument("--seed", type=int, default=TrainConfig.seed)
    parser.add_argument("--data", choices=["standin", "cifar10"], default=TrainConfig.data)
    parser.add_argument("--num-images", type=int, default=TrainConfig.num_images,
                        help=f"how many training images to use (default: {STAND_IN_IMAGES} of the "
                             f"stand-in; all 50,000 of CIFAR-10)")
    parser.add_argument("--checkpoint", help="rank 0 saves a checkpoint here after every epoch (its "
                                             "folder is created; an existing file is refused, unless "
                                             "--overwrite)")
    parser.add_argument("--save-weights", help="rank 0 saves the final state_dict here (its folder is "
                                               "created; an existing file is refused, unless --overwrite)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the files of --checkpoint and --save-weights if they exist")
    parser.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    args = parser.parse_args(argv)
    for name in ("epochs", "batch_size", "num_images"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    # Refused here, before any process starts: SGD would refuse a negative lr only after every rank
    # has loaded the data, and takes 0, nan and inf, none of which trains.
    if not (math.isfinite(args.lr) and args.lr > 0):
        parser.error(f"--lr must be a positive number, got {args.lr}: e.g. --lr {TrainConfig.lr}")
    if not 0 <= args.seed < 2**32:  # what NumPy's generator takes (seed_everything seeds it)
        parser.error(f"--seed must be between 0 and 2**32 - 1, got {args.seed}: "
                     f"e.g. --seed {TrainConfig.seed}")
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                         data=args.data, num_images=args.num_images, checkpoint=args.checkpoint,
                         save_weights=args.save_weights, overwrite=args.overwrite, device=args.device)
    return args.command, config


def main(argv: list[str] | None = None) -> int:
    command, config = parse_args(argv)
    context = init_distributed(config.device)
    try:
        if command == "demo":
            demo(config, context)
        else:
            train(config, context)
    except OptionError as error:  # raised on every rank: rank 0 says why
        if context.is_main:
            print(f"helpers.distributed: error: {error}", file=sys.stderr)
        return 2  # as argparse does for a bad option
    finally:
        dist.destroy_process_group()  # leaving without it makes NCCL warn at exit
    return 0


def torchrun_command(nproc_per_node: int, *script_args: str, python: str | None = None) -> list[str]:
    """The command that starts ``nproc_per_node`` processes of this module on this machine:
    ``torchrun --standalone --nproc-per-node=N -m helpers.distributed ...``, spelled with
    ``python -m torch.distributed.run`` (the same program) so that it uses this Python."""
    return [python or sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc-per-node={nproc_per_node}", "-m", "helpers.distributed", *script_args]


def quiet_environment(threads_per_process: int = 1) -> dict[str, str]:
    """The environment for a torchrun launched from here, with ``OMP_NUM_THREADS`` set.

    torchrun sets it to 1 itself when it starts several processes, and prints a warning saying
    so; setting it ourselves says the same thing without the warning. On Windows it also sets
    ``USE_LIBUV=0``: PyTorch's Windows builds lack libuv, which torchrun's rendezvous asks for by
    default.
    """
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(threads_per_process)
    if sys.platform == "win32":
        env.setdefault("USE_LIBUV", "0")
    return env


if __name__ == "__main__":
    sys.exit(main())
