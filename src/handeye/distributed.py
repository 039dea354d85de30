"""torch.distributed for the stages that scale out (pretrain, features, rl), one process per rank.

A stage runs distributed when ``torchrun`` started it: torchrun (single node, multi-node, or one per node
under SLURM's ``srun``) sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT. Without them a stage
is world size 1 with no process group, exactly the single-process run. Backend: nccl on CUDA, gloo on CPU.

    with distributed.process_group(world, device):
        distributed.check_same(world, config, "pretrain parameters")   # every rank read the same params
        distributed.agree(world, local_problem)                         # one rank's bad input stops all

Errors found collectively are raised on every rank (so that none waits in a collective for a rank that
left), printed by rank 0 alone: the user sees one line, not one per rank.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from handeye.errors import HandEyeError

# A collective waits this long for a rank that died before torchrun notices (torchrun tears the group down
# when a worker exits, so this bounds only hangs torchrun cannot see, such as a wedged rank).
TIMEOUT = datetime.timedelta(minutes=30)


@dataclass(frozen=True)
class World:
    """Where this process stands in the launch: rank in [0, world_size), local_rank = its GPU on the node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def world_from_env(env: Mapping[str, str] | None = None) -> World:
    """The launch as torchrun describes it in the environment; world size 1 when it does not."""
    env = os.environ if env is None else env
    if "WORLD_SIZE" not in env:
        return World()
    try:
        world = World(int(env.get("RANK", "0")), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", "0")))
    except ValueError:
        raise HandEyeError(f"RANK/WORLD_SIZE/LOCAL_RANK must be integers, got {env.get('RANK')!r}/"
                           f"{env.get('WORLD_SIZE')!r}/{env.get('LOCAL_RANK')!r}; launch with torchrun") from None
    if world.world_size < 1 or not 0 <= world.rank < world.world_size or world.local_rank < 0:
        raise HandEyeError(f"rank {world.rank} of world size {world.world_size} (local rank {world.local_rank}) "
                           f"is not a valid launch; launch with torchrun")
    return world


def device_for(world: World, device: str):
    """``auto``: this rank's GPU (cuda:LOCAL_RANK) when CUDA is there, else the CPU; ``cuda``: cuda:LOCAL_RANK."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise HandEyeError("device cuda was asked for but torch sees no GPU; use device cpu (or auto)")
        if torch.cuda.device_count() == 1:  # a scheduler that gives each rank its own GPU (CUDA_VISIBLE_DEVICES)
            return torch.device("cuda", 0)
        if world.local_rank >= torch.cuda.device_count():
            raise HandEyeError(f"local rank {world.local_rank} has no GPU: this node has "
                               f"{torch.cuda.device_count()}; launch at most that many processes per node")
        return torch.device("cuda", world.local_rank)
    return torch.device(device)


def backend_for(device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


@contextlib.contextmanager
def process_group(world: World, device) -> Iterator[World]:
    """Join the launch's process group (nothing to join at world size 1), once per process: a second stage in
    the same process (``rl`` then ``rl --resume``) reuses it. Re-joining after a destroy is unreliable under
    torchrun: its store keeps the first group's gloo addresses, and a rank may dial a port that has closed."""
    if not world.distributed:
        yield world
        return
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend_for(device), rank=world.rank, world_size=world.world_size,
                                timeout=TIMEOUT, **({"device_id": device} if device.type == "cuda" else {}))
        atexit.register(dist.destroy_process_group)
    yield world


def all_gather_object(world: World, obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (``[obj]`` at world size 1)."""
    if not world.distributed:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * world.world_size
    dist.all_gather_object(out, obj)
    return out


def all_reduce_mean(world: World, t):
    """The mean of tensor ``t`` over ranks (``t`` itself at world size 1). gloo has no AVG: sum, then divide."""
    if not world.distributed:
        return t
    import torch.distributed as dist

    t = t.clone()
    dist.all_reduce(t)
    return t / world.world_size


def barrier(world: World) -> None:
    if world.distributed:
        import torch.distributed as dist

        dist.barrier()


def agree(world: World, problem: str | None) -> None:
    """Collective: raise on every rank when any rank found a problem (its one-line message, naming the rank)."""
    problems = [(r, p) for r, p in enumerate(all_gather_object(world, problem)) if p]
    if problems:
        rank, message = problems[0]
        raise RankError(f"rank {rank} of {world.world_size}: {message}" if world.distributed else message,
                        quiet=not world.is_main)


def check_same(world: World, values: Mapping[str, Any], what: str) -> None:
    """Collective: every rank must hold rank 0's ``values`` (resolved params, data fingerprints)."""
    gathered = all_gather_object(world, dict(values))
    for rank, other in enumerate(gathered[1:], start=1):
        if other != gathered[0]:
            keys = sorted(k for k in set(other) | set(gathered[0]) if other.get(k) != gathered[0].get(k))
            diff = ", ".join(f"{k}: {gathered[0].get(k)!r} on rank 0, {other.get(k)!r} on rank {rank}"
                             for k in keys[:3])
            raise RankError(f"{what} differ between ranks ({diff}); every node must run the same checkout, "
                            f"params and data", quiet=not world.is_main)


class RankError(HandEyeError):
    """A HandEyeError that every rank raises; ``quiet`` on all but rank 0, so the message is printed once."""

    def __init__(self, message: str, quiet: bool = False):
        super().__init__(message)
        self.quiet = quiet
