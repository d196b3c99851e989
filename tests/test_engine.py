"""Batched torch MD engine (mdxrd.engine) against ASE and mdxrd's ASE-based integrators."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import units
from ase.build import bulk
from ase.calculators.lj import LennardJones
from ase.constraints import FixCom
from ase.md.nvtberendsen import NVTBerendsen
from ase.md.velocitydistribution import Stationary, thermalize_momenta
from mdxrd.engine import BatchState
from mdxrd.engine.integrators import evaluate, md_step
from mdxrd.engine.models import LennardJonesModel
from mdxrd.engine.runner import run
from mdxrd.integrators import NPTBerendsenOneForce, cartesian_point_group

LJ = {"sigma": 3.4, "epsilon": 0.0104, "rc": 8.5}  # argon-like


def argon(reps, temperature_K, seed, strain=0.0):
    a = bulk("Ar", "fcc", a=5.26, cubic=True).repeat(reps)
    a.set_cell(a.cell.array @ (np.eye(3) + strain), scale_atoms=True)
    rng = np.random.default_rng(seed)
    a.positions += rng.normal(0, 0.02, a.positions.shape)
    thermalize_momenta(a, temperature_K, rng=rng)
    Stationary(a)
    return a


def two_systems():
    shear = np.array([[0.01, 0.004, 0], [0.004, -0.01, 0], [0, 0, 0.02]])
    mixed = argon((3, 2, 2), 25.0, 2, strain=shear)
    mixed.set_masses(np.where(np.arange(len(mixed)) % 3 == 0, 80.0, 39.95))  # unequal masses: FixCom's terms differ
    Stationary(mixed)
    return [argon((2, 2, 2), 60.0, 1), mixed]


def test_lj_equals_ase():
    """Energy, forces, stress of a batch equal ASE's LennardJones per system (shifted and smooth)."""
    systems = two_systems()
    for smooth in (False, True):
        state = BatchState.from_atoms(systems, temperature_K=[60, 25], timestep_fs=2.0)
        e, f, s = LennardJonesModel(**LJ, smooth=smooth).energy_forces_stress(state)
        f_split = np.split(f.numpy(), np.cumsum([len(a) for a in systems])[:-1])
        for k, a in enumerate(systems):
            a = a.copy()
            a.calc = LennardJones(**LJ, smooth=smooth)
            assert abs(e[k].item() - a.get_potential_energy()) < 1e-10
            np.testing.assert_allclose(f_split[k], a.get_forces(), rtol=0, atol=1e-10)
            np.testing.assert_allclose(s[k].numpy(), a.get_stress(voigt=False), rtol=0, atol=1e-10)


def _ase_trajectory(atoms, make, n_steps):
    atoms = atoms.copy()
    atoms.calc = LennardJones(**LJ)
    atoms.set_constraint(FixCom())  # as mdxrd.md.make_dynamics
    dyn = make(atoms)
    dyn.run(n_steps)
    return atoms


def _max_dev(state, references):
    got = state.to_atoms()
    return max(max(np.abs(g.positions - r.positions).max(), np.abs(g.cell.array - r.cell.array).max())
               for g, r in zip(got, references))


def test_nvt_berendsen_matches_ase():
    """100 NVT-Berendsen steps of 2 argon crystals (32 and 48 atoms, 60 and 25 K start, T0 = 40 and
    80 K) in one batch follow ASE's NVTBerendsen with FixCom to <= 1e-6 Angstrom."""
    systems, t0, taut = two_systems(), [40.0, 80.0], [50.0, 20.0]
    refs = [_ase_trajectory(a, lambda at, k=k: NVTBerendsen(at, 4 * units.fs, temperature_K=t0[k],
                                                             taut=taut[k] * units.fs), 100)
            for k, a in enumerate(systems)]
    state = BatchState.from_atoms(systems, temperature_K=t0, timestep_fs=4.0, taut_fs=taut)
    model = LennardJonesModel(**LJ)
    state, removed = run(state, model, 100)
    assert not removed
    moved = max(np.abs(r.positions - a.positions).max() for r, a in zip(refs, systems))
    assert moved > 0.1  # the test sees real motion
    print(f"NVT-Berendsen: moved {moved:.3f} A, max deviation from ASE {_max_dev(state, refs):.2e} A")
    assert _max_dev(state, refs) <= 1e-6
    np.testing.assert_allclose(state.temperature().numpy(), [r.get_temperature() for r in refs], rtol=1e-8)


def tetragonal_pair():
    """Two argon 2x2x2 crystals strained to c/a = 1.02, and the Cartesian point group (4/mmm) of the
    unrattled cell."""
    strain = np.diag([0.0, 0.0, 0.02])
    parent = bulk("Ar", "fcc", a=5.26, cubic=True)
    parent.set_cell(parent.cell.array @ (np.eye(3) + strain), scale_atoms=True)
    rotations = cartesian_point_group(parent)[0]
    return [argon((2, 2, 2), 60.0, 11, strain=strain), argon((2, 2, 2), 25.0, 12, strain=strain)], rotations


@pytest.mark.parametrize(("cell", "group"), [("isotropic", False), ("tensor", False), ("tensor", True)])
def test_npt_berendsen_matches_one_force(cell, group):
    """100 NPT-Berendsen steps (one force call per step) follow NPTBerendsenOneForce to <= 1e-6
    Angstrom in positions and cell, with a volume change far above that. With the point group
    (tetragonal crystals, 16 operations) the cell also stays tetragonal while c/a moves."""
    systems, rotations = tetragonal_pair() if group else (two_systems(), None)
    t0, p0 = [40.0, 80.0], [0.0, 0.2]
    kw = {"taut": 50 * units.fs, "taup": 200 * units.fs, "compressibility_au": 0.3 / units.GPa}
    refs = [_ase_trajectory(a, lambda at, k=k: NPTBerendsenOneForce(
        at, 4 * units.fs, temperature_K=t0[k], pressure_au=p0[k] * units.GPa, cell=cell, point_group=rotations,
        **kw), 100) for k, a in enumerate(systems)]
    state = BatchState.from_atoms(systems, temperature_K=t0, timestep_fs=4.0, taut_fs=50.0, taup_fs=200.0,
                                  compressibility_per_GPa=0.3, pressure_GPa=p0, ensemble="npt_berendsen",
                                  npt_cell=cell, rotations=[rotations] * 2)
    model = LennardJonesModel(**LJ)
    evaluate(state, model)
    for _ in range(100):
        md_step(state, model)
    dv = max(abs(r.get_volume() / a.get_volume() - 1) for r, a in zip(refs, systems))
    assert dv > 1e-3
    print(f"NPT-Berendsen {cell} group={group}: |dV/V| {dv:.2e}, max deviation {_max_dev(state, refs):.2e} A")
    assert _max_dev(state, refs) <= 1e-6
    if group:
        for h0, h in zip((a.cell.array for a in systems), state.cell.numpy()):
            assert abs(h[0, 0] - h[1, 1]) < 1e-12 and np.abs(h - np.diag(np.diag(h))).max() < 1e-12
            assert abs(h[2, 2] / h[0, 0] - h0[2, 2] / h0[0, 0]) > 1e-4  # c/a follows the stress


def test_langevin_canonical_temperature():
    """BAOAB Langevin, 64 argon systems x 32 atoms, T0 = 50 K: the kinetic temperature's mean is within
    3 standard errors of T0 and its variance within 10 % of the canonical 2 T0^2 / (3N - 3).

    1,000 production steps per system after 200 of equilibration: 64,000 system-steps (>= 10^4). The
    standard error comes from the 64 systems' time averages (independent blocks: own seeds). A short
    cutoff (6 Angstrom, two neighbour shells) keeps it cheap; the kinetic statistics do not depend on it."""
    n_sys, t0 = 64, 50.0
    systems = [argon((2, 2, 2), t0, 100 + k) for k in range(n_sys)]
    state = BatchState.from_atoms(systems, temperature_K=t0, timestep_fs=2.0, friction_per_fs=0.02,
                                  seeds=range(n_sys), ensemble="nvt_langevin")
    model = LennardJonesModel(**{**LJ, "rc": 6.0})
    samples = []
    state, removed = run(state, model, 1200, every=1,
                         callback=lambda n, s: samples.append(s.temperature()) if n > 200 else None)
    assert not removed
    t = torch.stack(samples).numpy()  # (1000, 64)
    means = t.mean(0)
    stderr = means.std(ddof=1) / np.sqrt(n_sys)
    assert abs(means.mean() - t0) < 3 * stderr, (means.mean(), stderr)
    var_expected = 2 * t0 ** 2 / (3 * 32 - 3)
    var = ((t - t0) ** 2).mean()  # about the known mean: no bias from the correlated samples
    print(f"Langevin: <T> = {means.mean():.3f} K +- {stderr:.3f}, Var(T) / canonical = {var / var_expected:.4f}")
    assert abs(var / var_expected - 1) < 0.10, (var, var_expected)


def test_runaway_system_leaves_others_bit_identical():
    """A system with absurd velocities leaves the batch at step 1 (reported by its index); the other two
    follow exactly (bitwise) the trajectories of a batch without it."""
    base = [argon((2, 2, 2), 40.0, 7), argon((2, 2, 2), 40.0, 8), argon((3, 2, 2), 30.0, 9)]
    hot = base[1].copy()
    hot.set_momenta(hot.get_momenta() * 100)
    kw = {"timestep_fs": 4.0, "taut_fs": 50.0}
    full = BatchState.from_atoms([base[0], hot, base[2]], temperature_K=[40, 40, 30], **kw)
    state, removed = run(full, LennardJonesModel(**LJ), 60)
    assert [(r.system_id, r.step) for r in removed] == [(1, 1)]
    assert state.system_id.tolist() == [0, 2]
    alone = BatchState.from_atoms([base[0], base[2]], temperature_K=[40, 30], **kw)
    alone, none = run(alone, LennardJonesModel(**LJ), 60)
    assert not none
    assert torch.equal(state.positions, alone.positions) and torch.equal(state.momenta, alone.momenta)


def _mixed_chgnet_batch(graphs_on_device, force_tol):
    """CHGNet on a mixed batch (Si 64 atoms, NaCl 8, Cu 4, rattled) against FastCHGNetCalculator per structure:
    forces to ``force_tol`` eV/Angstrom, energies to 1e-6 eV/atom, stress to 1e-6 eV/Angstrom^3; returns the
    engine's forces and those of the host graphs."""
    from mdxrd.calculator import FastCHGNetCalculator, load_model
    from mdxrd.engine.models import CHGNetModel

    rng = np.random.default_rng(3)
    systems = [bulk("Si", "diamond", a=5.43, cubic=True).repeat(2), bulk("NaCl", "rocksalt", a=5.64, cubic=True),
               bulk("Cu", "fcc", a=3.61, cubic=True)]
    for a in systems:
        a.positions += rng.normal(0, 0.05, a.positions.shape)
    model = load_model("cpu")
    state = BatchState.from_atoms(systems, temperature_K=300.0, timestep_fs=2.0)
    e, f, s = CHGNetModel(model, graphs_on_device=graphs_on_device).energy_forces_stress(state)
    calc = FastCHGNetCalculator(model)
    offsets = np.cumsum([0] + [len(a) for a in systems])
    for k, a in enumerate(systems):
        a.calc = calc
        assert abs(e[k].item() - a.get_potential_energy()) / len(a) < 1e-6
        np.testing.assert_allclose(f[offsets[k]:offsets[k + 1]].numpy(), a.get_forces(), rtol=0, atol=force_tol)
        np.testing.assert_allclose(s[k].numpy(), a.get_stress(voigt=False), rtol=0, atol=1e-6)
        assert np.abs(a.get_forces()).max() > 0.1  # rattled: forces well above the tolerance
    return f, CHGNetModel(model).energy_forces_stress(state)[1]


def test_chgnet_batch_equals_per_structure():
    """CHGNet on a mixed batch, graphs on the host (batch_graphs): equal to the per-structure calculator, forces
    to 1e-5 eV/Angstrom (bitwise in fact: the same graphs, the same sums)."""
    f, f_host = _mixed_chgnet_batch(graphs_on_device=False, force_tol=1e-5)
    assert torch.equal(f, f_host)


def test_chgnet_batch_with_graphs_built_by_torch_equals_per_structure():
    """The graphs built with torch (batch_graphs_torch, the path of a GPU state, forced on the CPU): forces to
    5e-5 eV/Angstrom (9e-6 measured: CHGNet's float32 sums over the edges in another order; in float64 the two
    paths agree to 3e-13, tests/test_crystal_graph.py)."""
    f, f_host = _mixed_chgnet_batch(graphs_on_device=True, force_tol=5e-5)
    assert not torch.equal(f, f_host)  # the torch path ran: other edge order, other rounding


def test_sevennet_batch_equals_per_structure():
    """SevenNet-0 on a mixed batch (Si 8 atoms, NaCl 8, Cu 4, hcp Mg 2, rattled) in one collated pass equals
    sevenn's SevenNetCalculator per structure: forces to 1e-5 eV/Angstrom, energies to 1e-6 eV/atom, stress to
    1e-6 eV/Angstrom^3 (the shear components of the rattled cells included)."""
    pytest.importorskip("sevenn")
    from mdxrd.engine.models import SevenNetModel
    from mdxrd.engine.runs import engine_model
    from mdxrd.potentials import make_potential, resolve_potential

    calc = make_potential(resolve_potential("sevennet-0"), "cpu")
    rng = np.random.default_rng(3)
    systems = [bulk("Si", "diamond", a=5.43, cubic=True), bulk("NaCl", "rocksalt", a=5.64, cubic=True),
               bulk("Cu", "fcc", a=3.61, cubic=True), bulk("Mg", "hcp", a=3.2, c=5.2)]
    for a in systems:
        a.positions += rng.normal(0, 0.05, a.positions.shape)
    model = engine_model(calc)
    assert isinstance(model, SevenNetModel)
    e, f, s = model.energy_forces_stress(BatchState.from_atoms(systems, temperature_K=300.0, timestep_fs=2.0))
    offsets = np.cumsum([0] + [len(a) for a in systems])
    for k, a in enumerate(systems):
        a.calc = calc
        assert abs(e[k].item() - a.get_potential_energy()) / len(a) < 1e-6
        np.testing.assert_allclose(f[offsets[k]:offsets[k + 1]].numpy(), a.get_forces(), rtol=0, atol=1e-5)
        np.testing.assert_allclose(s[k].numpy(), a.get_stress(voigt=False), rtol=0, atol=1e-6)
    assert np.abs(systems[0].get_forces()).max() > 0.1 and np.abs(systems[0].get_stress()[3:]).max() > 1e-5
