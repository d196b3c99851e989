"""The MD stage's two engines on the same CHGNet runs: thermo traces, window figures and wall time.

Usage::

    python benchmarks/compare_engines.py [--out /tmp/compare_engines] [--steps 300]

Si 2x2x2 (64 atoms, cubic) and Mg 3x3x2 (36 atoms, hexagonal), NVT-Langevin, NVT-Berendsen and
NPT-Berendsen at 300 K (2 fs, window after step 100, NPT after 100 pre-equilibration steps), CHGNet on
the CPU, one thread: once on the lockstep path (``md.engine: ase``, :func:`mdxrd.batch.run_md_batch`) and
once on the batched engine (``md.engine: torch``, :func:`mdxrd.engine.runs.run_md_engine`). Prints the
wall time of each and per run the window's mean T, P, V, cell lengths and the mean square displacement
from the window's mean positions; writes ``thermo.png`` (T, P, V against the step, both engines
overlaid). Berendsen runs should coincide; Langevin runs differ in their noise but not in their
statistics.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow"))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from ase.build import bulk  # noqa: E402

from mdxrd.batch import run_md_batch  # noqa: E402
from mdxrd.calculator import make_calculator  # noqa: E402
from mdxrd.engine.runs import run_md_engine  # noqa: E402
from mdxrd.md import MDParams  # noqa: E402

ENSEMBLES = ("nvt_langevin", "nvt_berendsen", "npt_berendsen")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("/tmp/compare_engines"))
    ap.add_argument("--steps", type=int, default=300)
    args = ap.parse_args()
    torch.set_num_threads(1)
    calc = make_calculator("fast", device="cpu")
    si = bulk("Si", "diamond", a=5.47, cubic=True).repeat(2)
    mg = bulk("Mg", "hcp", a=3.19, c=5.18).repeat((3, 3, 2))
    si.info["supercell"], mg.info["supercell"] = [2, 2, 2], [3, 3, 2]
    crystals = {"Si": si, "Mg": mg}
    for engine, run in (("ase", run_md_batch), ("torch", run_md_engine)):
        batch = [(atoms, MDParams(ensemble=ens, temperature_K=300.0, timestep_fs=2.0, n_steps=args.steps, n_equil=100,
                                  n_interval=50, device="cpu", seed=11, npt_pre_steps=100),
                  args.out / engine / f"{name}_{ens}") for name, atoms in crystals.items() for ens in ENSEMBLES]
        t = time.perf_counter()
        outcomes = run(batch, calc=calc)
        print(f"md.engine {engine}: {len(batch)} runs in {time.perf_counter() - t:.0f} s "
              f"({sum(isinstance(o, dict) for o in outcomes)} finished)")
    fig, axes = plt.subplots(3, 2, figsize=(11, 8))
    for col, name in enumerate(crystals):
        for ens, ls in zip(ENSEMBLES, ("-", "--", ":")):
            for engine, color in (("ase", "C0"), ("torch", "C1")):
                d = args.out / engine / f"{name}_{ens}"
                th = pd.read_csv(d / "thermo.csv")
                w = th[th.step >= 100]
                npz = np.load(d / "positions.npz")
                r = npz["positions_A"]
                u2 = float(((r - r.mean(0)) ** 2).sum(-1).mean())
                lengths = np.linalg.norm(npz["cells_A"], axis=2).mean(0)
                print(f"{name:2s} {ens:13s} {engine:5s} T {w.T_K.mean():6.1f} K  P {w.P_GPa.mean():6.3f} GPa  "
                      f"V {w.volume_A3.mean():8.2f} A^3  a, b, c {np.round(lengths, 4).tolist()}  <u^2> {u2:.4f} A^2")
                axes[0, col].plot(th.step, th.T_K, ls=ls, color=color, lw=0.8, label=f"{engine} {ens}")
                axes[1, col].plot(th.step, th.P_GPa, ls=ls, color=color, lw=0.8)
                axes[2, col].plot(th.step, th.volume_A3, ls=ls, color=color, lw=0.8)
        axes[0, col].set_title(f"{name} 300 K (CHGNet): ase (blue), torch (orange)")
    axes[0, 0].legend(fontsize=6)
    for ax, label in zip(axes[:, 0], ("T (K)", "P (GPa)", "V (A^3)")):
        ax.set_ylabel(label)
    for ax in axes[2]:
        ax.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(args.out / "thermo.png", dpi=90)
    print(f"wrote {args.out / 'thermo.png'}")


if __name__ == "__main__":
    main()
