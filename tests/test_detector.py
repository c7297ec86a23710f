"""The sparse FCAF3D-style detector on the CPU: levels, strides and pruning of its outputs, and
finite gradients of FCAF3D's losses on two generated rooms (mesh vertices standing in for Gaussians)."""
import pytest
import torch

pytest.importorskip("spconv")
from data.formats.scannet import CLASSES, read_annotation  # noqa: E402
from data.rooms import generate_rooms  # noqa: E402
from detect.losses import detection_losses  # noqa: E402
from detect.model import Detector, DetectorShape  # noqa: E402
from detect.sparse import voxelize  # noqa: E402

VOXEL = 0.08


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """Two generated rooms as point sets with Gaussian-like features, and their boxes."""
    root = generate_rooms(tmp_path_factory.mktemp("rooms") / "root", rooms=2, seed=11, frames=2, res=16)
    out = []
    for k in range(2):
        annotation = read_annotation(root / "scans" / f"scene{k:04d}_00", f"scene{k:04d}_00")
        points = torch.from_numpy(annotation.vertices).float()
        n = len(points)
        features = torch.cat([torch.full((n, 3), 0.05), torch.tensor([[1.0, 0, 0, 0]]).expand(n, 4), torch.from_numpy(annotation.colors), torch.ones(n, 1)], 1)
        boxes = torch.tensor([[*o.box_min, *o.box_max] for o in annotation.objects]).float()
        out.append((points, features, boxes, torch.tensor([CLASSES.index(o.class_name) for o in annotation.objects])))
    return out


def test_levels_shapes_and_gradients(scenes):
    torch.manual_seed(0)
    model = Detector(DetectorShape(widths=(8, 16, 16, 16), head_width=16, prune_top=3000))
    x, origin = voxelize([s[0] for s in scenes], [s[1] for s in scenes], VOXEL, multiple=32)
    outputs = model(x)
    assert [o["stride"] for o in outputs] == [2, 4, 8, 16]
    for o in outputs:
        m = len(o["voxels"])
        assert o["classes"].shape == (m, 18) and o["distances"].shape == (m, 6) and (o["distances"] > 0).all()
        assert set(o["voxels"][:, 0].tolist()) == {0, 1}
    assert len(outputs[0]["voxels"]) <= 2 * 3000  # pruned per scene
    losses = detection_losses(outputs, origin, VOXEL, [s[2] for s in scenes], [s[3] for s in scenes])
    losses["loss"].backward()
    assert losses["positives"] > 0 and all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)
