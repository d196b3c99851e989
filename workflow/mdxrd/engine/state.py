"""Batch state: many periodic systems as flat torch tensors (TorchSim's SimState layout).

Units are ASE's throughout: Angstrom, eV, amu, ASE time (``ase.units.fs``), momenta amu Angstrom
per ASE time; temperatures in K; pressures and stresses in eV/Angstrom^3.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace

import numpy as np
import torch
from ase import Atoms, units

__all__ = ["BatchState", "system_sum"]


def system_sum(values: torch.Tensor, system_idx: torch.Tensor, n_systems: int) -> torch.Tensor:
    """Sum per-atom values over each system, in atom order (deterministic on the CPU).

    Parameters
    ----------
    values : torch.Tensor
        (N, ...) per-atom values.
    system_idx : torch.Tensor
        (N,) int64, the system of each atom.
    n_systems : int
        S.

    Returns
    -------
    torch.Tensor
        (S, ...) sums, same dtype and device as ``values``.
    """
    out = torch.zeros((n_systems, *values.shape[1:]), dtype=values.dtype, device=values.device)
    return out.index_add_(0, system_idx, values)


def _per_system(value: float | Sequence[float], n: int, name: str) -> np.ndarray:
    arr = np.broadcast_to(np.asarray(value, dtype=np.float64), (n,)).copy()
    if arr.shape != (n,):
        raise ValueError(f"{name}: one value or one per system ({n}), got shape {arr.shape}")
    return arr


@dataclass
class BatchState:
    """S periodic systems with N atoms in all, as tensors on one device.

    Attributes
    ----------
    positions, momenta : torch.Tensor
        (N, 3) float, Angstrom and amu Angstrom / ASE time.
    masses : torch.Tensor
        (N,) float, amu.
    numbers : torch.Tensor
        (N,) int64 atomic numbers.
    cell : torch.Tensor
        (S, 3, 3) float, Angstrom; rows are the lattice vectors (ASE's convention).
    system_idx : torch.Tensor
        (N,) int64 in [0, S), sorted: the system of each atom.
    system_id : torch.Tensor
        (S,) int64: the index each system had when the batch was built (kept when systems leave).
    temperature_K, dt, tau_T, gamma, tau_P, kappa, pressure : torch.Tensor
        (S,) float per-system parameters: target T0 (K), time step and coupling times (ASE time),
        Langevin friction (1/ASE time), compressibility (Angstrom^3/eV), target pressure P0
        (eV/Angstrom^3).
    ensemble : torch.Tensor
        (S,) int64 codes of :data:`mdxrd.engine.integrators.ENSEMBLES` (0 NVT-Langevin, 1 NVT-Berendsen,
        2 NPT-Berendsen).
    tensor_cell : torch.Tensor
        (S,) bool: the NPT cell follows the (symmetrized) stress tensor; False: isotropic scaling.
    projector : torch.Tensor
        (S, 9, 9) float: each system's point-group average of rank-2 tensors
        (:func:`mdxrd.engine.integrators.symmetry_projector`; the identity without symmetry).
    compliance : torch.Tensor
        (S, 6, 6) float, Angstrom^3/eV: the strain per stress of a tensor cell's step (Voigt, engineering
        shears; ``kappa/3 diag(1, 1, 1, 2, 2, 2)`` unless given).
    forces, energy, stress : torch.Tensor or None
        The model's results at the current positions: (N, 3) eV/Angstrom, (S,) eV,
        (S, 3, 3) eV/Angstrom^3 (virial only, ASE sign: tensile positive). None until evaluated.
    generators : list of torch.Generator
        One random generator per system (Langevin noise), seeded from the run's seed.
    """

    positions: torch.Tensor
    momenta: torch.Tensor
    masses: torch.Tensor
    numbers: torch.Tensor
    cell: torch.Tensor
    system_idx: torch.Tensor
    system_id: torch.Tensor
    temperature_K: torch.Tensor
    dt: torch.Tensor
    tau_T: torch.Tensor
    gamma: torch.Tensor
    tau_P: torch.Tensor
    kappa: torch.Tensor
    pressure: torch.Tensor
    ensemble: torch.Tensor
    tensor_cell: torch.Tensor
    projector: torch.Tensor
    compliance: torch.Tensor
    forces: torch.Tensor | None = None
    energy: torch.Tensor | None = None
    stress: torch.Tensor | None = None
    generators: list = field(default_factory=list)
    _counts: list | None = field(default=None, repr=False)  # host caches: no device-to-host copy per step
    _n_atoms: torch.Tensor | None = field(default=None, repr=False)
    _codes: list | None = field(default=None, repr=False)

    @classmethod
    def from_atoms(cls, atoms_list: Sequence[Atoms], *, temperature_K: float | Sequence[float],
                   timestep_fs: float | Sequence[float], taut_fs: float | Sequence[float] = 100.0,
                   friction_per_fs: float | Sequence[float] = 0.01, taup_fs: float | Sequence[float] = 1000.0,
                   compressibility_per_GPa: float | Sequence[float] = 0.01,
                   pressure_GPa: float | Sequence[float] = 0.0, seeds: Sequence[int] | None = None,
                   ensemble: str | Sequence[str] = "nvt_berendsen", npt_cell: str | Sequence[str] = "isotropic",
                   rotations: Sequence[np.ndarray | None] | None = None,
                   compliance: Sequence[np.ndarray | None] | None = None,
                   device: str | torch.device = "cpu", dtype: torch.dtype = torch.float64) -> BatchState:
        """Build a batch from ASE atoms (positions, masses, momenta, cell) and per-system parameters.

        Parameters are one value for all systems or a sequence of S values, in the units of
        :class:`mdxrd.md.MDParams` (fs, 1/fs, GPa, 1/GPa), converted to ASE units. ``ensemble``: names of
        :data:`mdxrd.engine.integrators.ENSEMBLES`; ``npt_cell``: "isotropic" or "tensor"; ``rotations``:
        per system None or (G, 3, 3) Cartesian point-group operations of a tensor cell; ``compliance``:
        per system None or a (6, 6) compliance in Angstrom^3/eV.

        Raises
        ------
        ValueError
            An empty list, a system without a 3D periodic cell, an unknown ensemble or cell, or a
            parameter sequence of the wrong length.
        """
        from mdxrd.engine.integrators import ENSEMBLES, symmetry_projector

        if not atoms_list:
            raise ValueError("BatchState.from_atoms: no systems")
        for k, a in enumerate(atoms_list):
            if not all(a.pbc) or a.cell.rank != 3:
                raise ValueError(f"BatchState.from_atoms: system {k} is not periodic in 3D")
        s = len(atoms_list)
        t = lambda x: torch.as_tensor(np.asarray(x), dtype=dtype, device=device)
        seeds = list(range(s)) if seeds is None else list(seeds)
        gens = []
        for seed in seeds:
            g = torch.Generator(device=device)
            g.manual_seed(int(seed) & 0x7FFF_FFFF_FFFF_FFFF)
            gens.append(g)
        counts = [len(a) for a in atoms_list]
        names = [ensemble] * s if isinstance(ensemble, str) else list(ensemble)
        cells = [npt_cell] * s if isinstance(npt_cell, str) else list(npt_cell)
        if len(names) != s or len(cells) != s or any(n not in ENSEMBLES for n in names) or \
                any(c not in ("isotropic", "tensor") for c in cells):
            raise ValueError(f"BatchState.from_atoms: ensemble must be one of {sorted(ENSEMBLES)} and npt_cell "
                             f"'isotropic' or 'tensor', one or {s} of each; got {ensemble!r}, {npt_cell!r}")
        rotations = [None] * s if rotations is None else list(rotations)
        kappa = _per_system(compressibility_per_GPa, s, "compressibility_per_GPa") / units.GPa
        compliance = [None] * s if compliance is None else list(compliance)
        default_c = np.diag([1.0, 1.0, 1.0, 2.0, 2.0, 2.0]) / 3.0
        return cls(
            positions=t(np.concatenate([a.positions for a in atoms_list])),
            momenta=t(np.concatenate([a.get_momenta() for a in atoms_list])),
            masses=t(np.concatenate([a.get_masses() for a in atoms_list])),
            numbers=torch.as_tensor(np.concatenate([a.numbers for a in atoms_list]), device=device),
            cell=t(np.stack([a.cell.array for a in atoms_list])),
            system_idx=torch.as_tensor(np.repeat(np.arange(s), counts), device=device),
            system_id=torch.arange(s, device=device),
            temperature_K=t(_per_system(temperature_K, s, "temperature_K")),
            dt=t(_per_system(timestep_fs, s, "timestep_fs") * units.fs),
            tau_T=t(_per_system(taut_fs, s, "taut_fs") * units.fs),
            gamma=t(_per_system(friction_per_fs, s, "friction_per_fs") / units.fs),
            tau_P=t(_per_system(taup_fs, s, "taup_fs") * units.fs),
            kappa=t(kappa),
            pressure=t(_per_system(pressure_GPa, s, "pressure_GPa") * units.GPa),
            ensemble=torch.as_tensor([ENSEMBLES[n] for n in names], device=device),
            tensor_cell=torch.as_tensor([c == "tensor" for c in cells], device=device),
            projector=t(np.stack([symmetry_projector(r) for r in rotations])),
            compliance=t(np.stack([kappa[k] * default_c if c is None else np.asarray(c, dtype=np.float64)
                                   for k, c in enumerate(compliance)])),
            generators=gens,
            _counts=counts,
        )

    @property
    def n_systems(self) -> int:
        """S, the number of systems."""
        return int(self.cell.shape[0])

    def atom_counts(self) -> list[int]:
        """Atoms per system, on the host (cached: no device-to-host copy per step)."""
        if self._counts is None:
            self._counts = torch.bincount(self.system_idx, minlength=self.n_systems).tolist()
        return self._counts

    def atom_starts(self) -> list[int]:
        """Index of each system's first atom, on the host."""
        return [0, *np.cumsum(self.atom_counts())[:-1].tolist()]

    def ensemble_codes(self) -> list[int]:
        """Each system's ensemble code, on the host (cached)."""
        if self._codes is None:
            self._codes = self.ensemble.tolist()
        return self._codes

    def langevin_systems(self) -> list[int]:
        """Positions in the batch of the NVT-Langevin systems (code 0), on the host."""
        return [k for k, c in enumerate(self.ensemble_codes()) if c == 0]

    @property
    def n_atoms(self) -> torch.Tensor:
        """(S,) int64 atoms per system (cached on the device)."""
        if self._n_atoms is None:
            self._n_atoms = torch.as_tensor(self.atom_counts(), dtype=torch.int64, device=self.system_idx.device)
        return self._n_atoms

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """Per-system sum of per-atom ``values`` (N, ...) -> (S, ...) (:func:`system_sum`)."""
        return system_sum(values, self.system_idx, self.n_systems)

    def volume(self) -> torch.Tensor:
        """(S,) cell volumes, Angstrom^3 (|det h|)."""
        return torch.linalg.det(self.cell).abs()

    def kinetic_energy(self) -> torch.Tensor:
        """(S,) kinetic energies sum_i p_i^2 / (2 m_i), eV."""
        return 0.5 * self.sum((self.momenta * self.momenta).sum(1) / self.masses)

    def degrees_of_freedom(self) -> torch.Tensor:
        """(S,) 3N - 3: the centre of mass is fixed (as :func:`mdxrd.md.degrees_of_freedom`)."""
        return 3 * self.n_atoms - 3

    def temperature(self) -> torch.Tensor:
        """(S,) kinetic temperatures T = 2 E_kin / ((3N - 3) k_B), K (equipartition; Frenkel & Smit,
        Understanding Molecular Simulation, 2nd ed. (2002), eq. 4.1.2 with 3N - 3 degrees of freedom)."""
        return 2.0 * self.kinetic_energy() / (self.degrees_of_freedom() * units.kB)

    def kinetic_stress(self, momenta: torch.Tensor | None = None) -> torch.Tensor:
        """(S, 3, 3) ideal-gas stress -sum_i p_i p_i^T / (m_i V), eV/Angstrom^3 (ASE's
        ``Atoms.get_kinetic_stress``; Allen & Tildesley, Computer Simulation of Liquids (2017), eq. 2.61), of
        ``momenta`` (N, 3) or the state's."""
        p = self.momenta if momenta is None else momenta
        ppm = p[:, :, None] * p[:, None, :] / self.masses[:, None, None]
        return -self.sum(ppm) / self.volume()[:, None, None]

    def com_free(self, momenta: torch.Tensor) -> torch.Tensor:
        """``momenta`` (N, 3) with each system's centre-of-mass velocity removed: p_i - m_i P / M (ASE's
        ``FixCom.adjust_momenta``)."""
        v_com = self.sum(momenta) / self.sum(self.masses)[:, None]
        return momenta - self.masses[:, None] * v_com[self.system_idx]

    def select(self, keep: torch.Tensor) -> BatchState:
        """The systems where ``keep`` (S,) bool is True, as a new state (tensors indexed, not shared)."""
        keep = keep.to(torch.bool)
        atom_keep = keep[self.system_idx]
        new_index = torch.cumsum(keep.long(), 0) - 1
        per_sys = {f.name: getattr(self, f.name)[keep] for f in fields(self)
                   if f.name in ("cell", "system_id", "temperature_K", "dt", "tau_T", "gamma", "tau_P", "kappa",
                                 "pressure", "energy", "stress", "ensemble", "tensor_cell", "projector",
                                 "compliance") and getattr(self, f.name) is not None}
        per_atom = {name: getattr(self, name)[atom_keep] for name in ("positions", "momenta", "masses", "numbers",
                                                                        "forces") if getattr(self, name) is not None}
        flags = keep.tolist()
        gens = [g for g, k in zip(self.generators, flags) if k]
        counts = [n for n, k in zip(self.atom_counts(), flags) if k]
        return replace(self, **per_sys, **per_atom, system_idx=new_index[self.system_idx[atom_keep]], generators=gens,
                       _counts=counts, _n_atoms=None, _codes=None)

    def concat(self, other: BatchState) -> BatchState:
        """This batch's systems followed by ``other``'s, as a new state (``other``'s ``system_id`` kept: give
        joining systems ids of their own). Both must be evaluated (``forces`` set) or neither.

        Raises
        ------
        ValueError
            One state evaluated and the other not.
        """
        if (self.forces is None) != (other.forces is None):
            raise ValueError("BatchState.concat: evaluate both states or neither")
        cat = {f.name: torch.cat([getattr(self, f.name), getattr(other, f.name)])
               for f in fields(self) if not f.name.startswith("_") and f.name not in ("system_idx", "generators")
               and getattr(self, f.name) is not None}
        return replace(self, **cat, system_idx=torch.cat([self.system_idx, other.system_idx + self.n_systems]),
                       generators=[*self.generators, *other.generators], _counts=self.atom_counts() + other.atom_counts(),
                       _n_atoms=None, _codes=None)

    def to_atoms(self, systems: Sequence[int] | None = None) -> list[Atoms]:
        """Host copies of (some) systems as ASE atoms with momenta (the only device-to-host copy).

        Parameters
        ----------
        systems : sequence of int or None
            Positions in the batch (0..S-1); None: all.

        Returns
        -------
        list of ase.Atoms
            Periodic, with positions, cell, masses and momenta of the state (float64).
        """
        pos, mom, mass = (x.detach().cpu().double().numpy() for x in (self.positions, self.momenta, self.masses))
        num, idx, cell = self.numbers.cpu().numpy(), self.system_idx.cpu().numpy(), self.cell.detach().cpu().double().numpy()
        out = []
        for k in range(self.n_systems) if systems is None else systems:
            sel = idx == k
            a = Atoms(numbers=num[sel], positions=pos[sel], cell=cell[k], pbc=True, masses=mass[sel])
            a.set_momenta(mom[sel])
            out.append(a)
        return out
