"""Zero-point motion (mdxrd.phonons): the harmonic <u^2> of EMT Cu against phonopy's own thermal displacements,
the Debye model with the Debye temperature of the same phonons, the classical limit at high T; and the XRD
stage's zero-point correction exp(-dB s^2) on the Bragg intensities."""

from __future__ import annotations

import math

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT

from mdxrd.phonons import (b_per_element, commensurate_qpoints, debye_b, debye_temperature, force_constants,
                           mean_square_displacements)

MESH = 8  # q-mesh of the primitive cell for the Debye comparison


@pytest.fixture(scope="module")
def cu():
    unit = bulk("Cu", "fcc", a=3.59)  # EMT's lattice constant: no stress
    return unit, force_constants(unit, (4, 4, 4), EMT())


def test_quantum_msd_equals_phonopys_thermal_displacements(cu):
    unit, phonon = cu
    temps = [10.0, 300.0, 900.0]
    ours = mean_square_displacements(phonon, temps, commensurate_qpoints((4, 4, 4)))["quantum_A2"]
    phonon.run_mesh([4, 4, 4], is_mesh_symmetry=False, with_eigenvectors=True, is_gamma_center=True)
    phonon.run_thermal_displacements(temperatures=temps, freq_min=1e-3)
    ref = phonon.get_thermal_displacements_dict()["thermal_displacements"]
    np.testing.assert_allclose(ours, np.reshape(ref, ours.shape), rtol=1e-6)


def test_harmonic_b_against_the_debye_model_and_the_classical_limit(cu):
    unit, phonon = cu
    grid = np.stack(np.meshgrid(*[np.arange(MESH) / MESH] * 3, indexing="ij"), -1).reshape(-1, 3)
    temps = [5.0, 50.0, 150.0, 300.0, 600.0, 1500.0]
    msd = mean_square_displacements(phonon, temps, grid)
    q = [b_per_element(u, ["Cu"])["Cu"] for u in msd["quantum_A2"]]
    c = [b_per_element(u, ["Cu"])["Cu"] for u in msd["classical_A2"]]
    mass = float(unit.get_masses()[0])
    theta = debye_temperature(c[-1], mass, temps[-1])
    assert 250 < theta < 400  # EMT Cu; experiment 343 K
    for t, b_q, b_c in zip(temps, q, c, strict=True):
        assert b_c == pytest.approx(c[-1] * t / temps[-1], rel=1e-12)  # classical: exactly linear in T
        # the Debye model with the same phonons' Theta: within 8 % at every T (a real DOS is not Debye's)
        assert b_q == pytest.approx(debye_b(t, theta, mass), rel=0.08)
    assert q[0] > 10 * c[0]  # zero-point motion: at 5 K the classical B has all but vanished
    assert q[0] == pytest.approx(3 * (2 * math.pi * 1.054571817e-34) ** 2 / (2 * mass * 1.66053906660e-27
                                 * 1.380649e-23 * theta) * 1e20, rel=0.08)  # 3h^2/(2 m k_B Theta)
    assert q[-1] / c[-1] == pytest.approx(1.0, abs=0.01)  # T = 1500 K ~ 5 Theta: classical
    assert q[3] / c[3] > 1.02  # 300 K: still above the classical B


def test_zero_point_correction_damps_bragg_intensities_by_exp_minus_2_db_s2(tmp_path):
    import pyarrow.parquet as pq
    from ase.io import write

    from mdxrd import xrd
    from mdxrd.xrd.stage import run_stage

    sites = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)
    frames = []
    for seed in range(3):
        atoms = sites.copy()
        atoms.rattle(0.05, seed=seed)
        atoms.info.update(step=seed, time_fs=float(seed))
        frames.append(atoms)
    write(tmp_path / "snaps.traj", frames)
    kwargs = dict(two_theta_range=(30.0, 100.0), two_theta_step=0.02, supercell=(2, 2, 2),
                  centring=xrd.centring_translations(bulk("Cu", "fcc", a=3.61, cubic=True)),
                  instrument=[{"name": "g", "wavelength": 1.5406, "sigma_deg": 0.1}])
    db = 0.12
    out = {}
    for name, zp in (("plain", None), ("zp", {"Cu": db})):
        run_stage(tmp_path / "snaps.traj", tmp_path / f"{name}.parquet", tmp_path / f"{name}.npz", zero_point_b=zp,
                  **kwargs)
        out[name] = pq.read_table(tmp_path / f"{name}.parquet").to_pandas()
    plain, zp = out["plain"], out["zp"]
    bragg = plain["is_bragg"].to_numpy()
    s = np.sin(np.radians(plain["two_theta"].to_numpy() / 2)) / 1.5406
    ratio = zp["intensity"].to_numpy()[bragg] / plain["intensity"].to_numpy()[bragg]
    np.testing.assert_allclose(ratio, np.exp(-2 * db * s[bragg] ** 2), rtol=1e-9)
    assert ratio.min() < 0.92  # the effect at high angle: 9 % at 100 deg
    np.testing.assert_array_equal(zp["intensity"].to_numpy()[~bragg], plain["intensity"].to_numpy()[~bragg])
