"""Shared fixtures: the example environment rendered once per run."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import world as world_mod  # noqa: E402


@pytest.fixture(scope="session")
def world():
    return world_mod.build()
