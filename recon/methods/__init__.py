"""Registered methods: `recon train <name>` looks them up here."""
from __future__ import annotations

from recon.methods.base import Method


def method_registry() -> dict[str, type[Method]]:
    from recon.methods.dreamer import Dreamer
    from recon.methods.gpf import GPF
    from recon.methods.nerf import Nerf
    from recon.methods.pronerf import Pronerf
    from recon.methods.splat import Splat

    return {Nerf.name: Nerf, Pronerf.name: Pronerf, Splat.name: Splat, Dreamer.name: Dreamer, GPF.name: GPF}


def find_method(name: str) -> type[Method]:
    registry = method_registry()
    if name not in registry:
        raise ValueError(f"unknown method {name!r} (available: {', '.join(sorted(registry))})")
    return registry[name]
