"""Throughput of the batched MD engine (mdxrd.engine) with CHGNet on a device, K systems per batch.

Usage::

    python benchmarks/bench_engine_device.py [--device cuda] [--steps 20] [--sizes 1,16,64,256]
                                             [--time-limit 240] [--json out.json]

What is measured: K Si 2x2x2 systems (64 atoms each, diamond, a = 5.43 Angstrom, rattled by 0.01
Angstrom, Maxwell-Boltzmann velocities at 300 K, centre of mass at rest) in one
:class:`mdxrd.engine.BatchState` on ``--device``, advanced by :func:`mdxrd.engine.runner.run` one
Langevin BAOAB step at a time (ensemble "nvt_langevin" of :func:`mdxrd.engine.integrators.md_step`; 2 fs, friction 0.01/fs, T0 = 300 K; the runner's
per-step checks included) with :class:`mdxrd.engine.models.CHGNetModel` on the pretrained CHGNet
(:func:`mdxrd.calculator.load_model`). After one force evaluation and ``--warmup`` untimed steps,
every step is timed alone (the device synchronized before each clock reading), and per size it prints

* atom.steps/s = K * 64 / median step time;
* the share of the summed step times spent in the network (:func:`mdxrd.calculator.energy_forces_stress`:
  batching of the graphs with CHGNet's ``BatchedGraph.from_graphs``, forward, one backward pass, copy of
  the results to the host), in the rest of the model call ("graph": positions to the host, pymatgen
  structures, :func:`mdxrd.crystal_graph.crystal_graph`, graphs to the device, results back into
  tensors) and outside the model ("integrator": the BAOAB arithmetic and the runner's per-step check);
* the peak device memory (``torch.cuda.max_memory_allocated``) above what was allocated before the
  batch was built (the model), per system, next to the autobatcher's estimate
  (:func:`mdxrd.calculator.graph_memory_bytes`); "n/a" on the CPU.

The sizes are ``--sizes`` plus K_auto, the autobatcher's choice: as many Si64 systems as
``FastCHGNetCalculator._batch_length`` puts into one pass, i.e. whose ``graph_memory_bytes`` sum fits
into ``GPU_MEMORY_FRACTION`` of ``torch.cuda.mem_get_info()[0]`` right after the model load, capped
at ``--auto-cap`` (not measured on the CPU). Then the two ratios of issue 24's goals: atom.steps/s at
K = 64 over K = 1 (goal >= 10x) and the network share at K_auto (goal >= 70 %).

On a GPU it first counts the synchronizing CUDA operations of one step at K = 2 and 8 by the source
line that calls them (``torch.cuda.set_sync_debug_mode("warn")``, a few seconds; ``--no-sync-census``
skips it): a count that grows with K is a per-system sync.

Time budget: the clock starts when the script starts (imports, model load and first-call CUDA
warm-up count). The sizes the goals need run first (K <= 64, then K_auto), the other sizes after
them. A size is skipped once ``--time-limit`` seconds have passed or when its duration,
extrapolated linearly in K from the last size measured, would not fit; it runs with fewer timed
steps (at least 3) if that fits; a size's timed loop stops at the limit. So the whole run stays near
``--time-limit`` (default 240 s, for a 5-minute slot). ``--json PATH`` writes the table as JSON.

GPU figures are only valid from a run on a GPU: a CPU run (``--device cpu``) checks that the script
works and shows where host time goes, nothing about device throughput or memory.
"""

from __future__ import annotations

import time

T_START = time.perf_counter()  # the budget includes imports, the model load and CUDA's first-call warm-up

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import warnings
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow"))

import numpy as np
import torch
from ase.build import bulk
from ase.md.velocitydistribution import Stationary, thermalize_momenta
from mdxrd import calculator
from mdxrd.engine import BatchState, runner
from mdxrd.engine.integrators import evaluate
from mdxrd.engine.models import CHGNetModel

STATE_KW = {"ensemble": "nvt_langevin"}
ENGINE_API = "runner.run(state, model, 1) (md_step, NVT-Langevin BAOAB)"


def one_step(state, model):
    return runner.run(state, model, 1)


N_ATOMS = 64
MIB = 2.0 ** 20


def si64(seed: int):
    """Si 2x2x2 diamond (64 atoms), rattled, velocities at 300 K, no centre-of-mass motion."""
    a = bulk("Si", "diamond", a=5.43, cubic=True).repeat(2)
    a.rattle(stdev=0.01, seed=seed)
    thermalize_momenta(a, 300.0, rng=np.random.default_rng(seed))
    Stationary(a)
    return a


class Clock:
    """Wall clock that first waits for the device's queued work (CUDA), so a reading covers it."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")
        self.device = device

    def __call__(self) -> float:
        if self.cuda:
            torch.cuda.synchronize(self.device)
        return time.perf_counter()


class TimedCHGNetModel(CHGNetModel):
    """CHGNetModel that adds up its own call time (``model_s``) and, through :func:`timed_network`,
    the time of :func:`mdxrd.calculator.energy_forces_stress` within it (``network_s``)."""

    def __init__(self, model, clock: Clock) -> None:
        super().__init__(model)
        self.clock = clock
        self.model_s = self.network_s = 0.0

    def energy_forces_stress(self, state):
        t = self.clock()
        out = super().energy_forces_stress(state)
        self.model_s += self.clock() - t
        return out


@contextlib.contextmanager
def timed_network(timed: list[TimedCHGNetModel]):
    """Replace ``mdxrd.calculator.energy_forces_stress`` (CHGNetModel imports it at each call) by a
    wrapper that adds its time to the current ``timed[0].network_s``; restored on exit."""
    original = calculator.energy_forces_stress

    def wrapper(model, graphs, **kw):
        owner = timed[0]
        t = owner.clock()
        out = original(model, graphs, **kw)
        owner.network_s += owner.clock() - t
        return out

    calculator.energy_forces_stress = wrapper
    try:
        yield
    finally:
        calculator.energy_forces_stress = original


def k_auto(model, device: str, cap: int) -> tuple[int | None, int, float | None]:
    """The autobatcher's choice for Si64: (K_auto or None on the CPU, graph_memory_bytes of one Si64,
    free device memory in bytes or None). Uses FastCHGNetCalculator._batch_length itself."""
    from mdxrd.calculator import FastCHGNetCalculator, _structure
    from mdxrd.crystal_graph import crystal_graph

    graph = crystal_graph(model.graph_converter, _structure(si64(0))).to(device)
    per_graph = calculator.graph_memory_bytes(graph)
    if not device.startswith("cuda"):
        return None, per_graph, None
    calc = FastCHGNetCalculator(model=model, use_device=device, max_batch=None)
    free = float(torch.cuda.mem_get_info(torch.device(device))[0])
    return calc._batch_length([graph] * cap), per_graph, free


def measure(k: int, steps: int, warmup: int, model, clock: Clock, device: str, timed: list,
            deadline: float) -> dict:
    """One batch of K Si64 systems: warm-up, then ``steps`` timed steps (fewer if ``deadline`` passes)."""
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    t_setup = clock()
    state = BatchState.from_atoms([si64(s) for s in range(k)], temperature_K=300.0, timestep_fs=2.0,
                                  friction_per_fs=0.01, seeds=range(k), device=device, **STATE_KW)
    engine_model = TimedCHGNetModel(model, clock)
    timed[0] = engine_model
    evaluate(state, engine_model)
    for _ in range(warmup):
        state, removed = one_step(state, engine_model)
    setup_s = clock() - t_setup
    step_s, model_s, network_s = [], [], []
    lost = 0
    for n in range(steps):
        if n > 0 and time.perf_counter() > deadline:
            break
        engine_model.model_s = engine_model.network_s = 0.0
        t = clock()
        state, removed = one_step(state, engine_model)
        step_s.append(clock() - t)
        model_s.append(engine_model.model_s)
        network_s.append(engine_model.network_s)
        lost += len(removed)
    total = sum(step_s)
    row = {
        "K": k, "atoms": k * N_ATOMS, "steps_timed": len(step_s), "setup_s": setup_s,
        "median_step_s": statistics.median(step_s),
        "atom_steps_per_s": k * N_ATOMS / statistics.median(step_s),
        "network_share": sum(network_s) / total,
        "graph_share": (sum(model_s) - sum(network_s)) / total,
        "integrator_share": (total - sum(model_s)) / total,
        "systems_removed": lost,
        "peak_mib": None, "peak_mib_per_system": None,
    }
    if cuda:
        peak = torch.cuda.max_memory_allocated(device)
        row["peak_mib"] = peak / MIB
        row["peak_mib_per_system"] = (peak - base) / k / MIB
    del state, engine_model
    return row


def sync_census(sizes: tuple[int, ...], model, device: str) -> dict:
    """Synchronizing CUDA operations of one step (after one warm-up step), by source line, for a few
    small K: ``torch.cuda.set_sync_debug_mode("warn")`` makes PyTorch warn at each device-to-host copy,
    blocking host-to-device copy, ``.item()``, ``nonzero``, ... ; the warnings are recorded and counted
    by the file and line that called the operation. A count that grows with K is a per-system sync."""
    counts: dict[str, dict[int, int]] = {}
    for k in sizes:
        state = BatchState.from_atoms([si64(s) for s in range(k)], temperature_K=300.0, timestep_fs=2.0,
                                      friction_per_fs=0.01, seeds=range(k), device=device, **STATE_KW)
        engine_model = CHGNetModel(model)
        evaluate(state, engine_model)
        state, _ = one_step(state, engine_model)
        torch.cuda.synchronize(device)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                state, _ = one_step(state, engine_model)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        for w in caught:
            if "synchroniz" not in str(w.message):
                continue
            name = str(w.filename)
            for root in (str(REPO / "workflow") + os.sep, sys.prefix + os.sep):
                name = name.removeprefix(root)
            where = f"{name}:{w.lineno}"
            counts.setdefault(where, {}).setdefault(k, 0)
            counts[where][k] += 1
        del state, engine_model
    return counts


def fmt(x, spec: str) -> str:
    return "n/a" if x is None else format(x, spec)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per size (after the warm-up)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per size after the first evaluation")
    ap.add_argument("--sizes", default="1,16,64,256", help="comma-separated K (systems per batch)")
    ap.add_argument("--time-limit", type=float, default=240.0, help="seconds for the whole script")
    ap.add_argument("--auto-cap", type=int, default=1024, help="largest K_auto")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    ap.add_argument("--no-sync-census", action="store_true",
                    help="skip counting the synchronizing CUDA operations of one step (K = 2 and 8)")
    args = ap.parse_args()
    if args.steps < 1 or args.warmup < 0:
        ap.error("--steps must be >= 1 and --warmup >= 0")
    sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()})
    deadline = T_START + args.time_limit

    device = calculator.resolve_device(args.device)
    cuda = device.startswith("cuda")
    clock = Clock(device)
    import chgnet

    t = clock()
    model = calculator.load_model(device)
    clock()
    load_s = time.perf_counter() - t
    auto, graph_bytes, free = k_auto(model, device, args.auto_cap)
    meta = {
        "device": device, "device_name": torch.cuda.get_device_name(torch.device(device)) if cuda else platform.processor()
        or platform.machine(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
        "chgnet": getattr(chgnet, "__version__", None), "chgnet_checkpoint": model.version,
        "engine_step": ENGINE_API, "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
        "steps": args.steps, "warmup": args.warmup, "time_limit_s": args.time_limit, "model_load_s": load_s,
        "graph_memory_mib_per_si64": graph_bytes / MIB, "gpu_memory_fraction": calculator.GPU_MEMORY_FRACTION,
        "free_mib_after_load": None if free is None else free / MIB, "K_auto": auto, "auto_cap": args.auto_cap,
    }
    print(f"device {device} ({meta['device_name']}), torch {torch.__version__}, torch.version.cuda "
          f"{torch.version.cuda}, chgnet {meta['chgnet']} (checkpoint {model.version}), "
          f"{meta['torch_threads']} torch thread(s)")
    print(f"model load {load_s:.1f} s; Si64 = {N_ATOMS} atoms; Langevin BAOAB 2 fs; {args.warmup} warm-up "
          f"step(s), {args.steps} timed; per step: {ENGINE_API}; graph_memory_bytes of one Si64: {graph_bytes / MIB:.1f} MiB")
    if auto is None:
        print("K_auto (autobatcher's choice): skipped, not on a GPU (the autobatcher sizes passes from free GPU memory)")
    else:
        print(f"K_auto (autobatcher's choice): {auto} = systems whose graph_memory_bytes fit "
              f"{calculator.GPU_MEMORY_FRACTION:g} x {free / MIB:.0f} MiB free (cap {args.auto_cap})")
    if not cuda:
        print("NOTE: not a GPU run; these figures say nothing about GPU throughput or memory")

    census = None
    if cuda and not args.no_sync_census:
        t = time.perf_counter()
        census_k = (2, 8)
        census = sync_census(census_k, model, device)
        print(f"synchronizing CUDA operations in one step (torch.cuda.set_sync_debug_mode), by caller, "
              f"K = {census_k[0]} / {census_k[1]} ({time.perf_counter() - t:.1f} s):")
        total = [sum(c.get(k, 0) for c in census.values()) for k in census_k]
        print(f"  total: {total[0]} / {total[1]}")
        for where, c in sorted(census.items(), key=lambda item: -item[1].get(census_k[-1], 0)):
            print(f"  {c.get(census_k[0], 0):5d} / {c.get(census_k[1], 0):5d}  {where}")
    elif not cuda:
        print("sync census: skipped, not on a GPU")

    # the sizes the goals need first (K <= 64, then K_auto), the others after them
    plan = [k for k in sizes if k <= 64 or k == auto]
    plan += [auto] if auto and auto not in plan else []
    plan += [k for k in sizes if k not in plan]
    rows, skipped = [], []
    last = None  # (K, median step s, setup s) of the last size measured
    timed: list = [None]
    with timed_network(timed):
        for k in plan:
            now = time.perf_counter()
            remaining = deadline - now
            steps = args.steps
            if remaining <= 0:
                skipped.append({"K": k, "why": "time limit reached"})
                continue
            if last is not None:
                scale = k / last[0]
                step_est, setup_est = last[1] * scale, last[2] * scale
                fit = int((remaining - setup_est) / step_est) if step_est > 0 else steps
                if fit < min(3, steps):
                    skipped.append({"K": k, "why": f"predicted {setup_est + steps * step_est:.0f} s, "
                                                   f"{remaining:.0f} s left"})
                    continue
                steps = min(steps, fit)
            oom = None
            try:
                row = measure(k, steps, args.warmup, model, clock, device, timed, deadline)
            except torch.cuda.OutOfMemoryError as exc:
                oom = str(exc).splitlines()[0]
            if oom is not None:  # outside the handler, so the failed batch's tensors can be freed
                timed[0] = None
                torch.cuda.empty_cache()
                skipped.append({"K": k, "why": f"out of memory: {oom}"})
                continue
            row["is_K_auto"] = k == auto
            rows.append(row)
            last = (k, row["median_step_s"], row["setup_s"])
            print(f"  K={k}: {row['steps_timed']} steps, {row['median_step_s'] * 1e3:.1f} ms/step "
                  f"(setup + warm-up {row['setup_s']:.1f} s), elapsed {time.perf_counter() - T_START:.0f} s",
                  flush=True)

    print()
    print("| K | atoms | steps | ms/step (median) | atom.steps/s | network % | graph % | integrator % "
          "| peak MiB | peak MiB/system |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: r["K"]):
        label = f"{r['K']} (auto)" if r["is_K_auto"] else str(r["K"])
        print(f"| {label} | {r['atoms']} | {r['steps_timed']} | {r['median_step_s'] * 1e3:.1f} "
              f"| {r['atom_steps_per_s']:.0f} | {100 * r['network_share']:.1f} | {100 * r['graph_share']:.1f} "
              f"| {100 * r['integrator_share']:.1f} | {fmt(r['peak_mib'], '.0f')} "
              f"| {fmt(r['peak_mib_per_system'], '.1f')} |")
        if r["systems_removed"]:
            print(f"  (K={r['K']}: {r['systems_removed']} system(s) left the batch during the timed steps)")
    for s in skipped:
        print(f"skipped K={s['K']}: {s['why']}")

    by_k = {r["K"]: r for r in rows}
    speedup = (by_k[64]["atom_steps_per_s"] / by_k[1]["atom_steps_per_s"]) if 1 in by_k and 64 in by_k else None
    auto_share = by_k[auto]["network_share"] if auto in by_k else None
    print()
    print(f"atom.steps/s at K=64 over K=1: {'n/a' if speedup is None else f'{speedup:.1f}x'} (goal >= 10x)"
          + ("" if speedup is not None else " -- K=1 or K=64 not measured"))
    if auto is None:
        print("network share at K_auto: n/a (no K_auto off a GPU) (goal >= 70 %)")
    else:
        print(f"network share at K_auto={auto}: {fmt(None if auto_share is None else 100 * auto_share, '.1f')} % "
              f"(goal >= 70 %)" + ("" if auto_share is not None else " -- K_auto not measured"))
    if cuda and rows:
        r = max(rows, key=lambda r: r["K"])
        print(f"measured peak per system at K={r['K']}: {r['peak_mib_per_system']:.1f} MiB vs autobatcher "
              f"estimate {graph_bytes / MIB:.1f} MiB (graph_memory_bytes)")
    total_s = time.perf_counter() - T_START
    print(f"total wall time {total_s:.0f} s (limit {args.time_limit:g} s)")
    if not cuda:
        print("NOTE: CPU run -- GPU figures are only valid from a GPU run")
    if args.json:
        out = {"meta": {**meta, "total_s": total_s}, "rows": rows, "skipped": skipped, "sync_census": census,
               "ratios": {"speedup_K64_over_K1": speedup, "network_share_at_K_auto": auto_share}}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
