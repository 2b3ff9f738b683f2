"""Shared test fixtures: tiny world models built in the test, never downloaded."""
import os

import pytest
import torch

from tiny_world import make_tiny_world

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
# Tiny models: one thread is fastest, and two threads spin badly when the cores are shared.
torch.set_num_threads(1)


@pytest.fixture
def tiny_world():
    return make_tiny_world()


@pytest.fixture
def tiny_checkpoint(tmp_path):
    path = tmp_path / "tiny_world"
    make_tiny_world().save_pretrained(path)
    return path
