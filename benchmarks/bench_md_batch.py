"""Batched MD throughput: atom-steps per second against K runs per job.

Usage::

    python benchmarks/bench_md_batch.py [--device cpu|cuda] [--ks 1 4 16 64] [--systems Si64 MgO216]
                                        [--steps N ...] [--parallel P] [--json PATH]

For each system and each K, K NVT-Langevin runs at 300 K (replicas: seeds 0 .. K-1, dt 1 fs,
friction 0.01/fs, no checkpoints) are made three ways, timed in the same invocation:

* batched -- one process (this one, model loaded beforehand), :func:`mdxrd.batch.run_md_batch`:
  each step one CHGNet forward and backward pass for all K runs
  (:meth:`mdxrd.calculator.FastCHGNetCalculator.calculate_batch`; on the CPU one structure per
  pass, which is as fast per atom as any larger batch on one thread; on a GPU the whole batch);
* per process -- one run per job: K ``python -m mdxrd md`` processes (a shard of one run each),
  one at a time (``--parallel P``: P at a time), one torch thread each, so that both paths have one
  core (and one GPU); the wall time includes process start, imports and model load;
* stock -- chgnet's ``CHGNetCalculator`` with the same driver (:func:`mdxrd.md.run_md`), one run
  after the other in this process, after a warm-up run as the batched path has; its throughput does
  not depend on K, so min(K, 2) runs are timed.

Throughput = K x N_atoms x steps / wall time (the wall time includes each run's start: velocities,
the step-0 evaluation). Systems: Si, diamond, 2x2x2 conventional cell, 64 atoms (a = 5.4612 A,
CHGNet's 0 K lattice constant); MgO, rock salt, 3x3x3 conventional cell, 216 atoms
(a = 4.2112 A, experiment at room temperature). For the batched runs the script also reports
where a step's time goes -- building the crystal graphs (CPU, :mod:`mdxrd.crystal_graph`), the
network's forward and backward pass (the device), the rest (integrators, thermo, checks: Python on
the CPU) -- and, on cuda, the peak GPU memory per run (``torch.cuda.max_memory_allocated`` / K).
Targets: on a GPU >= 10x atom-steps/s at K = 64 over K = 1; on the CPU no loss against one run
per process at any K once the process start is counted.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow"))

SYSTEMS = {"Si64": ("Si", "diamond", 5.4612, 2), "MgO216": ("MgO", "rocksalt", 4.2112, 3)}
DEFAULT_STEPS = {"Si64": 10, "MgO216": 3}


def build(name: str):
    """ASE Atoms of a benchmark system."""
    from ase.build import bulk

    formula, lattice, a, repeat = SYSTEMS[name]
    return bulk(formula, lattice, a=a, cubic=True).repeat(repeat)


def params(k: int, steps: int, device: str) -> list:
    from mdxrd.md import MDParams

    return [MDParams(ensemble="nvt_langevin", temperature_K=300.0, n_steps=steps, n_equil=0, n_interval=steps,
                     seed=seed, device=device, checkpoint_interval=0, progress_interval=10**6) for seed in range(k)]


class StepProfile:
    """Time spent building graphs and in the network, accumulated over calls (patched in)."""

    def __init__(self) -> None:
        import mdxrd.calculator as calculator

        self.module = calculator
        self.graph_s = self.network_s = 0.0
        self._graph, self._network = calculator.crystal_graph, calculator.energy_forces_stress

    def __enter__(self) -> "StepProfile":
        def graph(*args, **kwargs):
            t = time.perf_counter()
            try:
                return self._graph(*args, **kwargs)
            finally:
                self.graph_s += time.perf_counter() - t

        def network(*args, **kwargs):
            t = time.perf_counter()
            try:
                return self._network(*args, **kwargs)  # ends with .cpu() copies: synchronised
            finally:
                self.network_s += time.perf_counter() - t

        self.module.crystal_graph, self.module.energy_forces_stress = graph, network
        return self

    def __exit__(self, *exc) -> None:
        self.module.crystal_graph, self.module.energy_forces_stress = self._graph, self._network


def batched(name: str, k: int, steps: int, calc, device: str, work: Path) -> dict:
    import torch

    from mdxrd.batch import run_md_batch

    atoms = build(name)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    with StepProfile() as prof:
        t0 = time.perf_counter()
        outcomes = run_md_batch([(atoms, p, work / f"b{k}_{i}") for i, p in enumerate(params(k, steps, device))],
                                calc=calc)
        wall = time.perf_counter() - t0
    failed = [o for o in outcomes if isinstance(o, BaseException)]
    if failed:
        raise RuntimeError(f"batched run failed: {failed[0]}")
    evaluations = steps + 1
    out = {"wall_s": wall, "atom_steps_per_s": k * len(atoms) * steps / wall,
           "graph_ms_per_step": prof.graph_s / evaluations * 1e3,
           "network_ms_per_step": prof.network_s / evaluations * 1e3,
           "rest_ms_per_step": (wall - prof.graph_s - prof.network_s) / evaluations * 1e3}
    if device.startswith("cuda"):
        out["gpu_mem_mib_per_run"] = torch.cuda.max_memory_allocated() / 2**20 / k
    return out


def per_process(name: str, k: int, steps: int, device: str, parallel: int, work: Path) -> dict:
    from ase.io import write

    atoms = build(name)
    (work / "structure" / name).mkdir(parents=True, exist_ok=True)
    write(work / "structure" / name / "supercell.traj", atoms)
    commands = []
    for i, p in enumerate(params(k, steps, device)):
        path = work / f"p{k}_{i}.json"
        fields = {f: getattr(p, f) for f in p.__dataclass_fields__}
        run = {"unit": name, "ensemble": p.ensemble.value, "temperature_K": p.temperature_K, "replica": i,
               "params": {**fields, "ensemble": p.ensemble.value}}
        path.write_text(json.dumps({"batches": [[run]]}))
        commands.append([sys.executable, "-m", "mdxrd", "md", "--params", str(path),
                         "--supercell", str(work / "structure" / "{unit}" / "supercell.traj"),
                         "--run-dir", str(work / f"s{k}" / "{unit}" / "r{replica}"),
                         "--manifest", str(work / f"s{k}_{i}.json")])
    env = {**os.environ, "PYTHONPATH": str(REPO / "workflow")}

    def one(cmd):
        subprocess.run(cmd, check=True, env=env, capture_output=True)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(parallel) as pool:
        list(pool.map(one, commands))
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "atom_steps_per_s": k * len(atoms) * steps / wall}


def stock(name: str, k: int, steps: int, calc, work: Path) -> dict:
    from mdxrd.md import run_md

    atoms = build(name)
    runs = params(min(k, 2), steps, calc.device)
    run_md(atoms, params(1, 2, calc.device)[0], work / f"stock{k}_warm", calc=calc)  # warm-up, as the batched path
    t0 = time.perf_counter()
    for i, p in enumerate(runs):
        run_md(atoms, p, work / f"stock{k}_{i}", calc=calc)
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "atom_steps_per_s": len(runs) * len(atoms) * steps / wall}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=list(SYSTEMS))
    parser.add_argument("--steps", type=int, nargs="+", help="MD steps per system (default: Si64 10, MgO216 3)")
    parser.add_argument("--parallel", type=int, default=1, help="processes at a time, per-process path")
    parser.add_argument("--per-process-ks", type=int, nargs="+",
                        help="the K values of the per-process path (default: --ks; it grows as K x (start + run))")
    parser.add_argument("--skip", nargs="*", default=[], choices=["per_process", "stock"])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    import warnings

    import torch

    from mdxrd.calculator import make_calculator

    warnings.filterwarnings("ignore", message="Only FixAtoms", category=UserWarning)  # stock: FixCom
    warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad", category=UserWarning)
    torch.set_num_threads(1)
    parallel = args.parallel
    with contextlib.redirect_stdout(io.StringIO()):
        fast = make_calculator("fast", device=args.device)
        slow = make_calculator("stock", device=args.device)
    steps = dict(zip(args.systems, args.steps)) if args.steps else DEFAULT_STEPS
    rows = []
    print(f"device {args.device}; per-process path {parallel} at a time; torch {torch.__version__}")
    print(f"{'system':8} {'K':>3} {'batched':>10} {'per-proc':>10} {'stock':>10} {'b/K=1':>6} {'b/proc':>6} "
          f"{'b/stock':>7}  graph / network / rest ms per step{'  GPU MiB/run' if args.device != 'cpu' else ''}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name in args.systems:
            n = steps[name]
            batched(name, 2, 2, fast, args.device, work)  # warm-up: kernels, allocator
            base = None
            for k in args.ks:
                row = {"system": name, "n_atoms": len(build(name)), "K": k, "steps": n, "device": args.device,
                       "batched": batched(name, k, n, fast, args.device, work)}
                if "per_process" not in args.skip and k in (args.per_process_ks or args.ks):
                    row["per_process"] = per_process(name, k, n, args.device, parallel, work)
                if "stock" not in args.skip:
                    row["stock"] = stock(name, k, n, slow, work)
                b = row["batched"]["atom_steps_per_s"]
                base = base or b
                p = row.get("per_process", {}).get("atom_steps_per_s", float("nan"))
                s = row.get("stock", {}).get("atom_steps_per_s", float("nan"))
                split = (f"{row['batched']['graph_ms_per_step']:.0f} / {row['batched']['network_ms_per_step']:.0f}"
                         f" / {row['batched']['rest_ms_per_step']:.0f}")
                mem = f"  {row['batched']['gpu_mem_mib_per_run']:.0f}" if "gpu_mem_mib_per_run" in row["batched"] else ""
                print(f"{name:8} {k:>3} {b:>10.0f} {p:>10.0f} {s:>10.0f} {b / base:>6.2f} {b / p:>6.2f} {b / s:>7.2f}"
                      f"  {split}{mem}", flush=True)
                rows.append(row)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
