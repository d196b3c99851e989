"""The post stage of one run (mdxrd.post.process_run: snapshots, then XRD with the run's average): the average
is the mean of the snapshot patterns, preserves the integrated intensity, and shows the Debye-Waller decay
with temperature; a run whose stamp matches is reused.

The MD here uses ASE's EMT potential for Cu (fast), then the stage function the workflow runs.
"""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
from ase.calculators.emt import EMT

from conftest import cu_fcc
from mdxrd import xrd
from mdxrd.md import MDParams, run_md
from mdxrd.post import process_run

XRD = dict(two_theta_range=(30.0, 90.0), two_theta_step=0.02,
           instrument=[{"name": "g", "wavelength": 1.5406, "sigma_deg": 0.3}])


def _pipeline(tmp_path, temperature_K: float):
    from ase.io import write

    from mdxrd.io import write_json

    md = dict(n_steps=400, n_equil=100, n_interval=30, timestep_fs=2.0)
    params = MDParams(ensemble="nvt_langevin", temperature_K=temperature_K, seed=5, friction_per_fs=0.02, **md)
    sites = cu_fcc(a=3.59, repeat=3)
    run_md(sites, params, tmp_path / "md", calc=EMT(), stamp="test")
    write(tmp_path / "supercell.traj", sites)
    write_json(tmp_path / "structure.json", {"centring_translations": xrd.centring_translations(cu_fcc(a=3.59,
                                                                                                          repeat=1))})
    job = {"run": {"unit": "Cu", "ensemble": "nvt_langevin", "temperature_K": temperature_K, "replica": 0,
                   "supercell": [3, 3, 3]},
           "params": {"snapshots": {**md, "lindemann_threshold": 0.2}, "xrd": XRD},
           "md_dir": str(tmp_path / "md"), "snapshots_dir": str(tmp_path / "snap"), "xrd_dir": str(tmp_path / "xrd"),
           "sites": str(tmp_path / "supercell.traj"), "structure_info": str(tmp_path / "structure.json")}
    assert process_run(job)["reused"] is False
    mtime = (tmp_path / "xrd" / "average.npz").stat().st_mtime_ns
    assert process_run(job)["reused"] is True  # its stamp: parameters and MD run unchanged
    assert (tmp_path / "xrd" / "average.npz").stat().st_mtime_ns == mtime

    def first(npz):  # the one condition
        return {k: (v[0] if k.startswith("intensity") else v) for k, v in np.load(npz).items()}

    out = tmp_path / "xrd"
    return first(out / "patterns.npz"), first(out / "average.npz"), pq.read_table(out / "reflections.parquet")


@pytest.fixture(scope="module")
def cold_hot(tmp_path_factory):
    return (_pipeline(tmp_path_factory.mktemp("cold"), 100.0), _pipeline(tmp_path_factory.mktemp("hot"), 900.0))


def _peak_area(grid, y, center, half_width=1.0):
    sel = np.abs(grid - center) < half_width
    return y[sel].sum() * (grid[1] - grid[0])


def test_average_is_mean_of_snapshot_patterns(cold_hot):
    patterns, avg, refl = cold_hot[0]
    assert int(avg["n_snapshots"]) == 10
    np.testing.assert_allclose(avg["intensity"], patterns["intensity"].mean(axis=0), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(avg["intensity_bragg"], patterns["intensity_bragg"].mean(axis=0), rtol=1e-9,
                               atol=1e-12)


def test_average_preserves_integrated_bragg_intensity(cold_hot):
    _, avg, refl = cold_hot[0]
    tt = refl["two_theta"].to_numpy()
    inten = refl["intensity"].to_numpy()
    bragg = refl["is_bragg"].to_numpy(zero_copy_only=False)
    inside = (tt > 30.0 + 6 * 0.3) & (tt < 90.0 - 6 * 0.3) & bragg  # peaks whose Gaussian lies inside the grid
    edge = ((tt > 30.0 - 6 * 0.3) & (tt < 30.0 + 6 * 0.3) | (tt > 90.0 - 6 * 0.3) & (tt < 90.0 + 6 * 0.3)) & bragg
    grid = avg["two_theta"]
    area = avg["intensity_bragg"].sum() * (grid[1] - grid[0])
    expected = inten[inside].sum() / 10
    assert expected <= area <= expected + inten[edge].sum() / 10


def test_hotter_pattern_loses_high_angle_intensity(cold_hot):
    (_, cold, _), (_, hot, _) = cold_hot
    grid = cold["two_theta"]
    # EMT Cu, a = 3.59 A: (111) at 43.6 deg, (220) at 74.7 deg, (311) at 90.7 deg (outside)
    d = {hkl: 3.59 / np.sqrt(sum(i * i for i in hkl)) for hkl in [(1, 1, 1), (2, 2, 0)]}
    tt = {hkl: 2 * np.degrees(np.arcsin(1.5406 / (2 * dd))) for hkl, dd in d.items()}
    ratio = {name: _peak_area(grid, p["intensity_bragg"], tt[(2, 2, 0)]) / _peak_area(grid, p["intensity_bragg"],
                                                                                         tt[(1, 1, 1)])
             for name, p in (("cold", cold), ("hot", hot))}
    # Debye-Waller: I ~ exp(-2 B s^2) with B growing about linearly in T; from 100 K to 900 K the
    # (220)/(111) ratio must drop clearly (EMT Cu: B(900 K) - B(100 K) ~ 1.3 A^2 -> factor ~0.8)
    assert ratio["hot"] < 0.9 * ratio["cold"], ratio
    # while the total (Bragg + diffuse) keeps more of it: diffuse scattering grows with T
    diffuse_hot = (hot["intensity"] - hot["intensity_bragg"]).sum()
    diffuse_cold = (cold["intensity"] - cold["intensity_bragg"]).sum()
    assert diffuse_hot > 3 * diffuse_cold > 0
