"""Boundary Guidance (3DGS-DET): category-specific 2D boundaries painted into the training images,
so that 3DGS learns Gaussians that separate objects (and their classes) in colour.

Per view, each instance mask's outer border is traced by Suzuki–Abe border following (OpenCV's
findContours) and drawn `thickness` pixels wide into its class's binary map b^c; the painted image
is I_bd = I·(1 − Σ_c b^c) + Σ_c b^c·color(c) with one fixed colour per class. Where boundaries of
several classes overlap the class drawn last wins (so Σb is clamped to 1); classes are drawn in
PALETTE order. The ablation's other priors (Table 4 of the method card) paint each instance's 2D
centre as a disc of radius `thickness`, or fill its whole mask.

Masks come from the Scene (generated rooms and scenes; ScanNet's 2D export or the mesh render);
`GroundedSAMMasks` reads them from Grounding-DINO + SAM weights on disk instead.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from data import DataError, Scene

GUIDANCE = ("none", "boundary", "center", "mask")
# 18 well-separated colours (RGB in [0, 1]), one per ScanNet detection class in mmdet3d's order
PALETTE = np.array([
    (0.90, 0.10, 0.10), (0.10, 0.60, 0.95), (1.00, 0.85, 0.00), (0.20, 0.80, 0.20), (0.95, 0.45, 0.00), (0.55, 0.15, 0.85),
    (0.00, 0.85, 0.85), (0.95, 0.20, 0.75), (0.60, 0.95, 0.20), (1.00, 0.60, 0.70), (0.00, 0.45, 0.45), (0.85, 0.70, 1.00),
    (0.55, 0.30, 0.10), (1.00, 1.00, 0.60), (0.45, 0.00, 0.00), (0.65, 1.00, 0.75), (0.45, 0.45, 0.00), (0.00, 0.00, 0.55),
], dtype=np.float32)


def class_index(scene: Scene) -> dict[str, int]:
    """Palette index per class name: ScanNet's 18 classes in mmdet3d's order when the scene's classes
    are among them, else the scene's own class names sorted."""
    from data.formats.scannet import CLASSES

    present = {o.class_name for o in scene.objects}
    names = list(CLASSES) if present <= set(CLASSES) else sorted(present)
    if len(names) > len(PALETTE):
        raise DataError(f"{scene.root}: {len(names)} classes, but the palette has {len(PALETTE)} colours")
    return {name: i for i, name in enumerate(names)}


def class_maps(instance_ids: np.ndarray, instance_class: np.ndarray, prior: str, thickness: int) -> np.ndarray:
    """[C, H, W] uint8 maps b^c of one view: instance_ids [H, W] (0 = none, i = object i − 1),
    instance_class [objects] palette index per object; prior "boundary", "center" or "mask"."""
    import cv2

    assert instance_ids.ndim == 2 and prior in GUIDANCE[1:], (instance_ids.shape, prior)
    maps = np.zeros((len(PALETTE), *instance_ids.shape), dtype=np.uint8)
    for instance in np.unique(instance_ids[instance_ids > 0]):
        mask = np.ascontiguousarray(instance_ids == instance, dtype=np.uint8)
        target = maps[instance_class[instance - 1]]
        if prior == "mask":
            target |= mask
        elif prior == "boundary":
            contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
            canvas = np.zeros(mask.shape, np.uint8)
            cv2.drawContours(canvas, contours, -1, 1, thickness)
            target |= canvas
        else:  # the mask's centroid as a disc
            rows, cols = np.nonzero(mask)
            canvas = np.zeros(mask.shape, np.uint8)
            cv2.circle(canvas, (int(round(cols.mean())), int(round(rows.mean()))), max(thickness, 1), 1, -1)
            target |= canvas
    return maps


def overlay(image: np.ndarray, maps: np.ndarray) -> np.ndarray:
    """I·(1 − Σb) + Σ b^c·color(c) for image [H, W, 3] in [0, 1] and maps [C, H, W], drawn in palette
    order so that the last class wins where maps overlap (Σb clamped to 1)."""
    out = image.copy()
    for c in range(len(maps)):
        out[maps[c] > 0] = PALETTE[c]
    return out


def paint_scene(scene: Scene, prior: str, thickness: int = 2) -> Scene:
    """A copy of the scene whose images carry the 2D prior (the dataset on disk is untouched)."""
    if prior == "none":
        return scene
    if prior not in GUIDANCE:
        raise ValueError(f"guidance must be one of {', '.join(GUIDANCE)}, got {prior!r}")
    if scene.instance_ids is None or not scene.objects:
        raise DataError(f"{scene.root}: guidance={prior} needs 2D instance masks and object classes, and this scene has none")
    index = class_index(scene)
    instance_class = np.array([index[o.class_name] for o in scene.objects])
    images = scene.images.numpy().copy()
    for view in range(scene.num_views):
        images[view] = overlay(images[view], class_maps(scene.instance_ids[view].numpy(), instance_class, prior, thickness))
    return replace(scene, images=torch.from_numpy(images))


class GroundedSAMMasks:
    """Instance masks from text prompts with Grounding-DINO boxes and SAM masks (transformers'
    classes) read from local folders; off by default. A missing folder is one clear error."""

    def __init__(self, grounding_dino: str | Path, sam: str | Path, device: str = "cpu", box_threshold: float = 0.3, text_threshold: float = 0.25) -> None:
        for name, folder in (("Grounding-DINO", grounding_dino), ("SAM", sam)):
            if not (Path(folder) / "config.json").is_file():
                raise ValueError(f"{folder}: no {name} weights there (config.json missing); weights are never downloaded at run time — on a machine with internet: "
                                 f"huggingface-cli download {'IDEA-Research/grounding-dino-base' if name == 'Grounding-DINO' else 'facebook/sam-vit-huge'} --local-dir DIR")
        from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor, SamModel, SamProcessor

        self.device, self.box_threshold, self.text_threshold = device, box_threshold, text_threshold
        self.detector_processor = AutoProcessor.from_pretrained(grounding_dino, local_files_only=True)
        self.detector = AutoModelForZeroShotObjectDetection.from_pretrained(grounding_dino, local_files_only=True).to(device).eval()
        self.sam_processor = SamProcessor.from_pretrained(sam, local_files_only=True)
        self.sam = SamModel.from_pretrained(sam, local_files_only=True).to(device).eval()

    @torch.no_grad()
    def __call__(self, image: np.ndarray, classes: list[str]) -> tuple[np.ndarray, list[str], np.ndarray]:
        """(instance ids [H, W], class name per instance, box score per instance) of an RGB image [H, W, 3] uint8."""
        prompt = ". ".join(classes) + "."
        inputs = self.detector_processor(images=image, text=prompt, return_tensors="pt").to(self.device)
        detections = self.detector_processor.post_process_grounded_object_detection(
            self.detector(**inputs), inputs.input_ids, threshold=self.box_threshold, text_threshold=self.text_threshold, target_sizes=[image.shape[:2]])[0]
        ids = np.zeros(image.shape[:2], dtype=np.int32)
        names, scores = [], []
        if len(detections["boxes"]):
            sam_inputs = self.sam_processor(image, input_boxes=[detections["boxes"].tolist()], return_tensors="pt").to(self.device)
            masks = self.sam_processor.post_process_masks(self.sam(**sam_inputs, multimask_output=False).pred_masks.cpu(), sam_inputs["original_sizes"].cpu(), sam_inputs["reshaped_input_sizes"].cpu())[0]
            for k, (mask, label, score) in enumerate(zip(masks[:, 0].numpy(), detections["text_labels"], detections["scores"].tolist()), 1):
                ids[mask & (ids == 0)] = k
                names.append(label)
                scores.append(score)
        return ids, names, np.array(scores)
