"""Which share of a request's images this process makes: an explicit (index, count), or its place among the
processes of `accelerate launch` / torchrun. The other shares appear in the shared store as their processes
finish them.
"""
from __future__ import annotations

import os

import torch

from ..errors import EraseLabError
from ..probes import Probe
from .lanes import resolved_size


def distributed_state():
    """accelerate's PartialState for this process. On a machine without CUDA it must be asked for CPU
    explicitly, or it ignores the launcher's ranks (`accelerate launch --multi_gpu --num_processes N` or
    `torchrun --nproc_per_node N` start the processes; gloo connects them)."""
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def resolve_shard(shard: tuple[int, int] | None) -> tuple[int, int] | None:
    """An explicit (index, count), or the process's place under `accelerate launch`/torchrun, or None."""
    if shard is None:
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return None
        state = distributed_state()
        shard = (state.process_index, state.num_processes)
    index, count = int(shard[0]), int(shard[1])
    if count < 1 or not 0 <= index < count:
        raise EraseLabError(f"shard {index} of {count} does not exist; pass --shard I/N with 0 <= I < N")
    return None if count == 1 else (index, count)


def group_key(pipe, probe: Probe) -> tuple:
    """Probes with equal group keys (steps, size, sampler) can be denoised in one batch."""
    return (probe.steps, *resolved_size(pipe, probe), probe.sampler)


def my_share(pipe, unique: dict[str, Probe], shard) -> list[str]:
    """This process's keys. Keys are ordered by group first, then dealt round-robin, so that every shard gets
    a share of every (steps, size, sampler) group and the shards finish at about the same time."""
    order = {}
    keys = sorted(unique, key=lambda k: order.setdefault(group_key(pipe, unique[k]), len(order)))
    return keys if shard is None else keys[shard[0]::shard[1]]
