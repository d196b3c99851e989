"""NPT cells keep their lattice system: the barostat's strain follows the stress symmetrized with the
crystal's point group (mdxrd.integrators), so a = b, 90 and 120 degree angles hold to round-off while the
free parameters (c/a, b/a, monoclinic beta) move to where the stress is balanced.

EMT (ASE's effective-medium potential for Cu) stands in for CHGNet: milliseconds per step, so 1,000 steps
at 600 K run in seconds. Each crystal starts away from its balanced cell (c/a squeezed, beta tilted), so a
barostat that kept the shape would leave a stress, and one that ignored symmetry would break the lattice
system (the "free" mode below shows that it does).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from ase import Atoms, units
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.io import read

from mdxrd.integrators import cartesian_point_group, elastic_compliance, symmetrize
from mdxrd.md import MDParams, npt_cell_update, run_md

A_CU = 3.59  # EMT Cu fcc lattice constant, Angstrom (near its 0 K value)


def _cell_of(cellpar: tuple[float, ...], positions_frac: list[list[float]], repeat: tuple[int, int, int]) -> Atoms:
    from ase.geometry import cellpar_to_cell

    atoms = Atoms("Cu" * len(positions_frac), scaled_positions=positions_frac, cell=cellpar_to_cell(cellpar),
                  pbc=True)
    atoms = atoms.repeat(repeat)
    atoms.info["supercell"] = list(repeat)
    return atoms


FCC = [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]


def hcp() -> Atoms:
    """hcp Cu 3x3x2, c/a = 1.52 (squeezed; EMT balances near the ideal 1.633)."""
    atoms = bulk("Cu", "hcp", a=2.55, c=2.55 * 1.52).repeat((3, 3, 2))
    atoms.info["supercell"] = [3, 3, 2]
    return atoms


def tetragonal() -> Atoms:
    """fcc Cu conventional cell stretched along c by 5 %: 4/mmm, relaxes back towards c/a = 1."""
    return _cell_of((A_CU, A_CU, 1.05 * A_CU, 90, 90, 90), FCC, (2, 2, 2))


def trigonal_hexagonal_axes() -> Atoms:
    """fcc Cu in the hexagonal axes of R-3m (3 atoms, R-centred), c stretched by 4 %."""
    from pymatgen.core import Lattice, Structure
    from pymatgen.io.ase import AseAtomsAdaptor

    a_h, c_h = A_CU / math.sqrt(2), A_CU * math.sqrt(3) * 1.04
    s = Structure.from_spacegroup("R-3m", Lattice.hexagonal(a_h, c_h), ["Cu"], [[0, 0, 0]])
    atoms = AseAtomsAdaptor.get_atoms(s).repeat((3, 3, 1))
    atoms.info["supercell"] = [3, 3, 1]
    return atoms


def rhombohedral_setting() -> Atoms:
    """The fcc primitive cell (alpha = 60 deg) stretched along [111]: a = b = c, alpha = beta = gamma != 60."""
    prim = bulk("Cu", "fcc", a=A_CU)
    n = np.ones(3) / math.sqrt(3)
    prim.set_cell(prim.cell.array @ (np.eye(3) + 0.04 * np.outer(n, n)), scale_atoms=True)
    atoms = prim.repeat((3, 3, 3))
    atoms.info["supercell"] = [3, 3, 3]
    return atoms


def orthorhombic() -> Atoms:
    """fcc Cu conventional cell with three different lengths: mmm, relaxes towards the cube."""
    return _cell_of((0.98 * A_CU, A_CU, 1.03 * A_CU, 90, 90, 90), FCC, (2, 2, 2))


def monoclinic() -> Atoms:
    """fcc Cu conventional cell with c 2 % longer and beta = 91 deg: 2/m (b unique; with |a| = |c| the cell
    would be orthorhombic in the diagonal setting); the shear stress brings beta back to 90."""
    return _cell_of((A_CU, A_CU, 1.02 * A_CU, 90, 91, 90), FCC, (2, 2, 2))


def _run(tmp_path, atoms, n_steps=1000, npt_cell="auto", seed=5):
    params = MDParams(ensemble="npt_berendsen", temperature_K=600.0, n_steps=n_steps, n_equil=n_steps // 2,
                      n_interval=50, taup_fs=200.0, compressibility_per_GPa=0.007, seed=seed,
                      checkpoint_interval=0, thermo_interval=10, npt_cell=npt_cell)
    record = run_md(atoms, params, tmp_path, calc=EMT())
    frames = read(str(tmp_path / "trajectory.traj"), index=":")
    return record, frames


def _late_stress_GPa(frames, rotations):
    """Mean symmetrized virial stress over the second half of the frames, GPa."""
    late = [f for f in frames if f.info["step"] >= frames[-1].info["step"] // 2]
    return symmetrize(np.mean([f.get_stress(voigt=False) for f in late], axis=0), rotations) / units.GPa


@pytest.mark.parametrize("make, label", [(hcp, "symmetric 6/mmm"), (tetragonal, "symmetric 4/mmm"),
                                         (trigonal_hexagonal_axes, "symmetric -3m")])
def test_lattice_system_kept_to_round_off_and_c_over_a_moves(tmp_path, make, label):
    atoms = make()
    start = atoms.cell.cellpar()
    record, frames = _run(tmp_path, atoms)
    assert record["equilibration"]["npt_cell"] == label
    pars = np.array([f.cell.cellpar() for f in frames])
    # a = b and the angles, to 1e-9 relative, at every frame of the pre-equilibrated production run
    np.testing.assert_allclose(pars[:, 1] / pars[:, 0], 1.0, rtol=0, atol=1e-9)
    np.testing.assert_allclose(pars[:, 3:] / start[3:], 1.0, rtol=0, atol=1e-9)
    # c/a moved from the start value to where sigma_zz balances sigma_xx = sigma_yy
    ca_start = start[2] / start[0]
    ca_end = np.mean(pars[len(pars) // 2:, 2] / pars[len(pars) // 2:, 0])
    assert abs(ca_end / ca_start - 1.0) > 0.02, (ca_start, ca_end)
    rotations, _ = cartesian_point_group(make(), tuple(make().info["supercell"]))
    stress = _late_stress_GPa(frames, rotations)
    # the kinetic stress is isotropic on average: the virial's normal components must agree
    assert abs(stress[2, 2] - stress[0, 0]) < 0.5, stress


def test_rhombohedral_setting_keeps_equal_lengths_and_angles(tmp_path):
    atoms = rhombohedral_setting()
    record, frames = _run(tmp_path, atoms, n_steps=300)
    assert record["equilibration"]["npt_cell"] == "symmetric -3m"
    pars = np.array([f.cell.cellpar() for f in frames])
    np.testing.assert_allclose(pars[:, :3] / pars[:, :1], 1.0, rtol=0, atol=1e-9)
    np.testing.assert_allclose(pars[:, 3:] / pars[:, 3:4], 1.0, rtol=0, atol=1e-9)
    assert abs(pars[-1, 3] - atoms.cell.cellpar()[3]) > 0.3  # alpha follows the stress


def test_orthorhombic_keeps_right_angles(tmp_path):
    record, frames = _run(tmp_path, orthorhombic(), n_steps=300)
    assert record["equilibration"]["npt_cell"] == "symmetric mmm"
    pars = np.array([f.cell.cellpar() for f in frames])
    np.testing.assert_allclose(pars[:, 3:], 90.0, rtol=0, atol=1e-7)
    # the three lengths relax towards the cube they came from
    assert np.ptp(pars[-1, :3]) < 0.5 * np.ptp(orthorhombic().cell.cellpar()[:3])


def test_monoclinic_beta_relaxes_to_vanishing_shear_and_alpha_gamma_stay(tmp_path):
    atoms = monoclinic()
    record, frames = _run(tmp_path, atoms)
    assert record["equilibration"]["npt_cell"] == "symmetric 2/m"
    pars = np.array([f.cell.cellpar() for f in frames])
    np.testing.assert_allclose(pars[:, 3], 90.0, rtol=0, atol=1e-7)
    np.testing.assert_allclose(pars[:, 5], 90.0, rtol=0, atol=1e-7)
    late = pars[len(pars) // 2:]
    assert abs(late[:, 4].mean() - 90.0) < 0.1, late[:, 4]  # started at 91 deg
    rotations, _ = cartesian_point_group(monoclinic(), (2, 2, 2))
    stress = _late_stress_GPa(frames, rotations)
    assert abs(stress[0, 2]) < 0.1, stress  # the shear stress that tilted beta has vanished


def test_without_symmetry_the_cell_leaves_its_lattice_system(tmp_path):
    # The defect the symmetrization removes: the same hcp run with every cell parameter free drifts
    # into a != b and gamma != 120 deg (the pressure noise of a 36-atom cell drives a shear).
    _, frames = _run(tmp_path, hcp(), n_steps=300, npt_cell="free")
    pars = np.array([f.cell.cellpar() for f in frames])
    assert np.abs(pars[:, 1] / pars[:, 0] - 1.0).max() > 1e-4
    assert np.abs(pars[:, 5] - 120.0).max() > 1e-3


def test_isotropic_cell_keeps_its_shape(tmp_path):
    _, frames = _run(tmp_path, hcp(), n_steps=200, npt_cell="isotropic")
    ratios = np.array([f.cell.cellpar()[2] / f.cell.cellpar()[0] for f in frames])
    np.testing.assert_allclose(ratios, ratios[0], rtol=1e-12)
    assert frames[-1].get_volume() != pytest.approx(frames[0].get_volume(), rel=1e-4)  # but the volume moves


def test_point_group_of_the_parent_not_of_an_uneven_supercell():
    # 3x2x2 of hcp is not hexagonal as a lattice of its own, but the crystal is: a = b must be kept
    atoms = bulk("Mg", "hcp", a=3.21, c=5.21).repeat((3, 2, 2))
    rotations, symbol = cartesian_point_group(atoms, (3, 2, 2))
    assert symbol == "6/mmm" and len(rotations) == 24
    np.testing.assert_allclose(np.einsum("nij,nkj->nik", rotations, rotations), np.tile(np.eye(3), (24, 1, 1)),
                               atol=1e-14)
    atoms.info["supercell"] = [3, 2, 2]
    cell, _, label = npt_cell_update(atoms, "auto")
    assert (cell, label) == ("tensor", "symmetric 6/mmm")
    cu = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    assert npt_cell_update(cu, "auto")[::2] == ("isotropic", "isotropic")
    assert npt_cell_update(cu, "symmetric")[2] == "symmetric m-3m"
    assert npt_cell_update(cu, "free")[::2] == ("tensor", "free")


def test_symmetrize_projects_onto_the_invariant_tensors():
    rng = np.random.default_rng(0)
    sigma = rng.normal(size=(3, 3))
    hexagonal, _ = cartesian_point_group(bulk("Mg", "hcp", a=3.21, c=5.21))
    sym = symmetrize(sigma, hexagonal)
    assert sym[0, 0] == pytest.approx(sym[1, 1], abs=1e-15)
    assert np.abs(sym[[0, 0, 1, 1, 2, 2], [1, 2, 0, 2, 0, 1]]).max() < 1e-15
    assert np.trace(sym) == pytest.approx(np.trace(sigma), abs=1e-14)  # the mean pressure is kept
    np.testing.assert_allclose(symmetrize(sym, hexagonal), sym, atol=1e-15)  # a projection
    cubic, _ = cartesian_point_group(bulk("Cu", "fcc", a=3.6, cubic=True))
    np.testing.assert_allclose(symmetrize(sigma, cubic), np.trace(sigma) / 3 * np.eye(3), atol=1e-15)


def test_elastic_compliance_of_emt_copper_against_its_bulk_modulus():
    # Reuss: 1/B = sum_ij<3 S_ij for a cubic crystal equals the bulk modulus (C11 + 2 C12)/3
    atoms = bulk("Cu", "fcc", a=A_CU, cubic=True)
    s = elastic_compliance(atoms, EMT())
    stiffness = np.linalg.inv(s) / units.GPa
    assert stiffness[0, 0] == pytest.approx(stiffness[1, 1], rel=1e-6)
    assert abs(stiffness[0, 3]) < 1e-6 * stiffness[0, 0]  # no normal-shear coupling in a cubic crystal
    from ase.eos import EquationOfState

    vols, energies = [], []
    for f in np.linspace(0.99, 1.01, 7):
        a = atoms.copy()
        a.set_cell(atoms.cell * f, scale_atoms=True)
        a.calc = EMT()
        vols.append(a.get_volume())
        energies.append(a.get_potential_energy())
    _, _, b0 = EquationOfState(vols, energies).fit()
    assert 1.0 / s[:3, :3].sum() / units.GPa == pytest.approx(b0 / units.GPa, rel=0.02)
