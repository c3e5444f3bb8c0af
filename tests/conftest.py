"""Shared fixtures: random checkpoints in the official layout (built once per test session)."""

import pytest

from tarsier.testing import build_random_checkpoint


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """Real geometry (336 px, 601 positions per frame), tiny widths."""
    return build_random_checkpoint(tmp_path_factory.mktemp("tiny-checkpoint"), "tiny")


@pytest.fixture(scope="session")
def fast_checkpoint(tmp_path_factory):
    """56 px frames (21 positions per frame) for tests that generate a lot."""
    return build_random_checkpoint(tmp_path_factory.mktemp("fast-checkpoint"), "tiny-fast")
