"""Tests of mdxrd.calculator.FastCHGNetCalculator against chgnet's CHGNetCalculator.

CHGNet runs on one CPU thread here; structures are small (4 to 64 atoms).
Lattice constants: Si 5.4307 A, NaCl 5.6401 A, Cu 3.615 A (room temperature,
experimental).
"""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms, units
from ase.build import bulk
from ase.md.verlet import VelocityVerlet
from ase.md.velocitydistribution import Stationary

pytest.importorskip("chgnet")
import torch  # noqa: E402
from chgnet.model.dynamics import CHGNetCalculator  # noqa: E402

from mdxrd.calculator import FastCHGNetCalculator, load_model, make_calculator  # noqa: E402

try:  # ASE >= 3.29
    from ase.md.velocitydistribution import thermalize_momenta as _thermalize
except ImportError:  # pragma: no cover - older ASE
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution as _thermalize

torch.set_num_threads(1)

GPA = units.GPa  # eV/A^3 per GPa


@pytest.fixture(scope="module")
def fast() -> FastCHGNetCalculator:
    return make_calculator("fast", device="cpu")


@pytest.fixture(scope="module")
def stock() -> CHGNetCalculator:
    return make_calculator("stock", device="cpu")


def si8() -> Atoms:
    return bulk("Si", "diamond", a=5.4307, cubic=True)


def nacl8_rattled() -> Atoms:
    atoms = bulk("NaCl", "rocksalt", a=5.6401, cubic=True)
    atoms.rattle(0.03, seed=11)
    return atoms


def cu4_strained() -> Atoms:
    atoms = bulk("Cu", "fcc", a=3.615, cubic=True)
    atoms.set_cell(atoms.cell @ (np.eye(3) + np.array([[0.01, 0.004, 0], [0, -0.005, 0], [0, 0, 0]])), scale_atoms=True)
    return atoms


def si64_displaced_strained() -> Atoms:
    atoms = bulk("Si", "diamond", a=5.4307, cubic=True).repeat(2)
    rng = np.random.default_rng(5)
    atoms.positions += rng.normal(0.0, 0.06, atoms.positions.shape)
    strain = np.eye(3) + rng.uniform(-0.01, 0.01, (3, 3))
    atoms.set_cell(atoms.cell @ strain, scale_atoms=True)
    return atoms


def evaluate(atoms: Atoms, calc) -> tuple[float, np.ndarray, np.ndarray]:
    a = atoms.copy()
    a.calc = calc
    return a.get_potential_energy(), a.get_forces(), a.get_stress(voigt=False)


@pytest.mark.parametrize("builder", [si8, nacl8_rattled, cu4_strained, si64_displaced_strained])
def test_matches_stock_calculator(builder, fast, stock):
    atoms = builder()
    e_f, f_f, s_f = evaluate(atoms, fast)
    e_s, f_s, s_s = evaluate(atoms, stock)
    n = len(atoms)
    assert abs(e_f - e_s) / n <= 1e-6
    np.testing.assert_allclose(f_f, f_s, rtol=0, atol=1e-4)  # eV/A
    np.testing.assert_allclose(s_f / GPA, s_s / GPA, rtol=0, atol=1e-4)  # GPa
    # the comparison is not vacuous: stress (and forces, where displaced) are non-zero
    assert np.abs(s_s).max() / GPA > 0.1
    if builder in (nacl8_rattled, si64_displaced_strained):
        assert np.abs(f_s).max() > 0.1


def test_results_and_units(fast):
    atoms = si64_displaced_strained()
    atoms.calc = fast
    atoms.get_forces()
    assert set(fast.results) == {"energy", "free_energy", "forces", "stress"}
    assert fast.results["forces"].shape == (64, 3)
    assert fast.results["stress"].shape == (6,)  # Voigt, as ASE calculators report it
    assert fast.results["free_energy"] == fast.results["energy"]
    # one call serves energy, forces and stress (nothing recomputed)
    calls = []
    original = fast.calculate
    fast.calculate = lambda *a, **k: (calls.append(1), original(*a, **k))[1]
    try:
        atoms.positions[0, 0] += 0.01
        atoms.get_forces(), atoms.get_stress(), atoms.get_potential_energy()
        assert len(calls) == 1
    finally:
        del fast.calculate
    # Newton's third law: no net force on a periodic crystal
    np.testing.assert_allclose(atoms.get_forces().sum(axis=0), 0.0, atol=1e-4)


def test_forces_are_negative_energy_gradient(fast):
    """F = -dE/dr for one force component, two ways.

    CHGNet's float32 energy of an 8-atom cell carries ~3e-5 eV of round-off
    noise (measured: rms residual of a smooth fit along a path), which limits a
    central difference with step h to ~3e-5 * sqrt(2) / (2 h) ~ 1e-3 eV/A at
    h = 0.02 A; the truncation error (h^2/6) d3F/dx3 is of the same order. So:

    1. central difference, h = 0.02 A: agreement within 5e-3 eV/A (<1% of
       the 0.7 eV/A component);
    2. work-energy theorem over a 0.2 A path: E(x + 0.1) - E(x - 0.1) =
       -integral F dx (Simpson, 21 points), within 2e-4 eV out of ~0.14 eV
       (endpoint noise ~4e-5 eV, quadrature error ~1e-6 eV).
    """
    atoms = si8()
    atoms.rattle(0.08, seed=3)
    i, k = 3, 0

    def energy_force(dx: float) -> tuple[float, float]:
        a = atoms.copy()
        a.calc = fast
        a.positions[i, k] += dx
        return a.get_potential_energy(), a.get_forces()[i, k]

    _, force = energy_force(0.0)
    assert abs(force) > 0.2  # big enough that a sign or factor error shows
    h = 0.02
    grad = (energy_force(h)[0] - energy_force(-h)[0]) / (2 * h)
    assert -grad == pytest.approx(force, abs=5e-3)

    xs = np.linspace(-0.1, 0.1, 21)
    energies, forces = np.array([energy_force(x) for x in xs]).T
    dx = xs[1] - xs[0]
    simpson = dx / 3 * (forces[0] + forces[-1] + 4 * forces[1:-1:2].sum() + 2 * forces[2:-1:2].sum())
    assert abs(energies[-1] - energies[0]) > 0.05
    assert energies[-1] - energies[0] == pytest.approx(-simpson, abs=2e-4)


def test_stress_is_strain_derivative_over_volume(fast):
    """sigma_xx = (1/V) dE/d(eps_xx) and sigma_xy = (1/V) dE/d(2 eps_xy), by central differences."""
    atoms = si8()
    atoms.rattle(0.05, seed=4)
    atoms.set_cell(atoms.cell * 0.98, scale_atoms=True)  # compressed: stress of several GPa
    atoms.calc = fast
    stress = atoms.get_stress(voigt=False)
    volume = atoms.get_volume()
    d = 2e-3  # float32 energy noise ~3e-5 eV -> ~0.01 GPa; truncation ~0.006 GPa (measured)

    def energy_strained(eps: np.ndarray) -> float:
        a = atoms.copy()
        a.calc = fast
        a.set_cell(atoms.cell @ (np.eye(3) + eps), scale_atoms=True)
        return a.get_potential_energy()

    for (i, j) in ((0, 0), (0, 1)):
        eps = np.zeros((3, 3))
        eps[i, j] = eps[j, i] = d
        fd = (energy_strained(eps) - energy_strained(-eps)) / (2 * d) / volume
        if i != j:
            fd /= 2.0  # a symmetric shear enters twice
        assert abs(stress[i, j]) / GPA > 1.0 or i != j
        assert fd / GPA == pytest.approx(stress[i, j] / GPA, abs=0.03)  # GPa


@pytest.mark.slow
def test_nve_energy_conservation_not_worse_than_stock(fast, stock):
    """NVE (velocity Verlet, dt = 1 fs, 60 steps) of Si 2x2x2 from 300 K."""

    def run(calc) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        atoms = bulk("Si", "diamond", a=5.4307, cubic=True).repeat(2)
        _thermalize(atoms, temperature_K=300, rng=np.random.default_rng(2))
        Stationary(atoms)
        atoms.calc = calc
        dyn = VelocityVerlet(atoms, timestep=1.0 * units.fs)
        e_tot, e_pot = [], []

        def record() -> None:
            e_pot.append(atoms.get_potential_energy())
            e_tot.append(e_pot[-1] + atoms.get_kinetic_energy())

        dyn.attach(record, interval=1)
        dyn.run(60)
        return np.asarray(e_tot), np.asarray(e_pot), atoms.get_positions()

    e_fast, pot_fast, x_fast = run(fast)
    e_stock, _, x_stock = run(stock)
    drift_fast = np.abs(e_fast - e_fast[0]).max()
    drift_stock = np.abs(e_stock - e_stock[0]).max()
    n = 64
    # 2e-4 eV absolute: ~6 float32 ulps of a -340 eV total energy
    assert drift_fast <= 1.5 * drift_stock + 2e-4
    assert drift_fast / n < 1e-4  # eV/atom: a conservative force field at all
    # energy really flowed between kinetic and potential (~N k_B T / 2 ~ 0.8 eV)
    assert np.ptp(pot_fast) > 100 * drift_fast
    # the Verlet trajectories coincide (forces agree to float32 round-off)
    np.testing.assert_allclose(x_fast, x_stock, atol=1e-4)


def test_model_parameters_left_as_they_were(fast):
    """The fast path freezes the weights during a call and restores the flags."""
    before = [p.requires_grad for p in fast.model.parameters()]
    assert any(before)  # the pretrained model is trainable as loaded
    atoms = si8()
    atoms.rattle(0.01, seed=9)
    atoms.calc = fast
    atoms.get_forces()
    assert [p.requires_grad for p in fast.model.parameters()] == before


def test_make_calculator_kinds_and_model_cache():
    fast = make_calculator("fast", device="cpu")
    stock = make_calculator("stock", device="cpu")
    assert isinstance(fast, FastCHGNetCalculator)
    assert isinstance(stock, CHGNetCalculator) and not isinstance(stock, FastCHGNetCalculator)
    assert fast.model is stock.model is load_model("cpu")  # loaded once per process
    assert not fast.model.training
    with pytest.raises(ValueError):
        make_calculator("slow")  # type: ignore[arg-type]
