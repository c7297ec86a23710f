"""Sparse 3D convolutions for the detector behind a thin interface: today spconv 2.3 (`spconv` on
a CPU, a `spconv-cu12x` wheel on CUDA); another backend replaces this module alone.

spconv 2.3's backward asks torch for the current CUDA stream even for CPU tensors, which a
CPU-only torch cannot give ("Torch not compiled with CUDA enabled"). Its CPU kernels ignore the
stream, so on machines without CUDA `patch_for_cpu()` (applied at import) makes spconv's lookup
return the null stream 0. `tests/test_detect_sparse.py` checks values and gradients of every
convolution kind against a dense Conv3d on a tiny grid.

SparseConvTensor is a torch.fx proxyable class, so building one asks torch.fx.is_fx_tracing(),
which logs a deprecation notice for torch developers (once per process); `_quiet_fx_notice()` pays
that once at import with its logger silenced, so users never see it.
"""
from __future__ import annotations

import warnings

import torch

try:
    with warnings.catch_warnings():  # its build helper (ccimport) calls the deprecated locale.getdefaultlocale at import
        warnings.simplefilter("ignore", DeprecationWarning)
        import spconv.pytorch as spconv
except ImportError as error:  # an optional extra
    raise ImportError("3D detection needs spconv 2.3: pip install 'spconv>=2.3,<2.4' (on CUDA: the spconv-cu12x wheel for your CUDA)") from error

SparseTensor = spconv.SparseConvTensor


def patch_for_cpu() -> None:
    """Let spconv's backward run with a CPU-only torch (see the module docstring)."""
    if torch.cuda.is_available():
        return
    import spconv.pytorch.cppcore as cppcore
    import spconv.pytorch.hash as hash_ops
    import spconv.pytorch.ops as ops

    for module in (cppcore, ops, hash_ops):
        module.get_current_stream = _null_stream


def _null_stream() -> int:
    return 0


def _quiet_fx_notice() -> None:
    import logging

    import torch.fx._symbolic_trace as symbolic_trace

    notice = getattr(symbolic_trace, "is_fx_tracing_warning", None)  # torch ≥ 2.9
    if notice is None:
        return
    logger = logging.getLogger(symbolic_trace.__name__)
    disabled, logger.disabled = logger.disabled, True
    try:
        notice()
    finally:
        logger.disabled = disabled


patch_for_cpu()
_quiet_fx_notice()


def sparse_tensor(features: torch.Tensor, voxels: torch.Tensor, spatial_shape: list[int], batch_size: int) -> SparseTensor:
    """features [M, C] at integer voxels [M, 4] (batch, x, y, z), in a grid of spatial_shape [3]."""
    assert voxels.dim() == 2 and voxels.shape[1] == 4 and len(features) == len(voxels), (tuple(features.shape), tuple(voxels.shape))
    return spconv.SparseConvTensor(features, voxels.int().contiguous(), list(spatial_shape), batch_size)


def voxelize(points: list[torch.Tensor], features: list[torch.Tensor], voxel_size: float, multiple: int = 1) -> tuple[SparseTensor, torch.Tensor]:
    """One sparse tensor for a batch of point sets (points [N_b, 3], features [N_b, C]): voxels of
    side voxel_size, features averaged per voxel, the grid's sides rounded up to a `multiple` (so
    strided and transposed convolutions give back the same shapes). Returns it and the world
    origin [3] of voxel 0."""
    origin = torch.stack([p.min(0).values for p in points]).min(0).values
    voxels, pooled = [], []
    for b, (p, f) in enumerate(zip(points, features)):
        cells = torch.floor((p - origin) / voxel_size).long()  # [N, 3]
        unique, inverse = unique_voxels(torch.cat([torch.zeros_like(cells[:, :1]), cells], 1))
        unique = unique[:, 1:]
        sums = torch.zeros(len(unique), f.shape[1], dtype=f.dtype, device=f.device).index_add_(0, inverse, f)
        counts = torch.zeros(len(unique), dtype=f.dtype, device=f.device).index_add_(0, inverse, torch.ones_like(inverse, dtype=f.dtype))
        voxels.append(torch.cat([torch.full((len(unique), 1), b, device=f.device), unique], 1))
        pooled.append(sums / counts[:, None])
    voxels = torch.cat(voxels)
    shape = ((voxels[:, 1:].max(0).values + multiple) // multiple * multiple).tolist()
    return sparse_tensor(torch.cat(pooled), voxels, shape, len(points)), origin


def voxel_keys(voxels: torch.Tensor) -> torch.Tensor:
    """One int64 per voxel [M, 4] (batch, i, j, k), each coordinate in [0, 2¹⁶), ordered as the rows."""
    assert voxels.dim() == 2 and voxels.shape[1] == 4
    return ((voxels[:, 0] * 65536 + voxels[:, 1]) * 65536 + voxels[:, 2]) * 65536 + voxels[:, 3]


def unique_voxels(voxels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The distinct rows [U, 4] of voxels [M, 4] (sorted) and each row's index among them [M]: a 1-D
    unique over voxel_keys, many times faster than torch.unique(dim=0)."""
    assert int(voxels.min()) >= 0 and int(voxels.max()) < 65536, "voxel coordinates must lie in [0, 2^16)"
    keys, inverse = torch.unique(voxel_keys(voxels), return_inverse=True)
    unique = torch.stack([keys >> 48, (keys >> 32) & 65535, (keys >> 16) & 65535, keys & 65535], 1)
    return unique, inverse


def submanifold(in_channels: int, out_channels: int, kernel: int = 3, key: str | None = None) -> torch.nn.Module:
    """A convolution whose outputs are the input's active voxels."""
    return spconv.SubMConv3d(in_channels, out_channels, kernel, indice_key=key, bias=False)


def strided(in_channels: int, out_channels: int, kernel: int = 2, stride: int = 2) -> torch.nn.Module:
    """A down-sampling convolution (active outputs: every cell reached by an active input)."""
    return spconv.SparseConv3d(in_channels, out_channels, kernel, stride=stride, bias=False)


def generative_transpose(in_channels: int, out_channels: int, kernel: int = 2, stride: int = 2) -> torch.nn.Module:
    """FCAF3D's generative up-sampling: a transposed convolution that creates every voxel its active
    inputs reach (so new voxels can appear where objects' centres are)."""
    return spconv.SparseConvTranspose3d(in_channels, out_channels, kernel, stride=stride, bias=False)


def select(x: SparseTensor, keep: torch.Tensor) -> SparseTensor:
    """The voxels of x where keep [M] is true (FCAF3D's pruning)."""
    return sparse_tensor(x.features[keep], x.indices[keep], x.spatial_shape, x.batch_size)


def with_features(x: SparseTensor, features: torch.Tensor) -> SparseTensor:
    """x's voxels with other features (activations, normalisation)."""
    return x.replace_feature(features)


def add(a: SparseTensor, b: SparseTensor) -> SparseTensor:
    """Sum of two sparse tensors of one grid over the union of their voxels (spconv's sparse_add
    goes through torch.sparse_coo_tensor; this is the same sum with a unique over voxel rows)."""
    assert list(a.spatial_shape) == list(b.spatial_shape) and a.batch_size == b.batch_size
    union, inverse = unique_voxels(torch.cat([a.indices, b.indices]).long())
    features = a.features.new_zeros(len(union), a.features.shape[1]).index_add(0, inverse, torch.cat([a.features, b.features]))
    return sparse_tensor(features, union, a.spatial_shape, a.batch_size)
