"""Indoor AP against the expectations of mmdet3d's own indoor-eval unit test, and on hand-made cases."""
import numpy as np
import pytest

from detect.metrics import all_point_ap, box_iou, indoor_ap, markdown_table

# mmdet3d tests/test_metrics/test_indoor_eval.py: (x, y, z, dx, dy, dz); predictions with z at the
# bottom (origin (0.5, 0.5, 0)), the ground truth with z at the centre, deliberately.
MMDET3D_BOXES = np.array([
    [-2.4089e-03, -3.3174e+00, 4.9438e-01, 2.1668e+00, 2.8431e-01, 1.6506e+00],
    [-3.4269e-01, -2.7565e+00, 2.8144e-02, 6.8554e-01, 9.6854e-01, 6.1755e-01],
    [-3.8320e+00, -1.0646e+00, 1.7074e-01, 2.4981e-01, 4.4708e-01, 6.2538e-01],
    [4.1073e-01, 3.3757e+00, 3.4311e-01, 8.0617e-01, 2.8679e-01, 1.6060e+00],
    [6.1199e-01, -3.1041e+00, 4.1873e-01, 1.2310e+00, 4.0162e-01, 1.7303e+00],
    [-5.9877e-01, -2.6011e+00, 1.1148e+00, 1.5704e-01, 7.5957e-01, 9.6930e-01],
    [2.7462e-01, -3.0088e+00, 6.5231e-02, 8.1208e-01, 4.1861e-01, 3.7339e-01],
    [-1.4704e+00, -2.0024e+00, 2.7479e-01, 1.7888e+00, 1.0566e+00, 1.3704e+00],
    [8.2727e-02, -3.1160e+00, 2.5690e-01, 1.4054e+00, 2.0772e-01, 9.6792e-01],
    [2.6896e+00, 1.9881e+00, 1.1566e+00, 9.9885e-02, 3.5713e-01, 4.5638e-01],
])
MMDET3D_SCORES = [1.7516e-05, 1.0167e-06, 8.4486e-07, 7.1048e-02, 6.4274e-05, 1.5003e-07, 5.8102e-06, 1.9399e-08, 5.3126e-07, 1.8630e-09]
NAMES = ["cabinet", "bed", "chair", "sofa"]


def from_bottom(b: np.ndarray) -> np.ndarray:
    return np.concatenate([b[:, :2] - b[:, 3:5] / 2, b[:, 2:3], b[:, :2] + b[:, 3:5] / 2, b[:, 2:3] + b[:, 5:6]], axis=1)


def from_centre(b: np.ndarray) -> np.ndarray:
    return np.concatenate([b[:, :3] - b[:, 3:] / 2, b[:, :3] + b[:, 3:] / 2], axis=1)


def test_mmdet3d_indoor_eval_expectations():
    gt = [{"boxes": from_centre(MMDET3D_BOXES), "labels": [NAMES[i] for i in [0, 1, 2, 0, 0, 3, 1, 3, 3, 2]]}]
    pred = [{"boxes": from_bottom(MMDET3D_BOXES), "labels": [NAMES[i] for i in [0, 1, 2, 2, 0, 3, 1, 2, 3, 2]], "scores": MMDET3D_SCORES}]
    result = indoor_ap(gt, pred)
    assert result["AP@0.25"]["cabinet"] == pytest.approx(0.666667, abs=1e-6)
    assert result["AP@0.25"]["bed"] == pytest.approx(1.0)
    assert result["AP@0.25"]["chair"] == pytest.approx(0.5)
    assert result["mAP@0.25"] == pytest.approx(0.708333, abs=1e-6)
    assert result["mAR@0.25"] == pytest.approx(0.833333, abs=1e-6)


def test_mmdet3d_fewer_classes_case():
    cube = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    gt = [{"boxes": from_centre(np.array([[0.0, 0, 0, 1, 1, 1], cube])), "labels": ["chair", "cabinet"]},
          {"boxes": from_centre(np.array([cube])), "labels": ["bed"]}]
    pred = [{"boxes": from_bottom(np.array([cube])), "labels": ["cabinet"], "scores": [0.5]},
            {"boxes": from_bottom(np.array([cube])), "labels": ["bed"], "scores": [0.5]}]
    result = indoor_ap(gt, pred)
    assert result["mAP@0.25"] == pytest.approx(0.666667, abs=1e-6) and result["mAR@0.25"] == pytest.approx(0.666667, abs=1e-6)
    assert result["AP@0.25"]["chair"] == 0.0 and result["recall@0.25"]["chair"] == 0.0  # ground truth, no predictions
    assert result["mAP@0.5"] == 0.0  # IoU 1/3 between a bottom- and a centre-anchored unit cube


def test_hand_made_cases():
    box = np.array([[0.0, 0.0, 0.0, 1.0, 1.0, 1.0]])
    gt = [{"boxes": box, "labels": ["table"]}]
    perfect = indoor_ap(gt, [{"boxes": box, "labels": ["table"], "scores": [0.9]}])
    assert perfect["mAP@0.25"] == perfect["mAP@0.5"] == perfect["mAR@0.5"] == 1.0
    # the box cut to x ≤ w inside the ground truth: IoU = w, exactly 0.5 at w = 0.5, which is not > 0.5
    for width, at_half in ((0.5, 0.0), (0.5 + 2**-20, 1.0)):
        result = indoor_ap(gt, [{"boxes": np.array([[0.0, 0.0, 0.0, width, 1.0, 1.0]]), "labels": ["table"], "scores": [0.9]}])
        assert result["AP@0.5"]["table"] == at_half and result["AP@0.25"]["table"] == 1.0
    # a duplicate ranked first takes the box; the second is a false positive: precision 1 then 1/2, recall 1
    duplicate = indoor_ap(gt, [{"boxes": np.concatenate([box, box]), "labels": ["table", "table"], "scores": [0.9, 0.8]}])
    assert duplicate["AP@0.5"]["table"] == 1.0
    worse_first = indoor_ap(gt, [{"boxes": np.concatenate([box + 5, box]), "labels": ["table", "table"], "scores": [0.9, 0.8]}])
    assert worse_first["AP@0.5"]["table"] == pytest.approx(0.5)
    # a class never in the ground truth is reported apart, not averaged in; a class without predictions scores 0
    two = [{"boxes": np.concatenate([box, box + 3]), "labels": ["table", "sofa"]}]
    mixed = indoor_ap(two, [{"boxes": np.concatenate([box, box + 3]), "labels": ["table", "lamp"], "scores": [0.9, 0.9]}])
    assert mixed["classes"] == ["sofa", "table"] and mixed["unmatched_classes"] == ["lamp"] and mixed["mAP@0.25"] == 0.5
    # detections in a scene without that class are false positives; ranking spans scenes
    scenes = indoor_ap([{"boxes": box, "labels": ["table"]}, {"boxes": np.zeros((0, 6)), "labels": []}],
                       [{"boxes": box, "labels": ["table"], "scores": [0.5]}, {"boxes": box, "labels": ["table"], "scores": [0.9]}])
    assert scenes["AP@0.25"]["table"] == pytest.approx(0.5)
    assert "| AP@0.25 | 50.0 | 50.0 | 100.0 |" in markdown_table(scenes)  # table AP, mAP, mAR


def test_iou_and_area_helpers():
    a = np.array([[0.0, 0, 0, 2, 2, 2]])
    b = np.array([[1.0, 1, 1, 3, 3, 3], [5.0, 5, 5, 6, 6, 6]])
    np.testing.assert_allclose(box_iou(a, b), [[1 / 15, 0.0]])
    assert all_point_ap(np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.5, 2 / 3])) == pytest.approx(0.5 + 0.5 * 2 / 3)


def test_bad_inputs_name_the_scene():
    with pytest.raises(ValueError, match="scene 0: 1 predicted boxes but 0 scores"):
        indoor_ap([{"boxes": np.zeros((0, 6)), "labels": []}], [{"boxes": np.ones((1, 6)), "labels": ["x"], "scores": []}])
    with pytest.raises(ValueError, match="max ≥ min"):
        indoor_ap([{"boxes": np.array([[1.0, 0, 0, 0, 1, 1]]), "labels": ["x"]}], [{"boxes": np.zeros((0, 6)), "labels": [], "scores": []}])
