"""Peak memory and time of the dataset stage at 10^5 patterns (synthetic stage outputs).

Usage::

    python benchmarks/bench_dataset.py [--crystals 1000] [--runs 9] [--snapshots 10] [--json PATH]

It writes one synthetic run (a 64-atom trajectory of ``--snapshots`` frames with energies
and stresses, patterns and their average on the default 2theta grid of 4001 points,
run.json and summary.json) and one unit's structure and reference outputs, then dataset
sections of shards of ``--shard`` crystals, every crystal with ``--runs`` runs, whose path
templates all point at those files: the part writer reads and writes as much as a real
campaign of that size, without its MD. Defaults: 1000 crystals x (9 runs x (10 snapshots +
1 average) + 2 static) = 101,000 patterns in 10 shards of 100.

Measured, each in a fresh process (wall time, peak RSS from ru_maxrss):

* ``one part``: one shard's part, what one ``dataset_part`` job does;
* ``all parts``: every shard's part in one process, one after the other (an upper
  bound of any part job: memory that grew with the number of parts would show here);
* ``metadata``: the ``dataset`` job, checking every part's footer and writing
  ``_common_metadata``.

Target (issue 11): the dataset step's peak memory < 1 GB at 10^5 patterns.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow"))

_CHILD = """
import json, resource, sys, time
sys.path.insert(0, {pkg!r})
from mdxrd import dataset
job = json.load(open({job!r}))
t = time.perf_counter()
rows = 0
if job["what"] == "parts":
    for section, out in job["parts"]:
        rows += dataset.write_part(section, job["templates"], out)
else:
    rows = dataset.write_common_metadata(job["config"], job["parts"], job["out"])
print(json.dumps({{"wall_s": time.perf_counter() - t, "rows": rows,
                  "peak_rss_MB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def synthetic_outputs(root: Path, n_snapshots: int) -> dict[str, str]:
    """One run's outputs and one crystal's structure outputs under ``root``; returns their paths."""
    from ase.build import bulk
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import write
    from ase.io.trajectory import Trajectory

    from mdxrd.io import write_json
    from mdxrd.xrd import two_theta_grid

    rng = np.random.default_rng(1)
    grid = two_theta_grid(10.0, 90.0, 0.02)
    peaks = rng.uniform(15, 85, 40)
    base = sum(rng.uniform(1, 100) * np.exp(-0.5 * ((grid - p) / 0.3) ** 2) for p in peaks)
    root.mkdir(parents=True, exist_ok=True)
    si = bulk("Si", "diamond", a=5.43, cubic=True)
    write(str(root / "Si.cif"), si)
    atoms = si.repeat(2)
    with Trajectory(str(root / "snapshots.traj"), "w") as traj:
        for i in range(n_snapshots):
            frame = atoms.copy()
            frame.positions += rng.normal(0, 0.08, frame.positions.shape)
            frame.set_velocities(rng.normal(0, 0.005, frame.positions.shape))
            frame.info = {"step": 100 + 50 * i, "time_fs": 100.0 + 50 * i}
            frame.calc = SinglePointCalculator(frame, energy=-5.4 * len(frame), forces=np.zeros((len(frame), 3)),
                                               stress=rng.normal(0, 1e-3, 6))
            traj.write(frame)
    patterns = base * (1 + 0.05 * rng.standard_normal((n_snapshots, len(grid))))
    names = np.array(["default"])  # one instrument condition
    np.savez(root / "patterns.npz", two_theta=grid, instrument=names, intensity=patterns[None],
             intensity_bragg=0.9 * patterns[None])
    np.savez(root / "average.npz", two_theta=grid, instrument=names, intensity=patterns.mean(0)[None],
             intensity_bragg=0.9 * patterns.mean(0)[None])
    np.savez(root / "static.npz", two_theta=grid, instrument=names, intensity_relaxed=base[None],
             intensity_cif=base[None], intensity_bragg_relaxed=base[None], intensity_bragg_cif=base[None])
    write(str(root / "relaxed.cif"), si)
    write_json(root / "run.json", {"params": {"pressure_GPa": 1e-4, "seed": 1}, "n_atoms": 64, "device": "cpu"})
    figures = ("equilibrated", "window_T_K", "window_T_sem_K", "window_P_GPa", "window_P_sem_GPa",
               "window_volume_A3", "window_volume_sem_A3", "window_volume_drift", "energy_drift_meV_per_atom_ps",
               "tau_int_E_pot_fs", "n_independent_snapshots")
    figures = (*figures, "tau_int_u_fs", "tau_int_msd_fs")
    write_json(root / "summary.json", {"tau_corr_fs": 80.0, "interval_too_short": True, "lindemann_ratio": 0.07,
                                       "melted": False, **{k: 1.0 for k in figures}, "equilibrated": True,
                                       "B_iso_A2": {"Si": 0.6}, "B_iso_sem_A2": {"Si": 0.02}})
    write_json(root / "structure.json", {"formula": "Si", "space_group": "Fd-3m", "space_group_number": 227,
                                         "supercell": [2, 2, 2], "E0_eV_per_atom": -5.42})
    lattice = {"a": 5.43, "b": 5.43, "c": 5.43, "alpha": 90.0, "beta": 90.0, "gamma": 90.0, "volume_A3": 5.43**3}
    write_json(root / "reference.json", {"relaxed_lattice": lattice, "cif_lattice": lattice})
    return {"root": str(root)}


def child(job: dict, work: Path) -> dict:
    path = work / f"job-{job['what']}-{len(job.get('parts', []))}.json"
    path.write_text(json.dumps(job))
    res = subprocess.run([sys.executable, "-c", _CHILD.format(pkg=str(REPO / "workflow"), job=str(path))],
                         capture_output=True, text=True)
    if res.returncode:
        raise RuntimeError(res.stderr[-3000:])
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--crystals", type=int, default=1000)
    ap.add_argument("--shard", type=int, default=100, help="crystals per shard (one part each)")
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--snapshots", type=int, default=10)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="mdxrd-dataset-") as tmp:
        work = Path(tmp)
        root = synthetic_outputs(work / "synthetic", args.snapshots)["root"]
        templates = {k: root for k in ("structure", "reference", "md", "snapshots", "xrd")}  # every unit, run there
        names = [f"x{i:05d}" for i in range(args.crystals)]
        potential = {"name": "chgnet", "version": "0", "model_sha256": "0" * 64}
        crystals = [{"crystal": {"name": n, "supercell": [2, 2, 2], "n_atoms_cell": 8, "cif_sha256": "0" * 64},
                     "split": "train",
                     "units": [{"name": n, "potential": potential,
                                "runs": [{"ensemble": "npt_berendsen", "temperature_K": 300.0 + 50 * r, "replica": 0,
                                          "supercell": [2, 2, 2]} for r in range(args.runs)]}]} for n in names]
        dataset_dir = work / "results" / "dataset"
        parts = []
        for i in range(0, args.crystals, args.shard):
            section = {"drop_melted": False, "crystals": crystals[i:i + args.shard],
                       "instrument": [{"name": "default", "wavelength": "CuKa1", "sigma_deg": 0.3}]}
            parts.append((section, str(dataset_dir / f"part-s{i // args.shard:06d}.parquet")))
        config = {"crystals": [c["crystal"] for c in crystals],
                  "xrd": {"wavelength": "CuKa1", "two_theta_min": 10.0, "two_theta_max": 90.0, "two_theta_step": 0.02,
                          "sigma_deg": 0.3}}
        out = {
            "one part": child({"what": "parts", "parts": parts[:1], "templates": templates}, work),
            "all parts": child({"what": "parts", "parts": parts, "templates": templates}, work),
            "metadata": child({"what": "metadata", "config": config, "parts": [p for _, p in parts],
                               "out": str(dataset_dir / "_common_metadata")}, work),
        }
        size = sum(p.stat().st_size for p in dataset_dir.rglob("*") if p.is_file())
        import pyarrow.parquet as pq

        n_rows = pq.read_table(dataset_dir, columns=["kind"]).num_rows
    print(f"{args.crystals} crystals x {args.runs} runs x ({args.snapshots} + 1) + 2 static = {n_rows} patterns in "
          f"{len(parts)} shard parts, {size / 1e9:.2f} GB on disk")
    for case, m in out.items():
        print(f"  {case:10s} {m['wall_s']:8.1f} s  peak RSS {m['peak_rss_MB']:7.0f} MB  ({m['rows']} rows)")
    peak = max(m["peak_rss_MB"] for m in out.values())
    print(f"peak memory of the dataset step: {peak:.0f} MB (target < 1000 MB)")
    if args.json:
        args.json.write_text(json.dumps({"patterns": n_rows, "bytes": size, **out}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
