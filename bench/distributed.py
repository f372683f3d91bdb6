"""Processes of one job under a launcher (torchrun, `accelerate launch`, a Slurm array through them): which rank
this process is, and the few collectives the trainers and `bench eval` need. A single process (no launcher) is
world size 1 and every collective is a no-op, so the single-process path never touches torch.distributed.

The launchers export RANK, WORLD_SIZE and LOCAL_RANK; the process group is gloo on CPU, nccl on CUDA.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, TypeVar

from bench.types import BenchError

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    """Part `index` of `count` of every task's examples (round robin by position): `bench eval --shard I/N`, or
    the part of rank I of N under a launcher."""

    index: int
    count: int

    def take(self, items: list[T]) -> list[T]:
        return items[self.index::self.count]

    def run_name(self, name: str) -> str:
        return f"{name}.shard-{self.index}-of-{self.count}"


def parse_shard(spec: str) -> Shard:
    """`I/N` with 0 <= I < N; anything else is an error naming the option."""
    index, slash, count = spec.partition("/")
    if not (slash and index.isdigit() and count.isdigit() and 0 <= int(index) < int(count)):
        raise BenchError(f"--shard {spec}: expected I/N with 0 <= I < N (shard 0/4 is the first of four)")
    return Shard(int(index), int(count))


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes what the job leaves behind."""
        return self.rank == 0

    def shard(self, items: list[T]) -> list[T]:
        """This rank's items: every size-th from its rank (round robin, so shards differ in length by one at most)."""
        return Shard(self.rank, self.size).take(items)


def world() -> World:
    """This process's place in the launcher's job (world size 1 without a launcher); the process group is joined
    on first use."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if cuda else "gloo")
    return World(rank, size, local_rank)


def barrier(w: World) -> None:
    if w.size > 1:
        import torch.distributed as dist

        dist.barrier()


def all_reduce_sum(w: World, tensor: Any) -> Any:
    """The tensor summed over ranks, in place (gloo and nccl both)."""
    if w.size > 1:
        import torch.distributed as dist

        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def gather(w: World, value: T) -> list[T]:
    """Every rank's `value` (any picklable object), in rank order, on every rank."""
    if w.size == 1:
        return [value]
    import torch.distributed as dist

    values: list[Any] = [None] * w.size
    dist.all_gather_object(values, value)
    return values


def unshard(shards: list[list[T]]) -> list[T]:
    """The items in their original order from every shard's `Shard.take` of them, in shard order."""
    items: list[T] = []
    for i in range(max(map(len, shards), default=0)):
        items += [shard[i] for shard in shards if i < len(shard)]
    return items
