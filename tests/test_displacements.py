"""Thermal displacements about the lattice sites (mdxrd.displacements): B_iso, Lindemann ratio, their statistics,
against synthetic displacements, the classical harmonic limit of the same potential, and the Debye-Waller decay
of the run's own diffraction pattern."""

from __future__ import annotations

import math

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.io import read

from mdxrd.displacements import (
    b_iso_series,
    lindemann_ratio,
    mean_structure,
    pattern_debye_waller,
    site_displacements,
    sublattices,
    thermal_motion,
)
from mdxrd.md import K_B_EV_PER_K, MDParams, run_md
from mdxrd.statistics import block_standard_error, integrated_autocorrelation_time


def _nacl(repeat: int = 2) -> Atoms:
    return bulk("NaCl", "rocksalt", a=5.64, cubic=True).repeat(repeat)


def _trajectory(sites: Atoms, n_t: int, sigmas: dict[str, float], *, frozen: float = 0.0, scales=None,
                offsets: dict[int, np.ndarray] | None = None, seed: int = 0):
    """Positions (n_t, N, 3) and cells of ``sites`` with Gaussian displacements of rms sigma[el] per direction,
    plus a displacement frozen over the whole window (rms ``frozen``: the slow motion a window mean absorbs),
    a rigid shift, cells breathing by ``scales`` and scaled-coordinate offsets per atom (free coordinates)."""
    rng = np.random.default_rng(seed)
    width = np.array([sigmas[s] for s in sites.get_chemical_symbols()])[:, None]
    slow = rng.normal(0.0, frozen, (len(sites), 3))
    s0 = sites.get_scaled_positions()
    if offsets:
        for i, off in offsets.items():
            s0[i] += off
    positions, cells = [], []
    for t in range(n_t):
        cell = sites.cell.array * (1.0 if scales is None else scales[t])
        r = s0 @ cell + rng.normal(0.0, 1.0, (len(sites), 3)) * width + slow + 0.7
        positions.append(r)
        cells.append(cell)
    return np.array(positions), np.array(cells)


def test_sublattices_are_the_atoms_of_the_primitive_cell():
    assert sublattices(bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)).max() == 0  # F-centred: 1 atom per cell
    assert sublattices(_nacl()).max() == 1
    hcp = bulk("Mg", "hcp", a=3.21, c=5.21).repeat((3, 3, 2))
    labels = sublattices(hcp)
    assert labels.max() == 1 and np.bincount(labels).tolist() == [18, 18]
    from pymatgen.core import Lattice, Structure
    from pymatgen.io.ase import AseAtomsAdaptor

    bi = Structure.from_spacegroup("R-3m", Lattice.hexagonal(4.546, 11.862), ["Bi"], [[0, 0, 0.23389]])
    assert len(bi) == 6
    assert np.bincount(sublattices(AseAtomsAdaptor.get_atoms(bi).repeat((2, 2, 1)))).tolist() == [12, 12]
    rutile = Structure.from_spacegroup("P4_2/mnm", Lattice.tetragonal(4.594, 2.959), ["Ti", "O"],
                                       [[0, 0, 0], [0.3048, 0.3048, 0]])
    assert sublattices(AseAtomsAdaptor.get_atoms(rutile).repeat(2)).max() == 5


def test_b_iso_of_gaussian_displacements_per_element_with_breathing_cell_and_shifted_sites():
    sites = _nacl()
    sigmas = {"Na": 0.12, "Cl": 0.08}
    scales = 1.0 + 0.01 * np.sin(np.arange(200))  # +-1 % lattice breathing, as in NPT
    # every Cl site moved by the same scaled offset: a free coordinate at its thermal average
    cl = [i for i, s in enumerate(sites.get_chemical_symbols()) if s == "Cl"]
    shift = {i: np.array([0.004, -0.003, 0.002]) for i in cl}
    pos, cells = _trajectory(sites, 200, sigmas, scales=scales, offsets=shift)
    motion = thermal_motion(pos, cells, sites, dt_fs=1.0)
    n_samples = {"Na": 32 * 3 * 200, "Cl": 32 * 3 * 200}
    for el, s in sigmas.items():
        expected = 8 * math.pi**2 * s**2
        # a chi-square mean of n samples: relative standard deviation sqrt(2/n) ~ 0.6 %
        assert motion["B_iso_A2"][el] == pytest.approx(expected, rel=4 * math.sqrt(2 / n_samples[el]))
        # independent steps: the block standard error of the per-step B is that of a mean of n samples
        assert motion["B_iso_sem_A2"][el] == pytest.approx(expected * math.sqrt(2 / n_samples[el]), rel=0.35)
    assert motion["tau_int_u_fs"] == pytest.approx(1.0, abs=0.1)  # white noise: 1 sample
    # the mean structure holds the Cl sites at their offset from the Na ones (the rigid shift is common)
    moved = mean_structure(pos, cells, sites).get_scaled_positions(wrap=False) - sites.get_scaled_positions()
    na = [i for i in range(len(sites)) if i not in cl]
    assert moved[cl].mean(axis=0) - moved[na].mean(axis=0) == pytest.approx(shift[cl[0]], abs=2e-4)


def test_slow_displacements_are_counted_not_absorbed_into_the_sites():
    # A displacement frozen over the whole window is thermal motion slower than the window (a soft
    # or heavy atom's slow phonons). About per-atom window means it would vanish from B; about the
    # lattice sites it is counted in full.
    sites = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(3)
    pos, cells = _trajectory(sites, 50, {"Cu": 0.05}, frozen=0.08)
    b = thermal_motion(pos, cells, sites, dt_fs=1.0)["B_iso_A2"]["Cu"]
    assert b == pytest.approx(8 * math.pi**2 * (0.05**2 + 0.08**2), rel=0.05)
    per_atom_mean = pos - pos.mean(axis=0)
    assert 8 * math.pi**2 * np.mean(per_atom_mean**2) < 0.3 * b  # what a window-mean estimator reports


def test_displacements_remove_the_centre_of_mass_and_keep_their_sum_zero():
    sites = _nacl()
    pos, cells = _trajectory(sites, 10, {"Na": 0.1, "Cl": 0.1})
    u = site_displacements(pos, cells, sites)
    m = sites.get_masses()
    np.testing.assert_allclose(np.einsum("i,tij->tj", m, u), 0.0, atol=1e-10)
    series = b_iso_series(u, sites.get_chemical_symbols())
    assert set(series) == {"Na", "Cl"} and series["Na"].shape == (10,)


def test_lindemann_ratio_of_gaussian_displacements_and_of_a_melt():
    sites = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(3)
    d_nn = 3.6 / np.sqrt(2)
    sigma = 0.08
    pos, cells = _trajectory(sites, 20, {"Cu": sigma})
    u = site_displacements(pos, cells, sites)
    assert lindemann_ratio(u, sites) == pytest.approx(np.sqrt(3.0) * sigma / d_nn, rel=0.02)
    rng = np.random.default_rng(3)
    melt = np.array([rng.uniform(0, 1, (len(sites), 3)) @ sites.cell.array for _ in range(5)])
    assert lindemann_ratio(site_displacements(melt, cells[:5], sites), sites) > 0.5


def test_integrated_autocorrelation_time_of_ar1_and_of_oscillations():
    phi = 0.8
    rng = np.random.default_rng(1)
    x = np.zeros(100_000)
    for i in range(1, x.size):
        x[i] = phi * x[i - 1] + rng.normal()
    assert integrated_autocorrelation_time(x) == pytest.approx((1 + phi) / (1 - phi), rel=0.1)
    assert integrated_autocorrelation_time(rng.normal(size=5000)) == pytest.approx(1.0, abs=0.15)
    # several series pooled: 20 AR(1) series of 5,000 samples give the same tau
    many = np.zeros((5000, 20))
    for i in range(1, 5000):
        many[i] = phi * many[i - 1] + rng.normal(size=20)
    assert integrated_autocorrelation_time(many) == pytest.approx((1 + phi) / (1 - phi), rel=0.15)
    # about a known zero mean a constant offset is correlation without end, about the window mean none
    offset = rng.normal(size=(200, 50)) + 3.0
    assert integrated_autocorrelation_time(offset) < 2.0
    assert integrated_autocorrelation_time(offset, known_mean_zero=True) > 20.0


def test_block_standard_error_of_correlated_series():
    # AR(1) with correlation time tau: SEM = sigma sqrt((1 + a)/(1 - a) / n)
    rng = np.random.default_rng(1)
    a, n = math.exp(-1 / 20), 2**15
    x = np.empty(n)
    x[0] = 0.0
    noise = rng.normal(0, math.sqrt(1 - a * a), n)
    for i in range(1, n):
        x[i] = a * x[i - 1] + noise[i]
    assert block_standard_error(x) == pytest.approx(math.sqrt((1 + a) / (1 - a) / n), rel=0.25)


# ----------------------------------------------------------------------------- oracles with a real potential

def _emt_fcc(element: str, repeat: int) -> Atoms:
    """fcc supercell of ``element`` at its EMT 0 K lattice constant (cell relaxed), atoms on their sites."""
    from ase.filters import FrechetCellFilter
    from ase.optimize import BFGS

    cell = bulk(element, "fcc", cubic=True)
    cell.calc = EMT()
    BFGS(FrechetCellFilter(cell), logfile=None).run(fmax=1e-6)
    atoms = cell.repeat(repeat)
    atoms.calc = None
    atoms.info["supercell"] = [repeat] * 3
    return atoms


def harmonic_u2(atoms: Atoms, calc, temperature_K: float, step_A: float = 0.005) -> np.ndarray:
    """Classical harmonic <u_i,alpha^2> of every atom of a supercell, Angstrom^2, from its force constants.

    Force constants Phi by central differences of the forces (+- ``step_A``), dynamical matrix
    D = Phi / sqrt(m_i m_j), eigenpairs (omega^2, e); <u_ia^2> = k_B T sum_modes e_ia^2 / (m_i omega^2)
    over the 3N - 3 modes that are not translations (the MD fixes the centre of mass). Equipartition of
    a harmonic crystal (Born & Huang, Dynamical Theory of Crystal Lattices (1954), ch. 2).
    """
    a = atoms.copy()
    a.calc = calc
    n = len(a)
    pos0 = a.positions.copy()
    phi = np.zeros((3 * n, 3 * n))
    for i in range(n):
        for k in range(3):
            forces = []
            for sign in (1.0, -1.0):
                p = pos0.copy()
                p[i, k] += sign * step_A
                a.positions = p
                forces.append(a.get_forces().ravel())
            phi[3 * i + k] = -(forces[0] - forces[1]) / (2 * step_A)
    phi = 0.5 * (phi + phi.T)
    m = np.repeat(a.get_masses(), 3)
    w2, e = np.linalg.eigh(phi / np.sqrt(np.outer(m, m)))
    modes = w2 > 1e-6 * w2.max()
    assert (~modes).sum() == 3  # the three translations
    return (K_B_EV_PER_K * temperature_K * np.sum(e[:, modes] ** 2 / w2[modes], axis=1) / m).reshape(n, 3)


@pytest.mark.parametrize("repeat, seeds", [(2, 8), (3, 3)])
def test_b_iso_of_the_default_window_equals_the_harmonic_limit(tmp_path, repeat, seeds):
    # EMT Cu at 30 K: the classical harmonic <u^2> of the same supercell from its force constants is exact
    # to anharmonic corrections of ~0.1 %. The workflow's default window (steps 100-500 of NVT-Langevin,
    # gamma 0.01/fs) must reproduce it within 5 %, averaged over a few seeds (each run's B carries ~5 %
    # sampling noise). The label is compared at each run's measured window temperature, since <u^2>
    # is proportional to T.
    import pandas as pd

    sites = _emt_fcc("Cu", repeat)
    u2 = harmonic_u2(sites, EMT(), 1.0)  # per kelvin
    ratios = []
    for seed in range(seeds):
        out = tmp_path / f"r{seed}"
        run_md(sites, MDParams(ensemble="nvt_langevin", temperature_K=30.0, seed=seed, checkpoint_interval=0),
               out, calc=EMT())
        window = np.load(out / "positions.npz")
        motion = thermal_motion(window["positions_A"], window["cells_A"], sites, dt_fs=1.0)
        thermo = pd.read_csv(out / "thermo.csv")
        t_window = thermo[thermo.step >= 100].T_K.mean()
        ratios.append(motion["B_iso_A2"]["Cu"] / (8 * math.pi**2 * u2.mean() * t_window))
    assert np.mean(ratios) == pytest.approx(1.0, abs=0.05), ratios


def test_b_iso_agrees_with_the_debye_waller_decay_of_the_runs_own_pattern(tmp_path):
    # EMT Au (heavy: slow displacements) at 300 K, the default NVT-Langevin window: the B the label
    # states must be the B the run's averaged Bragg intensities decay with, ln(I_T/I_0) = -2 B s^2,
    # within 10 %. Measured about per-atom window means, the label read 25 % low here.
    sites = _emt_fcc("Au", 2)
    for seed in (0, 1):
        out = tmp_path / f"r{seed}"
        run_md(sites, MDParams(ensemble="nvt_langevin", temperature_K=300.0, seed=seed, checkpoint_interval=0),
               out, calc=EMT())
        window = np.load(out / "positions.npz")
        label = thermal_motion(window["positions_A"], window["cells_A"], sites, dt_fs=1.0)["B_iso_A2"]
        snapshots = [f for f in read(str(out / "trajectory.traj"), index=":") if f.info["step"] > 100]
        assert len(snapshots) == 8
        fit = pattern_debye_waller(snapshots, sites, label)
        assert fit["n_reflections"] > 20 and fit["s2_max_per_A2"] > 1.0
        assert fit["scale"] == pytest.approx(1.0, abs=0.1), (label, fit)
