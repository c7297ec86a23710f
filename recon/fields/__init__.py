"""Neural field building blocks: input encodings and MLPs."""

from recon.fields.encodings import HashGridEncoding, PositionalEncoding, tcnn_available
from recon.fields.mlp import MLP

__all__ = ["HashGridEncoding", "MLP", "PositionalEncoding", "tcnn_available"]
