"""Cost of the workflow's bookkeeping at 10^3 to 10^5 crystals: checks, parameter files, DAG, submissions.

Usage::

    python benchmarks/bench_scale.py [--crystals 1500 100000] [--cifs 0] [--json PATH]

For each crystal count N it builds a working directory with a crystal sheet of N rows
(3 ensembles x 3 temperatures x 1 replica, supercell auto) whose structure files are copies of
the AMCSD CIFs of ../shared/structures (config/structures when that is absent), each copy with
a comment line of its own so that every file has its own content hash, as a real campaign's
files do; ``--cifs K`` makes only K distinct files that the N rows share (records are keyed by
file content), 0 (default) one per row up to 2,000 and 100 beyond. Then it measures, each
command in a fresh process, wall time and peak RSS (ru_maxrss of the process tree):

* ``check cold`` / ``check warm``: ``mdxrd check config.yaml`` without and with the checked
  records of an earlier parse;
* ``dry-run cold`` / ``dry-run warm``: ``snakemake -n`` with the local default shards (a crystal
  each), cold without results/ (checks, parameter files), warm after it;
* ``dry-run slurm``: ``snakemake -n --profile profiles/slurm`` (shards of the profile's size) on a
  PATH without SLURM commands, warm; its job counts give the sbatch submissions: with the
  profile's job arrays ideally ceil(jobs / slurm-array-limit) per rule, at most one per job;
* ``one job (remote)``: the parse a cluster job pays, ``snakemake --mode remote --target-jobs
  md:shard=s000000 --allowed-rules md -n``.

Targets (issue 22, 2 cores): at 1,500 crystals dry-run <= 30 s warm, <= 60 s cold with the local
shards, <= 15 s warm with the SLURM profile's; at 100,000 crystals with the SLURM profile's
shards dry-run <= 60 s warm, peak memory <= 4 GB, submissions <= 5,000, one job's parse <= 3 s,
``mdxrd check`` of 100,000 rows of 100 distinct files <= 30 s; results/params O(shards) files.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "structures"

_MEASURE = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
            "r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
            "dt = time.perf_counter() - t; "
            "open('.bench_out', 'w').write(r.stdout); "
            "print(dt, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, r.returncode); "
            "sys.stderr.write(r.stdout[-3000:] + r.stderr[-3000:] if r.returncode else '')")


def measure(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> dict[str, float]:
    """Wall time (s) and peak RSS (MB) of ``cmd`` run in a fresh process in ``cwd``; its stdout in ``stdout``."""
    res = subprocess.run([sys.executable, "-c", _MEASURE, *cmd], cwd=cwd, capture_output=True, text=True, env=env)
    wall, rss_kb, rc = res.stdout.split()
    if int(rc) != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed in {cwd}:\n{res.stderr}")
    return {"wall_s": float(wall), "peak_rss_MB": int(rss_kb) / 1024, "stdout": (cwd / ".bench_out").read_text()}


def build(work: Path, n: int, n_cifs: int) -> None:
    """Structure files, crystal sheet and config.yaml for ``n`` crystals in ``work``."""
    sources = sorted((SHARED if SHARED.is_dir() else REPO / "config" / "structures").glob("*.cif"))
    sources = [s for s in sources if s.stem != "SrTiO3"]  # 20-atom cell: its auto supercell is large
    (work / "cifs").mkdir(parents=True)
    for i in range(n_cifs):
        src = sources[i % len(sources)]
        (work / "cifs" / f"f{i:05d}.cif").write_text(src.read_text() + f"\n# mdxrd benchmark copy {i}\n")
    with open(work / "crystals.tsv", "w") as fh:
        fh.write("name\tcif\tsupercell\n")
        fh.writelines(f"x{i:06d}\tcifs/f{i % n_cifs:05d}.cif\tauto\n" for i in range(n))
    (work / "config.yaml").write_text(yaml.safe_dump({
        "crystals": "crystals.tsv", "ensembles": ["nvt_langevin", "nvt_berendsen", "npt_berendsen"],
        "temperatures_K": [300, 600, 900], "replicas": 1}))


def _path_without_slurm(root: Path) -> str:
    bin_dir = root / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name in ("bash", "sh", "which"):
        if (found := shutil.which(name)) and not (bin_dir / name).exists():
            (bin_dir / name).symlink_to(found)
    return str(bin_dir)


def job_counts(dry_run: str) -> dict[str, int]:
    table = dry_run[dry_run.index("Job stats:"):]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.MULTILINE)}


def submissions(counts: dict[str, int]) -> tuple[int, int]:
    """(ideal, worst) sbatch calls of the SLURM profile for these job counts: rules in slurm-array-jobs go out as
    arrays of up to slurm-array-limit tasks (ideal) or one by one (worst); a group is one job."""
    profile = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())
    arrays = {r.strip() for r in profile.get("slurm-array-jobs", "").split(",") if r.strip()}
    limit = int(profile.get("slurm-array-limit", 1000))
    groups = profile.get("groups", {})
    ideal = worst = 0
    for rule, n in counts.items():
        if rule in ("all", "total") or rule in groups:
            continue
        worst += n
        ideal += math.ceil(n / limit) if rule in arrays else n
    n_groups = len(set(groups.values()))  # the gathering jobs run once
    return ideal + n_groups, worst + n_groups


def bench(n: int, n_cifs: int, slurm_only: bool) -> dict[str, dict[str, float]]:
    smk = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--configfile", "config.yaml",
           "--cores", "2"]
    out: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix=f"mdxrd-scale-{n}-") as tmp:
        work = Path(tmp)
        build(work, n, n_cifs)
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "workflow"), os.environ.get("PYTHONPATH")]))
        mdxrd = [sys.executable, "-m", "mdxrd"]
        out["check cold"] = measure([*mdxrd, "check", "config.yaml"], work)
        out["check warm"] = measure([*mdxrd, "check", "config.yaml"], work)
        if not slurm_only:
            shutil.rmtree(work / "results", ignore_errors=True)
            out["dry-run cold"] = measure([*smk, "-n", "--quiet", "rules"], work)
            out["dry-run warm"] = measure([*smk, "-n", "--quiet", "rules"], work)
            out["dry-run warm"]["params_files"] = len(list((work / "results" / "params").rglob("*.json")))
        env = {**os.environ, "PATH": _path_without_slurm(work)}
        slurm = [*smk, "--profile", str(REPO / "profiles" / "slurm"), "-n", "--quiet", "rules"]
        measure(slurm, work, env)  # parameter files of the profile's shards
        out["dry-run slurm"] = m = measure(slurm, work, env)
        counts = job_counts(m["stdout"])
        m["jobs"] = counts["total"]
        m["submissions_ideal"], m["submissions_worst"] = submissions(counts)
        m["params_files"] = len(list((work / "results" / "params").rglob("*.json")))
        out["one job (remote)"] = measure([*smk, "--mode", "remote", "--target-jobs", "md:shard=s000000",
                                           "--allowed-rules", "md", "-n"], work, env)
    for m in out.values():
        m.pop("stdout", None)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--crystals", type=int, nargs="+", default=[1500, 100000])
    ap.add_argument("--cifs", type=int, default=0, help="distinct structure files (0: one per row up to 2,000, "
                    "100 beyond)")
    ap.add_argument("--slurm-only", action="store_true", help="skip the local dry runs (a crystal a shard)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    results = {}
    for n in args.crystals:
        n_cifs = args.cifs or (n if n <= 2000 else 100)
        results[n] = bench(n, n_cifs, args.slurm_only and n > 2000)
        print(f"{n} crystals ({n_cifs} distinct files) x 9 runs:")
        for case, m in results[n].items():
            extra = "  ".join(f"{k} {v}" for k, v in m.items() if k not in ("wall_s", "peak_rss_MB"))
            print(f"  {case:18s} {m['wall_s']:8.2f} s  {m['peak_rss_MB']:8.0f} MB  {extra}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
