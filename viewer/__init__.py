"""Live viser viewer for training and saved runs."""
from viewer.server import Viewer

__all__ = ["Viewer"]
