"""Shared test helpers: the repository root on sys.path, and where ../shared lives (data, tokenizer, references)."""

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"  # CI clones the repository with shared/ beside it
sys.path.insert(0, str(REPO))


def shared_path(*parts: str) -> Path:
    """A path under ../shared, or skip the test with the reason when that folder is not there."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is not available (the shared folder sits beside the repository in CI)")
    return path
