"""3DGS-DET's 2D priors: boundaries by border following, centre discs, filled masks, the overlay rule,
painting a scene in memory (the dataset untouched) and 3DGS trained on it through the CLI."""
import hashlib

import numpy as np
import pytest
import torch

import data
from detect.boundary import PALETTE, GroundedSAMMasks, class_index, class_maps, overlay, paint_scene
from recon.cli import main
from recon.runs import open_run


def rectangle(h=20, w=30, box=(5, 8, 15, 22)) -> np.ndarray:
    ids = np.zeros((h, w), dtype=np.int32)
    ids[box[0]:box[2], box[1]:box[3]] = 1
    return ids


def test_boundary_is_the_masks_border_drawn_thickness_pixels_wide():
    ids = rectangle()
    one = class_maps(ids, np.array([4]), "boundary", 1)
    assert one.shape == (len(PALETTE), 20, 30) and one[[c for c in range(len(PALETTE)) if c != 4]].sum() == 0
    border = np.zeros_like(ids)
    border[5:15, 8:22] = 1
    border[6:14, 9:21] = 0  # the 1-pixel outline of the rectangle
    np.testing.assert_array_equal(one[4], border)
    three = class_maps(ids, np.array([4]), "boundary", 3)[4]
    assert three.sum() > one[4].sum() and three[9:11, 12:18].sum() == 0 and (three >= one[4]).all()


def test_centre_disc_and_filled_mask():
    ids = rectangle()
    centre = class_maps(ids, np.array([0]), "center", 2)[0]
    rows, cols = np.nonzero(centre)
    assert abs(rows.mean() - 9.5) <= 0.5 and abs(cols.mean() - 14.5) <= 0.5 and centre.sum() == 13  # a disc of radius 2
    np.testing.assert_array_equal(class_maps(ids, np.array([2]), "mask", 2)[2], ids.astype(np.uint8))


def test_overlay_paints_class_colours_and_the_last_class_wins_on_overlaps():
    image = np.full((4, 4, 3), 0.5, dtype=np.float32)
    maps = np.zeros((len(PALETTE), 4, 4), dtype=np.uint8)
    maps[1, 0, :2] = 1
    maps[7, 0, 1:3] = 1  # overlaps class 1 at (0, 1)
    out = overlay(image, maps)
    np.testing.assert_array_equal(out[0, 0], PALETTE[1])
    np.testing.assert_array_equal(out[0, 1], PALETTE[7])
    np.testing.assert_array_equal(out[0, 2], PALETTE[7])
    np.testing.assert_array_equal(out[1:], image[1:])
    single = maps.copy()
    single[7, 0, 1] = 0  # no overlap: the card's formula I·(1 − Σb) + Σ b·color
    expected = image * (1 - single.sum(0)[..., None]) + np.einsum("chw,cd->hwd", single.astype(np.float32), PALETTE)
    np.testing.assert_allclose(overlay(image, single), expected)


def test_painting_a_scene_keeps_the_dataset_and_the_unmasked_pixels(tiny_blender):
    files = {p: hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(tiny_blender.rglob("*")) if p.is_file()}
    scene = data.load(tiny_blender)
    painted = paint_scene(scene, "boundary", 1)
    index = class_index(scene)
    assert list(index) == sorted({o.class_name for o in scene.objects})  # not ScanNet's classes: their own order
    changed = (painted.images != scene.images).any(-1)  # [N, H, W]
    assert changed.any() and not (changed & (scene.instance_ids == 0)).any()  # only on object pixels (their borders)
    assert torch.equal(painted.images[~changed], scene.images[~changed]) and paint_scene(scene, "none") is scene
    assert {p: hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(tiny_blender.rglob("*")) if p.is_file()} == files
    no_masks = data.load(tiny_blender)
    no_masks.instance_ids = None
    with pytest.raises(data.DataError, match="guidance=boundary needs 2D instance masks"):
        paint_scene(no_masks, "boundary")


def test_3dgs_trains_on_boundary_guided_images_through_the_cli(tiny_blender, tmp_path):
    out = tmp_path / "run"
    assert main(["train", "splat", "--data", str(tiny_blender), "--preset", "fast", "--max-steps", "5", "--quiet", "--set", "guidance=boundary",
                 "--set", "eval_views=1", "--out", str(out)]) == 0
    method, _ = open_run(out, "cpu")  # reopened with the same prior painted in
    torch.testing.assert_close(method.scene.images, paint_scene(data.load(tiny_blender), "boundary", 2).images)


def test_grounded_sam_needs_its_weights_on_disk(tmp_path):
    with pytest.raises(ValueError, match="no Grounding-DINO weights there .*huggingface-cli download IDEA-Research/grounding-dino-base"):
        GroundedSAMMasks(tmp_path / "gdino", tmp_path / "sam")
