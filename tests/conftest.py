"""Fixtures shared by every test: the sample images and stand-in weights.

The images and weights live in a data folder beside the repository
(``../shared`` by default, or ``NST_TEST_DATA``). Tests that need it skip
with the reason when it is absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[1]
TEST_DATA = Path(os.environ.get("NST_TEST_DATA", REPOSITORY.parent / "shared"))


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"test data not found at {path}; set NST_TEST_DATA to the folder holding images/ and weights/")
    return path


@pytest.fixture(scope="session")
def test_data() -> Path:
    """Folder holding ``images/``, ``weights/`` and ``reference/``."""
    return _require(TEST_DATA)


@pytest.fixture(scope="session")
def standin_weights(test_data: Path) -> Path:
    """MobileNetV2 features weights that stand in for the ImageNet checkpoint."""
    return _require(test_data / "weights" / "mobilenet_v2_standin.pth")


@pytest.fixture(scope="session")
def content_dir(test_data: Path) -> Path:
    return _require(test_data / "images" / "content")


@pytest.fixture(scope="session")
def style_dir(test_data: Path) -> Path:
    return _require(test_data / "images" / "style")


@pytest.fixture(scope="session")
def seed_script(test_data: Path) -> Path:
    """The original single-pair script, the baseline for loss parity."""
    return _require(test_data / "reference" / "seed_transfer.py")
