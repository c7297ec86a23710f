"""Shared fixtures: tiny generated scenes (no downloads), deterministic torch on CPU."""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest
import torch

from data.synth import generate


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def tiny_blender(tmp_path_factory):
    """A 32×32 Blender-format scene: 16 train, 2 val, 4 test views."""
    return generate(tmp_path_factory.mktemp("scenes") / "blender", format="blender", seed=3, views=16, res=32)


@pytest.fixture(scope="session")
def tiny_llff(tmp_path_factory):
    """A 32×24 LLFF-format scene of 16 views (test = views 0 and 8)."""
    return generate(tmp_path_factory.mktemp("scenes") / "llff", format="llff", seed=3, views=16, res=32)
