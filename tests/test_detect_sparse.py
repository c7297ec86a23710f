"""The sparse convolutions on the CPU (spconv with its backward patched) against a dense Conv3d
reference on a tiny grid: values and gradients of submanifold, strided and generative transposed
convolutions, and voxelisation."""
import pytest
import torch

pytest.importorskip("spconv")
from detect.sparse import add, generative_transpose, select, sparse_tensor, strided, submanifold, unique_voxels, voxelize  # noqa: E402

GRID = 6


def active_grid(g: torch.Generator, channels: int = 3, count: int = 40):
    """Random active voxels of one batch item and their features (float64 for exact comparisons)."""
    cells = torch.unique(torch.randint(0, GRID, (count, 3), generator=g), dim=0)
    features = torch.randn(len(cells), channels, generator=g, dtype=torch.float64, requires_grad=True)
    voxels = torch.cat([torch.zeros(len(cells), 1, dtype=torch.long), cells], 1)
    return features, voxels


def dense(features: torch.Tensor, voxels: torch.Tensor, size: int = GRID) -> torch.Tensor:
    """[1, C, D, D, D] with the features at their voxels [M, 4], zeros elsewhere (differentiable)."""
    cells = voxels[:, 1:].long()
    linear = (cells[:, 0] * size + cells[:, 1]) * size + cells[:, 2]
    flat = features.new_zeros(size**3, features.shape[1]).index_add(0, linear, features)
    return flat.T.reshape(1, features.shape[1], size, size, size)


def dense_weight(conv) -> torch.Tensor:
    """spconv's [out, kx, ky, kz, in] weight as Conv3d's [out, in, kx, ky, kz]."""
    return conv.weight.permute(0, 4, 1, 2, 3)


def test_submanifold_values_and_gradients_match_a_dense_convolution():
    g = torch.Generator().manual_seed(0)
    features, voxels = active_grid(g)
    conv = submanifold(3, 4, 3, key="t").double()
    out = conv(sparse_tensor(features, voxels, [GRID] * 3, 1))
    assert torch.equal(out.indices.long(), voxels)  # same active sites
    reference = torch.nn.functional.conv3d(dense(features, voxels), dense_weight(conv), padding=1)[0]  # [C, D, D, D]
    expected = reference[:, voxels[:, 1], voxels[:, 2], voxels[:, 3]].T
    torch.testing.assert_close(out.features, expected)
    upstream = torch.randn(out.features.shape, generator=g, dtype=torch.float64)
    grad_features, grad_weight = torch.autograd.grad((out.features * upstream).sum(), [features, conv.weight])
    features_ref = features.detach().requires_grad_()
    weight_ref = dense_weight(conv).detach().requires_grad_()
    ref = torch.nn.functional.conv3d(dense(features_ref, voxels), weight_ref, padding=1)[0][:, voxels[:, 1], voxels[:, 2], voxels[:, 3]].T
    ref_features, ref_weight = torch.autograd.grad((ref * upstream).sum(), [features_ref, weight_ref])
    torch.testing.assert_close(grad_features, ref_features)
    torch.testing.assert_close(grad_weight.permute(0, 4, 1, 2, 3), ref_weight)


def test_strided_and_transposed_convolutions_match_dense_ones():
    g = torch.Generator().manual_seed(1)
    features, voxels = active_grid(g)
    down = strided(3, 5).double()
    out = down(sparse_tensor(features, voxels, [GRID] * 3, 1))
    reference = torch.nn.functional.conv3d(dense(features, voxels), dense_weight(down), stride=2)[0]
    cells = out.indices.long()
    torch.testing.assert_close(out.features, reference[:, cells[:, 1], cells[:, 2], cells[:, 3]].T)
    expected_cells = torch.unique(voxels[:, 1:] // 2, dim=0)
    assert torch.equal(torch.unique(cells[:, 1:], dim=0), expected_cells)
    out.features.sum().backward()
    assert features.grad is not None and torch.isfinite(features.grad).all()

    up = generative_transpose(5, 2).double()
    small = sparse_tensor(out.features.detach(), out.indices, out.spatial_shape, 1)
    grown = up(small)
    ref_up = torch.nn.functional.conv_transpose3d(dense(small.features, small.indices, small.spatial_shape[0]), up.weight.permute(4, 0, 1, 2, 3), stride=2)[0]
    big = grown.indices.long()
    torch.testing.assert_close(grown.features, ref_up[:, big[:, 1], big[:, 2], big[:, 3]].T)
    assert len(big) == 8 * len(small.indices)  # every child voxel of an active parent is created


def test_voxelize_averages_features_per_voxel_and_select_keeps_a_subset():
    points = [torch.tensor([[0.01, 0.01, 0.01], [0.02, 0.03, 0.04], [0.31, 0.0, 0.0]]), torch.tensor([[0.5, 0.5, 0.5]])]
    features = [torch.tensor([[1.0], [3.0], [5.0]]), torch.tensor([[7.0]])]
    x, origin = voxelize(points, features, 0.1)
    assert torch.equal(origin, torch.tensor([0.01, 0.0, 0.0]))
    rows = {tuple(v.tolist()): f.item() for v, f in zip(x.indices, x.features)}
    assert rows == {(0, 0, 0, 0): 2.0, (0, 3, 0, 0): 5.0, (1, 4, 5, 5): 7.0}
    kept = select(x, x.features[:, 0] > 4)
    assert len(kept.indices) == 2 and kept.batch_size == 2


def test_add_sums_over_the_union_of_voxels():
    a = sparse_tensor(torch.tensor([[1.0], [2.0]]), torch.tensor([[0, 1, 1, 1], [0, 2, 2, 2]]), [4, 4, 4], 1)
    b = sparse_tensor(torch.tensor([[10.0], [20.0]]), torch.tensor([[0, 2, 2, 2], [0, 3, 0, 1]]), [4, 4, 4], 1)
    total = add(a, b)
    got = {tuple(v): float(f) for v, f in zip(total.indices.tolist(), total.features[:, 0])}
    assert got == {(0, 1, 1, 1): 1.0, (0, 2, 2, 2): 12.0, (0, 3, 0, 1): 20.0}


def test_unique_voxels_matches_torch_unique_over_rows():
    voxels = torch.cat([torch.randint(0, 3, (500, 1)), torch.randint(0, 40, (500, 3))], 1)
    voxels[-1] = torch.tensor([2, 65535, 0, 65535])
    unique, inverse = unique_voxels(voxels)
    expected, expected_inverse = torch.unique(voxels, dim=0, return_inverse=True)
    assert torch.equal(unique, expected) and torch.equal(inverse, expected_inverse)
