"""Thousands of crystals: a 2,000-crystal sheet plans its DAG in shards and its dataset job runs, within bounded
memory.

The MD and XRD outputs are not computed here: every shard's dataset part is one small
synthetic part (the real schema, the config's 2theta grid), so the test exercises what
grows with the number of crystals: the sheet, the checked records, the parameter files,
the DAG, and the one job that sees every shard (the dataset's shared metadata).
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
N_CRYSTALS = 2000


def _synthetic_part(path: Path, name: str, grid: np.ndarray) -> int:
    """A dataset part of crystal ``name``: 3 rows on ``grid`` with the dataset's schema; returns its row count."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mdxrd.dataset import schema, versions

    rng = np.random.default_rng(0)
    rows = [{"kind": kind, "crystal": name, "split": "train", "intensity": rng.random(len(grid)).astype(np.float32),
             "intensity_bragg": rng.random(len(grid)).astype(np.float32)} for kind in ("static", "snapshot", "average")]
    import json

    meta = {"mdxrd.versions": json.dumps(versions(), sort_keys=True), "mdxrd.two_theta_deg": json.dumps(grid.tolist())}
    sch = schema().with_metadata(meta)
    pq.write_table(pa.Table.from_pylist(rows, schema=sch), str(path))
    return len(rows)


@pytest.mark.slow
def test_two_thousand_crystal_sheet(tmp_path):
    import pandas as pd

    from mdxrd.xrd import two_theta_grid

    cfg = yaml.safe_load((REPO / ".test" / "config.yaml").read_text())
    cfg["ensembles"], cfg["temperatures_K"] = ["nvt_langevin"], [300]
    cfg["crystals"] = "crystals.tsv"
    cfg["shards"] = {"crystals": 20}  # 100 shards
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    (tmp_path / "cifs").mkdir()
    names = [f"c{i:04d}" for i in range(N_CRYSTALS)]
    for name in names:  # one content: one checked record serves all (records are keyed by content)
        os.link(REPO / "config" / "structures" / "Cu.cif", tmp_path / "cifs" / f"{name}.cif")
    with open(tmp_path / "crystals.tsv", "w", newline="") as fh:
        w = csv.writer(fh, delimiter="\t")
        w.writerow(["name", "cif", "supercell"])
        w.writerows([name, f"cifs/{name}.cif", "auto"] for name in names)
    smk = [*SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(tmp_path), "--configfile",
           str(tmp_path / "config.yaml"), "--cores", "2"]

    t0 = time.perf_counter()
    res = subprocess.run([*smk, "-n", "--quiet", "rules"], capture_output=True, text=True)
    dry_s = time.perf_counter() - t0
    assert res.returncode == 0, res.stderr[-3000:]
    counts = {m[0]: int(m[1]) for m in (line.split() for line in res.stdout.splitlines()) if len(m) == 2
              and m[1].isdigit()}
    n_shards = N_CRYSTALS // 20
    assert counts["relax"] == n_shards and counts["md"] == n_shards and counts["dataset_part"] == n_shards
    assert counts["dataset"] == 1
    params = tmp_path / "results" / "params"
    assert len(list(params.glob("s*/*.json"))) == 5 * n_shards  # O(shards) files, not O(crystals x stages)
    checked = sorted(p.name.split("-")[0] for p in (tmp_path / "results" / "checked").glob("*.json"))
    assert len(checked) == 2 and checked[-1] == "table"  # one structure record, one validated sheet

    # every part present (synthetic), then the dataset job alone: it reads all 2,000 footers
    x = cfg["xrd"]
    grid = two_theta_grid(x["two_theta_min"], x["two_theta_max"], x["two_theta_step"])
    (tmp_path / "results" / "dataset").mkdir()
    for i in range(n_shards):
        rows = _synthetic_part(tmp_path / "results" / "dataset" / f"part-s{i:06d}.parquet", names[i], grid)
    t0 = time.perf_counter()
    res = subprocess.run([*smk, "--allowed-rules", "dataset", "--printshellcmds", "results/dataset/_common_metadata"],
                         capture_output=True, text=True)
    job_s = time.perf_counter() - t0
    assert res.returncode == 0, res.stderr[-3000:]
    shell = next(line for line in (res.stdout + res.stderr).splitlines() if "python -m mdxrd dataset" in line)
    assert len(shell) < 100 * n_shards  # a path per shard on the command line, nothing per crystal
    bench = pd.read_csv(tmp_path / "results" / "benchmarks" / "dataset.tsv", sep="\t")
    assert bench["max_rss"].iloc[0] < 1000, bench  # MB
    df = pd.read_parquet(tmp_path / "results" / "dataset", columns=["kind", "crystal"])
    assert len(df) == rows * n_shards and df.crystal.nunique() == n_shards
    print(f"\n{N_CRYSTALS} crystals: dry-run {dry_s:.1f} s; dataset job {job_s:.1f} s, "
          f"max RSS {bench['max_rss'].iloc[0]:.0f} MB")


def test_dataset_metadata_checks_parts_and_drops_parts_not_configured(tmp_path):
    """The dataset job: same schema and grid in every part; parts of shards no longer configured go, and so do the
    per-crystal parts of mdxrd before shards."""
    import pandas as pd

    from mdxrd.dataset import read_dataset, write_common_metadata
    from mdxrd.xrd import two_theta_grid

    config = {"crystals": [{"name": "A"}, {"name": "B"}], "xrd": {"wavelength": "CuKa1", "two_theta_min": 20.0,
                                                                  "two_theta_max": 30.0, "two_theta_step": 0.5}}
    grid = two_theta_grid(20.0, 30.0, 0.5)
    parts = [tmp_path / "part-s000000.parquet", tmp_path / "part-s000001.parquet"]
    for part, name in zip(parts, ("A", "B")):
        _synthetic_part(part, name, grid)
    _synthetic_part(tmp_path / "part-s000002.parquet", "Old", grid)
    (tmp_path / "crystal=A").mkdir()
    _synthetic_part(tmp_path / "crystal=A" / "part-0.parquet", "A", grid)
    assert write_common_metadata(config, parts, tmp_path / "_common_metadata") == 6
    assert not (tmp_path / "part-s000002.parquet").exists() and not (tmp_path / "crystal=A").exists()
    df, two_theta, meta = read_dataset(tmp_path)
    assert sorted(df.crystal.unique()) == ["A", "B"] and np.array_equal(two_theta, grid)
    assert len(pd.read_parquet(tmp_path)) == 6
    _synthetic_part(parts[1], "B", two_theta_grid(20.0, 30.0, 0.25))
    with pytest.raises(ValueError, match="part-s000001.parquet: 2theta grid differs"):
        write_common_metadata(config, parts, tmp_path / "_common_metadata")
