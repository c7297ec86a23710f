"""JIT builds of the toolkit's C++ CPU kernels with torch.utils.cpp_extension.

Each kernel is one .cpp file, built on first use (~40 s) with -O3, OpenMP and, where the CPU has
them, AVX2/FMA, and cached by torch under $TORCH_EXTENSIONS_DIR (default ~/.cache/torch_extensions),
one cache entry per instruction set so that a shared cache never mixes them.
"""
from __future__ import annotations

from pathlib import Path
from types import ModuleType


class BuildError(RuntimeError):
    """A kernel could not be compiled or loaded; the message is one line saying why."""


def isa_flags() -> list[str]:
    """-mavx2 -mfma where this CPU has them (8-lane kernels), else none (4 lanes)."""
    try:
        cpu_flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return []
    return ["-mavx2", "-mfma"] if {"avx2", "fma"} <= cpu_flags else []


def build(name: str, source: Path) -> ModuleType:
    """The extension module `name` compiled from `source`; raises BuildError."""
    isa = isa_flags()
    try:
        from torch.utils.cpp_extension import load

        return load(
            name=name + ("_avx2" if isa else ""),
            sources=[str(source)],
            extra_cflags=["-O3", "-ffp-contract=off", "-fno-math-errno", "-fopenmp", *isa],
            extra_ldflags=["-fopenmp"],
            verbose=False,
        )
    except Exception as e:  # missing compiler/ninja, build or load failure
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        detail = next((line for line in lines if "error" in line.lower()), lines[-1] if lines else type(e).__name__)
        raise BuildError(f"{type(e).__name__}: {detail}") from None
