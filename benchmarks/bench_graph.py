"""CHGNet's crystal graph: chgnet's CrystalGraphConverter against mdxrd.crystal_graph, per structure.

Usage::

    python benchmarks/bench_graph.py [--repeat 20]

For rattled Si 2x2x2 (64 atoms), Cu 2x2x2 (32 atoms) and MgO 3x3x3 (216 atoms), on one CPU thread,
the median wall time of building the graph with each, after a warm-up call, and their ratio.
The two give the same tensors (tests/test_crystal_graph.py).

Then, for batches of K = 1, 64, 256 rattled Si64 systems given as flat arrays (an MD batch), the
milliseconds per system of mdxrd.crystal_graph.batch_graphs against building a pymatgen Structure
and calling crystal_graph system by system (what CHGNetModel did before batch_graphs), median of
3 after a warm-up call; and for K = 256 where batch_graphs' time goes: pymatgen's neighbour
search and the coordinates (per system), the index arrays (one pass over the batch), the rest
(per-system numbering, tensors, CrystalGraph objects).

Last, for K = 64 and 256, the milliseconds per system of mdxrd.crystal_graph.batch_graphs_torch (the
graphs built with torch on the state's device, as CHGNetModel does for a GPU state) on the CPU (one
thread) and, when available, on CUDA (synchronised before the clock stops), median of 3 after a warm-up.
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
from pymatgen.core import Structure  # noqa: E402

from mdxrd import crystal_graph as cg  # noqa: E402
from mdxrd.calculator import _structure, load_model  # noqa: E402
from mdxrd.crystal_graph import batch_graphs, batch_graphs_torch, crystal_graph  # noqa: E402

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
    batches(converter)
    torch_batches(converter)
    return 0


def si64_batch(k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Flat arrays (positions, cells, numbers, n_atoms) of k rattled Si64 systems (0.05 A, one seed each)."""
    cell, n = SYSTEMS["Si64"]
    atoms = cell.repeat(n)
    rng = np.random.default_rng(1)
    positions = np.concatenate([atoms.positions + rng.normal(0.0, 0.05, atoms.positions.shape) for _ in range(k)])
    return (positions, np.repeat(np.array(atoms.cell)[None], k, axis=0), np.tile(atoms.numbers, k),
            np.full(k, len(atoms)))


def batches(converter) -> None:
    """Per-system ms of batch_graphs against Structure + crystal_graph for batches of Si64."""
    print(f"\n{'Si64 batch':10} {'batch_graphs ms/system':>23} {'Structure+crystal_graph ms/system':>34} {'ratio':>6}")
    for k in (1, 64, 256):
        positions, cells, numbers, n_atoms = si64_batch(k)
        start = np.concatenate([[0], np.cumsum(n_atoms)])

        def one_by_one(positions=positions, cells=cells, numbers=numbers, start=start):
            return [crystal_graph(converter, Structure(cells[i], numbers[start[i]:start[i + 1]],
                                                       positions[start[i]:start[i + 1]], coords_are_cartesian=True))
                    for i in range(len(cells))]

        batch = median_ms(lambda a=(positions, cells, numbers, n_atoms): batch_graphs(converter, *a), 3) / k
        single = median_ms(one_by_one, 3) / k
        print(f"K = {k:<6} {batch:23.3f} {single:34.3f} {single / batch:6.1f}")
    # where batch_graphs' time goes, K = 256
    positions, cells, numbers, n_atoms = si64_batch(256)
    start = np.concatenate([[0], np.cumsum(n_atoms)])
    lists = cg._neighbor_lists(positions, cells, start, converter.atom_graph_cutoff)
    _, _, center, neighbor, image, distance, _ = lists

    def indices():
        code, n_codes = cg._image_codes(image)
        return cg._indices(len(positions), center, neighbor, code, n_codes, distance, converter.bond_graph_cutoff)

    total = median_ms(lambda: batch_graphs(converter, positions, cells, numbers, n_atoms), 3) / 256
    search = median_ms(lambda: cg._neighbor_lists(positions, cells, start, converter.atom_graph_cutoff), 3) / 256
    index = median_ms(indices, 3) / 256
    print(f"K = 256 batch_graphs {total:.3f} ms/system: neighbour search and coordinates {search:.3f}, "
          f"index arrays {index:.3f}, the rest (numbering, tensors, CrystalGraph objects) {total - search - index:.3f}")


def torch_batches(converter) -> None:
    """Per-system ms of batch_graphs_torch for batches of Si64, on the CPU and on CUDA if available."""
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"\n{'Si64 batch':10} {'device':6} {'batch_graphs_torch ms/system':>29}")
    for device in devices:
        for k in (64, 256):
            positions, cells, numbers, n_atoms = si64_batch(k)
            args = (torch.from_numpy(positions).to(device), torch.from_numpy(cells).to(device),
                    torch.from_numpy(numbers).to(device), n_atoms.tolist())
            host = np.asarray(numbers)

            def build(args=args, host=host, device=device):
                graphs = batch_graphs_torch(converter, *args, numbers_host=host)
                if device == "cuda":
                    torch.cuda.synchronize()
                return graphs

            print(f"K = {k:<6} {device:6} {median_ms(build, 3) / k:29.3f}")


if __name__ == "__main__":
    sys.exit(main())
