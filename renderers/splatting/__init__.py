"""Gaussian splatting: `rasterization()` with gsplat 1.5.3's signature and outputs, on every device
(backends gsplat on CUDA, a compiled C++ kernel on CPU, a pure-torch reference anywhere)."""
from .rendering import rasterization

__all__ = ["rasterization"]
