"""MD faults and restarts: blown-up runs fail loudly and write nothing; killed runs resume bit-identically."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.emt import EMT
from ase.io import read

from conftest import cu_fcc
from mdxrd.md import MDError, MDParams, run_md


class _Killed(Exception):
    pass


class FreshEMT(EMT):
    """EMT with its neighbour list rebuilt at every call, so results depend on positions only
    (ASE's EMT keeps a skin neighbour list whose history changes summation order at 1e-14;
    CHGNet builds its graph afresh every call anyway)."""

    def __init__(self, n_calls: int | None = None):
        super().__init__()
        self.left = n_calls

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        if self.left is not None:
            self.left -= 1
            if self.left < 0:
                raise _Killed  # like a job killed mid-run
        super().calculate(atoms, properties, all_changes)


def DyingEMT(n_calls: int) -> FreshEMT:
    return FreshEMT(n_calls)


class NaNCalculator(Calculator):
    implemented_properties = ("energy", "forces", "stress")

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.results = {"energy": float("nan"), "forces": np.zeros((len(atoms), 3)), "stress": np.zeros(6)}


def _outputs(d: Path):
    thermo = (d / "thermo.csv").read_text()
    vel = np.load(d / "velocities.npy")
    frames = read(d / "trajectory.traj", ":")
    return thermo, vel, frames


@pytest.mark.parametrize("ensemble", ["nvt_langevin", "npt_berendsen"])
def test_resume_after_kill_is_bit_identical(tmp_path, ensemble):
    params = MDParams(ensemble=ensemble, temperature_K=500.0, n_steps=60, n_equil=20, n_interval=10, seed=9,
                      checkpoint_interval=15, taup_fs=100.0, compressibility_per_GPa=0.007, npt_pre_steps=10)
    atoms = cu_fcc(repeat=2)
    run_md(atoms, params, tmp_path / "ref", calc=FreshEMT())
    # NPT first spends 2 calls on the bulk modulus and 10 on the pre-equilibration
    calls = 40 + (12 if ensemble == "npt_berendsen" else 0)
    with pytest.raises(_Killed):
        run_md(atoms, params, tmp_path / "cut", calc=DyingEMT(calls))  # dies after step 30's checkpoint
    assert (tmp_path / "cut" / "checkpoint.pkl").is_file()
    assert not (tmp_path / "cut" / "thermo.csv").exists()  # nothing that looks finished
    rec = run_md(atoms, params, tmp_path / "cut", calc=FreshEMT())
    assert rec["resumed_from_step"] == 30
    assert not (tmp_path / "cut" / "checkpoint.pkl").exists()
    ref, cut = _outputs(tmp_path / "ref"), _outputs(tmp_path / "cut")
    assert ref[0] == cut[0]
    assert np.array_equal(ref[1], cut[1])
    for a, b in zip(ref[2], cut[2], strict=True):
        assert a.info == b.info
        assert np.array_equal(a.positions, b.positions) and np.array_equal(a.cell.array, b.cell.array)
        assert np.array_equal(a.get_momenta(), b.get_momenta())


def test_checkpoint_with_other_parameters_is_ignored(tmp_path):
    atoms = cu_fcc(repeat=2)
    base = dict(ensemble="nvt_langevin", temperature_K=300.0, n_steps=40, n_equil=10, n_interval=10,
                checkpoint_interval=10)
    with pytest.raises(_Killed):
        run_md(atoms, MDParams(**base, seed=1), tmp_path, calc=DyingEMT(25))
    rec = run_md(atoms, MDParams(**base, seed=2), tmp_path, calc=EMT())
    assert rec["resumed_from_step"] == 0


@pytest.mark.slow
def test_cli_run_killed_with_sigkill_resumes(tmp_path):
    """The real thing: `mdxrd md` with CHGNet, SIGKILLed after its first checkpoint, rerun."""
    from conftest import md_shard

    run = dict(ensemble="nvt_langevin", temperature_K=300.0, n_steps=30, n_equil=10, n_interval=10, seed=4,
               checkpoint_interval=10)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def cmd(work):
        params, supercell, run_dir, manifest = md_shard(work, cu_fcc(a=3.6156, repeat=2), [run])
        (work / "md.json").write_text(json.dumps(params))
        return [sys.executable, "-m", "mdxrd", "md", "--params", str(work / "md.json"), "--supercell", supercell,
                "--run-dir", run_dir, "--manifest", str(manifest)]

    def out(work):
        return work / "md" / "X" / "nvt_langevin" / "300K" / "r0"

    subprocess.run(cmd(tmp_path / "ref"), check=True, capture_output=True, env=env)
    proc = subprocess.Popen(cmd(tmp_path / "cut"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    ckpt = out(tmp_path / "cut") / "checkpoint.pkl"
    deadline = time.time() + 120
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if not ckpt.exists():
        pytest.skip("the run finished before it could be killed")
    assert not (out(tmp_path / "cut") / "thermo.csv").exists()
    res = subprocess.run(cmd(tmp_path / "cut"), capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
    assert "resuming from" in res.stderr
    ref, cut = _outputs(out(tmp_path / "ref")), _outputs(out(tmp_path / "cut"))
    assert ref[0] == cut[0] and np.array_equal(ref[1], cut[1])


def test_nan_energy_fails_naming_the_step_and_writes_nothing(tmp_path):
    params = MDParams(ensemble="nvt_berendsen", temperature_K=300.0, n_steps=20, n_equil=5, n_interval=5)
    with pytest.raises(MDError, match=r"step 0: energy or temperature is NaN"):
        run_md(cu_fcc(repeat=2), params, tmp_path / "out", calc=NaNCalculator())
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_atoms_too_close_fail(tmp_path):
    atoms = cu_fcc(repeat=2)
    atoms.positions[1] = atoms.positions[0] + [0.3, 0.0, 0.0]
    params = MDParams(ensemble="nvt_berendsen", temperature_K=300.0, n_steps=20, n_equil=5, n_interval=5)
    with pytest.raises(MDError, match=r"step 0: atoms 0.300 A apart \(< 0.5 A\)"):
        run_md(atoms, params, tmp_path / "out", calc=EMT())
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_runaway_temperature_fails(tmp_path):
    # two atoms squeezed to 1.2 A: the repulsion heats a 10 K run far beyond 5 x its target
    atoms = cu_fcc(repeat=2)
    atoms.positions[1] = atoms.positions[0] + [1.2, 0.0, 0.0]
    params = MDParams(ensemble="nvt_berendsen", temperature_K=10.0, n_steps=200, n_equil=5, n_interval=5,
                      checkpoint_interval=2)
    with pytest.raises(MDError, match=r"step \d+: temperature .* ran away \(> 5 x target 10 K\)"):
        run_md(atoms, params, tmp_path / "out", calc=EMT())
    assert not (tmp_path / "out" / "checkpoint.pkl").exists()
    assert not (tmp_path / "out" / "thermo.csv").exists()
