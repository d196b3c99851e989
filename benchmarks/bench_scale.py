"""Cost of the workflow's bookkeeping at thousands of crystals: Snakefile parse, DAG, checks.

Usage::

    python benchmarks/bench_scale.py [--crystals 1500 3] [--form sheet|list] [--snakefile PATH]
                                     [--json PATH]

For each crystal count N it builds a working directory with N structure files (the
AMCSD CIFs of ../shared/structures, or config/structures when that is absent, copied
under new names, each with one comment line added so that every file has its own
content hash, as a real campaign's files do), a crystal sheet (``--form sheet``) or a
YAML list with explicit 2x2x2 supercells (``--form list``, the form older versions
read), and a configuration of 3 ensembles x 3 temperatures x 1 replica. Then it
measures, each command in a fresh process, wall time and peak RSS (ru_maxrss of the
process tree):

* ``check cold`` / ``check warm``: ``mdxrd check config.yaml`` without and with the
  checked records of an earlier parse;
* ``dry-run cold`` / ``dry-run warm``: ``snakemake -n`` of the whole grid (N x 9 runs);
* ``one job (main)``: ``snakemake -n`` of one ``snapshots`` output, a user's targeted run;
* ``one job (remote)``: the parse a cluster job pays: ``snakemake --mode remote
  --target-jobs snapshots:... --allowed-rules snapshots -n``, its inputs present.

Targets (issue 11, 1,500 crystals, 2 cores): dry-run <= 60 s; one job <= 3 s and within
1 s of the same with 3 crystals. The ratios are printed from the figures of this run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "structures"

_MEASURE = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
            "r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
            "dt = time.perf_counter() - t; "
            "print(dt, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, r.returncode); "
            "sys.stderr.write(r.stdout[-3000:] + r.stderr[-3000:] if r.returncode else '')")


def measure(cmd: list[str], cwd: Path) -> dict[str, float]:
    """Wall time (s) and peak RSS (MB) of ``cmd`` run in a fresh process in ``cwd``."""
    res = subprocess.run([sys.executable, "-c", _MEASURE, *cmd], cwd=cwd, capture_output=True, text=True)
    wall, rss_kb, rc = res.stdout.split()
    if int(rc) != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed in {cwd}:\n{res.stderr}")
    return {"wall_s": float(wall), "peak_rss_MB": int(rss_kb) / 1024}


def build(work: Path, n: int, form: str) -> str:
    """Structure files, crystal table and config.yaml for ``n`` crystals in ``work``; return one crystal's name."""
    sources = sorted((SHARED if SHARED.is_dir() else REPO / "config" / "structures").glob("*.cif"))
    (work / "cifs").mkdir(parents=True)
    names = []
    for i in range(n):
        src = sources[i % len(sources)]
        name = f"x{i:05d}_{src.stem}"
        (work / "cifs" / f"{name}.cif").write_text(src.read_text() + f"\n# mdxrd benchmark copy {i}\n")
        names.append(name)
    if form == "sheet":
        (work / "crystals.tsv").write_text("name\tcif\tsupercell\n" + "".join(
            f"{name}\tcifs/{name}.cif\tauto\n" for name in names))
        crystals: object = "crystals.tsv"
    else:
        crystals = [{"name": name, "cif": f"cifs/{name}.cif", "supercell": [2, 2, 2]} for name in names]
    import yaml

    (work / "config.yaml").write_text(yaml.safe_dump({
        "crystals": crystals, "ensembles": ["nvt_langevin", "nvt_berendsen", "npt_berendsen"],
        "temperatures_K": [300, 600, 900], "replicas": 1}))
    return names[0]


def bench(n: int, form: str, snakefile: Path) -> dict[str, dict[str, float]]:
    smk = [sys.executable, "-m", "snakemake", "-s", str(snakefile), "--configfile", "config.yaml", "--cores", "2"]
    out: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix=f"mdxrd-scale-{n}-") as tmp:
        work = Path(tmp)
        name = build(work, n, form)
        mdxrd = [sys.executable, "-m", "mdxrd"]
        env_path = str(snakefile.parent / "workflow")
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [env_path, os.environ.get("PYTHONPATH")]))
        out["check cold"] = measure([*mdxrd, "check", "config.yaml"], work)
        out["check warm"] = measure([*mdxrd, "check", "config.yaml"], work)
        shutil.rmtree(work / "results", ignore_errors=True)
        out["dry-run cold"] = measure([*smk, "-n"], work)
        out["dry-run warm"] = measure([*smk, "-n"], work)
        run = f"{name}/npt_berendsen/300K/r0"
        out["one job (main)"] = measure([*smk, "-n", f"results/snapshots/{run}/summary.json"], work)
        # A cluster job: its inputs exist (written by the MD job), Snakemake parses and runs only it.
        md_dir = work / "results" / "md" / run
        md_dir.mkdir(parents=True, exist_ok=True)
        for f in ("thermo.csv", "trajectory.traj", "velocities.npy", "run.json"):
            (md_dir / f).touch()
        target = f"snapshots:crystal={name},ensemble=npt_berendsen,temperature=300,replica=0"
        out["one job (remote)"] = measure([*smk, "--mode", "remote", "--target-jobs", target, "--allowed-rules",
                                           "snapshots", "-n"], work)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--crystals", type=int, nargs="+", default=[1500, 3])
    ap.add_argument("--form", choices=("sheet", "list"), default="sheet")
    ap.add_argument("--snakefile", type=Path, default=REPO / "Snakefile")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    results = {}
    for n in args.crystals:
        results[n] = bench(n, args.form, args.snakefile.resolve())
        print(f"{n} crystals x 9 runs ({args.form}):")
        for case, m in results[n].items():
            print(f"  {case:18s} {m['wall_s']:8.2f} s  {m['peak_rss_MB']:8.0f} MB")
    big, small = max(args.crystals), min(args.crystals)
    if big != small:
        for case in ("one job (main)", "one job (remote)"):
            d = results[big][case]["wall_s"] - results[small][case]["wall_s"]
            print(f"{case}: {big} crystals {results[big][case]['wall_s']:.2f} s (target <= 3 s), "
                  f"{d:+.2f} s over {small} crystals (target <= 1 s)")
        print(f"dry-run warm at {big} crystals: {results[big]['dry-run warm']['wall_s']:.1f} s (target <= 60 s)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
