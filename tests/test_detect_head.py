"""FCAF3D's assignment on hand-built boxes, loss values on known inputs, box decoding and NMS."""
import math

import torch

from detect.head import assign_targets, boxes_from_distances, centerness, face_distances, focal_loss, iou_loss, multiclass_nms


def grid(step: float, low: float = 0.0, high: float = 4.0) -> torch.Tensor:
    """Locations at the centres of a cubic grid of cells of side `step` over [low, high]³."""
    axis = torch.arange(low + step / 2, high, step)
    return torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)


def test_face_distances_and_centerness():
    box = torch.tensor([[0.0, 0, 0, 2, 4, 6]])
    d = face_distances(torch.tensor([[1.0, 2, 3], [0.5, 1, 3]]), box)[:, 0]
    torch.testing.assert_close(d, torch.tensor([[1.0, 1, 2, 2, 3, 3], [0.5, 1.5, 1, 3, 3, 3]]))
    torch.testing.assert_close(centerness(d), torch.tensor([1.0, math.sqrt(1 / 3 * 1 / 3)]))
    torch.testing.assert_close(boxes_from_distances(torch.tensor([[1.0, 2, 3]]), d[:1]), box)


def test_assignment_picks_the_level_then_the_most_central_locations_then_the_smallest_box():
    fine, coarse = grid(0.25), grid(1.0)  # 4096 and 64 locations
    big = torch.tensor([0.0, 0.0, 0.0, 3.0, 3.0, 3.0])  # 27 coarse locations inside (≥ 27 on every level) → the coarsest level
    small = torch.tensor([0.6, 0.6, 0.6, 1.4, 1.4, 1.4])  # 64 fine locations inside, no coarse one → the finest level
    centre, box, label = assign_targets([fine, coarse], torch.stack([big, small]), torch.tensor([3, 7]))
    positive = label >= 0
    levels = torch.cat([torch.zeros(len(fine)), torch.ones(len(coarse))])
    # top 18 by centerness, strictly above the 19th best (mmdet3d's rule): on these symmetric grids
    # the 19th value is shared, so the big box keeps its centre and 6 face neighbours (7), the small one its 8 inner locations
    coarse_positive = positive & (levels == 1)
    assert (label[coarse_positive] == 3).all() and coarse_positive.sum() == 7
    assert ((coarse[coarse_positive[len(fine):]] - 1.5).abs().sum(-1) <= 1.0).all()
    fine_positive = positive & (levels == 0)
    inner = (fine - 1.0).abs().max(-1).values < 0.2  # 0.875 and 1.125 on every axis
    assert (label[fine_positive] == 7).all() and torch.equal(fine_positive[: len(fine)], inner)
    torch.testing.assert_close(box[label == 7], small.expand(8, 6))
    torch.testing.assert_close(centre[label == 7], torch.full((8,), (0.275 / 0.525) ** 1.5))
    # a location inside both boxes on the same level goes to the smaller one
    both = assign_targets([coarse], torch.stack([big, torch.tensor([0.0, 0.0, 0.0, 2.0, 2.0, 2.0])]), torch.tensor([3, 5]), assign_threshold=1)
    assert both[2][((coarse - 0.5).abs().sum(-1) == 0)].item() == 5
    empty = assign_targets([coarse], torch.zeros(0, 6), torch.zeros(0, dtype=torch.long))
    assert (empty[2] == -1).all()


def test_a_box_thinner_than_the_spacing_is_assigned_as_if_grown_to_it():
    fine = grid(0.25)  # location planes at 0.125, 0.375, ...
    picture = torch.tensor([1.0, 1.0, 1.0, 2.0, 1.02, 2.0])  # 2 cm deep, between two planes
    _, _, label = assign_targets([fine], picture[None], torch.tensor([11]))
    assert (label == -1).all()  # FCAF3D's rule: no location inside, never a positive
    centre, box, label = assign_targets([fine], picture[None], torch.tensor([11]), min_size=0.25)
    positive = label == 11
    assert positive.any() and torch.allclose(fine[positive][:, 1], torch.tensor(1.125))  # the plane within half the spacing
    torch.testing.assert_close(box[positive], picture.expand(int(positive.sum()), 6))  # regression target: the true box
    assert (centre[positive] > 0).all()
    # boxes already thicker than min_size are assigned as before
    big = torch.tensor([[0.6, 0.6, 0.6, 1.4, 1.4, 1.4]])
    assert torch.equal(assign_targets([fine], big, torch.tensor([7]))[2], assign_targets([fine], big, torch.tensor([7]), min_size=0.25)[2])


def test_losses_on_known_inputs():
    logits = torch.tensor([[0.0, 2.0], [-1.0, 0.5]])
    targets = torch.tensor([1, -1])
    p = torch.sigmoid(logits)
    expected = (0.75 * p[0, 0] ** 2 * -torch.log(1 - p[0, 0]) + 0.25 * (1 - p[0, 1]) ** 2 * -torch.log(p[0, 1])
                + 0.75 * p[1, 0] ** 2 * -torch.log(1 - p[1, 0]) + 0.75 * p[1, 1] ** 2 * -torch.log(1 - p[1, 1]))
    torch.testing.assert_close(focal_loss(logits, targets), expected)
    a = torch.tensor([[0.0, 0, 0, 2, 2, 2]])
    torch.testing.assert_close(iou_loss(a, a), torch.tensor([0.0]))
    torch.testing.assert_close(iou_loss(a, torch.tensor([[1.0, 0, 0, 3, 2, 2]])), torch.tensor([1 - 4 / 12]))  # half overlap: IoU 1/3


def test_multiclass_nms_suppresses_within_a_class_only():
    boxes = torch.tensor([[0.0, 0, 0, 1, 1, 1], [0.05, 0, 0, 1.05, 1, 1], [3.0, 3, 3, 4, 4, 4], [0.0, 0, 0, 1, 1, 1]])
    scores = torch.tensor([[0.9, 0.0], [0.8, 0.0], [0.7, 0.0], [0.0, 0.6]])
    kept, kept_scores, labels = multiclass_nms(boxes, scores, iou_threshold=0.5, score_threshold=0.01)
    assert labels.tolist() == [0, 0, 1] and kept_scores.tolist() == [0.8999999761581421, 0.699999988079071, 0.6000000238418579]
    torch.testing.assert_close(kept, boxes[[0, 2, 3]])
    assert len(multiclass_nms(boxes, scores, nms_pre=2)[0]) == 1  # only the two best locations survive nms_pre, and they overlap
