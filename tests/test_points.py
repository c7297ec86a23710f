"""Point scaffolds (renderers/points.py): depth fusion onto the true surface, open3d's KNN against
brute force, and depth splatted from points."""
import torch

import data
from renderers.points import clean_points, fuse_depths, knn, knn_reference, splat_depth


def test_fused_points_lie_on_the_surface_and_inconsistent_depth_is_dropped(tiny_blender):
    scene = data.load(tiny_blender)
    train = scene.split("train")[:8]
    depths, images, K, c2w = scene.depths[train], scene.images[train], scene.K[train], scene.c2w[train]
    points, colours = fuse_depths(depths, images, K, c2w, neighbours=4, min_consistent=2)
    assert len(points) > 0.3 * (depths > 0).sum() and colours.shape == points.shape
    surface = scene.points  # the generator's surface samples
    nearest = torch.cdist(points, surface).min(dim=1).values
    assert nearest.median() < 0.03
    broken = depths.clone()
    broken[0] *= 1.2  # one view's depth off by 20%: none of its pixels agrees with the others
    fused_broken, _ = fuse_depths(broken, images, K, c2w, neighbours=4, min_consistent=2)
    assert len(fused_broken) < len(points) - 0.8 * (depths[0] > 0).sum()
    cleaned, cleaned_colours = clean_points(points, colours, voxel_size=0.05, radius=0.2, min_neighbours=4)
    assert 0 < len(cleaned) < len(points) and cleaned_colours.shape == cleaned.shape


def test_knn_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    points, queries = torch.rand(3000, 3, generator=g), torch.rand(500, 3, generator=g) * 1.2 - 0.1
    index, distance = knn(queries, points, 8)
    ref_index, ref_distance = knn_reference(queries, points, 8, chunk=128)
    torch.testing.assert_close(distance, ref_distance)
    assert (index == ref_index).float().mean() > 0.999  # equal up to ties
    assert (distance.diff(dim=1) >= 0).all()


def test_splatted_depth_reproduces_the_depth_the_points_came_from(tiny_blender):
    scene = data.load(tiny_blender)
    view = 3
    depth = scene.depths[view]
    rows, cols = torch.nonzero(depth > 0, as_tuple=True)
    K, c2w = scene.K[view], scene.c2w[view]
    z = depth[rows, cols]
    cam = torch.stack([(cols + 0.5 - K[0, 2]) / K[0, 0] * z, (rows + 0.5 - K[1, 2]) / K[1, 1] * z, z], -1)
    points = cam @ c2w[:3, :3].T + c2w[:3, 3]
    splatted = splat_depth(points, K, c2w, scene.width, scene.height)
    torch.testing.assert_close(splatted[rows, cols], z, atol=1e-4, rtol=1e-4)
    keep = torch.rand(len(points), generator=torch.Generator().manual_seed(1)) > 0.1  # pinholes are filled from neighbours
    holes = splat_depth(points[keep], K, c2w, scene.width, scene.height)
    assert ((holes[rows, cols] > 0).float().mean() > 0.97)
