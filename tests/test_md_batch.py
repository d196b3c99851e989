"""Batched MD (mdxrd.batch.run_md_batch): K runs in lockstep with one potential evaluation per step.

Each batched run must be the run alone: the same trajectory (CHGNet: bit for bit; the batched
forward pass of independent graphs repeats the single pass's arithmetic), the same thermostat and
barostat statistics, and its own failure. Long runs use ASE's EMT (milliseconds per step).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from ase.build import bulk
from ase.calculators.calculator import all_changes
from ase.calculators.emt import EMT
from ase.io import read

from conftest import cu_fcc
from mdxrd.batch import LockstepBatcher, run_md_batch
from mdxrd.md import MDParams, run_md


class FreshEMT(EMT):
    """EMT with its neighbour list rebuilt at every call: results depend on the positions only."""

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, all_changes)


def _outputs(d):
    thermo = pd.read_csv(d / "thermo.csv")
    frames = read(d / "trajectory.traj", ":")
    return thermo, frames, np.load(d / "velocities.npy")


def _assert_same_run(a, b, atol=0.0):
    (ta, fa, va), (tb, fb, vb) = _outputs(a), _outputs(b)
    assert list(ta.step) == list(tb.step) and len(fa) == len(fb)
    np.testing.assert_allclose(ta.to_numpy(), tb.to_numpy(), rtol=0, atol=atol)
    np.testing.assert_allclose(va, vb, rtol=0, atol=atol)
    for x, y in zip(fa, fb):
        np.testing.assert_allclose(x.positions, y.positions, rtol=0, atol=atol)
        np.testing.assert_allclose(x.cell.array, y.cell.array, rtol=0, atol=atol)
        np.testing.assert_allclose(x.get_forces(), y.get_forces(), rtol=0, atol=atol)


def _mixed_runs(n_steps: int, **kw) -> list[MDParams]:
    """The three ensembles, two temperatures and two replicas of one temperature."""
    common = dict(n_steps=n_steps, n_equil=n_steps // 5, n_interval=n_steps // 5, device="cpu", **kw)
    return [MDParams(ensemble="nvt_langevin", temperature_K=300.0, seed=1, **common),
            MDParams(ensemble="nvt_langevin", temperature_K=300.0, seed=2, **common),
            MDParams(ensemble="nvt_berendsen", temperature_K=600.0, seed=3, **common),
            MDParams(ensemble="npt_berendsen", temperature_K=600.0, seed=4, compressibility_per_GPa=0.007,
                     taup_fs=200.0, **common)]


def test_emt_batch_equals_single_runs(tmp_path):
    # 4 runs of 32 Cu atoms, mixed ensembles, 150 steps: each batched run's thermo, velocities and
    # frames equal the run alone bit for bit, so every statistic does.
    runs = _mixed_runs(150, npt_pre_steps=20)
    atoms = cu_fcc(repeat=2)
    for i, p in enumerate(runs):
        run_md(atoms, p, tmp_path / f"single{i}", calc=FreshEMT())
    outcomes = run_md_batch([(atoms, p, tmp_path / f"batch{i}") for i, p in enumerate(runs)], calc=FreshEMT())
    assert all(isinstance(o, dict) and o["runs_in_batch"] == 4 for o in outcomes)
    for i in range(len(runs)):
        _assert_same_run(tmp_path / f"single{i}", tmp_path / f"batch{i}")
        assert not (tmp_path / f"batch{i}" / "checkpoint.pkl").exists()


def test_emt_batch_samples_the_ensembles(tmp_path):
    # The same 4 runs over 1200 steps: canonical mean T for the thermostats, the canonical
    # kinetic-temperature fluctuation std(T)/T = sqrt(2/(3N - 3)) = 14.7 % for Langevin, P0 for NPT.
    runs = _mixed_runs(1200, npt_pre_steps=100)
    atoms = cu_fcc(repeat=2)
    run_md_batch([(atoms, p, tmp_path / f"batch{i}") for i, p in enumerate(runs)], calc=FreshEMT())
    for i, p in enumerate(runs):
        thermo = pd.read_csv(tmp_path / f"batch{i}" / "thermo.csv")
        window = thermo[thermo.step >= p.n_equil]
        blocks = np.array([b.mean() for b in np.array_split(window.T_K.to_numpy(), 8)])
        sem = blocks.std(ddof=1) / math.sqrt(len(blocks))
        assert abs(window.T_K.mean() - p.temperature_K) < 4 * sem + 0.01 * p.temperature_K, (i, window.T_K.mean())
        if p.ensemble.value == "nvt_langevin":
            assert window.T_K.std() / p.temperature_K == pytest.approx(math.sqrt(2 / (3 * 32 - 3)), rel=0.35)
        if p.ensemble.value == "npt_berendsen":
            assert abs(window.P_GPa.mean()) < 0.5, window.P_GPa.mean()


@pytest.fixture(scope="module")
def chgnet_calc():
    pytest.importorskip("chgnet")
    from mdxrd.calculator import make_calculator

    calc = make_calculator("fast", device="cpu")
    calc.max_batch = None  # one forward pass for the whole batch, even on the CPU
    return calc


def test_chgnet_batch_equals_single_runs_for_50_steps(tmp_path, chgnet_calc):
    # Two crystals (Si 16 atoms, NaCl 8 atoms) and three ensembles in one batch: one forward
    # pass of 4 graphs per step reproduces each run alone to the bit over 50 steps.
    si = bulk("Si", "diamond", a=5.4612, cubic=True).repeat((2, 1, 1))
    nacl = bulk("NaCl", "rocksalt", a=5.6905, cubic=True)
    runs = _mixed_runs(50, npt_pre_steps=10)
    crystals = [si, nacl, si, nacl]
    for i, p in enumerate(runs):
        run_md(crystals[i], p, tmp_path / f"single{i}", calc=chgnet_calc)
    batch = [(crystals[i], p, tmp_path / f"batch{i}") for i, p in enumerate(runs)]
    outcomes = run_md_batch(batch, calc=chgnet_calc)
    assert all(isinstance(o, dict) for o in outcomes)
    for i in range(len(runs)):
        _assert_same_run(tmp_path / f"single{i}", tmp_path / f"batch{i}", atol=1e-12)


def test_chgnet_calculate_batch_equals_calculate(chgnet_calc):
    rng = np.random.default_rng(3)
    structures = [bulk("Si", "diamond", a=5.43, cubic=True), bulk("NaCl", "rocksalt", a=5.64, cubic=True),
                  bulk("Cu", "fcc", a=3.615, cubic=True).repeat((2, 1, 1))]
    for a in structures:
        a.positions += rng.normal(0.0, 0.05, a.positions.shape)
    batched = chgnet_calc.calculate_batch(structures)
    for atoms, result in zip(structures, batched):
        chgnet_calc.calculate(atoms.copy(), ["energy"], all_changes)
        assert result["energy"] == pytest.approx(chgnet_calc.results["energy"], abs=1e-5 * len(atoms))
        np.testing.assert_allclose(result["forces"], chgnet_calc.results["forces"], rtol=0, atol=1e-5)
        np.testing.assert_allclose(result["stress"], chgnet_calc.results["stress"], rtol=0, atol=1e-7)


def test_batcher_waits_for_every_active_run_and_lets_finished_runs_go(tmp_path):
    # Runs of 30, 60 and 90 steps: the batch holds 3 structures, then 2, then 1.
    atoms = cu_fcc(repeat=2)
    runs = [MDParams(ensemble="nvt_berendsen", temperature_K=300.0, n_steps=n, n_equil=10, n_interval=10, seed=n)
            for n in (30, 60, 90)]
    calc = FreshEMT()
    seen: list[int] = []
    real = LockstepBatcher._evaluate_when_all_pending

    def spy(self):
        if self._pending and len(self._pending) >= len(self._active):
            seen.append(len(self._pending))
        real(self)

    LockstepBatcher._evaluate_when_all_pending = spy
    try:
        outcomes = run_md_batch([(atoms, p, tmp_path / f"r{i}") for i, p in enumerate(runs)], calc=calc)
    finally:
        LockstepBatcher._evaluate_when_all_pending = real
    assert all(isinstance(o, dict) for o in outcomes)
    assert seen[0] == 3 and set(seen) == {1, 2, 3}
    # 31 evaluations of all three (step 0 .. 30), 30 of two, 30 of one
    assert seen.count(3) == 31 and seen.count(2) == 30 and seen.count(1) == 30


def test_a_run_that_blows_up_fails_alone_and_the_rerun_keeps_its_batch_mates(tmp_path):
    # Run 1 starts at 10 x T0 with a runaway limit of 3 x T0: MDError at step 0. The other two finish and
    # are written; the shard job fails naming run 1 and writes no manifest. Its rerun reuses the two
    # finished runs (their stamps) and fails run 1 again; with run 1 fixed, only run 1 runs.
    from conftest import EMT_POTENTIAL, md_shard
    from mdxrd.md import run_shard
    from mdxrd.potentials import resolve_potential
    from mdxrd.shard import ShardError

    good = dict(ensemble="nvt_langevin", temperature_K=300.0, n_steps=40, n_equil=10, n_interval=10,
                potential=resolve_potential(EMT_POTENTIAL), checkpoint_interval=10)
    bad = dict(start_temperature_factor=10.0, max_temperature_ratio=3.0)
    params, supercell, run_dir, manifest = md_shard(tmp_path, cu_fcc(repeat=2),
                                                    [{**good, "seed": 1}, {**good, "seed": 2, **bad}, {**good, "seed": 3}])
    out = [tmp_path / "md" / "X" / "nvt_langevin" / "300K" / f"r{i}" for i in range(3)]
    with pytest.raises(ShardError, match=rf"1 of 3 MD runs failed.*\n{out[1]}: step 0: temperature .* ran away"):
        run_shard(params, supercell, run_dir, manifest)
    assert not manifest.exists() and not (out[1] / "thermo.csv").exists()
    for i in (0, 2):
        run_md(read(supercell.format(unit="X")), MDParams(**params["batches"][0][i]["params"]), tmp_path / f"alone{i}",
               calc=FreshEMT())
        _assert_same_run(out[i], tmp_path / f"alone{i}")
    written = {i: (out[i] / "thermo.csv").stat().st_mtime_ns for i in (0, 2)}
    with pytest.raises(ShardError, match="1 of 3 MD runs failed"):
        run_shard(params, supercell, run_dir, manifest)
    assert {i: (out[i] / "thermo.csv").stat().st_mtime_ns for i in (0, 2)} == written  # reused, not rerun
    params["batches"][0][1]["params"] = {**good, "seed": 2}
    assert run_shard(params, supercell, run_dir, manifest) == 1
    entries = json.loads(manifest.read_text())["entries"]
    assert [e["reused"] for e in sorted(entries, key=lambda e: e["replica"])] == [True, False, True]
    # where and how a run is executed and logged is not what it samples: those changes keep every run,
    # a change of what it samples (here the seed of run 0) reruns that run alone
    for run in params["batches"][0]:
        run["params"] = {**run["params"], "threads": 2, "progress_interval": 7, "checkpoint_interval": 0,
                         "device": "cpu"}
    assert run_shard(params, supercell, run_dir, manifest) == 0
    params["batches"][0][0]["params"]["seed"] = 4
    assert run_shard(params, supercell, run_dir, manifest) == 1


def test_cli_runs_a_shard_and_names_the_failed_run(tmp_path):
    pytest.importorskip("chgnet")
    from conftest import md_shard

    runs = [dict(ensemble="nvt_berendsen", temperature_K=300.0, n_steps=6, n_equil=2, n_interval=2, device="cpu",
                 seed=i, **extra) for i, extra in enumerate([{}, {"start_temperature_factor": 10.0,
                                                                   "max_temperature_ratio": 3.0}])]
    params, supercell, run_dir, manifest = md_shard(tmp_path, bulk("Si", "diamond", a=5.4612, cubic=True), runs)
    (tmp_path / "md.json").write_text(json.dumps(params))
    args = [sys.executable, "-m", "mdxrd", "md", "--params", str(tmp_path / "md.json"), "--supercell", supercell,
            "--run-dir", run_dir, "--manifest", str(manifest)]
    proc = subprocess.run(args, capture_output=True, text=True)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    failed = tmp_path / "md" / "X" / "nvt_berendsen" / "300K" / "r1"
    assert f"{failed}: step 0: temperature" in proc.stderr
    record = json.loads((failed.parent / "r0" / "run.json").read_text())
    assert record["runs_in_batch"] == 2 and record["calculator"] == "FastCHGNetCalculator"
    proc = subprocess.run(args[:5] + args[7:], capture_output=True, text=True)  # without --supercell
    assert proc.returncode == 2 and "--supercell" in proc.stderr
