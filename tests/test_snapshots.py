"""Snapshots stage: selection of steps and the velocity autocorrelation time against analytic cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mdxrd.snapshots import correlation_time, select_steps, velocity_autocorrelation


def test_select_steps_drops_equilibration():
    assert select_steps(500, 100, 50) == [150, 200, 250, 300, 350, 400, 450, 500]
    assert select_steps(20, 10, 5) == [15, 20]
    assert select_steps(100, 0, 30) == [30, 60, 90]


def _ornstein_uhlenbeck(n_t: int, n_atoms: int, tau_steps: float, seed: int = 0) -> np.ndarray:
    """Velocities of an Ornstein-Uhlenbeck process: exact VACF exp(-t/tau)."""
    rng = np.random.default_rng(seed)
    a = math.exp(-1.0 / tau_steps)
    v = np.empty((n_t, n_atoms, 3))
    v[0] = rng.standard_normal((n_atoms, 3))
    noise = rng.standard_normal((n_t, n_atoms, 3)) * math.sqrt(1 - a * a)
    for t in range(1, n_t):
        v[t] = a * v[t - 1] + noise[t]
    return v


def test_vacf_of_ornstein_uhlenbeck_is_exponential():
    tau = 20.0
    v = _ornstein_uhlenbeck(2000, 400, tau)
    masses = np.full(400, 63.5)
    c = velocity_autocorrelation(v, masses, 200)
    assert c[0] == pytest.approx(1.0)
    lags = np.arange(0, 61)
    np.testing.assert_allclose(c[lags], np.exp(-lags / tau), atol=0.01)
    tau_fs, resolved = correlation_time(c, dt_fs=0.5)
    assert resolved
    assert tau_fs == pytest.approx(tau * 0.5, rel=0.1)


def test_vacf_matches_direct_average_and_mass_weighting():
    rng = np.random.default_rng(1)
    v = rng.standard_normal((50, 4, 3))
    m = np.array([1.0, 2.0, 3.0, 50.0])
    c = velocity_autocorrelation(v, m, 10)
    direct = np.array([np.mean([np.sum(m[:, None] * v[t] * v[t + k]) for t in range(50 - k)]) for k in range(11)])
    np.testing.assert_allclose(c, direct / direct[0], rtol=1e-12)


def test_undamped_oscillation_is_unresolved():
    # harmonic phonon with random phases: C(t) = cos(omega t), never decays
    t = np.arange(400)[:, None, None]
    phase = np.random.default_rng(2).uniform(0, 2 * np.pi, (1, 300, 3))
    v = np.cos(2 * np.pi * t / 37.0 + phase)
    c = velocity_autocorrelation(v, np.ones(300), 199)
    tau_fs, resolved = correlation_time(c, dt_fs=1.0)
    assert not resolved and tau_fs == 199.0


def test_bad_shapes_raise():
    with pytest.raises(ValueError):
        velocity_autocorrelation(np.zeros((10, 3, 3)), np.ones(4), 2)
    with pytest.raises(ValueError):
        velocity_autocorrelation(np.zeros((10, 3, 3)), np.ones(3), 10)
