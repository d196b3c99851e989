"""Host time of the batched torch MD engine (mdxrd.engine) outside the potential, against ASE's integrators.

Usage::

    python benchmarks/bench_engine.py [--steps 50] [--device cpu]

K = 1, 64, 256 Si 2x2x2 systems (64 atoms each) with a zero-force model (``ZeroModel``: what is timed
is the integrator and its bookkeeping only):

* the step alone (:func:`mdxrd.engine.integrators.md_step`) for NVT-Berendsen, NVT-Langevin (BAOAB) and
  NPT-Berendsen batches, against ASE's NVTBerendsen and Langevin with a ``FixCom`` constraint and a
  zero-force calculator per run-step;
* the MD stage's whole host side on the engine (:func:`mdxrd.engine.runs.run_md_engine`: start
  velocities, the step, the device buffer, its copies to the host, the records, the files of every
  run), 100 NVT-Berendsen steps with a window of 50, against the ASE path (:func:`mdxrd.md.run_md`)
  per run-step;

and the crystal graph of one Si64 (``mdxrd.crystal_graph``) for reference. Median over 3 repeats (the
stage: one), one CPU thread, wall time per system-step.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow"))

import numpy as np
import torch
from ase import units
from ase.build import bulk
from ase.calculators.calculator import Calculator, all_changes
from ase.constraints import FixCom
from ase.md.langevin import Langevin
from ase.md.nvtberendsen import NVTBerendsen
from ase.md.velocitydistribution import Stationary, thermalize_momenta
from mdxrd.engine import BatchState
from mdxrd.engine.integrators import evaluate, md_step
from mdxrd.engine.models import ZeroModel


class ZeroCalculator(Calculator):
    """Zero energy, forces and stress: the ASE integrator's own cost."""

    implemented_properties = ("energy", "free_energy", "forces", "stress")

    def calculate(self, atoms=None, properties=None, system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        n = len(self.atoms)
        self.results = {"energy": 0.0, "free_energy": 0.0, "forces": np.zeros((n, 3)), "stress": np.zeros(6)}


def si64(seed: int):
    a = bulk("Si", "diamond", a=5.4612, cubic=True).repeat(2)
    rng = np.random.default_rng(seed)
    thermalize_momenta(a, 600.0, rng=rng)
    Stationary(a)
    return a


def median(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def engine_ms(k: int, ensemble: str, steps: int, device: str) -> float:
    state = BatchState.from_atoms([si64(s) for s in range(k)], temperature_K=300.0, timestep_fs=2.0,
                                  seeds=range(k), ensemble=ensemble, device=device)
    model = ZeroModel()
    evaluate(state, model)
    md_step(state, model)  # warm-up

    def go():
        for _ in range(steps):
            md_step(state, model)
        if device != "cpu":
            torch.cuda.synchronize()
    return median(go) / (steps * k) * 1e3


def stage_ms(k: int, device: str, ase: bool = False) -> float:
    """Wall ms per system-step of K runs through the MD stage (engine, or run_md alone), zero forces."""
    import tempfile

    from mdxrd.engine.runs import run_md_engine
    from mdxrd.md import MDParams, run_md

    params = MDParams(ensemble="nvt_berendsen", temperature_K=300.0, timestep_fs=2.0, n_steps=100, n_equil=50,
                      n_interval=25, device=device)
    with tempfile.TemporaryDirectory() as tmp:
        runs = [(si64(s), params, Path(tmp) / f"r{s}") for s in range(k)]
        t = time.perf_counter()
        if ase:
            run_md(runs[0][0], params, runs[0][2], calc=ZeroCalculator())
        else:
            run_md_engine(runs, calc=ZeroCalculator(), model=ZeroModel())
        return (time.perf_counter() - t) / (k * params.n_steps) * 1e3


def ase_ms(make, steps: int) -> float:
    atoms = si64(0)
    atoms.calc = ZeroCalculator()
    atoms.set_constraint(FixCom())
    dyn = make(atoms)
    dyn.run(1)
    return median(lambda: dyn.run(steps)) / steps * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(1)
    dt = 2 * units.fs
    ase_nvt = ase_ms(lambda a: NVTBerendsen(a, dt, temperature_K=300, taut=100 * units.fs), args.steps)
    ase_lan = ase_ms(lambda a: Langevin(a, dt, temperature_K=300, friction=0.01 / units.fs, fixcm=False,
                                        rng=np.random.default_rng(0)), args.steps)
    print(f"torch {torch.__version__}, device {args.device}, {args.steps} steps, Si64 systems, zero-force model")
    print("| integrator | K | engine ms per system-step | ASE ms per run-step | ASE / engine |")
    print("|---|---|---|---|---|")
    for name, ensemble, ref in (("NVT-Berendsen", "nvt_berendsen", ase_nvt), ("Langevin", "nvt_langevin", ase_lan),
                                ("NPT-Berendsen", "npt_berendsen", None)):
        for k in (1, 64, 256):
            ms = engine_ms(k, ensemble, args.steps, args.device)
            print(f"| {name} | {k} | {ms:.4f} | {ref or float('nan'):.3f} | {(ref or float('nan')) / ms:.0f} |")
    stage_ms(1, args.device, ase=True)  # warm-up: lazy imports (torch, chgnet) of the first run
    stage_ase = stage_ms(1, args.device, ase=True)
    stage_ms(1, args.device)
    print("\nMD stage, host side (100 NVT-Berendsen steps, window 50, files written)")
    print("| K | engine ms per system-step | ASE path ms per run-step | ratio |")
    print("|---|---|---|---|")
    for k in (1, 64, 256):
        ms = stage_ms(k, args.device)
        print(f"| {k} | {ms:.4f} | {stage_ase:.3f} | {stage_ase / ms:.0f} |")
    from mdxrd.calculator import _structure, load_model
    from mdxrd.crystal_graph import crystal_graph

    converter = load_model("cpu").graph_converter
    structure = _structure(si64(0))
    crystal_graph(converter, structure)
    graph = median(lambda: [crystal_graph(converter, structure) for _ in range(10)]) / 10 * 1e3
    print(f"\ncrystal graph (mdxrd.crystal_graph) of one Si64: {graph:.2f} ms")


if __name__ == "__main__":
    main()
