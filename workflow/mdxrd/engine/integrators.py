"""Integrators over a :class:`~mdxrd.engine.state.BatchState`: one call advances every system one step.

Each step function takes ``(state, model)``, where ``state.forces``/``state.stress`` hold the
model's results at the current positions (:func:`evaluate` fills them), and leaves the state one
time step on with the results at the new positions: one model call per step. The centre of mass of
every system is fixed as by ASE's ``FixCom`` constraint in :func:`mdxrd.md.make_dynamics`:

* momenta ``p_i -= m_i P / M`` whenever ASE's ``set_momenta`` would apply it;
* positions: the centre of mass is moved back after a drift (``FixCom.adjust_positions``);
* forces are the model's as they are (ASE's ``get_forces(md=True)`` does not apply
  ``FixCom.adjust_forces``).

The Berendsen steps repeat the order of operations of ASE's ``NVTBerendsen.step`` and of
:meth:`mdxrd.integrators.NPTBerendsenOneForce.step`, so trajectories agree with them to round-off.
"""
from __future__ import annotations

import math
from typing import Protocol

import torch
from ase.units import kB as _KB

from mdxrd.engine.state import BatchState

__all__ = ["Model", "evaluate", "langevin_baoab_step", "npt_berendsen_step", "nvt_berendsen_step",
           "symmetrize"]

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


def _berendsen_thermostat(state: BatchState) -> None:
    """``p <- lambda p`` per system, lambda = sqrt(1 + (dt/tau_T)(T0/T - 1)) clipped to [0.9, 1.1]
    (Berendsen et al., J. Chem. Phys. 81, 3684 (1984), eq. 11; the clip is ASE's), then the centre-of-mass
    momentum removed (ASE's FixCom)."""
    t = state.temperature()
    lam = torch.sqrt(1.0 + (state.temperature_K / t - 1.0) * (state.dt / state.tau_T)).clamp(LAMBDA_MIN, LAMBDA_MAX)
    state.momenta = state.momenta * lam[state.system_idx][:, None]
    state.remove_com_momentum()


def _verlet(state: BatchState, model: Model) -> None:
    """Half kick, drift (with ASE's fixcm: p -= mean p, then the centre of mass moved back), model
    call, half kick: velocity Verlet (Swope et al., J. Chem. Phys. 76, 637 (1982))."""
    idx, m = state.system_idx, state.masses[:, None]
    dt = state.dt[idx][:, None]
    p = state.momenta + 0.5 * dt * state.forces
    p = p - (state.sum(p) / state.n_atoms[:, None].to(p.dtype))[idx]
    r_old = state.positions
    r = r_old + dt * p / m
    m_tot = state.sum(state.masses)[:, None]
    r = r + ((state.sum(m * r_old) - state.sum(m * r)) / m_tot)[idx]
    state.positions, state.momenta = r, p
    state.remove_com_momentum()
    evaluate(state, model)
    state.momenta = state.momenta + 0.5 * dt * state.forces
    state.remove_com_momentum()


def nvt_berendsen_step(state: BatchState, model: Model) -> BatchState:
    """One NVT-Berendsen step for every system: ``p <- lambda p``, then velocity Verlet.

    The order of ASE's ``NVTBerendsen.step`` with a ``FixCom`` constraint
    (:func:`mdxrd.md.make_dynamics`); lambda from :func:`_berendsen_thermostat` with each system's T0,
    dt, tau_T.

    Parameters
    ----------
    state : BatchState
        With ``forces`` at the current positions (:func:`evaluate`).
    model : Model
        Called once.

    Returns
    -------
    BatchState
        The same object, advanced.
    """
    _berendsen_thermostat(state)
    _verlet(state, model)
    return state


def symmetrize(tensor: torch.Tensor, rotations: torch.Tensor | None) -> torch.Tensor:
    """(S, 3, 3) tensors averaged over each system's point group, (1/|G|) sum_R R T R^T (Nye, Physical
    Properties of Crystals (1957), app. B; as :func:`mdxrd.integrators.symmetrize`).

    ``rotations``: (S, G, 3, 3) Cartesian operations, the same number G for every system (a system
    with a smaller group needs a batch of its own); None: (T + T^T)/2 only."""
    t = 0.5 * (tensor + tensor.transpose(1, 2))
    if rotations is None:
        return t
    out = torch.einsum("sgij,sjk,sglk->sil", rotations, t, rotations) / rotations.shape[1]
    return 0.5 * (out + out.transpose(1, 2))


def npt_berendsen_step(state: BatchState, model: Model, cell: str = "isotropic",
                       rotations: torch.Tensor | None = None) -> BatchState:
    """One NPT-Berendsen step with one model call, for every system (as
    :class:`mdxrd.integrators.NPTBerendsenOneForce` with ``compliance=None``).

    1. ``p <- lambda p`` (Berendsen thermostat, as :func:`nvt_berendsen_step`).
    2. ``sigma = sigma_virial - sum p p^T/(m V)``. Isotropic: ``P = -tr(sigma)/3``,
       ``mu = (1 - kappa (dt/tau_P)(P0 - P))^(1/3)``, ``h <- mu h``, ``r <- mu r``
       (Berendsen et al. 1984, eq. 21, volume scaled by ``mu^3``). Tensor: ``d_eps =
       sym((kappa/3)(dt/tau_P)(-P0 I - sym(sigma)))``, ``h <- h (I + d_eps)``, ``r <- r (I + d_eps)``.
    3. Velocity Verlet with the forces at the unscaled positions for the first half kick.

    A system whose volume factor ``1 - kappa (dt/tau_P)(P0 - P)`` is not positive gets NaN positions
    (the runner removes it) instead of an exception that would stop the whole batch.

    Parameters
    ----------
    state : BatchState
        With ``forces`` and ``stress`` at the current positions (:func:`evaluate`).
    model : Model
        Called once.
    cell : {"isotropic", "tensor"}
        Cell update.
    rotations : torch.Tensor or None
        (S, G, 3, 3) point-group rotations for ``cell="tensor"`` (:func:`symmetrize`).

    Returns
    -------
    BatchState
        The same object, advanced.

    Raises
    ------
    ValueError
        ``cell`` not "isotropic" or "tensor".
    """
    idx = state.system_idx
    _berendsen_thermostat(state)
    sigma = state.stress + state.kinetic_stress()
    rate = state.dt / state.tau_P
    if cell == "isotropic":
        p_inst = -torch.diagonal(sigma, dim1=1, dim2=2).sum(1) / 3.0
        vol = 1.0 - state.kappa * rate * (state.pressure - p_inst)
        mu = torch.where(vol > 0, vol.clamp_min(0.0) ** (1.0 / 3.0), torch.full_like(vol, math.nan))
        state.cell = state.cell * mu[:, None, None]
        state.positions = state.positions * mu[idx][:, None]
    elif cell == "tensor":
        eye = torch.eye(3, dtype=sigma.dtype, device=sigma.device)
        residual = -state.pressure[:, None, None] * eye - symmetrize(sigma, rotations)
        strain = symmetrize((state.kappa / 3.0 * rate)[:, None, None] * residual, rotations)
        m = eye + strain
        state.cell = state.cell @ m
        state.positions = torch.bmm(state.positions[:, None, :], m[idx])[:, 0]
    else:
        raise ValueError(f"npt_berendsen_step: cell must be 'isotropic' or 'tensor', got {cell!r}")
    _verlet(state, model)
    return state


def langevin_baoab_step(state: BatchState, model: Model) -> BatchState:
    """One Langevin step (BAOAB splitting) for every system, each with its own gamma, T0 and generator.

    B: ``p += (dt/2) F``; A: ``r += (dt/2) p/m``; O: ``p <- c p + sqrt((1 - c^2) m k_B T0) xi``,
    ``c = exp(-gamma dt)``, xi ~ N(0, 1) from the system's generator, then the centre-of-mass momentum
    removed (an orthogonal projection in mass-weighted coordinates, so the 3N - 3 internal degrees of
    freedom stay canonical); A; model call; B. Leimkuhler & Matthews, Appl. Math. Res. Express 2013,
    34 (2013), eqs. 2.6-2.8.

    Parameters
    ----------
    state : BatchState
        With ``forces`` at the current positions (:func:`evaluate`).
    model : Model
        Called once.

    Returns
    -------
    BatchState
        The same object, advanced.
    """
    idx, m = state.system_idx, state.masses[:, None]
    dt = state.dt[idx][:, None]
    p = state.momenta + 0.5 * dt * state.forces
    r = state.positions + 0.5 * dt * p / m
    counts = state.n_atoms.tolist()
    xi = torch.cat([torch.randn((n, 3), generator=g, dtype=p.dtype, device=g.device)
                    for n, g in zip(counts, state.generators)])
    c = torch.exp(-state.gamma * state.dt)[idx][:, None]
    kt = (state.temperature_K * 1.0)[idx][:, None] * _KB
    state.momenta = c * p + torch.sqrt((1.0 - c * c) * m * kt) * xi
    state.remove_com_momentum()
    state.positions = r + 0.5 * dt * state.momenta / m
    evaluate(state, model)
    state.momenta = state.momenta + 0.5 * dt * state.forces
    state.remove_com_momentum()
    return state

