"""The MD step over a :class:`~mdxrd.engine.state.BatchState`: one call advances every system one step.

Every system carries its ensemble (``state.ensemble``, codes :data:`ENSEMBLES`), so a batch mixes
NVT-Langevin, NVT-Berendsen and NPT-Berendsen runs and makes one model call per step for all of them:
:func:`md_step` = :func:`advance_to_force` (thermostat, barostat, first half kick, drift), one
:func:`evaluate`, :func:`finish_step` (second half kick). Each operation is computed for every atom and
kept where the system's ensemble uses it (``torch.where``), so a system's arithmetic does not depend on
its batch-mates.

The centre of mass of every system is fixed as by ASE's ``FixCom`` constraint in
:func:`mdxrd.md.make_dynamics`: momenta ``p_i -= m_i P / M`` whenever ASE's ``set_momenta`` would apply
it; the centre of mass moved back after a drift (``FixCom.adjust_positions``); forces are the model's as
they are (ASE's ``get_forces(md=True)`` does not apply ``FixCom.adjust_forces``).

The Berendsen steps repeat the order of operations of ASE's ``NVTBerendsen.step`` and of
:meth:`mdxrd.integrators.NPTBerendsenOneForce.step`, so trajectories agree with them to round-off
(tests: <= 1e-8 Angstrom over 100 steps).
"""
from __future__ import annotations

import math
from typing import Protocol

import numpy as np
import torch
from ase.units import kB as _KB

from mdxrd.engine.state import BatchState

__all__ = ["ENSEMBLES", "Model", "advance_to_force", "evaluate", "finish_step", "md_step", "symmetry_projector"]

#: Ensemble codes of ``BatchState.ensemble`` by the names of :class:`mdxrd.md.Ensemble`.
ENSEMBLES = {"nvt_langevin": 0, "nvt_berendsen": 1, "npt_berendsen": 2}
LANGEVIN, NVT_BERENDSEN, NPT_BERENDSEN = 0, 1, 2

#: ASE's NVTBerendsen (and NPTBerendsenOneForce) clip one step's velocity scale factor to this range.
LAMBDA_MIN, LAMBDA_MAX = 0.9, 1.1


class Model(Protocol):
    """A potential over a batch: ``energy_forces_stress(state) -> (E (S,) eV, F (N, 3) eV/Angstrom,
    sigma (S, 3, 3) eV/Angstrom^3, ASE sign)``."""

    def energy_forces_stress(self, state: BatchState) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...


def evaluate(state: BatchState, model: Model) -> BatchState:
    """Set ``state.energy``, ``state.forces`` and ``state.stress`` from one model call at the current
    positions; returns the state."""
    state.energy, state.forces, state.stress = model.energy_forces_stress(state)
    return state


def symmetry_projector(rotations: np.ndarray | None) -> np.ndarray:
    """(9, 9) matrix P of the point-group average of a rank-2 tensor: vec((1/|G|) sum_R R T R^T) = P vec(T).

    P = (1/|G|) sum_R R (x) R (Kronecker product; row-major vec), the Reynolds operator of G (Nye,
    Physical Properties of Crystals (1957), app. B; :func:`mdxrd.integrators.symmetrize`).

    Parameters
    ----------
    rotations : numpy.ndarray or None
        (G, 3, 3) Cartesian operations; None: the identity (no symmetry).
    """
    if rotations is None:
        return np.eye(9)
    rotations = np.asarray(rotations, dtype=np.float64)
    return np.mean([np.kron(r, r) for r in rotations], axis=0)


def _symmetrize(tensor: torch.Tensor, projector: torch.Tensor) -> torch.Tensor:
    """(S, 3, 3) tensors symmetrized in their indices, averaged with each system's projector (S, 9, 9),
    symmetrized again (as :func:`mdxrd.integrators.symmetrize`)."""
    t = 0.5 * (tensor + tensor.transpose(1, 2))
    out = torch.bmm(projector, t.reshape(-1, 9, 1)).reshape(-1, 3, 3)
    return 0.5 * (out + out.transpose(1, 2))


def _voigt(t: torch.Tensor) -> torch.Tensor:
    """(S, 3, 3) -> (S, 6) in the order xx, yy, zz, yz, xz, xy."""
    return torch.stack([t[:, 0, 0], t[:, 1, 1], t[:, 2, 2], t[:, 1, 2], t[:, 0, 2], t[:, 0, 1]], dim=1)


def _strain(v: torch.Tensor) -> torch.Tensor:
    """(S, 6) Voigt strain with engineering shears -> (S, 3, 3) symmetric strain."""
    xx, yy, zz, yz, xz, xy = v.unbind(1)
    return torch.stack([torch.stack([xx, xy / 2, xz / 2], 1), torch.stack([xy / 2, yy, yz / 2], 1),
                        torch.stack([xz / 2, yz / 2, zz], 1)], 1)


def _cell_transform(state: BatchState, sigma: torch.Tensor) -> torch.Tensor:
    """(S, 3, 3) matrix M of one barostat step (cell ``h <- h M``, positions ``r <- r M``); the identity
    for NVT systems, NaN where the coupling is too strong (volume factor <= 0, or a strain >= 0.5).

    Isotropic: ``M = mu I``, ``mu = (1 - kappa (dt/tau_P)(P0 - P))^(1/3)``, P = -tr(sigma)/3 (Berendsen
    et al., J. Chem. Phys. 81, 3684 (1984), eq. 21). Tensor (``state.tensor_cell``): ``M = I + d_eps``,
    ``d_eps = sym_G((dt/tau_P) S(-P0 I - sym_G(sigma)))`` with the system's compliance S (Voigt,
    engineering shears) and point-group projector (:class:`mdxrd.integrators.NPTBerendsenOneForce`)."""
    eye = torch.eye(3, dtype=sigma.dtype, device=sigma.device).expand(state.n_systems, 3, 3)
    rate = state.dt / state.tau_P
    p_inst = -torch.diagonal(sigma, dim1=1, dim2=2).sum(1) / 3.0
    vol = 1.0 - state.kappa * rate * (state.pressure - p_inst)
    mu = torch.where(vol > 0, vol.clamp_min(0.0) ** (1.0 / 3.0), torch.full_like(vol, math.nan))
    residual = -state.pressure[:, None, None] * eye - _symmetrize(sigma, state.projector)
    strain = _strain(torch.bmm(state.compliance, _voigt(residual)[:, :, None])[:, :, 0])
    strain = _symmetrize(strain * rate[:, None, None], state.projector)
    too_big = ~torch.isfinite(strain).all(2).all(1) | (strain.abs().amax((1, 2)) >= 0.5)
    strain = torch.where(too_big[:, None, None], torch.full_like(strain, math.nan), strain)
    m = torch.where(state.tensor_cell[:, None, None], eye + strain, mu[:, None, None] * eye)
    return torch.where((state.ensemble == NPT_BERENDSEN)[:, None, None], m, eye)


def advance_to_force(state: BatchState) -> BatchState:
    """The part of a step before its model call, for every system by its ensemble.

    Berendsen systems (ASE's ``NVTBerendsen.step``, :class:`mdxrd.integrators.NPTBerendsenOneForce`):
    ``p <- lambda p``, ``lambda = sqrt(1 + (dt/tau_T)(T0/T - 1))`` clipped to [0.9, 1.1] (Berendsen et
    al. 1984, eq. 11; the clip is ASE's); NPT: cell and positions by :func:`_cell_transform` with the
    stress including the kinetic term; half kick ``p += (dt/2) F`` with ``p -= sum p / N``; drift
    ``r += dt p/m`` and the centre of mass moved back. Langevin systems (BAOAB, Leimkuhler & Matthews,
    Appl. Math. Res. Express 2013, 34, eqs. 2.6-2.8): B ``p += (dt/2) F``; A ``r += (dt/2) p/m``; O
    ``p <- c p + sqrt((1 - c^2) m k_B T0) xi``, ``c = exp(-gamma dt)``, xi ~ N(0, 1) from the system's
    own generator; A. Then the centre-of-mass momentum is removed (mass-weighted, so the 3N - 3 internal
    degrees of freedom stay canonical).

    ``state.forces`` and ``state.stress`` must hold the model's results at the current positions. The parts
    of ensembles absent from the batch are skipped (the same numbers: the kept branch is selected either way).
    """
    idx, m = state.system_idx, state.masses[:, None]
    codes = set(state.ensemble_codes())
    has_ber, has_lan = bool(codes - {LANGEVIN}), LANGEVIN in codes
    ber = state.ensemble != LANGEVIN
    ber_atom = ber[idx][:, None]
    dt = state.dt[idx][:, None]
    p = state.momenta
    if has_ber:  # Berendsen thermostat
        lam = torch.sqrt(1.0 + (state.temperature_K / state.temperature() - 1.0) * (state.dt / state.tau_T))
        lam = torch.where(ber, lam.clamp(LAMBDA_MIN, LAMBDA_MAX), torch.ones_like(lam))
        p = torch.where(ber_atom, state.com_free(p * lam[idx][:, None]), p)
    r_old = state.positions
    if NPT_BERENDSEN in codes:  # Berendsen barostat (kinetic stress of the scaled momenta)
        sigma = state.stress + state.kinetic_stress(p)
        mat = _cell_transform(state, sigma)
        state.cell = torch.bmm(state.cell, mat)
        r_old = torch.bmm(r_old[:, None, :], mat[idx])[:, 0]
    # first half kick
    p = p + 0.5 * dt * state.forces
    if has_ber:  # Berendsen: p -= sum p / N, drift, centre of mass moved back
        p_ber = p - (state.sum(p) / state.n_atoms[:, None].to(p.dtype))[idx]
        r_ber = r_old + dt * p_ber / m
        m_tot = state.sum(state.masses)[:, None]
        r_ber = r_ber + ((state.sum(m * r_old) - state.sum(m * r_ber)) / m_tot)[idx]
        p_ber = state.com_free(p_ber)
    if has_lan:  # Langevin: A O A
        r_lan = r_old + 0.5 * dt * p / m
        xi = torch.zeros_like(p)
        starts, counts = state.atom_starts(), state.atom_counts()
        for k in state.langevin_systems():
            g = state.generators[k]
            xi[starts[k]:starts[k] + counts[k]] = torch.randn((counts[k], 3), generator=g, dtype=p.dtype,
                                                                device=g.device)
        c = torch.exp(-state.gamma * state.dt)[idx][:, None]
        kt = state.temperature_K[idx][:, None] * _KB
        p_lan = state.com_free(c * p + torch.sqrt((1.0 - c * c) * m * kt) * xi)
        r_lan = r_lan + 0.5 * dt * p_lan / m
    if has_ber and has_lan:
        state.positions = torch.where(ber_atom, r_ber, r_lan)
        state.momenta = torch.where(ber_atom, p_ber, p_lan)
    elif has_ber:
        state.positions, state.momenta = r_ber, p_ber
    else:
        state.positions, state.momenta = r_lan, p_lan
    return state


def finish_step(state: BatchState) -> BatchState:
    """The part of a step after its model call: ``p += (dt/2) F`` at the new positions, centre-of-mass
    momentum removed (every ensemble)."""
    dt = state.dt[state.system_idx][:, None]
    state.momenta = state.com_free(state.momenta + 0.5 * dt * state.forces)
    return state


def md_step(state: BatchState, model: Model) -> BatchState:
    """One MD step of every system with one model call: :func:`advance_to_force`, :func:`evaluate`,
    :func:`finish_step`.

    Parameters
    ----------
    state : BatchState
        With ``forces`` and ``stress`` at the current positions (:func:`evaluate`).
    model : Model
        Called once.

    Returns
    -------
    BatchState
        The same object, advanced. A system whose barostat step is impossible (volume factor not
        positive, strain >= 0.5) gets NaN positions: the runner removes it instead of an exception
        that would stop the whole batch.
    """
    advance_to_force(state)
    evaluate(state, model)
    return finish_step(state)
