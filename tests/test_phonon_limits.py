"""Zero-point motion (mdxrd.phonons): the exact high-temperature limit of dB = B_quantum - B_classical.

coth x = 1/x + x/3 - x^3/45 + ... (x = hbar omega / 2 k_B T) gives per mode
hbar/(2 m omega) coth x - k_B T/(m omega^2) = hbar^2/(12 m k_B T) [1 - (hbar omega/k_B T)^2/60 + ...]: at high T the
zero-point excess does not depend on the force constants at all. Summed over the modes with the completeness of the
eigenvectors, less the three acoustic modes at Gamma the harmonic model leaves out (mass-weighted eigenvector
|e_j|^2 = m_j / M_cell each), for atom j in a supercell of total mass M:

    dB_j -> 8 pi^2 hbar^2 / (12 m_j k_B T) (1 - m_j / M)

(Wigner's high-temperature expansion; Maradudin, Montroll & Weiss, Theory of Lattice Dynamics in the Harmonic
Approximation (1963), ch. IV). Checked on EMT Cu (one mass) and L1_2 Cu3Au (two masses), 2x2x2 supercells.
"""

from __future__ import annotations

import math

import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.filters import FrechetCellFilter
from ase.optimize import BFGS

from mdxrd.phonons import b_per_element, commensurate_qpoints, force_constants, mean_square_displacements

HBAR, KB, AMU = 1.054571817e-34, 1.380649e-23, 1.66053906660e-27
T_HIGH = 3000.0  # K: hbar omega / k_B T <= 0.13 for EMT's highest modes (< 8 THz), next term <= 3e-4


def _cu3au() -> Atoms:
    atoms = Atoms("AuCu3", scaled_positions=[(0, 0, 0), (0.5, 0.5, 0), (0.5, 0, 0.5), (0, 0.5, 0.5)],
                  cell=[3.75] * 3, pbc=True)
    atoms.calc = EMT()
    BFGS(FrechetCellFilter(atoms), logfile=None).run(fmax=1e-5)  # EMT's L1_2 lattice: no stress
    return atoms


@pytest.mark.parametrize("unit", [bulk("Cu", "fcc", a=3.59, cubic=True), _cu3au()], ids=["Cu", "Cu3Au"])
def test_zero_point_excess_reaches_its_force_constant_free_high_temperature_limit(unit):
    supercell = (2, 2, 2)
    msd = mean_square_displacements(force_constants(unit, supercell, EMT()), [T_HIGH], commensurate_qpoints(supercell))
    assert msd["n_imaginary"] == 0
    symbols = unit.get_chemical_symbols()
    quantum, classical = (b_per_element(msd[k][0], symbols) for k in ("quantum_A2", "classical_A2"))
    masses = dict(zip(symbols, unit.get_masses(), strict=True))
    total = unit.get_masses().sum() * math.prod(supercell)
    for el, m in masses.items():
        limit = 8 * math.pi**2 * HBAR**2 / (12 * m * AMU * KB * T_HIGH) * (1 - m / total) * 1e20
        # 1e-3: the next term of the expansion is <= 3e-4; the Gamma acoustic modes alone are 1/32 = 3 % for Cu
        assert quantum[el] - classical[el] == pytest.approx(limit, rel=1e-3), el


def test_relax_stage_writes_reuses_redoes_and_removes_phonons_json(tmp_path, repo):
    """The relax stage (mdxrd.relax.run_shard, EMT Cu 2x2x2): phonons.json at the grid's temperatures; kept when
    nothing changed; redone alone (reference.json untouched) for a new displacement; removed when switched off,
    so that the dataset and QC, which read it when present, find no stale harmonic B."""
    from mdxrd import grid
    from mdxrd.config import validate_config
    from mdxrd.io import read_json
    from mdxrd.params import shard_params
    from mdxrd.phonons import PHONON_FILE
    from mdxrd.relax import run_shard

    cif = str(repo / "config" / "structures" / "Cu.cif")

    def relax(**phonons):
        cfg = validate_config({"crystals": [{"name": "Cu", "cif": cif, "supercell": [2, 2, 2]}],
                               "potentials": [{"name": "emt", "module": "ase.calculators.emt", "class": "EMT"}],
                               "temperatures_K": [300.0, 600.0], "ensembles": ["nvt_langevin"], "phonons": phonons})
        params = shard_params(cfg, next(iter(grid.shards(cfg))))["relax"]
        return run_shard(params, [cif], str(tmp_path / "s" / "{unit}"), str(tmp_path / "r" / "{unit}"),
                         tmp_path / "m.json")

    ref, ph = tmp_path / "r" / "Cu@emt" / "reference.json", tmp_path / "r" / "Cu@emt" / PHONON_FILE
    assert relax() == 1
    first = read_json(ph)
    assert first["temperatures_K"] == [300.0, 600.0] and first["displacement_A"] == 0.05
    b300, b600 = (first["B_classical_harmonic_A2"][i]["Cu"] for i in (0, 1))
    assert b600 == pytest.approx(2 * b300, rel=1e-12)  # the classical harmonic B is linear in T
    assert 0.2 < b300 < 0.6  # EMT Cu 2x2x2 (experiment 0.55 with zero-point motion and the long waves)
    ref_mtime, ph_mtime = ref.stat().st_mtime_ns, ph.stat().st_mtime_ns
    assert relax() == 0 and ph.stat().st_mtime_ns == ph_mtime  # same parameters: reused
    assert relax(displacement_A=0.02) == 1 and ref.stat().st_mtime_ns == ref_mtime  # phonons redone alone
    assert read_json(ph)["displacement_A"] == 0.02
    assert relax(enabled=False) == 0 and not ph.exists() and ref.stat().st_mtime_ns == ref_mtime


def test_qc_flags_imaginary_modes_and_reports_the_zero_point_ratio():
    from mdxrd.qc import _harmonic_rows

    phonons = {"temperatures_K": [300.0], "B_quantum_harmonic_A2": [{"Si": 0.46}],
               "B_classical_harmonic_A2": [{"Si": 0.40}], "n_imaginary": 0, "min_frequency_THz": -1e-4}
    rows = {r["check"]: r for r in _harmonic_rows("Si", phonons, [], {"B_iso_tolerance": 0.2})}
    assert rows["phonons_stable"]["status"] == "pass"
    assert rows["B_quantum_ratio_Si"]["value"] == pytest.approx(1.15, rel=1e-12)
    unstable = {r["check"]: r for r in _harmonic_rows("Si", {**phonons, "n_imaginary": 3, "min_frequency_THz": -1.2},
                                                      [], {"B_iso_tolerance": 0.2})}
    assert unstable["phonons_stable"]["status"] == "warn" and unstable["phonons_stable"]["value"] == 3.0
    assert "-1.200 THz" in unstable["phonons_stable"]["detail"]
