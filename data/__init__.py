"""Datasets: the `Scene` type, format loaders (Blender, LLFF) and the synthetic scene generator."""
from data.scene import BoxAnnotation, DataError, Scene
from data.load import load

__all__ = ["BoxAnnotation", "DataError", "Scene", "load"]
