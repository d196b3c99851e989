"""GPU readiness, tested on the CPU: device resolution and its errors, run.json's device record, the relax
stage's device, GPU batch sizing from free memory and the halving on an out-of-memory error (both with a
fake figure / a fake error), the config keys of the SLURM GPU request. CUDA-only: CUDA forces vs CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from ase.build import bulk
from conftest import cu_fcc, md_shard
from mdxrd import calculator
from mdxrd.calculator import graph_memory_bytes, make_calculator, resolve_device
from mdxrd.config import ConfigError, validate_config
from mdxrd.md import run_shard
from mdxrd.params import reference_params, relax_device, structure_params
from test_config import REPO

SLURM_GPU_VARS = ("SLURM_JOB_GPUS", "SLURM_STEP_GPUS", "SLURM_GPUS_ON_NODE")


@pytest.fixture
def no_cuda(monkeypatch):
    """A node where torch sees no CUDA device and SLURM gave no GPU."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for var in SLURM_GPU_VARS:
        monkeypatch.delenv(var, raising=False)


def test_cuda_without_a_device_is_refused_naming_the_key_and_the_devices(no_cuda):
    assert resolve_device("auto") == "cpu" and resolve_device("cpu") == "cpu"
    for device in ("cuda", "cuda:1"):
        with pytest.raises(RuntimeError, match=rf"md.device: '{device}' requested but .* sees 0 CUDA device") as err:
            resolve_device(device)
        assert "allowed here: ['cpu', 'auto']" in str(err.value)


def test_auto_fails_loudly_when_slurm_gave_a_gpu_torch_does_not_see(no_cuda, monkeypatch):
    monkeypatch.setenv("SLURM_GPUS_ON_NODE", "0")  # no GPU given: the CPU is right
    assert resolve_device("auto") == "cpu"
    monkeypatch.setenv("SLURM_JOB_GPUS", "3")
    monkeypatch.setattr(calculator, "_nvidia_device_files", list)  # a fake GPU (SLURM test cluster)
    assert resolve_device("auto") == "cpu"
    monkeypatch.setattr(calculator, "_nvidia_device_files", lambda: ["/dev/nvidia3"])
    with pytest.raises(RuntimeError, match=r"md.device: auto on a job that was given a GPU.*SLURM_JOB_GPUS"):
        resolve_device("auto")
    assert resolve_device("cpu") == "cpu"  # an explicit cpu is the user's choice


def test_shard_job_refuses_cuda_at_start_before_any_run(no_cuda, tmp_path):
    runs = [dict(ensemble="nvt_berendsen", temperature_K=300.0, n_steps=4, n_equil=2, n_interval=2, device=d)
            for d in ("cpu", "cuda")]
    params, supercell, run_dir, manifest = md_shard(tmp_path, cu_fcc(repeat=1), runs)
    with pytest.raises(RuntimeError, match="md.device: 'cuda' requested"):
        run_shard(params, supercell, run_dir, manifest)
    assert not (tmp_path / "md").exists() and not manifest.exists()  # not even the cpu run started


def test_relax_stage_device_never_demands_cuda(monkeypatch):
    """The relax stage runs on CPU nodes: md.device cuda becomes auto there; cpu and auto are kept (stamps)."""
    for md_device, expected in [("cpu", "cpu"), ("auto", "auto"), ("cuda", "auto"), ("cuda:1", "auto")]:
        assert relax_device({"md": {"device": md_device}}) == expected
    monkeypatch.chdir(REPO)
    raw = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    raw["md"]["device"] = "cuda"
    cfg = validate_config(raw, "c.yaml")
    unit = cfg["crystals"][0]["name"]
    assert structure_params(cfg, unit)["device"] == "auto" and reference_params(cfg, unit)["device"] == "auto"


@pytest.fixture(scope="module")
def structures():
    """Five small crystals of different sizes (2 to 16 atoms): bond and angle counts differ."""
    rng = np.random.default_rng(0)
    out = [bulk("Si", "diamond", a=5.43), bulk("Cu", "fcc", a=3.615, cubic=True), bulk("Al", "fcc", a=4.05),
           bulk("Cu", "fcc", a=3.615, cubic=True).repeat((2, 2, 1)), bulk("NaCl", "rocksalt", a=5.64)]
    for a in out:
        a.positions += rng.normal(0, 0.05, a.positions.shape)
    return out


def _recording(monkeypatch, oom_above: int | None = None) -> list[int]:
    """Record the batch length of every pass of energy_forces_stress; raise CUDA's OOM above ``oom_above``."""
    sizes: list[int] = []
    real = calculator.energy_forces_stress

    def fake(model, graphs, **kw):
        sizes.append(len(graphs))
        if oom_above is not None and len(graphs) > oom_above:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (fake)")
        return real(model, graphs, **kw)

    monkeypatch.setattr(calculator, "energy_forces_stress", fake)
    return sizes


def _single(calc, structures):
    out = []
    for a in structures:
        calc.calculate(a.copy())
        out.append(dict(calc.results))
    return out


def _same(results, reference):
    for r, ref in zip(results, reference, strict=True):
        assert r["energy"] == pytest.approx(ref["energy"], abs=1e-5)
        np.testing.assert_allclose(r["forces"], ref["forces"], atol=1e-5)


def test_gpu_batch_is_split_to_fit_the_free_memory(structures, monkeypatch):
    calc = make_calculator("fast", device="cpu")
    reference = _single(calc, structures)
    graphs = [calculator.crystal_graph(calc.model.graph_converter, calculator._structure(a)) for a in structures]
    need = np.array([graph_memory_bytes(g) for g in graphs])
    assert np.all(np.diff([graph_memory_bytes(g) for g in graphs[1:4:2]]) > 0)  # 4 -> 16 Cu atoms: more memory
    # a device whose free memory holds the first two structures and not the third (budget = 0.8 x free)
    free = (need[0] + need[1] + 0.5 * need[2]) / calculator.GPU_MEMORY_FRACTION
    calc.max_batch, calc.free_memory_bytes = None, lambda: free
    sizes = _recording(monkeypatch)
    results = calc.calculate_batch(structures)
    assert sizes[0] == 2 and sum(sizes) == len(structures)
    _same(results, reference)
    calc.free_memory_bytes = lambda: 0.0  # less than one structure: one at a time, never an error
    calc._memory_budget = None
    sizes.clear()
    _same(calc.calculate_batch(structures), reference)
    assert sizes == [1] * len(structures)


def test_out_of_memory_halves_the_batch_for_the_rest_of_the_run(structures, monkeypatch):
    calc = make_calculator("fast", device="cpu")
    reference = _single(calc, structures)
    calc.max_batch = None
    sizes = _recording(monkeypatch, oom_above=2)
    _same(calc.calculate_batch(structures), reference)
    assert sizes == [5, 2, 2, 1] and calc.max_batch == 2  # 5 fails once, then halves: 2, 2, 1
    sizes.clear()
    _same(calc.calculate_batch(structures), reference)
    assert sizes == [2, 2, 1]  # the next step does not try the full batch again


def test_out_of_memory_of_one_structure_is_raised(structures, monkeypatch):
    calc = make_calculator("fast", device="cpu")
    _recording(monkeypatch, oom_above=0)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        calc.calculate_batch(structures[:1])


@pytest.mark.parametrize("key, value, expect", [
    ("gpu_request", "gpu", "md.gpu_request: 'gpu' is not one of ['gpus', 'gres']"),
    ("gpu_job_cpus", 0, "md.gpu_job_cpus: 0 is less than the minimum of 1"),
])
def test_slurm_gpu_keys_checked_at_parse_time(monkeypatch, key, value, expect):
    monkeypatch.chdir(REPO)
    raw = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    raw["md"][key] = value
    with pytest.raises(ConfigError) as err:
        validate_config(raw, "my.yaml")
    assert expect in str(err.value)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_forces_match_cpu(structures, tmp_path):
    """CHGNet on CUDA against the CPU: float32 and other summation orders (atomics) give ~1e-5 eV/A."""
    cpu, gpu = make_calculator("fast", device="cpu"), make_calculator("fast", device="cuda")
    assert gpu.device == "cuda" and calculator.device_info("cuda")["gpu"]
    for a_cpu, a_gpu in zip(_single(cpu, structures), gpu.calculate_batch(structures), strict=True):
        assert a_gpu["energy"] == pytest.approx(a_cpu["energy"], abs=1e-4)
        np.testing.assert_allclose(a_gpu["forces"], a_cpu["forces"], atol=1e-4)
        np.testing.assert_allclose(a_gpu["stress"], a_cpu["stress"], atol=1e-6)  # eV/A^3 (~0.2 MPa)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_run_json_records_the_gpu(tmp_path):
    from mdxrd.md import MDParams, run_md

    params = MDParams(ensemble="nvt_langevin", temperature_K=300.0, n_steps=4, n_equil=2, n_interval=2, seed=1,
                      device="cuda")
    rec = run_md(cu_fcc(repeat=1), params, tmp_path)
    assert rec["device"] == "cuda" and rec["torch_cuda"] == torch.version.cuda
    assert rec["gpu"] == torch.cuda.get_device_name(0)


def test_engine_model_splits_passes_to_fit_and_halves_on_out_of_memory(structures, monkeypatch):
    """The engine's CHGNet model (md.engine torch) evaluates through the calculator's passes: a batch the free
    memory cannot hold is split (2 of the 5 structures fit), a CUDA out-of-memory error halves it, and every
    system's energy and forces equal the calculator's per structure."""
    from mdxrd.engine import BatchState
    from mdxrd.engine.models import CHGNetModel

    calc = make_calculator("fast", device="cpu")
    reference = _single(calc, structures)
    state = BatchState.from_atoms(structures, temperature_K=300.0, timestep_fs=1.0)
    graphs = [calculator.crystal_graph(calc.model.graph_converter, calculator._structure(a)) for a in structures]
    need = np.array([graph_memory_bytes(g) for g in graphs])
    calc.max_batch, calc.free_memory_bytes = None, lambda: (need[0] + need[1] + 0.5 * need[2]) / calculator.GPU_MEMORY_FRACTION
    sizes = _recording(monkeypatch)
    model = CHGNetModel(calc.model, calculator=calc)

    def check():
        e, f, _ = model.energy_forces_stress(state)
        _same([{"energy": e[k].item(), "forces": x.numpy()} for k, x in
               enumerate(torch.split(f, [len(a) for a in structures]))], reference)

    check()
    assert sizes[0] == 2 and sum(sizes) == len(structures)
    calc.free_memory_bytes, calc._memory_budget = None, None
    sizes.clear()
    sizes_oom = _recording(monkeypatch, oom_above=2)
    check()
    assert sizes_oom == [5, 2, 2, 1] and calc.max_batch == 2
