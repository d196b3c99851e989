"""Benchmark: mdxrd.xrd.diffract against pymatgen's XRDCalculator.

Run as ``python benchmarks/bench_xrd.py``. Both codes run in this process on
the same machine: pymatgen ``XRDCalculator(wavelength=1.5406, symprec=0)
.get_pattern(s, scaled=False, two_theta_range=(10, 90))`` and
``mdxrd.xrd.diffract(..., wavelength=1.5406, two_theta_range=(10, 90))`` on
randomly displaced Si supercells (Gaussian displacements, sigma 0.07 A per
Cartesian component, fixed seed). The batch case runs 20 snapshots of 216
atoms: one ``diffract`` call against a loop of 20 pymatgen calls. Times are the
best of several repeats (time.perf_counter).

BLAS runs single-threaded (OPENBLAS_NUM_THREADS / OMP_NUM_THREADS /
MKL_NUM_THREADS default to 1 here unless set in the environment): both codes use
one core, and on a shared machine multi-threaded BLAS on these small matrix
products mostly measures thread contention.
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

import numpy as np  # noqa: E402
from pymatgen.analysis.diffraction.xrd import XRDCalculator  # noqa: E402
from pymatgen.core import Lattice, Structure  # noqa: E402

from mdxrd.xrd import diffract  # noqa: E402

WAVELENGTH = 1.5406
RANGE = (10.0, 90.0)


def best_time(func: Callable[[], object], repeats: int) -> float:
    """Best wall time in seconds of ``repeats`` calls of ``func``."""
    best = float("inf")
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        func()
        best = min(best, time.perf_counter() - start)
    return best


def displaced_si(n: int, n_snap: int, seed: int = 0, sigma: float = 0.07) -> list[Structure]:
    """``n_snap`` snapshots of an n x n x n Si supercell with Gaussian displacements."""
    si = Structure.from_spacegroup("Fd-3m", Lattice.cubic(5.4307), ["Si"], [[0, 0, 0]])
    sc = si * (n, n, n)
    rng = np.random.default_rng(seed)
    return [
        Structure(sc.lattice, sc.species, sc.cart_coords + rng.normal(0, sigma, (len(sc), 3)), coords_are_cartesian=True)
        for _ in range(n_snap)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="mdxrd repeats (best of)")
    parser.add_argument("--pmg-repeats", type=int, default=2, help="pymatgen repeats (best of)")
    args = parser.parse_args()

    calc = XRDCalculator(wavelength=WAVELENGTH, symprec=0)
    cases = [("1 snapshot 2x2x2", 2, 1), ("1 snapshot 3x3x3", 3, 1), ("1 snapshot 4x4x4", 4, 1), ("20 snapshots 3x3x3", 3, 20)]
    rows = []
    for name, n, n_snap in cases:
        structs = displaced_si(n, n_snap)
        cells = np.stack([s.lattice.matrix for s in structs])
        frac = np.stack([s.frac_coords for s in structs])
        species = [site.specie.symbol for site in structs[0]]

        def run_pmg() -> None:
            for s in structs:
                calc.get_pattern(s, scaled=False, two_theta_range=RANGE)

        def run_mdxrd() -> None:
            diffract(cells, frac, species, wavelength=WAVELENGTH, two_theta_range=RANGE, supercell=(n, n, n))

        run_mdxrd()  # warm-up: lazy imports, BLAS threads
        t_md = best_time(run_mdxrd, args.repeats)
        t_pmg = best_time(run_pmg, args.pmg_repeats if n_snap == 1 else 1)
        rows.append((name, len(structs[0]), t_pmg, t_md))

    print(
        f"pymatgen {_version('pymatgen')}, numpy {np.__version__}, "
        f"OPENBLAS_NUM_THREADS={os.environ['OPENBLAS_NUM_THREADS']}, "
        f"repeats: mdxrd {args.repeats}, pymatgen {args.pmg_repeats} (1 for the batch)"
    )
    print(f"{'case':<22} {'atoms':>6} {'pymatgen s':>11} {'mdxrd s':>10} {'ratio':>7}")
    for name, atoms, t_pmg, t_md in rows:
        print(f"{name:<22} {atoms:>6d} {t_pmg:>11.4f} {t_md:>10.5f} {t_pmg / t_md:>7.0f}")


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


if __name__ == "__main__":
    main()
