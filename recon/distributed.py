"""Data-parallel training across processes: `torchrun --nproc-per-node N -m recon.cli train ...`.

torchrun (or any launcher that sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT)
starts one process per device; `init` joins them: NCCL with one GPU per rank (cuda:LOCAL_RANK),
gloo on CPUs. What the ranks share, and how:

- the batch: a step's global batch is the per-rank batch (rays_per_batch, batch_rays, batch_size)
  × the world size. Every rank draws the random rows of the whole batch from the same seed and keeps
  its own share (`renderers.shards`), so W ranks compute what one process with the global batch
  computes (NeRF, ProNeRF, 3DGS, text-to-3D), and draws that are not per row (occupancy grids,
  stages) agree without messages. The detector and GPF shard scenes: each rank its own;
- gradients: averaged over the ranks after every backward (`average_gradients`, one all-reduce of
  a flat buffer), so every rank, starting from rank 0's model (`broadcast_module`), takes the same
  optimiser step and holds the same parameters;
- 3DGS densification: the image-plane gradient statistics are summed over the ranks
  (`SharedDensification`), so every rank grows, splits and prunes the same Gaussians. Every rank
  holds the whole scene and renders its own views. gsplat's `distributed=True` (CUDA only) instead
  shards the Gaussians over the GPUs and trades projected Gaussians all-to-all, for scenes larger
  than one GPU's memory; replicating them needs no sharded rasterizer and runs on gloo CPUs too;
- the run directory: rank 0 alone writes it (config, checkpoints, metrics, curves), validates and
  shows the progress bar, while the others wait (`wait_for_main`, up to RECON_DIST_MAIN_TIMEOUT
  seconds, default 6 hours); logged statistics are averaged over the ranks (rays summed). At every
  checkpoint the ranks compare exact parameter checksums (`check_identical`). A checkpoint holds one
  copy of the state and resumes with any world size (every rank reads it: several machines need a
  shared filesystem). BatchNorm running statistics are rank 0's, as with DDP's default;
- failures: when a rank dies, the others' next collective fails (gloo: as soon as its connection
  drops; a hung rank: after RECON_DIST_TIMEOUT seconds, default 600) with `DistributedError`, and
  torchrun stops the job.
"""
from __future__ import annotations

import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from gsplat.strategy import DefaultStrategy

from renderers.shards import sharded_generator

LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


class DistributedError(RuntimeError):
    """A collective failed: another rank stopped, or did not answer in time."""


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        """Whether this process writes the run directory and talks to the user."""
        return self.rank == 0


def world() -> World:
    """This process's place in the job (a world of one outside torchrun)."""
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    return World(dist.get_rank(), dist.get_world_size())


def timeout_seconds(variable: str, default: float) -> float:
    """A positive number of seconds from the environment variable (ValueError naming it)."""
    text = os.environ.get(variable, str(default))
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise ValueError(f"{variable}={text}: expected a positive number of seconds")
    return seconds


_main_work: dist.ProcessGroup | None = None  # a gloo group whose barrier waits out rank 0's validation and saving


def init(device: str | None) -> tuple[World, str | None]:
    """Join the job that torchrun started when WORLD_SIZE > 1; returns the world and the device this
    rank trains on (cuda:LOCAL_RANK when `device` is CUDA or None with CUDA present, else `device`)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return world(), device
    if missing := [name for name in LAUNCH_VARIABLES if name not in os.environ]:
        raise ValueError(f"WORLD_SIZE is set but {', '.join(missing)} not: start data-parallel jobs with torchrun --nproc-per-node N -m recon.cli ...")
    local_rank = int(os.environ["LOCAL_RANK"])
    cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    if cuda:
        if local_rank >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK={local_rank}: this machine has {torch.cuda.device_count()} GPUs (one rank per GPU: --nproc-per-node ≤ that)")
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(local_rank)
    global _main_work
    dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(seconds=timeout_seconds("RECON_DIST_TIMEOUT", 600)))
    _main_work = dist.new_group(backend="gloo", timeout=timedelta(seconds=timeout_seconds("RECON_DIST_MAIN_TIMEOUT", 6 * 3600)))
    return world(), device


def finish() -> None:
    """Leave the job (a no-op outside one)."""
    global _main_work
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _main_work = None


def wait_for_main() -> None:
    """Every rank waits here while rank 0 alone validates or writes a checkpoint, so that the others
    do not time out in the next gradient all-reduce (RECON_DIST_MAIN_TIMEOUT bounds this wait)."""
    if _main_work is not None:
        with collective("waiting for rank 0's validation and checkpoint"):
            dist.barrier(group=_main_work)


@contextmanager
def collective(what: str):
    """Turn a failed collective into one DistributedError saying which rank saw what."""
    try:
        yield
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        first = re.sub(r"^\[[^\]]*\]\s*", "", first).split(". ")[0]  # without gloo's source location and advice
        raise DistributedError(f"rank {world().rank}: {what} failed, another rank stopped or timed out ({first})") from None


def _collective_device() -> torch.device:
    """Where small tensors for a collective must live: this rank's GPU under NCCL, else the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """The random generator of a method: the same seed on every rank, drawing this rank's share of
    each per-row batch (renderers.shards)."""
    w = world()
    return sharded_generator(seed, device, w.rank, w.size)


def fork(generator: torch.Generator) -> torch.Generator:
    """Branch a generator off into a stream of this rank's own (unchanged on rank 0), for work whose
    draws depend on the rank's data (the detector's sampling and augmentation of its own scenes);
    call it again after restoring rank 0's state from a checkpoint."""
    if rank := world().rank:
        generator.manual_seed(int(torch.randint(2**62, (1,), generator=generator)) + rank)
    return generator


def average_gradients(parameters) -> None:
    """Replace every gradient by its mean over the ranks (no-op in a world of one). A parameter with no
    gradient on any rank keeps none; one with a gradient somewhere gets zeros where it had none."""
    w = world()
    if w.size == 1:
        return
    params = [p for p in parameters if p.requires_grad]
    if not params:
        return
    device = params[0].device
    has_grad = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=device)  # [P]
    with collective("averaging gradients"):
        dist.all_reduce(has_grad, dist.ReduceOp.MAX)
        used = [p for p, flag in zip(params, has_grad.tolist()) if flag]
        for p in used:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.reshape(-1) for p in used])  # [sum of sizes]
        dist.all_reduce(flat)
    flat /= w.size
    offset = 0
    for p in used:
        p.grad.copy_(flat[offset : offset + p.numel()].view_as(p.grad))
        offset += p.numel()


def broadcast_module(module: torch.nn.Module) -> None:
    """Rank 0's parameters and buffers, in place, on every rank (as DDP starts): the ranks begin equal
    even where a model's initialisation is not reproducible."""
    if world().size == 1:
        return
    with collective("sharing rank 0's model"):
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=0)


def reduce_stats(stats: dict[str, float]) -> dict[str, float]:
    """A step's statistics for the global batch: the ranks' mean, but "rays" summed."""
    w = world()
    if w.size == 1:
        return stats
    keys = sorted(stats)
    values = torch.tensor([float(stats[k]) for k in keys], dtype=torch.float64, device=_collective_device())
    with collective("gathering step statistics"):
        dist.all_reduce(values)
    return {k: type(stats[k])(v if k == "rays" else v / w.size) for k, v in zip(keys, values.tolist())}


INTEGER_OF_SIZE = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}  # bytes → an integer type to view values as


def check_identical(module: torch.nn.Module, step: int) -> None:
    """DistributedError unless every rank holds the same parameters, bit for bit (each parameter's
    checksum is the integer sum of its bit patterns: exact, whatever the order of summation)."""
    w = world()
    if w.size == 1:
        return
    checksum = torch.stack([p.detach().contiguous().view(INTEGER_OF_SIZE[p.element_size()]).long().sum() for p in module.parameters()])  # [P]
    checksum = checksum.to(_collective_device())
    gathered = [torch.empty_like(checksum) for _ in range(w.size)]
    with collective("comparing parameters"):
        dist.all_gather(gathered, checksum)
    if differing := [rank for rank, other in enumerate(gathered) if not torch.equal(other, gathered[0])]:
        raise DistributedError(f"step {step}: ranks {differing} hold other parameters than rank 0 (something drew random numbers per rank)")


def broadcast(value):
    """Rank 0's `value` (any picklable object) on every rank."""
    if world().size == 1:
        return value
    box = [value]
    with collective("sharing rank 0's settings"):
        dist.broadcast_object_list(box, src=0)
    return box[0]


class SharedDensification(DefaultStrategy):
    """gsplat's DefaultStrategy with its image-plane gradient statistics summed over the ranks (the
    count of views that saw each Gaussian too, and the largest screen radius), so that each rank,
    having rendered its own views, densifies as one process rendering all of them would."""

    def _update_state(self, params, state, info, packed: bool = False) -> None:
        if world().size == 1:
            return super()._update_state(params, state, info, packed)
        kept = {key: state[key] for key in ("grad2d", "count")}
        state["grad2d"] = state["count"] = None  # super() starts them at zero: this step's views alone
        super()._update_state(params, state, info, packed)
        with collective("sharing densification statistics"):
            for key, old in kept.items():
                dist.all_reduce(state[key])  # [N] over every rank's views
                if old is not None:
                    state[key] += old
            if state.get("radii") is not None:
                dist.all_reduce(state["radii"], dist.ReduceOp.MAX)
