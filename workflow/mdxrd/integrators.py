"""Berendsen NPT molecular dynamics with one force (and stress) evaluation per step.

The weak-coupling scheme of Berendsen et al., J. Chem. Phys. 81, 3684 (1984),
https://doi.org/10.1063/1.448118, relaxes the instantaneous temperature ``T``
and pressure ``P`` towards the targets ``T0``, ``P0`` with time constants
``tau_T``, ``tau_P`` by rescaling, every step of length ``dt``,

* the velocities by ``lambda = sqrt(1 + (dt/tau_T)(T0/T - 1))``,
* the cell vectors and the atom positions by
  ``mu = (1 - kappa (dt/tau_P)(P0 - P))^(1/3)``, ``kappa`` the isothermal
  compressibility,

around a velocity-Verlet step with the interatomic forces.

ASE's ``ase.md.nptberendsen.NPTBerendsen`` rescales the cell and then
evaluates the forces twice per step: at the rescaled positions (the cached
forces are invalidated by the cell change) and after the position update. With
a machine-learned potential the force call dominates the cost, so an NPT step
costs twice an NVT step. :class:`NPTBerendsenOneForce` reuses the forces and
the stress of the end of the previous step for the first half kick, which makes
the cost of an NPT step that of an NVT step.
"""

from __future__ import annotations

from typing import IO, TYPE_CHECKING

import numpy as np
from ase import units
from ase.md.nptberendsen import NPTBerendsen

if TYPE_CHECKING:
    from ase import Atoms

__all__ = ["NPTBerendsenOneForce"]

#: ASE's NVTBerendsen limits one step's velocity scale factor to this range.
_LAMBDA_MIN, _LAMBDA_MAX = 0.9, 1.1


class NPTBerendsenOneForce(NPTBerendsen):
    """Berendsen NPT dynamics (isotropic or per cell vector) with one force evaluation per step.

    One step (``dt``), starting from positions ``r``, momenta ``p``, and the
    forces ``F(r)`` and stress ``sigma(r)`` the calculator returned at the end
    of the previous step:

    1. ``p <- lambda p`` with ``lambda = sqrt(1 + (dt/tau_T)(T0/T - 1))``,
       ``T = sum_i p_i^2/m_i / (3 N k_B)``; ``lambda`` is clipped to
       [0.9, 1.1] as in ASE's ``NVTBerendsen``.
    2. ``P = -trace(sigma + sigma_kin)/3`` (virial plus ideal-gas term,
       ``atoms.get_stress(include_ideal_gas=True)``);
       ``mu = (1 - kappa (dt/tau_P)(P0 - P))^(1/3)``; cell ``h <- mu h`` and
       ``r <- mu r``.
    3. Velocity Verlet: ``p <- p + (dt/2) F(r)`` (centre-of-mass momentum
       removed if ``fixcm``), ``r <- r + dt p/m``, one calculator call for
       ``F(r')`` and ``sigma(r')``, ``p <- p + (dt/2) F(r')``.

    The only force evaluation is in step 3. ASE's ``NPTBerendsen`` instead
    recomputes the forces at the rescaled positions ``mu r`` before the first
    half kick.

    **The approximation.** The first half kick uses ``F(r)`` in place of
    ``F(mu r)``. Since a kick does not move atoms, "kick with ``F(r)``, then
    rescale" is the same map as steps 2-3 here: the barostat's rescale is
    applied between the first half kick and the drift instead of before the
    kick. Both orderings are first-order (Lie-Trotter) splittings of the
    coupled equations of motion, and Berendsen's scheme is only first-order in
    the coupling anyway: it applies the barostat as a separate Euler step of
    ``dV/dt = -kappa V (P0 - P)/tau_P``. The two orderings differ per step by
    the commutator of rescale and kick, ``(dt/2)[F(mu r) - F(r)]`` in
    momentum. Interatomic forces change under a homogeneous strain in
    proportion to the strain, and ``mu - 1 = -kappa (dt/tau_P)(P0 - P)/3 +
    O((dt/tau_P)^2)`` is ~1e-6 per step for a solid (``kappa ~ 0.01/GPa``,
    ``dt/tau_P ~ 1e-3``, ``|P - P0| ~ 0.3 GPa``), so the difference is
    ``O(dt^2 kappa |P - P0| / tau_P)``, of the order of the splitting error
    the scheme already carries, and ~1e-6 of a half kick. It does not
    accumulate: the second half kick uses the exact forces at the new
    positions, which are also what the next step starts from, and the energy,
    forces and stress reported after every step are exact for the reported
    positions. Volume, temperature and pressure follow ASE's ``NPTBerendsen``
    to ~1e-5 relative over hundreds of steps from the same initial state, and
    the ensemble averages agree (tested with EMT).

    The cube root makes the volume scale by ``mu^3 = 1 - kappa (dt/tau_P)(P0 -
    P)`` exactly, as in Berendsen's paper; ASE's ``NPTBerendsen`` scales the
    lengths by its linearisation ``1 - kappa (dt/tau_P)(P0 - P)/3``, the same
    to first order.

    Parameters
    ----------
    atoms : ase.Atoms
        Periodic system with a calculator that returns forces (eV/Angstrom) and
        stress (eV/Angstrom^3). One calculator evaluation per step holds when
        the calculator computes forces and stress in the same call (CHGNet's
        calculators, ``FastCHGNetCalculator``, EMT and most potentials do);
        otherwise the stress costs a second call.
    timestep : float
        Time step ``dt`` in ASE time units (``1.0 * ase.units.fs`` for 1 fs).
    temperature_K : float
        Target temperature ``T0``, Kelvin.
    pressure_au : float
        Target pressure ``P0``, eV/Angstrom^3 (``1.0 * ase.units.GPa`` for 1 GPa).
    taut : float
        Temperature coupling time ``tau_T``, ASE time units. Default 0.5 ps.
    taup : float
        Pressure coupling time ``tau_P``, ASE time units. Default 1 ps.
    compressibility_au : float
        Isothermal compressibility ``kappa`` (1/bulk modulus), Angstrom^3/eV
        (``0.01 / ase.units.GPa`` for 0.01/GPa). Sets, with ``tau_P``, how fast
        the volume relaxes; the mean volume does not depend on it.
    fixcm : bool
        Remove the centre-of-mass momentum each step. Default True.
    anisotropic : bool
        False (default): isotropic scaling by one ``mu`` from ``P = -trace(sigma)/3``.
        True: each cell vector ``a_i`` is scaled by its own
        ``mu_i = (1 - kappa (dt/tau_P)(P0 - P_i))^(1/3)`` with ``P_i = -a_i.sigma.a_i/|a_i|^2``
        the normal pressure along it, so the lengths relax per axis and the angles are
        kept. This generalises ASE's ``Inhomogeneous_NPTBerendsen`` (which uses the
        Cartesian ``sigma_xx, sigma_yy, sigma_zz`` and equals this for orthogonal cells)
        to oblique cells: for a hexagonal cell a and b see the same in-plane pressure.
        Non-cubic crystals need it for anisotropic thermal expansion (c/a changes
        with T); isotropic scaling freezes the cell shape.
    trajectory : str or ase.io.Trajectory or None
        Trajectory attached as in ``ase.md.md.MolecularDynamics``.
    logfile : str or file or None
        MD log (``"-"`` for stdout) as in ``ase.md.md.MolecularDynamics``.
    loginterval : int
        Steps between log lines and trajectory frames. Default 1.
    append_trajectory : bool
        Append to an existing trajectory file. Default False.

    Raises
    ------
    ValueError
        If ``timestep``, ``taut``, ``taup`` or ``compressibility_au`` is not
        positive, or ``temperature_K`` is negative.
    FloatingPointError
        From :meth:`step` when ``1 - kappa (dt/tau_P)(P0 - P) <= 0``, i.e. the
        pressure coupling is far too strong for the current pressure (reduce
        ``dt``, ``kappa`` or raise ``tau_P``).

    References
    ----------
    H. J. C. Berendsen, J. P. M. Postma, W. F. van Gunsteren, A. DiNola and
    J. R. Haak, "Molecular dynamics with coupling to an external bath",
    J. Chem. Phys. 81, 3684 (1984).

    Examples
    --------
    >>> from ase import units
    >>> from ase.build import bulk
    >>> from ase.calculators.emt import EMT
    >>> atoms = bulk("Cu", cubic=True).repeat(2)
    >>> atoms.calc = EMT()
    >>> dyn = NPTBerendsenOneForce(atoms, 2 * units.fs, temperature_K=300,
    ...     pressure_au=0.0, taut=100 * units.fs, taup=500 * units.fs,
    ...     compressibility_au=1 / (140 * units.GPa))
    >>> dyn.run(10)
    True
    """

    def __init__(
        self,
        atoms: Atoms,
        timestep: float,
        *,
        temperature_K: float,
        pressure_au: float,
        taut: float = 0.5e3 * units.fs,
        taup: float = 1e3 * units.fs,
        compressibility_au: float,
        fixcm: bool = True,
        anisotropic: bool = False,
        trajectory: str | None = None,
        logfile: IO | str | None = None,
        loginterval: int = 1,
        append_trajectory: bool = False,
    ) -> None:
        for name, value in (
            ("timestep", timestep),
            ("taut", taut),
            ("taup", taup),
            ("compressibility_au", compressibility_au),
        ):
            if not value > 0:
                raise ValueError(f"{name} must be positive, got {value!r}")
        if not temperature_K >= 0:
            raise ValueError(f"temperature_K must be >= 0, got {temperature_K!r}")
        super().__init__(
            atoms,
            timestep,
            temperature_K=temperature_K,
            pressure_au=pressure_au,
            taut=taut,
            taup=taup,
            compressibility_au=compressibility_au,
            fixcm=fixcm,
            trajectory=trajectory,
            logfile=logfile,
            loginterval=loginterval,
            append_trajectory=append_trajectory,
        )
        self.anisotropic = bool(anisotropic)

    def velocity_scale_factor(self, temperature: float) -> float:
        """Berendsen velocity scale factor for one step.

        Parameters
        ----------
        temperature : float
            Instantaneous temperature ``T``, Kelvin.

        Returns
        -------
        float
            ``lambda = sqrt(1 + (dt/tau_T)(T0/T - 1))`` clipped to [0.9, 1.1]
            (ASE's limit); 1.0 when ``T = 0`` (nothing to scale).
        """
        if temperature <= 0.0:
            return 1.0
        radicand = 1.0 + (self.dt / self.taut) * (self.temperature / temperature - 1.0)
        lam = np.sqrt(max(radicand, 0.0))
        return float(min(max(lam, _LAMBDA_MIN), _LAMBDA_MAX))

    def cell_scale_factor(self, pressure: float) -> float:
        """Berendsen length scale factor of cell and positions for one step.

        Parameters
        ----------
        pressure : float
            Instantaneous pressure ``P`` (virial plus ideal gas), eV/Angstrom^3.

        Returns
        -------
        float
            ``mu = (1 - kappa (dt/tau_P)(P0 - P))^(1/3)``.

        Raises
        ------
        FloatingPointError
            If ``1 - kappa (dt/tau_P)(P0 - P) <= 0``.
        """
        volume_factor = 1.0 - self.compressibility * (self.dt / self.taup) * (
            self.pressure - pressure
        )
        if not volume_factor > 0.0:
            raise FloatingPointError(
                f"Berendsen volume scale factor {volume_factor!r} <= 0 at P = "
                f"{pressure / units.GPa:.4g} GPa: pressure coupling too strong "
                "(reduce timestep or compressibility, or increase taup)"
            )
        return float(np.cbrt(volume_factor))

    def scale_velocities(self) -> None:
        """Scale the momenta by :meth:`velocity_scale_factor` of the current T."""
        lam = self.velocity_scale_factor(self.atoms.get_temperature())
        self.atoms.set_momenta(lam * self.atoms.get_momenta())

    def scale_positions_and_cell(self, stress: np.ndarray | None = None) -> None:
        """Scale cell and positions by :meth:`cell_scale_factor` of the current P.

        Isotropic: one factor for the whole cell; ``anisotropic``: one per cell vector
        from the normal pressure along it (see the class docstring).

        Parameters
        ----------
        stress : numpy.ndarray or None
            Stress including the ideal-gas term, eV/Angstrom^3, 3x3 or Voigt.
            ``None`` asks the atoms (``get_stress(include_ideal_gas=True)``).
        """
        if stress is None:
            stress = self.atoms.get_stress(voigt=False, include_ideal_gas=True)
        stress = np.asarray(stress)
        if stress.shape != (3, 3):
            xx, yy, zz, yz, xz, xy = stress
            stress = np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
        cell = np.asarray(self.atoms.get_cell())
        if self.anisotropic:
            unit = cell / np.linalg.norm(cell, axis=1)[:, None]
            pressures = -np.einsum("ij,jk,ik->i", unit, stress, unit)
            mu = np.array([self.cell_scale_factor(float(p)) for p in pressures])
        else:
            mu = np.full(3, self.cell_scale_factor(-float(np.trace(stress)) / 3.0))
        self.atoms.set_cell(mu[:, None] * cell, scale_atoms=True)

    def step(self, forces: np.ndarray | None = None) -> np.ndarray:
        """Advance one time step with one force and stress evaluation.

        Parameters
        ----------
        forces : numpy.ndarray or None
            Forces at the current positions, eV/Angstrom, shape (N, 3);
            ``None`` takes them from the calculator (cached after the previous
            step, so no new evaluation).

        Returns
        -------
        numpy.ndarray
            Forces at the new positions, eV/Angstrom, shape (N, 3).
        """
        atoms = self.atoms
        self.scale_velocities()
        # Forces and stress at the current positions: cached by the calculator
        # from the end of the previous step (or the initial evaluation).
        if forces is None:
            forces = atoms.get_forces(md=True)
        stress = atoms.get_stress(voigt=False, include_ideal_gas=True)
        # Rescale cell and positions; keep F(r) for the first half kick
        # instead of recomputing F(mu r) (see class docstring).
        self.scale_positions_and_cell(stress)

        p = atoms.get_momenta() + 0.5 * self.dt * forces
        if self.fix_com:
            p -= p.sum(axis=0) / len(p)
        atoms.set_positions(atoms.get_positions() + self.dt * p / atoms.get_masses()[:, np.newaxis])
        # Store momenta on the atoms before the force call (as ASE does, for
        # calculators that redistribute atoms during the call).
        atoms.set_momenta(p)
        forces = atoms.get_forces(md=True)  # the one evaluation of this step
        atoms.set_momenta(atoms.get_momenta() + 0.5 * self.dt * forces)
        return forces
