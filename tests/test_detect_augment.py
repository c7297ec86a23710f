"""FCAF3D's augmentation on Gaussians: the augmented Gaussians render, from the correspondingly
moved camera, the image of the original scene; flips mirror every covariance; boxes follow."""
import math

import torch

from detect.augment import Augmentation
from renderers.cameras import look_at
from renderers.splatting import rasterization
from renderers.splatting._torch_impl import quat_scale_to_covar


def scene(n: int = 300, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"means": torch.randn(n, 3, generator=g) * 0.4, "quats": torch.randn(n, 4, generator=g), "scales": torch.log(torch.rand(n, 3, generator=g) * 0.08 + 0.01),
            "opacities": torch.randn(n, generator=g), "colors": torch.rand(n, 3, generator=g)}


def render(params: dict[str, torch.Tensor], c2w: torch.Tensor) -> torch.Tensor:
    K = torch.tensor([[[60.0, 0, 32], [0, 60.0, 32], [0, 0, 1]]])
    image, _, _ = rasterization(params["means"], params["quats"], params["scales"].exp(), torch.sigmoid(params["opacities"]), params["colors"],
                                torch.linalg.inv(c2w)[None], K, 64, 64, backend="torch")
    return image[0]


def test_rotation_scale_and_shift_move_the_whole_gaussians():
    params = scene()
    c2w = look_at(torch.tensor([0.3, -2.5, 0.8]), torch.zeros(3), torch.tensor([0.0, 0.0, 1.0]))
    augmentation = Augmentation(False, False, angle=0.07, scale=1.08, shift=(0.05, -0.1, 0.02))
    M = augmentation.matrix()
    moved_camera = c2w.clone()
    moved_camera[:3, :3] = M[:3, :3] / augmentation.scale @ c2w[:3, :3]
    moved_camera[:3, 3] = M[:3, :3] @ c2w[:3, 3] + M[:3, 3]
    original, augmented = render(params, c2w), render(augmentation.gaussians(params), moved_camera)
    assert original.std() > 0.05
    torch.testing.assert_close(augmented, original, atol=2e-4, rtol=1e-3)  # perspective is blind to a uniform scale of the whole scene


def test_every_transform_maps_covariances_exactly():
    params = scene(50, seed=1)
    g = torch.Generator().manual_seed(3)
    for flip_x, flip_y in ((True, False), (False, True), (True, True)):
        augmentation = Augmentation(flip_x, flip_y, angle=float(torch.rand(1, generator=g)) * 0.17 - 0.087, scale=0.93, shift=(0.1, 0.0, -0.1))
        A = augmentation.matrix()[:3, :3]
        moved = augmentation.gaussians(params)
        before = quat_scale_to_covar(torch.nn.functional.normalize(params["quats"], dim=-1), params["scales"].exp())
        after = quat_scale_to_covar(moved["quats"], moved["scales"].exp())
        torch.testing.assert_close(after, A @ before @ A.T, atol=1e-6, rtol=1e-4)
        torch.testing.assert_close(moved["quats"].norm(dim=-1), torch.ones(50))


def test_boxes_hold_their_moved_points():
    g = torch.Generator().manual_seed(4)
    boxes = torch.tensor([[0.0, 0.0, 0.0, 1.0, 2.0, 0.5], [-1.0, 0.5, 0.2, -0.2, 0.9, 1.5]])
    inside = [box[:3] + torch.rand(200, 3, generator=g) * (box[3:] - box[:3]) for box in boxes]
    augmentation = Augmentation(True, False, angle=0.087, scale=1.1, shift=(0.0, 0.3, 0.0))
    moved_boxes = augmentation.boxes(boxes)
    M = augmentation.matrix()
    for points, box in zip(inside, moved_boxes):
        moved = points @ M[:3, :3].T + M[:3, 3]
        assert (moved >= box[:3] - 1e-6).all() and (moved <= box[3:] + 1e-6).all()
    w = 1.1 * (1.0 * math.cos(0.087) + 2.0 * math.sin(0.087))  # the rotated 1 × 2 footprint's extent along x
    torch.testing.assert_close(moved_boxes[0, 3] - moved_boxes[0, 0], torch.tensor(w))
