"""Random draws for a batch shared out among the processes of a data-parallel job.

A data-parallel job (`recon.distributed`) splits each step's global batch of rays (or views,
or scenes) into equal contiguous shares, rank r holding rows [r·B, (r + 1)·B). Every rank holds
a `ShardedGenerator` in the same state and draws the per-row random numbers of the *whole* global
batch, keeping its own rows. So W ranks together draw exactly what one process with the global
batch draws, and the generator stays identical on every rank: draws that are not per row (an
occupancy-grid update, a stage's sample count) agree without any communication. Each rank draws
W× its own rows: a few random numbers per ray and rank, small next to shading the ray.

With an ordinary `torch.Generator` (one process) the draws are torch's own.
"""
from __future__ import annotations

from typing import Callable

import torch


class ShardedGenerator(torch.Generator):
    """A torch.Generator that knows this process's share of a batch: `rank` of `world_size`."""

    rank: int = 0
    world_size: int = 1


def sharded_generator(seed: int, device: torch.device | str = "cpu", rank: int = 0, world_size: int = 1) -> torch.Generator:
    assert 0 <= rank < world_size, f"rank {rank} of {world_size}"
    generator = ShardedGenerator(torch.device(device))
    generator.rank, generator.world_size = rank, world_size
    return generator.manual_seed(seed)


def share(generator: torch.Generator | None) -> tuple[int, int]:
    """(rank, world size) of a generator's batch share; (0, 1) for any other generator."""
    return getattr(generator, "rank", 0), getattr(generator, "world_size", 1)


def draw_rows(draw: Callable[..., torch.Tensor], shape: tuple[int, ...], generator: torch.Generator | None, **kwargs) -> torch.Tensor:
    """`draw(shape, generator=generator, **kwargs)` (e.g. torch.rand, torch.randn) for this rank's
    rows of a batch: the rows of every rank are drawn, this rank's are returned ([shape])."""
    rank, size = share(generator)
    if size == 1:
        return draw(shape, generator=generator, **kwargs)
    rows = draw((shape[0] * size, *shape[1:]), generator=generator, **kwargs)
    return rows[rank * shape[0] : (rank + 1) * shape[0]]


def rand_rows(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device | str | None = None) -> torch.Tensor:
    """Uniform [0, 1) numbers [shape] for this rank's rows."""
    return draw_rows(torch.rand, tuple(shape), generator, device=device)


def randn_rows(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Standard normal numbers [shape] (of `dtype`, default float32) for this rank's rows."""
    return draw_rows(torch.randn, tuple(shape), generator, device=device, dtype=dtype)


def randint_rows(high: int, shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device | str | None = None) -> torch.Tensor:
    """Integers in [0, high) [shape] for this rank's rows."""
    return draw_rows(lambda size, **kw: torch.randint(0, high, size, **kw), tuple(shape), generator, device=device)
