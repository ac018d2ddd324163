"""Shared pytest fixtures: where the read-only test data lives, and skips when it is absent."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def shared_path(*parts: str) -> Path:
    """Return a path under ``../shared/data``, skipping the calling test with a clear reason when absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(
            f"test data {path} is absent: these tests need the project's shared data folder "
            "beside the checkout (../shared/data, see its README.md)"
        )
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The ``../shared/data`` folder (skips the test when it is missing)."""
    return shared_path()
