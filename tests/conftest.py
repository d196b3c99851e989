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


#: A generic ASE potential for the MD stage's own calculator loading (mdxrd.potentials.resolve_potential).
EMT_POTENTIAL = {"name": "emt", "module": "ase.calculators.emt", "class": "EMT"}


def md_shard(tmp_path: Path, atoms, runs: list[dict]) -> tuple[dict, str, str, Path]:
    """A one-shard MD job in ``tmp_path``: the unit's start structure written where the supercell template points,
    and the ``md`` parameters of ``runs`` (MDParams fields; unit ``X``, replica = index) in one batch.

    Returns (params, supercell_template, run_template, manifest) for :func:`mdxrd.md.run_shard` or ``mdxrd md``.
    """
    from ase.io import write

    supercell = str(tmp_path / "structure" / "{unit}" / "supercell.traj")
    (tmp_path / "structure" / "X").mkdir(parents=True, exist_ok=True)
    write(supercell.format(unit="X"), atoms)
    batch = [{"unit": "X", "ensemble": r["ensemble"], "temperature_K": r["temperature_K"], "replica": i, "params": r}
             for i, r in enumerate(runs)]
    run_dir = str(tmp_path / "md" / "{unit}" / "{ensemble}" / "{temperature}K" / "r{replica}")
    return {"batches": [batch]}, supercell, run_dir, tmp_path / "shards" / "md.json"
