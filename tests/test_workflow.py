"""The Snakemake workflow: dry-run of the default grid, and a tiny end-to-end run to a Parquet dataset."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from mdxrd.config import validate_config
from mdxrd.params import config_hash
from mdxrd.dataset import content_hash, read_dataset, schema

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def _job_counts(output: str) -> dict[str, int]:
    table = output[output.index("Job stats:"):]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.MULTILINE)}


def _workdir(tmp_path: Path) -> Path:
    """A working directory whose config/ is the repository's (config/config.yaml, the sheet, the CIFs), so a
    run writes its results/ there and not into the checkout."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "config").symlink_to(REPO / "config")
    return work


def test_dry_run_default_config_lists_the_grid(tmp_path):
    work = _workdir(tmp_path)
    res = subprocess.run([*SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(work), "-n", "--cores", "2"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr + res.stdout
    counts = _job_counts(res.stdout)
    # shards.crystals 1: every stage one job per crystal (md: its 6 runs in one lockstep batch)
    assert counts == {"relax": 3, "md": 3, "post": 3, "qc": 3, "dataset_part": 3, "dataset": 1, "qc_potentials": 1,
                      "all": 1, "total": 5 * 3 + 3}
    assert sorted(p.name for p in (work / "results" / "params").iterdir()) == [
        "config.json", "manifest.json", "s000000", "s000001", "s000002"]


def test_dry_run_shards_and_md_batches(tmp_path):
    """shards.crystals 2 and md.runs_per_job 4: two shards; Si and NaCl's 12 runs in batches of 4 in one MD job."""
    work = _workdir(tmp_path)
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    cfg["md"]["runs_per_job"] = 4
    cfg["shards"] = {"crystals": 2}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    res = subprocess.run([*SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(work), "-n", "--cores", "2",
                          "--configfile", str(tmp_path / "c.yaml")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:] + res.stdout[-3000:]
    counts = _job_counts(res.stdout)
    assert counts["md"] == 2 and counts["relax"] == 2 and counts["dataset_part"] == 2
    batches = json.loads((work / "results" / "params" / "s000000" / "md.json").read_text())["batches"]
    assert [[r["unit"] for r in b] for b in batches] == [["Si"] * 4, ["Si"] * 2 + ["NaCl"] * 2, ["NaCl"] * 4]


def test_dry_run_glob_of_structure_files(tmp_path):
    """crystals: a glob: one crystal per file, named by its stem, supercell auto (Cu: 3x3x3 for 10 A)."""
    res = subprocess.run([*SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(tmp_path), "--configfile",
                          str(REPO / ".test" / "config.yaml"), "--config", f"crystals={REPO}/config/structures/*.cif",
                          "shards={crystals: 3}", "-n", "--cores", "2"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:] + res.stdout[-3000:]
    counts = _job_counts(res.stdout)
    names = ["Bi", "Cu", "Mg", "MgCO3", "MgSiO3", "NaCl", "Si", "TiO2"]
    assert counts["relax"] == 3 and counts["md"] == 3 and counts["dataset_part"] == 3  # 8 crystals, 3 a shard
    params = tmp_path / "results" / "params"
    units = json.loads((params / "s000000" / "relax.json").read_text())["units"]
    assert [u["name"] for u in units] == names[:3] and units[1]["structure"]["supercell"] == [3, 3, 3]
    post = json.loads((params / "s000000" / "post.json").read_text())["runs"]
    assert {r["unit"]: r["supercell"] for r in post}["Cu"] == [3, 3, 3]


def test_lint_is_clean(tmp_path):
    res = subprocess.run([*SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(_workdir(tmp_path)), "--lint"],
                         capture_output=True, text=True)
    assert res.returncode == 0 and "Congratulations" in res.stdout + res.stderr, res.stdout + res.stderr


def test_bad_config_stops_before_any_job(tmp_path):
    cfg = yaml.safe_load((REPO / ".test" / "config.yaml").read_text())
    cfg["md"]["n_equil"] = 50
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    res = subprocess.run([*SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(tmp_path), "--configfile",
                          str(tmp_path / "c.yaml"), "--cores", "1"], capture_output=True, text=True)
    assert res.returncode != 0
    assert "md.n_equil: 50 must be smaller than md.n_steps = 20" in res.stderr + res.stdout
    assert not (tmp_path / "results").exists()


TINY_CRYSTALS = ["Cu", "Mg", "MgCO3"]  # cubic, hexagonal, R-centred trigonal (hexagonal axes)


def _run_tiny(work: Path) -> dict:
    """Run the .test config (Cu 2x2x2, Mg 2x2x2, MgCO3 1x1x1; NVT-Langevin and NPT-Berendsen, 20 CHGNet steps)."""
    cfg = yaml.safe_load((REPO / ".test" / "config.yaml").read_text())
    for c in cfg["crystals"]:
        c["cif"] = str(REPO / c["cif"])
    cfg.setdefault("md", {})["device"] = "cpu"  # the tests' expectations (device column, bit-identical reruns)
    (work / "config.yaml").write_text(yaml.safe_dump(cfg))
    res = subprocess.run([*SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(work), "--configfile",
                          str(work / "config.yaml"), "--cores", "2"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-5000:]
    return validate_config(cfg, "tiny")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("tiny")
    return work, _run_tiny(work)


@pytest.mark.slow
def test_tiny_run_dataset(tiny_run):
    work, config = tiny_run
    path = work / "results" / "dataset"
    # shards.crystals 2: Cu and Mg in s000000, MgCO3 in s000001
    assert sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()) == [
        "_common_metadata", "part-s000000.parquet", "part-s000001.parquet"]
    df, grid, meta = read_dataset(path)
    n_runs, n_snap = 2, len(range(10 + 5, 20 + 1, 5))
    assert len(df) == 3 * 2 * (2 + n_runs * (n_snap + 1))  # three crystals, two instrument conditions
    check_non_cubic(work, df, grid)
    df = df[df.crystal == "Cu"]
    check_instrument_conditions(df, grid)
    df = df[df.instrument == "default"]
    assert (df.kind == "average").sum() == n_runs
    static = df[df.kind == "static"]
    assert sorted(static.static_cell) == ["cif", "relaxed"] and static.ensemble.isna().all()
    df = df[df.kind != "static"]
    assert df.static_cell.isna().all()
    assert sorted(df.ensemble.unique()) == ["npt_berendsen", "nvt_langevin"]
    # the relaxed static pattern is the 0 K reference of the thermal ones: its (111) peak is taller (no
    # Debye-Waller decay), at the NVT runs' 2theta (same cell)
    relaxed = np.asarray(static[static.static_cell == "relaxed"].intensity.iloc[0], float)
    nvt_avg = np.asarray(df[(df.kind == "average") & (df.ensemble == "nvt_langevin")].intensity.iloc[0], float)
    assert grid[np.argmax(relaxed)] == pytest.approx(grid[np.argmax(nvt_avg)], abs=0.051)
    assert relaxed.max() > nvt_avg.max()
    # per-run thermal figures: B per element, statistics
    assert all(len(b) == 1 and b[0]["element"] == "Cu" and b[0]["B_A2"] > b[0]["B_sem_A2"] > 0 for b in df.B_iso)
    assert (df.tau_int_u_fs > 0).all() and (df.tau_int_msd_fs > 0).all()
    # grid stored once, patterns on it
    assert grid[0] == 20.0 and grid[-1] == pytest.approx(80.0) and np.allclose(np.diff(grid), 0.05)
    assert all(len(x) == len(grid) for x in df.intensity) and all(len(x) == len(grid) for x in df.intensity_bragg)
    # Bragg-only is part of the total
    for tot, bragg in zip(df.intensity, df.intensity_bragg):
        assert np.all(np.asarray(bragg) <= np.asarray(tot) * (1 + 1e-5) + 1e-3)
    # averages are the mean of their snapshots (float32 storage)
    for _, run in df.groupby("ensemble"):
        snaps = np.stack(run[run.kind == "snapshot"].intensity.to_numpy())
        avg = np.asarray(run[run.kind == "average"].intensity.iloc[0])
        np.testing.assert_allclose(avg, snaps.mean(axis=0), rtol=1e-4, atol=1e-3 * avg.max())
    # Bragg peaks of the fcc lattice only: nothing at Cu (100) 24.6 deg, (110) 35.1 deg; the diffuse
    # part there and everywhere is a smooth continuum, not supercell reflections
    for tot, bragg in zip(df.intensity, df.intensity_bragg):
        tot, bragg = np.asarray(tot, float), np.asarray(bragg, float)
        for forbidden in (24.6, 35.1):
            near = np.abs(grid - forbidden) < 1.0
            assert (bragg[near] == 0).all() and (tot[near] > 0).all()
        diffuse = tot - bragg
        assert np.abs(np.diff(diffuse, 2)).max() < 2e-3 * diffuse.max()
    # the equilibration figures are in the table
    assert df.equilibrated.notna().all() and (df.window_T_K > 0).all()
    # NVT keeps the cell, NPT moves it
    nvt = df[(df.ensemble == "nvt_langevin") & (df.kind == "snapshot")]
    npt = df[(df.ensemble == "npt_berendsen") & (df.kind == "snapshot")]
    assert nvt.volume_A3.nunique() == 1 and npt.volume_A3.nunique() == n_snap
    assert set(nvt.step) == {15, 20} and npt.pressure_GPa.notna().all() and nvt.pressure_GPa.isna().all()
    assert df.seed.nunique() == n_runs
    # provenance round-trips
    assert meta["config"] == config
    assert meta["config_sha256"] == config_hash(config)
    assert {"mdxrd", "chgnet", "chgnet_model", "ase", "pymatgen", "torch", "numpy"} <= set(meta["versions"])
    assert pq.read_schema(path / "_common_metadata").remove_metadata().equals(schema())
    # per-crystal columns: split, structure file hash, supercell; the MD device per run
    from mdxrd.crystals import file_sha256

    assert set(df.split) == {config_split(config)} and set(df.crystal) == {"Cu"}
    assert set(df.cif_sha256) == {file_sha256(config["crystals"][0]["cif"])}
    assert set(df.device) == {"cpu"} and all(list(s) == [2, 2, 2] for s in df.supercell)


def check_non_cubic(work: Path, df, grid) -> None:
    """Mg (hexagonal) and MgCO3 (R-3c, hexagonal axes) through the whole workflow: NPT keeps a = b and
    gamma = 120 deg, the Bragg flags follow the R lattice, the QC has the c axis, and every peak of every
    pattern sits within 1 deg of a Bragg position of the crystal (no superlattice peaks from the supercell)."""
    import pandas as pd
    from scipy.signal import find_peaks

    for name in ("Mg", "MgCO3"):
        rows = df[(df.crystal == name) & (df.kind != "static")]
        assert np.allclose(rows.b, rows.a, rtol=1e-12, atol=0) and np.allclose(rows.gamma, 120.0, rtol=0, atol=1e-9)
        assert np.allclose(rows[["alpha", "beta"]], 90.0, atol=1e-9)
        npt = rows[rows.ensemble == "npt_berendsen"]
        assert npt.c.nunique() > 1 and npt.a.nunique() > 1  # the cell moved, keeping its lattice system
        qc = json.loads((work / "results" / "qc" / name / "qc.json").read_text())
        assert qc["axes"] == ["a", "c"] and set(qc["lattice_at_reference_A"]) == {"a", "b", "c"}
        run = json.loads((work / "results" / "md" / name / "npt_berendsen" / "300K" / "r0" / "run.json").read_text())
        assert run["equilibration"]["npt_cell"] == ("symmetric 6/mmm" if name == "Mg" else "symmetric -3m")
        for (ensemble, kind, snapshot), row in rows[rows.instrument == "default"].set_index(
                ["ensemble", "kind", "snapshot"]).iterrows():
            refl = pd.read_parquet(work / "results" / "xrd" / name / ensemble / "300K" / "r0" / "reflections.parquet")
            bragg = np.unique(refl[refl.is_bragg].two_theta.round(3))
            y = np.asarray(row.intensity, float)
            peaks, _ = find_peaks(y, prominence=0.005 * y.max())
            assert len(peaks) > 0
            far = [grid[p] for p in peaks if np.abs(bragg - grid[p]).min() > 1.0]
            assert not far, (name, ensemble, kind, snapshot, far)
    qc = pd.read_parquet(work / "results" / "qc" / "Mg" / "qc.parquet")
    assert "lattice_c_vs_experiment" in set(qc.check)  # the c axis against Straumanis (1949)
    # R-centring in hexagonal axes: a reflection is Bragg exactly when -h + k + l = 3n (MgCO3 1x1x1 cell)
    refl = pd.read_parquet(work / "results" / "xrd" / "MgCO3" / "nvt_langevin" / "300K" / "r0" / "reflections.parquet")
    allowed = (-refl.h + refl.k + refl.l) % 3 == 0
    assert (refl.is_bragg == allowed).all() and refl.is_bragg.any() and (~refl.is_bragg).any()


def check_instrument_conditions(df, grid) -> None:
    """The .test config's two conditions: the method's Gaussian, and a lab diffractometer (CuKa12, TCH
    pseudo-Voigt, size, strain, zero shift, background, noise) made from the same MD runs."""
    assert sorted(df.instrument.unique()) == ["default", "lab"]
    default, lab = df[df.instrument == "default"], df[df.instrument == "lab"]
    assert len(default) == len(lab) and set(default.wavelength_A) == set(lab.wavelength_A) == {1.5406}
    p = lab.instrument_params.iloc[0]
    assert p["wavelength"] == "CuKa12" and list(p["lines_A"]) == [1.5406, 1.54439]
    assert list(p["line_weights"]) == [1.0, 0.5] and p["size_nm"] == 50 and p["noise_seed"] == 1
    assert default.instrument_params.iloc[0]["sigma_deg"] == 0.3 and default.instrument_params.iloc[0]["size_nm"] is None
    key = ["kind", "ensemble", "snapshot", "static_cell"]
    a = default.set_index(key).sort_index()
    b = lab.set_index(key).sort_index()
    np.testing.assert_array_equal(a.T_K.to_numpy(), b.T_K.to_numpy())  # the same MD frames
    for (_, x), (_, y) in zip(a.iterrows(), b.iterrows()):
        ga, gb = np.asarray(x.intensity_bragg, float), np.asarray(y.intensity_bragg, float)
        # Cu (111) near 43.3 deg: K-alpha2 (half as strong) 0.11 deg above, and a zero shift of +0.02 deg,
        # move the centroid by 0.02 + (2theta_2 - 2theta_1) / 3
        near = np.abs(grid - grid[int(np.argmax(ga * (np.abs(grid - 43.3) < 1)))]) < 1.5
        tt1 = float((grid[near] * ga[near]).sum() / ga[near].sum())
        tt2 = 2 * np.degrees(np.arcsin(1.54439 / 1.5406 * np.sin(np.radians(tt1 / 2))))
        centroid = float((grid[near] * gb[near]).sum() / gb[near].sum())
        assert centroid - tt1 == pytest.approx(0.02 + (tt2 - tt1) / 3, abs=0.01), (tt1, centroid)
        total = np.asarray(y.intensity, float)
        assert total.min() > 0.01 * total.max()  # background 3 % - 1 % at 80 deg: >= 2 % of the maximum
        # counting noise between the peaks (25-35 deg: a few hundred counts, ~ 6 % each), none without it
        flat = (grid > 25) & (grid < 35)
        rough = [np.std(np.diff(np.asarray(r.intensity, float)[flat])) / np.mean(np.asarray(r.intensity, float)[flat])
                 for r in (x, y)]
        assert rough[1] > 0.02 and (x.name[0] == "static" or rough[0] < 0.01), rough  # static: no diffuse
    # averages: the clean Bragg part is the mean of the snapshots'; the noise is the average's own
    for _, run in lab[lab.kind != "static"].groupby("ensemble"):
        snaps = np.stack(run[run.kind == "snapshot"].intensity_bragg.to_numpy())
        avg = np.asarray(run[run.kind == "average"].intensity_bragg.iloc[0])
        np.testing.assert_allclose(avg, snaps.mean(axis=0), rtol=1e-4, atol=1e-4 * avg.max())


@pytest.mark.slow
def test_dataset_readers_see_one_table(tiny_run):
    """pandas, pyarrow.dataset (with and without hive partitioning), polars, duckdb and Hugging Face datasets read
    results/dataset as one table."""
    import duckdb
    import pandas as pd
    import polars as pl
    import pyarrow.dataset as ds
    from datasets import load_dataset

    work, _ = tiny_run
    root = work / "results" / "dataset"
    n = len(pd.read_parquet(root))
    assert n == 3 * 2 * (2 + 2 * 3)
    assert ds.dataset(root).to_table(filter=ds.field("kind") == "average").num_rows == 3 * 2 * 2
    hive = ds.dataset(root, partitioning="hive", format="parquet")  # issue 22: failed with the crystal=<name> layout
    assert hive.to_table(filter=ds.field("crystal") == "Mg").num_rows == n // 3
    frame = pl.read_parquet(f"{root}/*.parquet")
    assert frame.height == n and sorted(frame["crystal"].unique().to_list()) == TINY_CRYSTALS
    assert duckdb.sql(f"SELECT count(*) FROM read_parquet('{root}/*.parquet')").fetchall() == [(n,)]
    hf = load_dataset("parquet", data_files=f"{root}/*.parquet", split="train", cache_dir=str(work / "hf"))
    assert hf.num_rows == n and set(hf["crystal"]) == set(TINY_CRYSTALS)
    row = hf.filter(lambda r: r["kind"] == "average" and r["crystal"] == "MgCO3")[0]
    assert sorted(b["element"] for b in row["B_iso"]) == ["C", "Mg", "O"] and len(row["intensity"]) == 1201


def config_split(config: dict) -> str:
    from mdxrd.grid import split_of

    return split_of(config["seed"], "Cu", config["dataset"]["split"])


@pytest.mark.slow
def test_adding_a_crystal_reruns_only_its_jobs(tiny_run, tmp_path):
    """A crystal appended to the table joins the last shard (MgCO3's): only that shard's jobs run (its MD job reuses
    MgCO3's finished runs); the first shard's part is not rewritten."""
    work, _ = tiny_run
    cfg = yaml.safe_load((work / "config.yaml").read_text())
    cfg["crystals"].append({"name": "Si", "cif": str(REPO / "config" / "structures" / "Si.cif")})
    (tmp_path / "more.yaml").write_text(yaml.safe_dump(cfg))
    res = subprocess.run([*SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(work), "--configfile",
                          str(tmp_path / "more.yaml"), "-n", "--cores", "2"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    counts = _job_counts(res.stdout)
    assert counts["dataset_part"] == 1 and counts["relax"] == 1 and counts["md"] == 1 and counts["dataset"] == 1
    assert "output: results/dataset/part-s000001.parquet" in res.stdout
    assert "output: results/dataset/part-s000000.parquet" not in res.stdout
    # the workflow's own parameter files are back to the tiny config's for the other tests
    subprocess.run([*SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(work), "--configfile",
                    str(work / "config.yaml"), "-n", "--cores", "1"], capture_output=True, check=True)


@pytest.mark.slow
def test_tiny_run_logs_and_benchmarks(tiny_run):
    work, _ = tiny_run
    # one MD job per shard (md.runs_per_job auto: Cu's and Mg's four runs in one batch); each log line of a
    # run names it
    assert sorted(p.name for p in (work / "logs" / "md").glob("*.log")) == ["s000000.log", "s000001.log"]
    text = (work / "logs" / "md" / "s000000.log").read_text()
    for run in ("results/md/Cu/nvt_langevin/300K/r0", "results/md/Cu/npt_berendsen/300K/r0"):
        assert re.search(rf"\[{run}\] \S+ 300 K: 20 steps of 32 atoms", text), text[-3000:]
        # progress lines (md.progress_interval = 50 > 20 steps: the last step only) with T, P, V, speed, ETA
        assert re.search(rf"\[{run}\] step 20/20  T [0-9.]+ K  P -?[0-9.]+ GPa  V [0-9.]+ A\^3  [0-9.]+ steps/s  ETA 0 s",
                         text), text[-3000:]
    # batched: most evaluations held all four runs (the NPT runs' extra bulk-modulus, compliance and
    # pre-equilibration calls come while the NVT runs go on)
    assert re.search(r"4 runs, \d+ batched evaluations, mean batch [23]\.\d", text), text[-3000:]
    assert len(list((work / "results" / "benchmarks" / "md").rglob("*.tsv"))) == 2
    assert len(list((work / "results" / "benchmarks" / "post").rglob("*.tsv"))) == 2


@pytest.mark.slow
def test_regeneration_is_bit_identical(tiny_run, tmp_path):
    """Deleting results and rerunning the same config on the same machine gives the same table."""
    work, _ = tiny_run
    _run_tiny(tmp_path)
    name = Path("results") / "dataset"
    assert content_hash(work / name) == content_hash(tmp_path / name)


@pytest.mark.slow
def test_drop_melted_runs(tiny_run, tmp_path):
    import shutil

    from mdxrd.dataset import write_dataset
    from mdxrd.io import read_json, write_json

    work, config = tiny_run
    shutil.copytree(work / "results", tmp_path / "results")
    df, _, _ = read_dataset(work / "results" / "dataset")
    df = df[df.kind != "static"]
    assert not df.melted.any() and (df.lindemann_ratio < 0.1).all() and (df.lindemann_ratio > 0).all()
    summary = next((tmp_path / "results" / "snapshots" / "Cu" / "npt_berendsen").rglob("summary.json"))
    write_json(summary, {**read_json(summary), "melted": True})
    kept = write_dataset(config, tmp_path / "results", tmp_path / "keep")
    assert kept == len(df) + 3 * 2 * 2 and read_dataset(tmp_path / "keep")[0].melted.eq(True).sum() == 2 * 3
    dropped = write_dataset({**config, "dataset": {**config["dataset"], "drop_melted": True}}, tmp_path / "results",
                            tmp_path / "d")
    assert dropped == len(df) + 3 * 2 * 2 - 2 * 3
    kept_cu = read_dataset(tmp_path / "d")[0].query("crystal == 'Cu'")
    assert set(kept_cu.ensemble.dropna()) == {"nvt_langevin"}


@pytest.mark.slow
def test_tiny_run_qc_and_report(tiny_run):
    """The QC table flags what a 20-step run is (not equilibrated, too few snapshots); the report holds the plots."""
    work, _ = tiny_run
    qc = pq.read_table(work / "results" / "qc" / "Cu" / "qc.parquet").to_pandas()
    runs = qc[(qc.scope != "crystal") & ~qc.scope.str.startswith("harmonic")]
    assert set(runs.check) == {"equilibrated", "independent_snapshots", "not_melted", "phase_kept", "B_iso_vs_pattern",
                               "B_iso_vs_harmonic_Cu"}
    assert len(runs) == 10  # B_iso against the run's own pattern and the harmonic B: NVT only
    assert (runs[runs.check == "independent_snapshots"].status == "warn").all()  # 2 snapshots < 4
    assert (runs[runs.check.isin(["not_melted", "phase_kept"])].status == "pass").all()
    harmonic = qc[qc.scope.str.startswith("harmonic")]  # the relaxed cell's phonons: stable, quantum B >= classical
    assert (harmonic[harmonic.check == "phonons_stable"].status == "pass").all()
    assert (harmonic[harmonic.check == "B_quantum_ratio_Cu"].value >= 1.0).all()
    assert set(qc[qc.scope == "crystal"].check) >= {"relaxation_converged", "relaxed_vs_cif_a"}
    for name in ("patterns", "zoom", "thermal", "traces"):
        png = work / "results" / "plots" / "Cu" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    res = subprocess.run([*SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(work), "--configfile",
                          str(work / "config.yaml"), "--report", "report.html"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    page = (work / "report.html").read_text()
    for name in ("patterns.png", "zoom.png", "thermal.png", "traces.png", "qc.html", "potentials.html"):
        assert name in page
    import base64

    # the plots are embedded (base64), not linked
    assert base64.b64encode((work / "results" / "plots" / "Cu" / "zoom.png").read_bytes())[:200].decode() in page


@pytest.mark.slow
def test_two_potentials_give_two_labelled_sets_of_rows(tmp_path):
    """potentials: [chgnet, sevennet-0]: every crystal runs with both; the dataset labels the rows."""
    pytest.importorskip("sevenn")
    import pandas as pd

    cfg = yaml.safe_load((REPO / ".test" / "config.yaml").read_text())
    cfg["crystals"] = [c for c in cfg["crystals"] if c["name"] == "Cu"]
    for c in cfg["crystals"]:
        c["cif"] = str(REPO / c["cif"])
    cfg.update(potentials=["chgnet", "sevennet-0"], ensembles=["npt_berendsen"], instrument=[{"name": "default"}])
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    res = subprocess.run([*SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(tmp_path), "--configfile",
                          str(tmp_path / "config.yaml"), "--cores", "2"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-5000:]
    df, grid, meta = read_dataset(tmp_path / "results" / "dataset")
    n_snap = len(range(10 + 5, 20 + 1, 5))
    assert df.groupby("potential").size().to_dict() == {"chgnet": 2 + n_snap + 1, "sevennet-0": 2 + n_snap + 1}
    assert set(df.crystal) == {"Cu"} and df.split.nunique() == 1  # one crystal, one split for both
    versions = df.groupby("potential").potential_version.first().to_dict()
    import importlib.metadata

    assert versions == {"chgnet": importlib.metadata.version("chgnet"), "sevennet-0": "0.13.0"}
    assert df.groupby("potential").potential_model_sha256.nunique().to_dict() == {"chgnet": 1, "sevennet-0": 1}
    # two potentials, two physics: different relaxed cells and different MD
    relaxed = df[(df.kind == "static") & (df.static_cell == "relaxed")].set_index("potential").a
    assert relaxed["chgnet"] != relaxed["sevennet-0"] and abs(relaxed["chgnet"] / relaxed["sevennet-0"] - 1) < 0.03
    runs = json.loads((tmp_path / "results" / "md" / "Cu@sevennet-0" / "npt_berendsen" / "300K" / "r0" /
                       "run.json").read_text())
    assert runs["calculator"] == "SevenNetCalculator" and runs["potential"] == "sevennet-0"
    table = pd.read_csv(tmp_path / "results" / "qc" / "potentials.csv")
    assert {"chgnet value", "sevennet-0 value", "reference"} <= set(table.columns)
    a0 = table[table.quantity.str.startswith("a relaxed")].iloc[0]
    assert a0["chgnet value"] == pytest.approx(relaxed["chgnet"]) and a0["reference"] == pytest.approx(3.615, abs=0.01)


@pytest.mark.slow
def test_appending_crystals_runs_md_only_for_them(tiny_run, tmp_path):
    """Ten crystals appended to a finished sheet: the last shard (MgCO3's) gains one and five shards are new. Only
    the new crystals' runs do MD (MgCO3's are reused inside its shard's rerun job), the first shard's jobs do not
    run again, and the dataset holds every crystal."""
    import shutil

    work, _ = tiny_run
    copy = tmp_path / "w"
    shutil.copytree(work, copy, symlinks=True)  # copy2 keeps the modification times Snakemake compares
    first_md = (copy / "results" / "shards" / "s000000" / "md.json").stat().st_mtime_ns
    cfg = yaml.safe_load((copy / "config.yaml").read_text())
    cu = next(c for c in cfg["crystals"] if c["name"] == "Cu")
    cfg["crystals"] += [{**cu, "name": f"Cu{i}", "supercell": [1, 1, 1]} for i in range(10)]  # 4 atoms each
    (copy / "config.yaml").write_text(yaml.safe_dump(cfg))
    res = subprocess.run([*SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(copy), "--configfile",
                          str(copy / "config.yaml"), "--cores", "2"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-5000:]
    manifests = {p.parent.name: json.loads(p.read_text()) for p in (copy / "results" / "shards").glob("*/md.json")}
    assert sorted(manifests) == [f"s{i:06d}" for i in range(7)]
    made = {(e["unit"], e["ensemble"]) for shard, m in manifests.items() if shard != "s000000"
            for e in m["entries"] if not e["reused"]}
    assert made == {(f"Cu{i}", e) for i in range(10) for e in ("nvt_langevin", "npt_berendsen")}
    assert [(e["unit"], e["reused"]) for e in manifests["s000001"]["entries"]] == [
        ("MgCO3", True), ("MgCO3", True), ("Cu0", False), ("Cu0", False)]
    assert (copy / "results" / "shards" / "s000000" / "md.json").stat().st_mtime_ns == first_md  # not rerun
    df, _, _ = read_dataset(copy / "results" / "dataset")
    assert set(df.crystal) == set(TINY_CRYSTALS) | {f"Cu{i}" for i in range(10)}
