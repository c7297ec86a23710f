"""Tests for recon.fields: positional encoding, hash-grid encoding (vs. a naive reference), MLP."""

import itertools
import math

import numpy as np
import pytest
import torch

from recon.fields import MLP, HashGridEncoding, PositionalEncoding, tcnn_available

PRIMES = [1, 2654435761, 805459861]
SMALL = dict(num_levels=4, features_per_level=2, log2_hashmap_size=10, base_resolution=4, per_level_scale=2.0)


# ---------------------------------------------------------------- naive reference (per point, per corner, Python ints)
def naive_levels(in_dim, num_levels, log2_hashmap_size, base_resolution, per_level_scale, **_):
    """[(scale, resolution, table_size, row_offset, hashed)] per level, from tcnn's grid.h formulas."""
    levels, offset = [], 0
    log2_scale = np.float32(math.log2(np.float32(per_level_scale)))  # tcnn: std::log2 of a float
    for level in range(num_levels):
        scale = np.exp2(np.float32(level) * log2_scale, dtype=np.float32)
        scale = np.float32(scale * np.float32(base_resolution) - np.float32(1.0))
        res = int(math.ceil(scale)) + 1
        size = min((res**in_dim + 7) // 8 * 8, 2**log2_hashmap_size)
        levels.append((scale, res, size, offset, res**in_dim > size))
        offset += size
    return levels


def naive_encode(x, table, cfg):
    """x [N, d] float32, table [T, F] -> (out [N, L*F] float64, list of (point, level, row, weight) taps)."""
    n, d = x.shape
    levels = naive_levels(d, **cfg)
    nf = table.shape[1]
    out = np.zeros((n, len(levels) * nf))
    taps = []
    for p in range(n):
        for lvl, (scale, res, size, offset, hashed) in enumerate(levels):
            pos = [float(np.float32(np.float32(x[p, i]) * scale) + np.float32(0.5)) for i in range(d)]
            base = [math.floor(v) for v in pos]
            frac = [v - b for v, b in zip(pos, base)]
            for corner in itertools.product((0, 1), repeat=d):
                coord = [b + c for b, c in zip(base, corner)]
                if hashed:
                    index = 0
                    for i in range(d):
                        index ^= (coord[i] * PRIMES[i]) % 2**32
                else:
                    index = sum(coord[i] * res**i for i in range(d))
                row = offset + index % size
                weight = math.prod(f if c else 1 - f for f, c in zip(frac, corner))
                out[p, lvl * nf : (lvl + 1) * nf] += weight * table[row]
                taps.append((p, lvl, row, weight))
    return out, taps


def random_table(enc, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        enc.params.copy_(torch.rand(enc.params.shape, generator=g) * 2 - 1)


# ---------------------------------------------------------------- positional encoding
def test_positional_encoding_formula():
    pe = PositionalEncoding(3, 4)
    x = torch.randn(5, 7, 3)
    y = pe(x)
    assert pe.out_dim == 3 * (2 * 4 + 1) and y.shape == (5, 7, pe.out_dim)
    expected = [x] + [f(2.0**k * x) for k in range(4) for f in (torch.sin, torch.cos)]
    torch.testing.assert_close(y, torch.cat(expected, -1))
    pe_no_input = PositionalEncoding(3, 4, include_input=False)
    assert pe_no_input.out_dim == 24
    torch.testing.assert_close(pe_no_input(x), y[..., 3:])


# ---------------------------------------------------------------- hash grid
def test_hashgrid_shape_params_and_init():
    enc = HashGridEncoding(implementation="torch")
    y = enc(torch.rand(100, 3))
    assert enc.out_dim == 32 and y.shape == (100, 32) and y.dtype == torch.float32
    levels = naive_levels(3, 16, 19, 16, 1.447)
    assert enc.resolutions == [lvl[1] for lvl in levels] and enc.resolutions[0] == 16
    assert enc.num_dense == sum(not lvl[4] for lvl in levels)
    assert enc.params.dim() == 1 and enc.params.numel() == 2 * sum(lvl[2] for lvl in levels)
    assert list(enc.state_dict()) == ["params"]
    assert enc.params.abs().max() <= 1e-4


@pytest.mark.parametrize("in_dim", [2, 3])
def test_hashgrid_matches_naive_reference(in_dim):
    cfg = dict(SMALL, num_levels=5 if in_dim == 2 else 4)
    enc = HashGridEncoding(in_dim, **cfg, implementation="torch")
    assert 0 < enc.num_dense < enc.num_levels  # covers dense and hashed levels
    random_table(enc)
    x = torch.rand(64, in_dim, generator=torch.Generator().manual_seed(1))
    x[0] = 0.0  # borders: the +0.5 shift makes dense levels wrap at x = 1
    x[1] = 1.0
    y = enc(x)
    ref, taps = naive_encode(x.numpy(), enc.table.detach().double().numpy(), cfg)
    torch.testing.assert_close(y.double(), torch.from_numpy(ref), atol=1e-5, rtol=1e-5)

    # d(sum(y * g))/d(table) from the same taps
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(2))
    (y * g).sum().backward()
    grad_ref = np.zeros(tuple(enc.table.shape))
    nf = enc.features_per_level
    for p, lvl, row, weight in taps:
        grad_ref[row] += weight * g[p, lvl * nf : (lvl + 1) * nf].numpy()
    torch.testing.assert_close(enc.params.grad.view(-1, nf).double(), torch.from_numpy(grad_ref), atol=1e-5, rtol=1e-5)


def test_hashgrid_default_config_hash_overflow():
    """Fine levels hash coordinates ~4000 * 2654435761 >> 2^32: must match uint32 arithmetic."""
    cfg = dict(num_levels=16, log2_hashmap_size=19, base_resolution=16, per_level_scale=1.447)
    enc = HashGridEncoding(3, **cfg, implementation="torch")
    random_table(enc)
    x = torch.cat([torch.rand(6, 3, generator=torch.Generator().manual_seed(3)), torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.5, 1.0]])])
    with torch.no_grad():
        y = enc(x)
    ref, _ = naive_encode(x.numpy(), enc.table.detach().double().numpy(), cfg)
    torch.testing.assert_close(y.double(), torch.from_numpy(ref), atol=1e-5, rtol=1e-5)


def test_hashgrid_vertex_values_and_continuity():
    # one dense level: scale 7, 8 vertices per axis, vertex (i, j, k) at x = (i - 0.5) / 7
    enc = HashGridEncoding(3, num_levels=1, features_per_level=2, base_resolution=8, implementation="torch")
    assert enc.num_dense == 1 and enc.resolutions == [8]
    with torch.no_grad():
        enc.params.copy_(torch.arange(enc.params.numel(), dtype=torch.float32))
    ijk = torch.tensor([[1, 1, 1], [3, 5, 2], [7, 6, 4], [2, 7, 7]])
    x = (ijk.float() - 0.5) / 7
    with torch.no_grad():
        y = enc(x)
    rows = ijk[:, 0] + 8 * ijk[:, 1] + 64 * ijk[:, 2]
    torch.testing.assert_close(y, enc.table[rows].detach(), atol=1e-3, rtol=0)

    # continuous across cell faces: values just below / above a face agree
    random_table(enc)
    eps = 1e-5
    with torch.no_grad():
        lo, hi = enc(x - eps), enc(x + eps)
    assert (lo - hi).abs().max() < 1e-3


def test_hashgrid_input_gradient_finite_difference():
    enc = HashGridEncoding(3, num_levels=2, base_resolution=4, per_level_scale=1.5, implementation="torch")
    random_table(enc)
    x = torch.tensor([[0.31, 0.52, 0.77], [0.12, 0.93, 0.44]], requires_grad=True)
    y = enc(x)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(4))
    (grad,) = torch.autograd.grad((y * g).sum(), x)
    h = 1e-3
    fd = torch.zeros_like(x)
    with torch.no_grad():
        for i in range(3):
            e = torch.zeros(3)
            e[i] = h
            fd[:, i] = ((enc(x + e) - enc(x - e)) * g).sum(-1) / (2 * h)
    torch.testing.assert_close(grad, fd, atol=2e-2, rtol=2e-2)


@pytest.mark.skipif(tcnn_available(), reason="tinycudann is importable here")
def test_hashgrid_tcnn_missing_raises():
    with pytest.raises(ImportError, match="tiny-cuda-nn"):
        HashGridEncoding(implementation="tcnn")
    assert HashGridEncoding(**SMALL, implementation="auto")(torch.rand(4, 3)).shape == (4, 8)


@pytest.mark.skipif(not (torch.cuda.is_available() and tcnn_available()), reason="needs tinycudann and CUDA")
@pytest.mark.parametrize("cfg", [SMALL, dict()], ids=["small", "default"])
def test_hashgrid_tcnn_parity(cfg):
    ref = HashGridEncoding(3, **cfg, implementation="torch").cuda()
    fast = HashGridEncoding(3, **cfg, implementation="tcnn").cuda()
    random_table(ref)
    with torch.no_grad():
        fast.params.copy_(ref.params)
    x = torch.rand(10000, 3, device="cuda")
    y_ref, y_fast = ref(x), fast(x)
    # Tolerances allow 1-ulp differences of exp2f/fma on fine levels (positions ~4000, tables in [-1, 1]);
    # the interpolant and its table gradient are continuous, so such differences stay small.
    torch.testing.assert_close(y_fast, y_ref, atol=2e-3, rtol=0)
    g = torch.randn_like(y_ref)
    (y_ref * g).sum().backward()
    (y_fast * g).sum().backward()
    torch.testing.assert_close(fast.params.grad, ref.params.grad, atol=5e-3, rtol=1e-3)


# ---------------------------------------------------------------- MLP
def n_params(m):
    return sum(p.numel() for p in m.parameters())


def test_mlp_shapes_and_activations():
    mlp = MLP(10, 32, 3, 4)
    x = torch.randn(2, 5, 10)
    h = x
    for layer in mlp.layers:
        h = torch.relu(layer(h))
    torch.testing.assert_close(mlp(x), mlp.out(h))  # [2, 5, 4]
    assert len(mlp.layers) == 3
    assert n_params(mlp) == (10 * 32 + 32) + 2 * (32 * 32 + 32) + (32 * 4 + 4)
    sig = MLP(10, 32, 3, 4, out_activation=torch.nn.Sigmoid)
    y = sig(torch.randn(100, 10) * 10)
    assert ((y > 0) & (y < 1)).all()


def test_mlp_skip_connection():
    plain = MLP(63, 256, 8, 4)
    skip = MLP(63, 256, 8, 4, skip_layers=(4,))
    assert n_params(skip) - n_params(plain) == 63 * 256  # layer 4 sees [h, x]
    assert skip.layers[4].in_features == 256 + 63
    x = torch.randn(7, 63)
    h = x
    for i, layer in enumerate(skip.layers):  # the skip concatenates [h, x] in that order at layer 4 only
        h = torch.relu(layer(torch.cat([h, x], -1) if i == 4 else h))
    torch.testing.assert_close(skip(x), skip.out(h))
    with pytest.raises(AssertionError):
        MLP(63, 256, 8, 4, skip_layers=(0,))
