"""The SLURM profile: dry runs anywhere, and a real run on a single-node SLURM cluster.

The cluster (tests/slurm/start.sh, stop.sh) is started from Debian's slurmctld, slurmd,
slurm-client and munge packages (.ci/run installs them); the end-to-end test skips without
them or without root. It installs profiles/slurm the way README.md says, runs the tiny config
with ``snakemake --profile slurm``, reads the partition and GPU allocation of every job from
``scontrol show job`` (finished jobs stay for MinJobAge = 900 s: there is no slurmdbd, so no
sacct) and compares the dataset with the local executor's.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from mdxrd.dataset import content_hash

REPO = Path(__file__).resolve().parents[1]
SLURM_DIR = REPO / "tests" / "slurm"
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
DATASET = Path("results") / "dataset"
CLUSTER_BINARIES = ("munged", "munge", "unmunge", "slurmctld", "slurmd", "sbatch", "srun", "squeue",
                    "scontrol", "sinfo", "scancel")
RUN_TIMEOUT_S = 600

plugin = pytest.importorskip("snakemake_executor_plugin_slurm",
                             reason="snakemake-executor-plugin-slurm is not installed (pip install '.[test]')")


def _submissions(dry_run_output: str) -> dict[str, int]:
    """Jobs a dry run would submit: top-level rules (not `all`, which runs nothing) and group jobs."""
    counts: dict[str, int] = {}
    for m in re.finditer(r"^rule (\w+):$|^\[[^]]*\] Group job (\w+) ", dry_run_output, re.MULTILINE):
        name = m.group(1) or f"group {m.group(2)}"
        if name != "all":
            counts[name] = counts.get(name, 0) + 1
    return counts


def _path_without_slurm(tmp_path: Path) -> str:
    """A PATH with a shell and `which` (the plugin calls it) but no SLURM command."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("bash", "sh", "which"):
        if found := shutil.which(name):
            (bin_dir / name).symlink_to(found)
    assert not any(shutil.which(b, path=str(bin_dir)) for b in ("sinfo", "sbatch", "squeue", "sacct"))
    return str(bin_dir)


def test_dry_run_with_slurm_profile_default_grid(tmp_path):
    """`snakemake -n --profile profiles/slurm` on a machine without SLURM: the default grid is one shard of the
    profile's size, five shard jobs and the gathering group."""
    env = {**os.environ, "PATH": _path_without_slurm(tmp_path)}
    work = tmp_path / "work"
    work.mkdir()
    (work / "config").symlink_to(REPO / "config")
    res = subprocess.run([*SNAKEMAKE, "-n", "--profile", str(REPO / "profiles" / "slurm"), "-s", str(REPO / "Snakefile"),
                          "-d", str(work)], env=env, capture_output=True, text=True, timeout=300)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-5000:]
    assert "workflow specific profile profiles/default" in out
    assert _submissions(res.stdout) == {"relax": 1, "md": 1, "post": 1, "qc": 1, "dataset_part": 1, "group final": 1}
    # md asks for one GPU and a time limit from atoms x steps x runs; the CPU rules for none
    md_resources = re.findall(r"^rule md:\n(?:    .*\n)*?    resources: (.*)$", res.stdout, re.MULTILINE)
    assert len(md_resources) == 1 and all("gpu=1" in r and "runtime=" in r for r in md_resources)
    other = re.findall(r"^ *rule (?:relax|post|qc|dataset_part|dataset):\n(?: .*\n)*? *resources: (.*)$",
                       res.stdout, re.MULTILINE)
    assert len(other) == 5 and not any("gpu" in r for r in other)
    assert all("runtime=" in r and "mem_mb=" in r for r in other)
    # the profile's shard: 125 crystals (the default grid's 3 in one)
    assert json.loads((work / "results" / "params" / "config.json").read_text())["shards"] == {"crystals": 125}


@pytest.mark.parametrize("md, expect, absent", [
    # an MD job on the CPU asks for no GPU and no CUDA host memory (mdxrd.grid.MD_CUDA_HOST_MEM_MB)
    ("device: cpu", "mem_mb=2843,", ("gpu", "gres")),
    # sites without --gpus; 3,000 MB more host memory for the CUDA process
    ("gpu_request: gres, gpu_job_cpus: 6", "gres=gpu:1, cpus_per_gpu=6, runtime=19, mem_mb=5843,", (", gpu=",)),
])
def test_md_gpu_request_follows_the_config(tmp_path, md, expect, absent):
    env = {**os.environ, "PATH": _path_without_slurm(tmp_path)}
    work = tmp_path / "work"
    work.mkdir()
    (work / "config").symlink_to(REPO / "config")
    res = subprocess.run([*SNAKEMAKE, "-n", "--profile", str(REPO / "profiles" / "slurm"), "-s", str(REPO / "Snakefile"),
                          "-d", str(work), "--config", "shards={crystals: 125}",
                          f"md={{runtime_ms_per_atom_step: 1, {md}}}"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, (res.stdout + res.stderr)[-5000:]
    (resources,) = re.findall(r"^rule md:\n(?:    .*\n)*?    resources: (.*)$", res.stdout, re.MULTILINE)
    assert expect in resources and not any(a in resources for a in absent), resources


def test_partition_file_sends_gpu_jobs_to_gpu_partition():
    """profiles/slurm/partitions.yaml: the plugin's choice for a GPU job and for a CPU job."""
    from snakemake_executor_plugin_slurm.partitions import get_best_partition, read_partition_file

    partitions = read_partition_file(REPO / "profiles" / "slurm" / "partitions.yaml")
    log = SimpleNamespace(info=lambda *a, **k: None, debug=lambda *a, **k: None, warning=lambda *a, **k: None)

    def job(**resources):
        return SimpleNamespace(name="x", threads=1, resources=SimpleNamespace(get=resources.get, **resources))

    assert get_best_partition(partitions, job(gpu=1, mem_mb=1102, runtime=20), log) == "gpu"
    assert get_best_partition(partitions, job(mem_mb=2000, runtime=40), log) == "cpu"


# --------------------------------------------------------------------------------------------
# a real cluster


def _skip_reason() -> str | None:
    if sys.platform != "linux" or os.geteuid() != 0:
        return "the SLURM test cluster needs root on Linux"
    missing = [b for b in CLUSTER_BINARIES if shutil.which(b) is None]
    if missing:
        return f"SLURM/munge binaries absent ({', '.join(missing)}): apt-get install slurmctld slurmd slurm-client munge"
    for name in ("slurm.conf", "gres.conf"):
        conf = Path("/etc/slurm") / name
        if conf.exists() and not conf.read_text().startswith("# mdxrd test cluster"):
            return f"{conf} belongs to another SLURM installation"
    return None


@pytest.fixture(scope="module")
def cluster():
    """A single-node SLURM cluster (partitions cpu and gpu, two fake GPUs), torn down afterwards."""
    reason = _skip_reason()
    if reason and os.environ.get("MDXRD_REQUIRE_SLURM") == "1":  # CI installs the cluster: it must run there
        pytest.fail(f"MDXRD_REQUIRE_SLURM=1 but {reason}")
    if reason:
        pytest.skip(reason)
    state = Path(tempfile.mkdtemp(prefix="mdxrd-slurm-", dir="/tmp"))  # short, world-traversable (munged)
    try:
        res = subprocess.run(["bash", str(SLURM_DIR / "start.sh"), str(state)], capture_output=True, text=True,
                             timeout=120)
        if res.returncode == 3:
            if os.environ.get("MDXRD_REQUIRE_SLURM") == "1":
                pytest.fail(res.stderr.strip())
            pytest.skip(res.stderr.strip())
        assert res.returncode == 0, f"cluster start failed:\n{res.stdout}\n{res.stderr}"
        yield state
    finally:
        subprocess.run(["bash", str(SLURM_DIR / "stop.sh"), str(state)], capture_output=True, timeout=120)
        shutil.rmtree(state, ignore_errors=True)


def _tiny_config(work: Path) -> Path:
    cfg = yaml.safe_load((REPO / ".test" / "config.yaml").read_text())
    for c in cfg["crystals"]:
        c["cif"] = str(REPO / c["cif"])
    cfg.setdefault("md", {})["gpu_job_cpus"] = 1  # the test node has nproc CPUs (2 here) for two fake GPUs
    work.mkdir(parents=True, exist_ok=True)
    (work / "config.yaml").write_text(yaml.safe_dump(cfg))
    return work / "config.yaml"


def _readme_install_command() -> str:
    """The README's one-line install of the profile into the user's config directory."""
    section = (REPO / "README.md").read_text().split("## Running on a cluster", 1)[1].split("\n## ", 1)[0]
    lines = [ln.strip() for ln in section.splitlines() if "~/.config/snakemake/slurm" in ln and "cp " in ln]
    assert len(lines) == 1, lines
    return lines[0].split(" #", 1)[0]


def _scontrol_jobs(jobid: str) -> list[dict[str, str]]:
    """``scontrol show job`` of a job, or of every task of an array job."""
    out = subprocess.run(["scontrol", "show", "job", "-d", "-o", jobid], capture_output=True, text=True,
                         check=True, timeout=30).stdout
    return [dict(re.findall(r"(?:^|\s)([A-Za-z_/:]+)=(\S*)", line)) for line in out.splitlines() if line.strip()]


@pytest.mark.slow
def test_snakemake_profile_slurm_runs_on_a_cluster(cluster, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SNAKEMAKE_", "XDG_CONFIG"))}
    env["HOME"] = str(home)
    install = _readme_install_command()
    res = subprocess.run(["bash", "-c", install], cwd=REPO, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert (home / ".config" / "snakemake" / "slurm" / "config.yaml").is_file()
    assert (home / ".config" / "snakemake" / "slurm" / "partitions.yaml").is_file()

    work = tmp_path / "slurm_run"
    config = _tiny_config(work)
    # the profile as installed, from a working directory without ./slurm; for this cluster only:
    # no slurmdbd, so squeue (MinJobAge 900 s) for status, a first check after 2 s, logs kept
    # two shards (the tiny config's), post-processing on the node's two cores
    cmd = ["timeout", "-k", "10", str(RUN_TIMEOUT_S), *SNAKEMAKE, "--profile", "slurm", "-s", str(REPO / "Snakefile"),
           "--configfile", str(config), "--config", "shards={crystals: 2}", "--set-threads", "post=2",
           "--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "2",
           "--slurm-keep-successful-logs"]
    res = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
    out = res.stdout + res.stderr
    (tmp_path / "snakemake_slurm.out").write_text(out)
    if res.returncode != 0:
        logs = "\n".join(f"== {p}\n{p.read_text()[-2000:]}" for p in (work / ".snakemake").rglob("slurm_logs/**/*.log"))
        pytest.fail(f"snakemake --profile slurm exited {res.returncode}:\n{out[-6000:]}\n{logs[-6000:]}")
    assert "Using profiles slurm and workflow specific profile" in out, out[:2000]

    # every sbatch call: a job (its log path names the rule or group) or a job array (its tasks' logs do)
    logs = work / ".snakemake" / "slurm_logs"
    calls = {jobid: Path(log).relative_to(logs).parts[0]
             for jobid, log in re.findall(r"has been submitted with SLURM jobid (\d+) \(log: (\S+)\)", out)}
    for jobid in re.findall(r"Submitted array job with Snakemake IDs \S+ and SLURM job ID (\d+)", out):
        (task_log, *_) = sorted(logs.glob(f"*/{jobid}_*.log"))
        calls[jobid] = task_log.parent.name
    kinds = sorted(calls.values())
    assert set(kinds) == {"rule_relax", "rule_md", "rule_post", "rule_qc", "rule_dataset_part",
                          "group_final_dataset_qc_potentials"}, out[-4000:]
    # two shards: 5 shard jobs each and the gathering group is 11 jobs; the two relax jobs start together
    # and go out as one array, so at most 10 sbatch calls
    assert "rule_relax" in {calls[j] for j in re.findall(r"SLURM job ID (\d+)", out)}, out[-4000:]
    assert len(calls) <= 10, kinds
    print(f"\nSLURM: {len(calls)} sbatch calls for 11 jobs: {kinds}")
    for jobid, kind in calls.items():
        for job in _scontrol_jobs(jobid):
            assert job["JobState"] == "COMPLETED", (jobid, kind, job)
            if kind == "rule_md":  # the GPU partition, one GPU allocated
                assert job["Partition"] == "gpu" and job["JOB_GRES"] == "gpu:1", (jobid, job)
            else:  # the CPU partition, no GPU
                assert job["Partition"] == "cpu" and job.get("JOB_GRES", "(null)") == "(null)", (jobid, kind, job)
    # the shard manifests: MgCO3 alone in the second shard
    manifest = json.loads((work / "results" / "shards" / "s000001" / "md.json").read_text())
    assert {e["unit"] for e in manifest["entries"]} == {"MgCO3"}

    # the same table as the local executor makes from the same config (same seeds, same machine)
    ref = tmp_path / "local_run"
    ref_config = _tiny_config(ref)
    res = subprocess.run(["timeout", "-k", "10", str(RUN_TIMEOUT_S), *SNAKEMAKE, "-s", str(REPO / "Snakefile"),
                          "-d", str(ref), "--configfile", str(ref_config), "--cores", "2"],
                         env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-5000:]
    assert content_hash(work / DATASET) == content_hash(ref / DATASET)
