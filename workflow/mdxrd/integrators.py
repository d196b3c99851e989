"""Berendsen NPT molecular dynamics with one force (and stress) evaluation per step.

The weak-coupling scheme of Berendsen et al., J. Chem. Phys. 81, 3684 (1984),
https://doi.org/10.1063/1.448118, relaxes the instantaneous temperature ``T``
and pressure ``P`` towards the targets ``T0``, ``P0`` with time constants
``tau_T``, ``tau_P`` by rescaling, every step of length ``dt``,

* the velocities by ``lambda = sqrt(1 + (dt/tau_T)(T0/T - 1))``,
* the cell vectors and the atom positions by
  ``mu = (1 - kappa (dt/tau_P)(P0 - P))^(1/3)``, ``kappa`` the isothermal
  compressibility (isotropic cell), or, for a cell whose shape may change, by the
  strain ``I + d_eps`` with ``d_eps = (dt/tau_P) S(sigma_0 - sigma_sym)`` (the
  tensor form, below),

around a velocity-Verlet step with the interatomic forces.

ASE's ``ase.md.nptberendsen.NPTBerendsen`` rescales the cell and then
evaluates the forces twice per step: at the rescaled positions (the cached
forces are invalidated by the cell change) and after the position update. With
a machine-learned potential the force call dominates the cost, so an NPT step
costs twice an NVT step. :class:`NPTBerendsenOneForce` reuses the forces and
the stress of the end of the previous step for the first half kick, which makes
the cost of an NPT step that of an NVT step.

**Cells that keep their lattice system.** A non-cubic crystal expands
anisotropically, so its cell must change shape, but only as its point group
allows: a hexagonal cell must keep a = b and gamma = 120 deg while c/a follows
the stress; a monoclinic cell may change beta but not alpha and gamma. The
instantaneous stress of a finite cell has no such symmetry (its components
fluctuate independently), and a barostat that follows it drifts into a lower
lattice system. The tensor form therefore symmetrizes the stress with the
crystal's point group G, given as Cartesian rotation matrices R,

    sigma_sym = (1/|G|) sum_R R sigma R^T

(the Reynolds operator of G; Nye, Physical Properties of Crystals (1957), ch. I and
app. B; the same average ASE's ``FixSymmetry`` applies to stresses), and the strain
step with it. A symmetric strain that commutes with every R maps a lattice of point
group G onto a lattice of point group G with the same Cartesian operations, so the
constraints of the lattice system (a = b, angles of 90 or 120 deg) hold to
round-off at every step, whatever the noise. With G the identity alone (triclinic,
or ``point_group=None``) every cell parameter follows the stress; with a cubic G,
sigma_sym = (tr sigma / 3) I and the step is isotropic.

The strain step is the anisotropic Berendsen barostat (as in GROMACS: mu_ij =
delta_ij - (kappa dt / (3 tau_P)) (P0 delta_ij - P_ij)), written with a compliance
S, a linear map from stress to strain: ``d_eps = (dt/tau_P) S(sigma_0 - sigma_sym)``,
sigma_0 = -P0 I, stresses tensile-positive (ASE's sign), S = kappa/3 on every
component by default. With the crystal's own compliance tensor (the inverse of its
elastic constants, :func:`elastic_compliance`), every strain mode relaxes with the
same time constant tau_P, however different the stiffness of the axes (a layered
crystal's soft c axis and stiff in-plane axes).
"""

from __future__ import annotations

from typing import IO

import numpy as np
from ase import Atoms, units
from ase.md.nptberendsen import NPTBerendsen

__all__ = ["NPTBerendsenOneForce", "cartesian_point_group", "elastic_compliance", "symmetrize"]

#: ASE's NVTBerendsen limits one step's velocity scale factor to this range.
_LAMBDA_MIN, _LAMBDA_MAX = 0.9, 1.1


def stress_tensor(stress: np.ndarray) -> np.ndarray:
    """A stress as a (3, 3) array, from (3, 3) or ASE's Voigt order (xx, yy, zz, yz, xz, xy)."""
    stress = np.asarray(stress, dtype=np.float64)
    if stress.shape == (3, 3):
        return stress
    xx, yy, zz, yz, xz, xy = stress
    return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])


def stress_to_voigt(stress: np.ndarray) -> np.ndarray:
    """(3, 3) stress -> (6,) Voigt vector (xx, yy, zz, yz, xz, xy)."""
    return np.array([stress[0, 0], stress[1, 1], stress[2, 2], stress[1, 2], stress[0, 2], stress[0, 1]])


def voigt_to_strain(strain: np.ndarray) -> np.ndarray:
    """(6,) Voigt strain with engineering shears (gamma_yz = 2 eps_yz, ...) -> (3, 3) symmetric strain."""
    xx, yy, zz, yz, xz, xy = strain
    return np.array([[xx, xy / 2, xz / 2], [xy / 2, yy, yz / 2], [xz / 2, yz / 2, zz]])


def symmetrize(tensor: np.ndarray, rotations: np.ndarray | None) -> np.ndarray:
    """Average of a rank-2 Cartesian tensor over a point group: (1/|G|) sum_R R T R^T.

    Parameters
    ----------
    tensor : numpy.ndarray
        (3, 3) float (a stress or a strain; any unit).
    rotations : numpy.ndarray or None
        (n_ops, 3, 3) float, the group's Cartesian rotation matrices (proper and improper);
        None: the tensor is returned symmetrized in its indices only, (T + T^T)/2.

    Returns
    -------
    numpy.ndarray
        (3, 3) float, symmetric and invariant under every R (Nye, Physical Properties of
        Crystals (1957), app. B: the components a point group forbids vanish, the ones it
        ties are equal).
    """
    t = 0.5 * (tensor + tensor.T)
    if rotations is None:
        return t
    out = np.einsum("nij,jk,nlk->il", rotations, t, rotations) / len(rotations)
    return 0.5 * (out + out.T)


def cartesian_point_group(atoms: Atoms, supercell: tuple[int, int, int] | None = None,
                          symprec: float = 1e-3) -> tuple[np.ndarray, str]:
    """Point-group rotations of a crystal in Cartesian form, from spglib (via pymatgen).

    Parameters
    ----------
    atoms : ase.Atoms
        The crystal, at rest on its sites (e.g. the relaxed supercell the MD starts from).
    supercell : (na, nb, nc) or None
        The repetitions that made ``atoms`` from its parent cell: the symmetry is that of the
        parent (one cell of ``atoms``, cell vectors divided by na, nb, nc), so a supercell with
        na != nb of a hexagonal crystal still keeps a = b. None: ``atoms`` is the cell to analyse.
    symprec : float
        spglib's distance tolerance, Angstrom.

    Returns
    -------
    (rotations, symbol)
        (n_ops, 3, 3) float64 Cartesian rotation matrices R (acting on column vectors, each
        made exactly orthogonal by its polar decomposition) and the Hermann-Mauguin symbol
        of the point group.

    Raises
    ------
    ValueError
        The atoms of one parent cell do not number len(atoms) / (na nb nc).
    """
    from pymatgen.core import Lattice, Structure  # lazy: pymatgen.core 0.15 s (+45 ms on mdxrd --help)
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer  # lazy: 0.37 s (+87 ms on mdxrd --help)

    cell = np.asarray(atoms.cell.array, dtype=np.float64)
    scaled = atoms.get_scaled_positions(wrap=True)
    numbers = atoms.numbers
    if supercell is not None and tuple(supercell) != (1, 1, 1):
        n = np.asarray(supercell, dtype=np.float64)
        parent = scaled * n
        keep = np.all(np.floor(parent + 1e-6) % n == 0, axis=1)
        if keep.sum() * int(np.prod(supercell)) != len(atoms):
            raise ValueError(f"{keep.sum()} atoms in the first of {int(np.prod(supercell))} cells of a "
                             f"{len(atoms)}-atom supercell {tuple(supercell)}: not a supercell of that size")
        cell, scaled, numbers = cell / n[:, None], (parent[keep] + 1e-6) % 1.0 - 1e-6, numbers[keep]
    structure = Structure(Lattice(cell), numbers, scaled, coords_are_cartesian=False)
    sga = SpacegroupAnalyzer(structure, symprec=symprec, angle_tolerance=-1)  # distances only (pymatgen: 5 deg)
    rotations = []
    for op in sga.get_point_group_operations(cartesian=True):
        u, _, vt = np.linalg.svd(op.rotation_matrix)
        rotations.append(u @ vt)
    return np.array(rotations), sga.get_point_group_symbol()


def elastic_compliance(atoms: Atoms, calc: object, strain: float = 0.005) -> np.ndarray:
    """Clamped-ion elastic compliance of the potential at the structure of ``atoms``, Voigt, Angstrom^3/eV.

    Each of the six Voigt strains (engineering shears) is applied with +- ``strain``, the
    positions strained with the cell (clamped ions), the stress computed by ``calc`` (no
    kinetic term); C_ij = (sigma_i(+) - sigma_i(-)) / (2 strain), symmetrized, and S = C^-1
    (Nye (1957), ch. VIII; central differences, error O(strain^2)). Clamped ions make C
    stiffer than the relaxed-ion constants of a crystal with internal coordinates, so a
    barostat using S steps a little short of the target, never past it.

    Parameters
    ----------
    atoms : ase.Atoms
        Periodic structure (not modified).
    calc : ase calculator
        Returns stress in eV/Angstrom^3.
    strain : float
        Finite-difference strain amplitude.

    Returns
    -------
    numpy.ndarray
        (6, 6) float64 compliance S, Angstrom^3/eV (``S * ase.units.GPa`` is in 1/GPa).

    Raises
    ------
    ValueError
        C not positive definite: the structure is mechanically unstable under the potential.
    """
    stiffness = np.zeros((6, 6))
    for j in range(6):
        e = np.zeros(6)
        e[j] = strain
        stresses = []
        for sign in (1.0, -1.0):
            trial = atoms.copy()
            trial.set_constraint()
            trial.set_cell(atoms.cell.array @ (np.eye(3) + voigt_to_strain(sign * e)), scale_atoms=True)
            trial.calc = calc
            stresses.append(stress_to_voigt(stress_tensor(trial.get_stress(voigt=False))))
        stiffness[:, j] = (stresses[0] - stresses[1]) / (2.0 * strain)
    stiffness = 0.5 * (stiffness + stiffness.T)
    eigenvalues = np.linalg.eigvalsh(stiffness)
    if not eigenvalues.min() > 0:
        raise ValueError(f"elastic constants not positive definite (smallest eigenvalue "
                         f"{eigenvalues.min() / units.GPa:.3g} GPa): the structure is mechanically unstable")
    return np.linalg.inv(stiffness)


class NPTBerendsenOneForce(NPTBerendsen):
    """Berendsen NPT dynamics (isotropic or per cell vector) with one force evaluation per step.

    One step (``dt``), starting from positions ``r``, momenta ``p``, and the
    forces ``F(r)`` and stress ``sigma(r)`` the calculator returned at the end
    of the previous step:

    1. ``p <- lambda p`` with ``lambda = sqrt(1 + (dt/tau_T)(T0/T - 1))``,
       ``T = sum_i p_i^2/m_i / (N_dof k_B)`` (``atoms.get_temperature()``: N_dof = 3N - 3
       with the centre of mass fixed, 3N without); ``lambda`` is clipped to
       [0.9, 1.1] as in ASE's ``NVTBerendsen``.
    2. ``P = -trace(sigma + sigma_kin)/3`` (virial plus ideal-gas term,
       ``atoms.get_stress(include_ideal_gas=True)``);
       ``mu = (1 - kappa (dt/tau_P)(P0 - P))^(1/3)``; cell ``h <- mu h`` and
       ``r <- mu r``. With ``cell="tensor"``: ``h <- h (I + d_eps)``, ``r <- r (I + d_eps)``
       (rows are vectors) with the symmetrized strain step :meth:`strain_step`.
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
    cell : {"isotropic", "tensor"}
        "isotropic" (default): one scale factor ``mu`` from ``P = -trace(sigma)/3``; the cell
        shape is kept. "tensor": the symmetric strain step of the module docstring, with the
        stress and the strain symmetrized by ``point_group``; c/a, b/a and the free angles
        follow the stress, the constraints of the lattice system hold.
    point_group : numpy.ndarray or None
        (n_ops, 3, 3) float, the crystal's point-group rotations in Cartesian form
        (:func:`cartesian_point_group`), used with ``cell="tensor"``; None: no symmetry
        (every cell parameter free).
    compliance : numpy.ndarray or None
        (6, 6) float, elastic compliance in Voigt notation (engineering shear strains),
        Angstrom^3/eV, used with ``cell="tensor"`` (:func:`elastic_compliance`); None:
        ``compressibility_au / 3`` on every component. May be changed between steps.
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
    ValueError
        ``cell`` not "isotropic" or "tensor", or a ``point_group`` or ``compliance`` of the
        wrong shape.
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
        cell: str = "isotropic",
        point_group: np.ndarray | None = None,
        compliance: np.ndarray | None = None,
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
        if cell not in ("isotropic", "tensor"):
            raise ValueError(f"cell must be 'isotropic' or 'tensor', got {cell!r}")
        self.cell_mode = cell
        self.point_group = None if point_group is None else np.asarray(point_group, dtype=np.float64)
        if self.point_group is not None and (self.point_group.ndim != 3 or self.point_group.shape[1:] != (3, 3)):
            raise ValueError(f"point_group must be (n_ops, 3, 3), got {self.point_group.shape}")
        self.compliance = compliance

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
        """Scale (or strain) cell and positions for the current stress.

        Isotropic: one factor :meth:`cell_scale_factor` for the whole cell; tensor: the
        strain :meth:`strain_step` (see the module docstring).

        Parameters
        ----------
        stress : numpy.ndarray or None
            Stress including the ideal-gas term, eV/Angstrom^3, 3x3 or Voigt.
            ``None`` asks the atoms (``get_stress(include_ideal_gas=True)``).
        """
        if stress is None:
            stress = self.atoms.get_stress(voigt=False, include_ideal_gas=True)
        stress = stress_tensor(stress)
        cell = np.asarray(self.atoms.get_cell())
        if self.cell_mode == "tensor":
            self.atoms.set_cell(cell @ (np.eye(3) + self.strain_step(stress)), scale_atoms=True)
        else:
            mu = self.cell_scale_factor(-float(np.trace(stress)) / 3.0)
            self.atoms.set_cell(mu * cell, scale_atoms=True)

    def strain_step(self, stress: np.ndarray) -> np.ndarray:
        """The symmetric strain of one tensor step, ``(dt/tau_P) S(sigma_0 - sigma_sym)``, symmetrized.

        Parameters
        ----------
        stress : numpy.ndarray
            (3, 3) stress including the ideal-gas term, eV/Angstrom^3 (tensile positive).

        Returns
        -------
        numpy.ndarray
            (3, 3) symmetric strain, dimensionless, invariant under ``point_group``.

        Raises
        ------
        FloatingPointError
            If the strain would shrink a length by 50 % or more in one step (coupling far
            too strong: reduce timestep or compliance, or increase taup).
        """
        target = -self.pressure * np.eye(3)
        residual = target - symmetrize(stress, self.point_group)
        if self.compliance is None:
            strain = (self.compressibility / 3.0) * residual
        else:
            strain = voigt_to_strain(np.asarray(self.compliance) @ stress_to_voigt(residual))
        strain = symmetrize(strain * (self.dt / self.taup), self.point_group)
        if not np.all(np.isfinite(strain)) or np.abs(strain).max() >= 0.5:
            raise FloatingPointError(
                f"Berendsen strain step {np.abs(strain).max()!r} at P = "
                f"{-np.trace(stress) / 3 / units.GPa:.4g} GPa: pressure coupling too strong "
                "(reduce timestep or compliance, or increase taup)")
        return strain

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
