"""Noise-level (timestep) schedules as pure functions of (step, total): the open implementations'
annealing modes (method card table). Fractions of the T training timesteps; t ~ U{t_min..t_max}."""
from __future__ import annotations

import math
from dataclasses import dataclass

MODES = ("uniform", "linear_max", "step", "deterministic_linear", "sqrt")


@dataclass(frozen=True)
class TimestepSchedule:
    mode: str = "linear_max"
    low: float = 0.02  # t_min as a fraction of T
    high: float = 0.98  # t_max at the start
    high_final: float = 0.5  # t_max at the end (linear_max), after the change (step)
    change_at: float = 0.5  # step mode: fraction of the steps after which t_max drops

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"timestep schedule must be one of {', '.join(MODES)}, got {self.mode!r}")
        if not 0 <= self.low <= min(self.high, self.high_final) <= max(self.high, self.high_final) <= 1:
            raise ValueError(f"timestep schedule: expected 0 ≤ low ≤ high, high_final ≤ 1, got {self.low}, {self.high}, {self.high_final}")

    def __call__(self, step: int, total: int, num_timesteps: int = 1000) -> tuple[int, int]:
        """(t_min, t_max) integer timesteps at `step` of `total`; equal for deterministic modes."""
        progress = min(max(step / max(total, 1), 0.0), 1.0)
        low, high = self.low, self.high
        if self.mode == "linear_max":
            high = self.high + (self.high_final - self.high) * progress
        elif self.mode == "step":
            high = self.high if progress < self.change_at else self.high_final
        elif self.mode == "deterministic_linear":  # DreamGaussian: t = (1 − i/N)·T, clipped
            low = high = min(max(1.0 - progress, self.low), self.high)
        elif self.mode == "sqrt":  # HiFA: t = t_min + (t_max − t_min)(1 − √(i/N))
            low = high = self.low + (self.high - self.low) * (1.0 - math.sqrt(progress))
        t_min = int(round(low * num_timesteps))
        t_max = int(round(high * num_timesteps))
        return min(t_min, num_timesteps - 1), min(max(t_max, t_min), num_timesteps - 1)
