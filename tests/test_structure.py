"""Structure stage: real AMCSD CIFs read, relaxed and expanded; bad structure files refused clearly."""

from __future__ import annotations

import numpy as np
import pytest
from ase.io import read
from pymatgen.core import Lattice, Structure

from mdxrd.io import read_json
from mdxrd.structure import StructureError, StructureParams, check_supercell_size, read_checked_structure, run_stage

#: file -> (reduced formula, space group number, experimental a in Angstrom, atoms per cell)
SHARED = {
    "Silicon.cif": ("Si", 227, 5.4307, 8),
    "Diamond.cif": ("C", 227, 3.56679, 8),
    "Copper.cif": ("Cu", 225, 3.61496, 4),
    "Aluminium.cif": ("Al", 225, 4.04958, 4),
    "Gold.cif": ("Au", 225, 4.07825, 4),
    "Silver.cif": ("Ag", 225, 4.086, 4),
    "Iron.cif": ("Fe", 229, 2.866, 2),
    "NaCl.cif": ("NaCl", 225, 5.6401, 8),
    "KCl.cif": ("KCl", 225, 6.2879, 8),
    # published in the 20-atom Pbnm setting, but with cubic atom positions: spglib finds Pm-3m
    "SrTiO3.cif": ("SrTiO3", 221, 5.5202, 20),
}


@pytest.mark.parametrize("name", sorted(SHARED))
def test_reads_shared_cif(shared_structures, name):
    formula, _, a_exp, n = SHARED[name]
    s = read_checked_structure(shared_structures / name)
    assert s.composition.reduced_formula == formula
    assert len(s) == n
    if a_exp is not None:
        assert s.lattice.a == pytest.approx(a_exp, abs=2e-3)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SHARED))
def test_structure_stage_on_shared_cif(shared_structures, tmp_path, name):
    """Relax with CHGNet keeping the space group; a0 within 4 % of experiment (CHGNet is fit to PBE, which
    overestimates lattice constants by 1-3 %); the 2x2x2 supercell has 8x the atoms."""
    formula, sg, a_exp, n = SHARED[name]
    info = run_stage(shared_structures / name, tmp_path / "r.cif", tmp_path / "sc.traj", tmp_path / "i.json",
                     name.removesuffix(".cif"), StructureParams(relax_max_steps=60, fmax_eV_per_A=0.05))
    assert read_json(tmp_path / "i.json") == info
    assert info["formula"] == formula and info["space_group_number"] == sg
    assert info["n_atoms"] == 8 * n
    assert -10.0 < info["E0_eV_per_atom"] < -1.0
    if a_exp is not None:
        assert info["a0"]["a"] == pytest.approx(a_exp, rel=0.04)
    sc = read(tmp_path / "sc.traj")
    assert len(sc) == 8 * n
    np.testing.assert_allclose(sc.cell.cellpar()[:3], 2 * np.array([info["a0"][k] for k in "abc"]), rtol=1e-10)
    relaxed = Structure.from_file(tmp_path / "r.cif")
    assert relaxed.composition.reduced_formula == formula


def test_missing_file(tmp_path):
    with pytest.raises(StructureError, match="nope.cif: file not found"):
        read_checked_structure(tmp_path / "nope.cif")


def test_not_a_cif(tmp_path):
    bad = tmp_path / "junk.cif"
    bad.write_text("this is not a crystal structure\n")
    with pytest.raises(StructureError, match="junk.cif: not a readable structure file"):
        read_checked_structure(bad)


def test_truncated_cif(tmp_path, repo):
    text = (repo / "config" / "structures" / "NaCl.cif").read_text()
    bad = tmp_path / "trunc.cif"
    bad.write_text(text[: len(text) // 3])
    with pytest.raises(StructureError, match="trunc.cif"):
        read_checked_structure(bad)


def test_partial_occupancy_refused(tmp_path):
    s = Structure(Lattice.cubic(3.6), [{"Cu": 0.5, "Au": 0.5}], [[0, 0, 0]])
    path = tmp_path / "alloy.cif"
    s.to(filename=str(path))
    with pytest.raises(StructureError, match="partial occupancies.*order it first"):
        read_checked_structure(path)


def test_element_without_chgnet_parameters(tmp_path):
    s = Structure(Lattice.cubic(3.5), ["Am"], [[0, 0, 0]])
    path = tmp_path / "am.cif"
    s.to(filename=str(path))
    with pytest.raises(StructureError, match=r"Am have no CHGNet parameters \(allowed: Z = 1..94"):
        read_checked_structure(path)


def test_supercell_atom_limit():
    assert check_supercell_size(8, (2, 2, 2), 64, "x") == 64
    with pytest.raises(StructureError, match="would have 216 atoms, more than structure.max_atoms = 100"):
        check_supercell_size(8, (3, 3, 3), 100, "Si")
