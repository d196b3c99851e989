"""CHGNet's crystal graph: chgnet's CrystalGraphConverter against mdxrd.crystal_graph, per structure.

Usage::

    python benchmarks/bench_graph.py [--repeat 20]

For rattled Si 2x2x2 (64 atoms), Cu 2x2x2 (32 atoms) and MgO 3x3x3 (216 atoms), on one CPU thread,
the median wall time of building the graph with each, after a warm-up call, and their ratio.
The two give the same tensors (tests/test_crystal_graph.py).
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

import numpy as np  # noqa: E402
import torch  # noqa: E402
from ase.build import bulk  # noqa: E402

from mdxrd.calculator import _structure, load_model  # noqa: E402
from mdxrd.crystal_graph import crystal_graph  # noqa: E402

SYSTEMS = {"Si64": (bulk("Si", "diamond", a=5.4612, cubic=True), 2), "Cu32": (bulk("Cu", "fcc", a=3.6156, cubic=True), 2),
           "MgO216": (bulk("MgO", "rocksalt", a=4.2112, cubic=True), 3)}


def median_ms(fn, repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(1)
    converter = load_model("cpu").graph_converter
    print(f"{'system':8} {'chgnet converter ms':>20} {'mdxrd.crystal_graph ms':>23} {'ratio':>6}")
    for name, (cell, n) in SYSTEMS.items():
        atoms = cell.repeat(n)
        atoms.positions += np.random.default_rng(0).normal(0.0, 0.05, atoms.positions.shape)
        structure = _structure(atoms)
        stock = median_ms(lambda s=structure: converter(s), args.repeat)
        fast = median_ms(lambda s=structure: crystal_graph(converter, s), args.repeat)
        print(f"{name:8} {stock:20.2f} {fast:23.2f} {stock / fast:6.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
