"""Box-Focused Sampling and its baselines: frustum membership against a brute-force projection, the
max rule and the 0.01 floor, exact counts, farthest-point sampling, the 11 Gaussian features."""
import math

import numpy as np
import torch

from detect.sampling import (
    FEATURES, P_BACKGROUND, box_probability, boxes_from_masks, farthest_point_sample, frustum_probability, gaussian_features,
    sample_by_probability, uniform_sample,
)
from renderers.cameras import look_at


def cameras(count: int, g: torch.Generator):
    K = torch.tensor([[60.0, 0, 32], [0, 60.0, 24], [0, 0, 1]]).repeat(count, 1, 1)
    eyes = torch.randn(count, 3, generator=g) * 0.3 + torch.tensor([0.0, -3.0, 0.5])
    c2w = torch.stack([look_at(e, torch.zeros(3), torch.tensor([0.0, 0.0, 1.0])) for e in eyes])
    return K, c2w


def test_frustum_membership_matches_a_brute_force_projection():
    g = torch.Generator().manual_seed(0)
    means = torch.randn(400, 3, generator=g)
    K, c2w = cameras(3, g)
    boxes = [(torch.tensor([[10.0, 5, 30, 25], [25, 20, 60, 45]]), torch.tensor([0.4, 0.9])), (torch.zeros(0, 4), torch.zeros(0)),
             (torch.tensor([[0.0, 0, 64, 48]]), torch.tensor([0.6]))]
    p = frustum_probability(means, K, c2w, boxes, z_range=(2.5, 3.5))
    for n, x in enumerate(means.double().numpy()):
        best = 0.0
        for k, (view_boxes, scores) in enumerate(boxes):
            cam = np.linalg.inv(c2w[k].double().numpy()) @ np.append(x, 1.0)
            if not 2.5 <= cam[2] <= 3.5:
                continue
            u, v = K[k, 0, 0].item() * cam[0] / cam[2] + K[k, 0, 2].item(), K[k, 1, 1].item() * cam[1] / cam[2] + K[k, 1, 2].item()
            for (x1, y1, x2, y2), score in zip(view_boxes.tolist(), scores.tolist()):
                if x1 <= u <= x2 and y1 <= v <= y2:
                    best = max(best, score)
        assert p[n].item() == best, (n, p[n], best)
    assert (p == 0.9).any() and (p == 0.6).any() and (p == 0).any()  # the max rule across boxes and views


def test_sampling_floor_and_exact_counts():
    g = torch.Generator().manual_seed(1)
    p_obj = torch.zeros(10_000)
    p_obj[:500] = 1.0
    chosen = sample_by_probability(p_obj, 1000, g)
    assert len(chosen) == 1000 and len(torch.unique(chosen)) == 1000
    # expected share of object Gaussians: 500 of weight 1 against 9500 of weight 0.01 → nearly all objects first
    assert (chosen < 500).sum() >= 490
    assert len(sample_by_probability(p_obj, 20_000, g)) == 10_000  # capped by N
    kept = sample_by_probability(p_obj, 10_000, g, mode="bernoulli")
    background = (kept >= 500).sum().item()
    assert (kept < 500).sum() == 500 and abs(background - 9500 * P_BACKGROUND) < 40
    assert len(sample_by_probability(p_obj, 300, g, mode="bernoulli")) == 300
    assert torch.equal(uniform_sample(5, 3, g), torch.arange(3))


def test_ground_truth_boxes_and_masks_to_boxes():
    means = torch.tensor([[0.0, 0, 0], [2.0, 2, 2], [0.5, 0.5, 0.9]])
    np.testing.assert_array_equal(box_probability(means, torch.tensor([[-1.0, -1, -1, 1, 1, 1]])).numpy(), [1, 0, 1])
    ids = torch.zeros(1, 10, 10, dtype=torch.int32)
    ids[0, 2:5, 3:8] = 2
    (boxes, scores), = boxes_from_masks(ids)
    assert boxes.tolist() == [[3.0, 2.0, 8.0, 5.0]] and scores.tolist() == [1.0]


def test_farthest_point_sampling_spreads_out():
    line = torch.stack([torch.linspace(0, 1, 101), torch.zeros(101), torch.zeros(101)], 1)
    chosen = farthest_point_sample(line, 3)
    assert chosen.tolist() == [0, 50, 100]
    assert len(farthest_point_sample(line, 500)) == 101


def test_gaussian_features():
    n = 4
    params = {"means": torch.randn(n, 3), "scales": torch.full((n, 3), math.log(0.1)), "quats": torch.tensor([[2.0, 0, 0, 0]]).repeat(n, 1),
              "opacities": torch.zeros(n), "sh0": torch.zeros(n, 1, 3)}
    centres, features = gaussian_features(params)
    assert features.shape == (n, FEATURES) and torch.equal(centres, params["means"])
    torch.testing.assert_close(features[0], torch.tensor([0.1, 0.1, 0.1, 1, 0, 0, 0, 0.5, 0.5, 0.5, 0.5]))
