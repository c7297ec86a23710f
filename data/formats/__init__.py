"""Dataset format loaders; each converts its cameras to the toolkit's OpenCV convention."""
from data.formats.blender import load_blender
from data.formats.common import drop_nonfinite_poses
from data.formats.llff import load_llff
from data.formats.scannet import load_scannet

__all__ = ["drop_nonfinite_poses", "load_blender", "load_llff", "load_scannet"]
