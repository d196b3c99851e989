"""TorchSim 0.3.0 against mdxrd's own batched engine (issue 24): integrator host time, batched neighbour
lists, and what TorchSim's integrators offer. Measured 2026-12-04 (torch 2.13.0+cpu, Python 3.11).

Usage::

    # TorchSim outside the project venv, without pulling another torch
    .venv/bin/pip install --target /tmp/ts torch-sim-atomistic==0.3.0 vesin==0.6.2 vesin-torch==0.6.2 --no-deps
    OMP_NUM_THREADS=1 PYTHONPATH=/tmp/ts:workflow .venv/bin/python benchmarks/bench_torchsim.py [--steps 50]

``import torch_sim`` needs ``vesin`` and ``vesin_torch`` (``torch_sim/neighbors.py`` imports both at module
level) and PyTables (``torch_sim/trajectory.py``: ``import tables``, a compiled package with compiled
dependencies, numexpr and blosc2). Nothing here writes a trajectory, so when ``tables`` is missing a stub
module stands in for it (the script says so).

What is measured, on one CPU thread, median of 3 repeats, K = 1, 64, 256 Si 2x2x2 (64-atom) systems:

a. Host time per system-step of an NVT-Langevin (BAOAB) step with a zero-force model: TorchSim's
   ``torch_sim.integrators.nvt_langevin`` update (one model call per step; a ``ModelInterface`` returning
   zeros) against :func:`mdxrd.engine.integrators.md_step` with :class:`mdxrd.engine.models.ZeroModel` on
   ``BatchState.from_atoms(..., ensemble="nvt_langevin", seeds=range(K))`` (as ``bench_engine.py``'s
   ``engine_ms``). Same time step (2 fs), temperature (300 K), friction (0.01/fs), float64.
b. Neighbour-list time per system at cutoff 6 Angstrom in batches of K = 64 and 256 (positions rattled by
   0.05 Angstrom, a different rattle per system): TorchSim's batched ``torch_nl_linked_cell`` and
   ``torch_nl_n2`` and its per-system ``vesin_nl_ts`` (what its own models call) against pymatgen's
   ``find_points_in_spheres`` per system as mdxrd calls it (:func:`mdxrd.crystal_graph._neighbor_lists`,
   the search behind :func:`mdxrd.crystal_graph.batch_graphs`); and whether each TorchSim list equals
   pymatgen's as a set of (i, j, image) per system.
c. Features of TorchSim 0.3.0's integrators, from its source and by running it: Berendsen NVT / NPT, a
   fixed centre of mass, per-system random generators, per-system temperatures (and time steps).
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
import types
from importlib.metadata import version
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow"))

import numpy as np
import torch
from ase import units
from ase.build import bulk


def _import_torch_sim():
    """``import torch_sim``, with a stub ``tables`` module when PyTables is not installed.

    Returns
    -------
    module, bool
        torch_sim and whether ``tables`` was stubbed.
    """
    stubbed = False
    try:
        import tables  # noqa: F401
    except ImportError:
        stub = types.ModuleType("tables")

        def attr(name):
            if name.startswith("__"):
                raise AttributeError(name)
            return lambda *args, **kwargs: None  # tables.Float32Atom() etc. at module level

        stub.__getattr__ = attr
        sys.modules["tables"] = stub
        stubbed = True
    import torch_sim

    return torch_sim, stubbed


ts, TABLES_STUBBED = _import_torch_sim()
from mdxrd.crystal_graph import _neighbor_lists
from mdxrd.engine import BatchState
from mdxrd.engine.integrators import evaluate, md_step
from mdxrd.engine.models import ZeroModel
from torch_sim.integrators import nvt_langevin
from torch_sim.models.interface import ModelInterface
from torch_sim.neighbors import torch_nl_linked_cell, torch_nl_n2, vesin_nl_ts

DT = 2.0 * units.fs  # TorchSim's metal units: eV, Angstrom, amu, time Angstrom sqrt(amu/eV) = ASE's units
KT = 300.0 * units.kB
GAMMA = 0.01 / units.fs
CUTOFF = 6.0


class TSZeroModel(ModelInterface):
    """Zero energy, forces and stress, against TorchSim's ModelInterface."""

    def __init__(self, dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        self._device, self._dtype = torch.device("cpu"), dtype
        self._compute_stress = self._compute_forces = True

    def forward(self, state, **kwargs) -> dict[str, torch.Tensor]:
        z = state.positions.new_zeros
        return {"energy": z(state.n_systems), "forces": z(state.positions.shape),
                "stress": z((state.n_systems, 3, 3))}


from bench_engine import median, si64  # noqa: E402  (the same systems and timing as bench_engine.py)


# --- a. integrator step ------------------------------------------------------------------------------

def mdxrd_state(k: int) -> BatchState:
    return BatchState.from_atoms([si64(s) for s in range(k)], temperature_K=300.0, timestep_fs=2.0,
                                 friction_per_fs=0.01, seeds=range(k), ensemble="nvt_langevin")


def mdxrd_ms(k: int, steps: int) -> float:
    """Host ms per system-step of md_step, NVT-Langevin, zero forces (bench_engine.py's engine_ms)."""
    state, model = mdxrd_state(k), ZeroModel()
    evaluate(state, model)
    md_step(state, model)  # warm-up

    def go():
        for _ in range(steps):
            md_step(state, model)
    return median(go) / (steps * k) * 1e3


def ts_langevin(k: int, kt=KT, dt=DT, gamma=GAMMA, seed: int = 0):
    """TorchSim NVT-Langevin (init state, update function) for K Si64 systems, mdxrd's start momenta."""
    model = TSZeroModel()
    sim = ts.io.atoms_to_state([si64(s) for s in range(k)], device=torch.device("cpu"), dtype=torch.float64)
    as_t = lambda x: torch.as_tensor(x, dtype=torch.float64)
    init_fn, update_fn = nvt_langevin(model, dt=as_t(dt), kT=as_t(kt), gamma=as_t(gamma), seed=seed)
    state = init_fn(sim)
    state.momenta = torch.as_tensor(np.concatenate([si64(s).get_momenta() for s in range(k)]))  # as mdxrd's
    return state, update_fn


def torchsim_ms(k: int, steps: int) -> float:
    """Host ms per system-step of TorchSim's nvt_langevin update, zero forces."""
    state, update = ts_langevin(k)
    state = update(state)  # warm-up

    def go():
        nonlocal state
        for _ in range(steps):
            state = update(state)
    return median(go) / (steps * k) * 1e3


# --- b. neighbour lists ------------------------------------------------------------------------------

def rattled_batch(k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, 3) wrapped positions, (K, 3, 3) cells (rows), (K + 1,) atom starts of K rattled Si64."""
    pos, cells = [], []
    for s in range(k):
        a = bulk("Si", "diamond", a=5.4612, cubic=True).repeat(2)
        a.rattle(0.05, seed=1000 + s)
        a.wrap()
        pos.append(a.positions)
        cells.append(a.cell.array)
    return np.concatenate(pos), np.stack(cells), np.arange(k + 1) * 64


def pairs_pymatgen(pos, cells, start):
    """Per system: set of (i, j, image) with local indices, from mdxrd's pymatgen search."""
    _, _, center, neighbor, image, _, pair_start = _neighbor_lists(pos, cells, start, CUTOFF)
    image = image.astype(np.int64)
    out = []
    for k in range(len(cells)):
        sl = slice(pair_start[k], pair_start[k + 1])
        c, n = center[sl] - start[k], neighbor[sl] - start[k]
        out.append({(int(a), int(b), *map(int, im)) for a, b, im in zip(c, n, image[sl])})
    return out


def pairs_torch(mapping, system, shifts, start, k):
    """Per system: set of (i, j, image) from a batched TorchSim list (global indices, system per pair)."""
    mapping, system, shifts = mapping.numpy(), system.numpy(), shifts.round().to(torch.int64).numpy()
    out = []
    for s in range(k):
        sel = system == s
        i, j = mapping[0, sel] - start[s], mapping[1, sel] - start[s]
        out.append({(int(a), int(b), *map(int, im)) for a, b, im in zip(i, j, shifts[sel])})
    return out


def compare(name, ref, got):
    equal = sum(r == g for r, g in zip(ref, got))
    dcount = sum(len(g) for g in got) - sum(len(r) for r in ref)
    extra = sum(len(g - r) for r, g in zip(ref, got))
    missing = sum(len(r - g) for r, g in zip(ref, got))
    print(f"  {name}: {equal}/{len(ref)} systems equal as (i, j, image) sets; pairs {sum(len(g) for g in got)} "
          f"vs pymatgen {sum(len(r) for r in ref)} (difference {dcount:+d}; {extra} extra, {missing} missing)")


def nl_runs(k: int) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray]:
    """The neighbour searches of a batch of K rattled Si64, as closures; and its positions, cells, starts."""
    pos, cells, start = rattled_batch(k)
    tpos = torch.as_tensor(pos)
    tcell = torch.as_tensor(cells)  # row-vector convention, as these functions take it
    pbc = torch.ones((k, 3), dtype=torch.bool)
    sidx = torch.as_tensor(np.repeat(np.arange(k), 64))
    cutoff_t = torch.tensor(CUTOFF, dtype=torch.float64)

    def vesin_all():
        return [vesin_nl_ts(tpos[start[s]:start[s + 1]], tcell[s], True, cutoff_t) for s in range(k)]

    runs = {
        "pymatgen": lambda: _neighbor_lists(pos, cells, start, CUTOFF),
        "linked_cell": lambda: torch_nl_linked_cell(CUTOFF, tpos, tcell, pbc, sidx),
        "n2": lambda: torch_nl_n2(CUTOFF, tpos, tcell, pbc, sidx),
        "vesin": vesin_all,
    }
    return runs, pos, cells, start


def neighbour_lists(ks=(64, 256)) -> None:
    print(f"\nb. Neighbour list, cutoff {CUTOFF} Angstrom, rattled Si64 (0.05 Angstrom): ms per system")
    print("| K | pymatgen find_points_in_spheres per system (mdxrd) | TorchSim torch_nl_linked_cell (batched) "
          "| TorchSim torch_nl_n2 (batched) | TorchSim vesin_nl_ts per system |")
    print("|---|---|---|---|---|")
    checks = {}
    for k in ks:
        runs, pos, cells, start = nl_runs(k)
        ms = {}
        for name, fn in runs.items():
            fn()  # warm-up (TorchScript compilation)
            ms[name] = median(fn) / k * 1e3
        print(f"| {k} | {ms['pymatgen']:.3f} | {ms['linked_cell']:.3f} | {ms['n2']:.3f} | {ms['vesin']:.3f} |")
        if k == ks[0]:
            ref = pairs_pymatgen(pos, cells, start)
            checks["torch_nl_linked_cell"] = pairs_torch(*runs["linked_cell"](), start, k)
            checks["torch_nl_n2"] = pairs_torch(*runs["n2"](), start, k)
            ves = []
            for mapping, shifts in runs["vesin"]():
                sh = shifts.round().to(torch.int64).numpy()
                ves.append({(int(a), int(b), *map(int, im)) for a, b, im in zip(*mapping.numpy(), sh)})
            checks["vesin_nl_ts"] = ves
    print(f"Pair sets against pymatgen's, K = {ks[0]} (image: the neighbour at r_j + image @ cell):")
    for name, got in checks.items():
        compare(name, ref, got)


# --- c. features -------------------------------------------------------------------------------------

def features() -> None:
    root = Path(ts.__file__).parent
    src = {p.relative_to(root.parent).as_posix(): p.read_text() for p in root.rglob("*.py")}
    berendsen = [f for f, text in src.items() if "berendsen" in text.lower()]
    integrators = sorted(n for n in dir(ts.integrators)
                         if not n.startswith("_") and n[0].islower() and callable(getattr(ts.integrators, n)))
    print("\nc. TorchSim 0.3.0 integrators")
    print(f"  functions exported by torch_sim.integrators: {integrators}; also nvt_nose_hoover, npt_nose_hoover "
          "in torch_sim/integrators/{nvt,npt}.py")
    print(f"  files mentioning 'berendsen': {berendsen or 'none'}")
    lang = inspect.getsource(nvt_langevin)
    print(f"  torch_sim/integrators/nvt.py:nvt_langevin (ou_step) noise: 'randn_like(' in source "
          f"{'randn_like(' in lang}, 'generator' in source {'generator' in lang}; its seed reaches only "
          "torch_sim/integrators/md.py:calculate_momenta (initial momenta)")

    # the global generator: system 0's trajectory depends on its batch-mates; the seed does not fix the noise
    def ts_sys0(k, global_seed):
        torch.manual_seed(global_seed)
        state, update = ts_langevin(k, seed=0)
        for _ in range(10):
            state = update(state)
        return state.momenta[:64].clone(), state.momenta[:64].sum(0)

    def mdxrd_sys0(k):
        state, model = mdxrd_state(k), ZeroModel()
        evaluate(state, model)
        for _ in range(10):
            md_step(state, model)
        return state.momenta[:64].clone(), state.momenta[:64].sum(0)

    a1, p1 = ts_sys0(1, 0)
    a2, _ = ts_sys0(2, 0)
    a3, _ = ts_sys0(1, 1)
    b1, q1 = mdxrd_sys0(1)
    b2, _ = mdxrd_sys0(2)
    print("  system 0 after 10 Langevin steps from the same momenta, max |dp| (amu Angstrom/ASE time) between runs:")
    print(f"    TorchSim K=1 vs K=2 (same torch.manual_seed, same seed=0): {(a1 - a2).abs().max():.3e}")
    print(f"    TorchSim K=1, torch.manual_seed 0 vs 1 (same seed=0): {(a1 - a3).abs().max():.3e}")
    print(f"    mdxrd K=1 vs K=2 (seeds=range(K)): {(b1 - b2).abs().max():.3e}")
    print(f"  |total momentum| of system 0 after 10 steps from zero (amu Angstrom/ASE time): TorchSim "
          f"{p1.norm():.3e}, mdxrd {q1.norm():.3e}")

    # per-system parameters
    for label, kwargs in (("kT", {"kt": KT * torch.tensor([1.0, 2.0])}),
                          ("gamma", {"gamma": GAMMA * torch.tensor([1.0, 2.0])}),
                          ("dt", {"dt": DT * torch.tensor([1.0, 0.5])})):
        try:
            state, update = ts_langevin(2, **kwargs)
            update(state)
            print(f"  per-system {label} (shape (2,)) in nvt_langevin: runs")
        except Exception as err:  # noqa: BLE001
            print(f"  per-system {label} (shape (2,)) in nvt_langevin: {type(err).__name__}: {err}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=50)
    args = ap.parse_args()
    torch.set_num_threads(1)
    tables = "stubbed (PyTables not installed)" if TABLES_STUBBED else "installed"
    print(f"torch {torch.__version__}, torch_sim {version('torch-sim-atomistic')} from {Path(ts.__file__).parent}, "
          f"tables {tables}, one thread")
    print(f"\na. NVT-Langevin step, zero forces, Si64 systems, {args.steps} steps: host ms per system-step")
    print("| K | mdxrd md_step | TorchSim nvt_langevin update | TorchSim / mdxrd |")
    print("|---|---|---|---|")
    for k in (1, 64, 256):
        m, t = mdxrd_ms(k, args.steps), torchsim_ms(k, args.steps)
        print(f"| {k} | {m:.4f} | {t:.4f} | {t / m:.2f} |")
    neighbour_lists()
    features()


if __name__ == "__main__":
    main()
