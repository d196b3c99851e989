"""Sampled ensembles at their targets: degrees of freedom, start temperature, NPT pressure and volume,
and the snapshots stage's equilibration figures (non-cubic NPT cells: test_npt_symmetry.py).

EMT (ASE's effective-medium potential for Cu) stands in for CHGNet: milliseconds per step, so the
runs are long enough for statistics; the workflow's defaults (n_steps 500, n_equil 100, tau_T 100 fs,
tau_P 1000 fs) are used where the test is about them.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from ase.calculators.emt import EMT

from conftest import cu_fcc
from mdxrd.md import K_B_EV_PER_K, MDParams, run_md
from mdxrd.snapshots import block_standard_error, equilibration_figures


def _run(tmp_path, atoms, **kw):
    params = MDParams(**{"seed": 3, "checkpoint_interval": 0, **kw})
    record = run_md(atoms, params, tmp_path, calc=EMT())
    return params, pd.read_csv(tmp_path / "thermo.csv"), record


def test_recorded_temperature_counts_3n_minus_3(tmp_path):
    # The centre of mass is fixed in every ensemble: T = 2 E_kin / ((3N - 3) k_B).
    for ensemble in ("nvt_langevin", "nvt_berendsen", "npt_berendsen"):
        _, thermo, record = _run(tmp_path / ensemble, cu_fcc(a=3.59, repeat=2), ensemble=ensemble,
                                 temperature_K=300.0, n_steps=20, n_equil=10, n_interval=10)
        n = 32
        expected = 2.0 * thermo["E_kin_eV"] / ((3 * n - 3) * K_B_EV_PER_K)
        np.testing.assert_allclose(thermo["T_K"], expected, rtol=1e-12)
        assert record["equilibration"]["degrees_of_freedom"] == 3 * n - 3


def test_langevin_equipartition_with_fixed_centre_of_mass(tmp_path):
    # Langevin with FixCom thermostats 3N - 3 degrees of freedom: <2 E_kin> = (3N - 3) k_B T0.
    # 4 atoms: 9 degrees of freedom, so counting 3N = 12 would read T 25 % low. Strong friction
    # (energy relaxation ~1/gamma = 10 fs) and 3000 steps of 2 fs give the mean to ~2 %.
    params, thermo, _ = _run(tmp_path, cu_fcc(a=3.59, repeat=1), ensemble="nvt_langevin", temperature_K=500.0,
                             n_steps=3000, n_equil=200, n_interval=1000, friction_per_fs=0.1, timestep_fs=2.0)
    window = thermo[thermo.step >= params.n_equil]["T_K"].to_numpy()
    sem = block_standard_error(window)
    assert sem < 0.03 * 500.0
    assert abs(window.mean() - 500.0) < 3 * sem + 1.0, (window.mean(), sem)


@pytest.mark.parametrize("ensemble", ["nvt_berendsen", "npt_berendsen"])
def test_default_run_samples_at_target_temperature(tmp_path, ensemble):
    # Defaults: 500 steps of 1 fs, 100 equilibration steps, tau_T = 100 fs. Started at T0 from the
    # 0 K sites, equipartition leaves the crystal near T0/2 and the window mean ends 5-15 % low.
    params, thermo, _ = _run(tmp_path, cu_fcc(a=3.59, repeat=3), ensemble=ensemble, temperature_K=600.0,
                             compressibility_per_GPa=0.0071)
    fig = equilibration_figures(thermo, params.n_equil, ensemble, 600.0, params.pressure_GPa)
    assert abs(fig["window_T_ratio"] - 1.0) < 0.03, fig


def test_default_npt_run_is_at_its_pressure_before_sampling(tmp_path):
    # Cu at 600 K has ~4 GPa of thermal pressure at its 0 K volume; with tau_P = 1000 fs a 500 fs
    # run relaxes a third of it. The window must sit at P0 (0.3 GPa) with no volume drift (0.3 %).
    params, thermo, record = _run(tmp_path, cu_fcc(a=3.59, repeat=3), ensemble="npt_berendsen",
                                  temperature_K=600.0, compressibility_per_GPa=0.0071)
    fig = equilibration_figures(thermo, params.n_equil, "npt_berendsen", 600.0, params.pressure_GPa)
    assert abs(fig["window_P_GPa"] - params.pressure_GPa) < 0.3, fig
    assert abs(fig["window_volume_drift"]) < 0.003, fig
    assert fig["equilibrated"], fig["misses"]
    # thermal expansion happened: the cell is larger than the 0 K one (EMT a0 = 3.59 A)
    assert fig["window_volume_A3"] > 1.01 * (3 * 3.59) ** 3
    # the model's bulk modulus (EMT Cu: ~134 GPa) drives the equilibration barostat
    assert 100.0 < record["equilibration"]["model_bulk_modulus_GPa"] < 170.0


def test_cubic_crystal_keeps_cubic_cell(tmp_path):
    _, _, record = _run(tmp_path, cu_fcc(a=3.59, repeat=2), ensemble="npt_berendsen", temperature_K=300.0,
                        n_steps=100, n_equil=50, n_interval=50)
    assert record["equilibration"]["npt_cell"] == "isotropic"


def test_equilibration_figures_flag_misses():
    steps = np.arange(0, 501)
    rng = np.random.default_rng(0)
    base = pd.DataFrame({"step": steps, "T_K": 300 + rng.normal(0, 5, steps.size), "P_GPa": rng.normal(0, 0.2, 501),
                         "volume_A3": np.full(501, 1000.0)})
    ok = equilibration_figures(base, 100, "npt_berendsen", 300.0, 0.0)
    assert ok["equilibrated"] and ok["misses"] == []
    assert abs(ok["window_volume_drift"]) < 1e-12
    cold = base.assign(T_K=base.T_K * 0.95)
    assert not equilibration_figures(cold, 100, "nvt_langevin", 300.0, 0.0)["equilibrated"]
    drifting = base.assign(volume_A3=1000.0 + 0.01 * steps)  # +4 A^3 over the window: 0.4 %
    fig = equilibration_figures(drifting, 100, "npt_berendsen", 300.0, 0.0)
    assert fig["window_volume_drift"] == pytest.approx(4.0 / 1003.0, rel=1e-6)
    assert not fig["equilibrated"] and "volume" in fig["misses"][0]
    # NVT runs are not judged on pressure
    assert equilibration_figures(base.assign(P_GPa=3.0), 100, "nvt_berendsen", 300.0, 0.0)["equilibrated"]


def test_block_standard_error_of_correlated_series():
    # AR(1) with correlation time tau: SEM = sigma sqrt((1 + a)/(1 - a) / n)
    rng = np.random.default_rng(1)
    a, n = math.exp(-1 / 20), 2**15
    x = np.empty(n)
    x[0] = 0.0
    noise = rng.normal(0, math.sqrt(1 - a * a), n)
    for i in range(1, n):
        x[i] = a * x[i - 1] + noise[i]
    expected = math.sqrt((1 + a) / (1 - a) / n)
    assert block_standard_error(x) == pytest.approx(expected, rel=0.25)
