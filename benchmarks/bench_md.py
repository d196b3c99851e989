"""MD throughput and peak memory: stock CHGNet + ASE integrators vs mdxrd's fast path.

Usage::

    python benchmarks/bench_md.py [--steps N] [--large-steps M] [--json PATH]

For each structure and ensemble it runs, each in a fresh process (multiprocessing
"spawn", one torch thread):

* stock: ``chgnet.model.dynamics.CHGNetCalculator`` with ASE's ``Langevin``,
  ``NVTBerendsen`` or ``NPTBerendsen``;
* fast: ``mdxrd.calculator.FastCHGNetCalculator`` with ``Langevin``,
  ``NVTBerendsen`` or ``mdxrd.integrators.NPTBerendsenOneForce``.

Structures (room-temperature experimental lattice constants):

* Si, diamond, 2x2x2 conventional, 64 atoms, a = 5.4307 A;
* NaCl, rock salt, 2x2x2 conventional, 64 atoms, a = 5.6401 A;
* Al2O3, corundum (R-3c), 2x2x2 hexagonal cell, 240 atoms, a = 4.7589 A,
  c = 12.991 A, Al 12c z = 0.35216, O 18e x = 0.30624.

Reported per case: throughput in atom-steps per second, N_atoms divided by the
median wall time of ``steps`` timed MD steps (after ``warmup`` untimed steps;
the median resists load bursts from other processes on a shared machine; the
mean-based figure is in the JSON), calculator evaluations per step, and
the peak resident-memory increase of the process during the MD (Linux:
``VmHWM`` after resetting it through ``/proc/self/clear_refs`` once the model
and structure are loaded; elsewhere ``ru_maxrss`` minus the RSS before the MD,
which is a lower bound). Targets checked: NVT >= 1.5x and NPT >= 2.5x
throughput at 64 atoms, peak memory <= 0.5x at 150+ atoms.

MD settings: T = 300 K (initial Maxwell-Boltzmann, seeded), dt = 1 fs,
Langevin friction 0.01/fs, tau_T = 100 fs, tau_P = 1000 fs, P0 = 1 atm.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

STRUCTURES = {
    # name: (compressibility in 1/GPa = 1/B)
    "Si64": 0.0102,  # B = 98 GPa
    "NaCl64": 0.0417,  # B = 24 GPa
    "Al2O3_240": 0.0040,  # B = 252 GPa
}
ENSEMBLES = ("nvt_langevin", "nvt_berendsen", "npt_berendsen")
KINDS = ("stock", "fast")


def build_structure(name: str):
    """Return the ASE Atoms of a benchmark structure."""
    from ase.build import bulk

    if name == "Si64":
        return bulk("Si", "diamond", a=5.4307, cubic=True).repeat((2, 2, 2))
    if name == "NaCl64":
        return bulk("NaCl", "rocksalt", a=5.6401, cubic=True).repeat((2, 2, 2))
    if name == "Al2O3_240":
        from pymatgen.core import Lattice, Structure
        from pymatgen.io.ase import AseAtomsAdaptor

        s = Structure.from_spacegroup(
            "R-3c", Lattice.hexagonal(4.7589, 12.991), ["Al", "O"], [[0, 0, 0.35216], [0.30624, 0, 0.25]]
        )
        return AseAtomsAdaptor.get_atoms(s).repeat((2, 2, 2))
    raise ValueError(f"unknown structure {name!r}")


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def run_case(structure: str, ensemble: str, kind: str, steps: int, warmup: int, seed: int = 0) -> dict:
    """Run one benchmark case in the current (fresh) process and return its numbers."""
    import resource

    import numpy as np
    import torch
    from ase import units
    from ase.md.langevin import Langevin
    from ase.md.nptberendsen import NPTBerendsen
    from ase.md.nvtberendsen import NVTBerendsen
    from ase.md.velocitydistribution import Stationary

    try:
        from ase.md.velocitydistribution import thermalize_momenta as thermalize
    except ImportError:  # ASE < 3.29
        from ase.md.velocitydistribution import MaxwellBoltzmannDistribution as thermalize

    from mdxrd.calculator import make_calculator
    from mdxrd.integrators import NPTBerendsenOneForce

    import warnings

    # chgnet's BatchedGraph.from_graphs warns on every stress evaluation (stock path)
    warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad", category=UserWarning)
    torch.set_num_threads(1)
    atoms = build_structure(structure)
    with contextlib.redirect_stdout(io.StringIO()):  # CHGNet's load banners
        calc = make_calculator(kind, device="cpu")
    n_calls = [0]
    original = calc.calculate

    def counting(*args, **kwargs):
        n_calls[0] += 1
        return original(*args, **kwargs)

    calc.calculate = counting
    atoms.calc = calc
    thermalize(atoms, temperature_K=300.0, rng=np.random.default_rng(seed))
    Stationary(atoms)
    dt = 1.0 * units.fs
    if ensemble == "nvt_langevin":
        dyn = Langevin(
            atoms,
            dt,
            temperature_K=300.0,
            friction=0.01 / units.fs,
            fixcm=False,  # ASE >= 3.28 deprecates fixcm=True here; no effect on cost
            rng=np.random.default_rng(seed + 1),
        )
    elif ensemble == "nvt_berendsen":
        dyn = NVTBerendsen(atoms, dt, temperature_K=300.0, taut=100 * units.fs)
    else:
        cls = NPTBerendsen if kind == "stock" else NPTBerendsenOneForce
        dyn = cls(
            atoms,
            dt,
            temperature_K=300.0,
            pressure_au=1.01325e-4 * units.GPa,
            taut=100 * units.fs,
            taup=1000 * units.fs,
            compressibility_au=STRUCTURES[structure] / units.GPa,
        )

    exact_peak = _reset_peak_rss()
    rss0 = _status_kib("VmRSS") or 0
    if warmup:
        dyn.run(warmup)
    calls0 = n_calls[0]
    stamps: list[float] = []
    dyn.attach(lambda: stamps.append(time.perf_counter()), interval=1)
    t0 = time.perf_counter()
    dyn.run(steps)
    elapsed = time.perf_counter() - t0
    step_seconds = np.diff([t0, *stamps[-steps:]])
    calls = n_calls[0] - calls0
    peak = _status_kib("VmHWM") if exact_peak else None
    if peak is None:  # ru_maxrss is KiB on Linux, bytes on macOS
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        if sys.platform == "darwin":
            peak //= 1024
    return {
        "structure": structure,
        "ensemble": ensemble,
        "kind": kind,
        "n_atoms": len(atoms),
        "steps": steps,
        "seconds": elapsed,
        # median step time: robust against bursts of load from other processes
        "atom_steps_per_s": len(atoms) / float(np.median(step_seconds)),
        "atom_steps_per_s_mean": len(atoms) * steps / elapsed,
        "evals_per_step": calls / steps,
        "peak_rss_delta_mib": (peak - rss0) / 1024.0,
        "peak_exact": exact_peak,
        "final_temperature_K": float(atoms.get_temperature()),
    }


def _in_fresh_process(*args) -> dict:
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(run_case, *args).result()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="timed MD steps for the 64-atom cells (default 20)")
    parser.add_argument(
        "--large-steps", type=int, default=None, help="timed MD steps for the 240-atom cell (default max(3, steps//5))"
    )
    parser.add_argument("--warmup", type=int, default=1, help="untimed MD steps before timing (default 1)")
    parser.add_argument(
        "--structures", nargs="+", default=list(STRUCTURES), choices=list(STRUCTURES), help="structures to run"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    large_steps = args.large_steps if args.large_steps is not None else max(3, args.steps // 5)

    results = []
    t_start = time.perf_counter()
    for structure in args.structures:
        steps = large_steps if structure == "Al2O3_240" else args.steps
        for ensemble in ENSEMBLES:
            for kind in KINDS:
                r = _in_fresh_process(structure, ensemble, kind, steps, args.warmup)
                results.append(r)
                print(
                    f"  {structure:10s} {ensemble:14s} {kind:5s} {r['atom_steps_per_s']:9.1f} atom-steps/s "
                    f"{r['evals_per_step']:.2f} evals/step  peak dRSS {r['peak_rss_delta_mib']:8.1f} MiB",
                    file=sys.stderr,
                    flush=True,
                )

    by_key = {(r["structure"], r["ensemble"], r["kind"]): r for r in results}
    header = (
        f"{'structure':10s} {'N':>4s} {'ensemble':14s} {'steps':>5s} | {'stock at*st/s':>13s} {'fast at*st/s':>12s} "
        f"{'speedup':>7s} | {'stock ev/st':>11s} {'fast ev/st':>10s} | {'stock MiB':>9s} {'fast MiB':>8s} {'mem ratio':>9s}"
    )
    print(header)
    print("-" * len(header))
    checks = []
    for structure in args.structures:
        for ensemble in ENSEMBLES:
            s, f = by_key[(structure, ensemble, "stock")], by_key[(structure, ensemble, "fast")]
            speedup = f["atom_steps_per_s"] / s["atom_steps_per_s"]
            mem_ratio = f["peak_rss_delta_mib"] / s["peak_rss_delta_mib"] if s["peak_rss_delta_mib"] > 0 else float("nan")
            print(
                f"{structure:10s} {s['n_atoms']:4d} {ensemble:14s} {s['steps']:5d} | {s['atom_steps_per_s']:13.1f} "
                f"{f['atom_steps_per_s']:12.1f} {speedup:6.2f}x | {s['evals_per_step']:11.2f} {f['evals_per_step']:10.2f} | "
                f"{s['peak_rss_delta_mib']:9.1f} {f['peak_rss_delta_mib']:8.1f} {mem_ratio:8.2f}x"
            )
            if s["n_atoms"] == 64:
                target = 2.5 if ensemble.startswith("npt") else 1.5
                checks.append((f"{structure} {ensemble} throughput >= {target}x", speedup >= target, f"{speedup:.2f}x"))
            if s["n_atoms"] >= 150:
                checks.append((f"{structure} {ensemble} peak memory <= 0.5x", mem_ratio <= 0.5, f"{mem_ratio:.2f}x"))
    print()
    for name, ok, value in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {name}: {value}")
    exact = all(r["peak_exact"] for r in results)
    print(
        f"\npeak memory: {'VmHWM reset per case (exact)' if exact else 'ru_maxrss (lower bound)'}; "
        f"torch threads 1; total wall {time.perf_counter() - t_start:.0f} s"
    )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"results": results, "checks": checks}, indent=2))
    return 0 if all(ok for _, ok, _ in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
