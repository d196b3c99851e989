"""Shared fixtures: repository paths, the shared AMCSD structures, small crystals."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_STRUCTURES = REPO.parent / "shared" / "structures"


@pytest.fixture(scope="session")
def repo() -> Path:
    """The repository root."""
    return REPO


@pytest.fixture(scope="session")
def shared_structures() -> Path:
    """../shared/structures (AMCSD CIFs); tests using it skip when it is absent."""
    if not SHARED_STRUCTURES.is_dir():
        pytest.skip("../shared/structures is absent")
    return SHARED_STRUCTURES


def cu_fcc(a: float = 3.615, repeat: int = 3):
    """ASE Atoms of fcc Cu, conventional cell repeated ``repeat`` times (4 repeat^3 atoms)."""
    from ase.build import bulk

    return bulk("Cu", "fcc", a=a, cubic=True).repeat(repeat)
