"""Datasets: the `Scene` type, format loaders (Blender, LLFF, ScanNet, DTU) and the synthetic generators."""
from data.scene import BoxAnnotation, DataError, Scene
from data.load import load, scene_folders
from data.formats.scannet import scannet_scenes

__all__ = ["BoxAnnotation", "DataError", "Scene", "load", "scannet_scenes", "scene_folders"]
