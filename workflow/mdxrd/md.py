"""MD stage: one CHGNet molecular-dynamics run of a supercell in one ensemble at one temperature.

Ensembles (METHOD.md, "Ensembles"; all integrators are ASE's unless stated):

* ``nvt_langevin`` -- ``ase.md.Langevin``: m a = F - gamma m v + R(t),
  <R(t)R(t')> = 2 gamma m k_B T delta(t - t'), friction gamma in 1/fs
  (Schneider & Stoll, Phys. Rev. B 17, 1302 (1978); Vanden-Eijnden & Ciccotti
  integrator as implemented in ASE).
* ``nvt_berendsen`` -- ``ase.md.NVTBerendsen``: velocities scaled each step by
  lambda = sqrt(1 + (dt/tau_T)(T0/T - 1)) (Berendsen et al., J. Chem. Phys. 81, 3684 (1984)).
* ``npt_berendsen`` -- Berendsen barostat on top (by default
  :class:`mdxrd.integrators.NPTBerendsenOneForce`, one force evaluation per
  step; ASE's NPTBerendsen, which evaluates forces twice, on request): cell and positions
  scaled by mu = (1 - kappa (dt/tau_P)(P0 - P))^(1/3), kappa the isothermal
  compressibility, given explicitly (CHGNet's own MolecularDynamics fits an EOS
  for it instead, and has no Langevin). Cubic crystals scale isotropically;
  the cells of other crystal systems are strained by the stress symmetrized with
  the crystal's point group (``npt_cell``, :mod:`mdxrd.integrators`), so c/a,
  b/a, monoclinic beta and triclinic angles follow the stress with temperature
  while a = b, 90 and 120 deg angles stay exact where the lattice system says so.

Degrees of freedom: the centre of mass is fixed in every ensemble (ASE's
``FixCom``), so the kinetic temperature is T = 2 E_kin / ((3N - 3) k_B) everywhere:
in the thermostats (ASE counts a constraint's removed degrees of freedom), in the
start velocities and in every recorded T.

Equilibration (the first ``n_equil`` steps, never sampled). Started from the
relaxed 0 K sites, a crystal shares its kinetic energy with the potential energy
(equipartition, harmonic limit: <E_kin> = <E_pot - E0>), so velocities drawn at T
leave it near T/2 and the thermostat needs several tau_T to recover. The run
therefore starts at ``start_temperature_factor`` x T (default 2, Maxwell-Boltzmann)
and the production thermostat (gamma or tau_T unchanged) takes over from step 0.
An NPT cell relaxes with time constant ~tau_P (1 ps), far longer than a short run,
so NPT runs first take ``npt_pre_steps`` (default 150) pre-equilibration steps
before step 0, not recorded in the thermo log: the barostat is coupled with the
model's own compressibility 1/B (B = -dP/dlnV by central finite differences,
+-0.5 % volume, at the start structure; for a cell whose shape may change, the
model's whole clamped-ion elastic compliance, +-0.5 % strains, so that a soft axis
and a stiff one reach P0 together; in production that compliance is scaled to the
configured compressibility, so the volume relaxes with kappa and tau_P and every
shape mode with the same tau_P) and a coupling time of ``equil_taup_fs``
(default 20 fs) for the first 70 % of them, growing geometrically to 10x that over
the rest so that the cell averages out the pressure noise of a small cell. Step 0
then starts at the production settings (tau_T, tau_P, kappa) with the cell near its
equilibrium volume at T, and the ``n_equil`` steps let it settle. Measured with
EMT Cu at 600 K (4 GPa of thermal pressure at V0), the window's mean P ends within
0.25 GPa of P0 for a compressibility off by -30 % to +50 %.

Energies and forces: CHGNet (Deng et al., Nat. Mach. Intell. 5, 1031 (2023)).
The run starts from a Maxwell-Boltzmann distribution at T drawn from a seeded
generator, with zero total momentum, rescaled to exactly T. Outputs:

* ``thermo.csv``: step, time_fs, T_K, E_pot_eV, E_kin_eV, E_tot_eV, P_GPa,
  volume_A3 every ``thermo_interval`` steps (step 0 included). P includes the
  ideal-gas (kinetic) term.
* ``trajectory.traj`` (ASE): frames at step 0 and at every step ``n_equil + k * n_interval``
  (k an integer, so also before n_equil on the same grid), with momenta, energy, forces, stress and
  ``info`` {step, time_fs}; the snapshots stage keeps those after equilibration.
* ``velocities.npy``: float64 (n_steps - n_equil + 1, N, 3) velocities in
  Angstrom/fs from step n_equil to n_steps, for the velocity autocorrelation time.
* ``positions.npz``: the sampling window's positions at every step, ``steps`` (n,) int,
  ``positions_A`` (n, N, 3) float64 Cartesian (unwrapped) and ``cells_A`` (n, 3, 3) float64,
  n = n_steps - n_equil + 1, for the thermal displacements about the lattice sites
  (:mod:`mdxrd.displacements`).
* ``run.json``: seed, device (with torch's CUDA version and the GPU model), threads, calculator, timing
  and versions.

Checkpoints: every ``checkpoint_interval`` steps the whole state (positions,
momenta, cell, step, random generator state and the records gathered so far) is
written atomically to ``checkpoint.pkl`` in the output directory. A rerun of a
killed job with the same parameters resumes from it; with one torch thread the
resumed run is bit-identical to an uninterrupted one. The checkpoint is removed
once the outputs are written.

The MD job of a shard (:func:`run_shard`, ``mdxrd md``) runs the shard's runs batch by batch, with
``md.engine`` (:func:`engine_for`): ``ase``, lockstep threads (:mod:`mdxrd.batch`: one potential call
per step for a whole batch; a batched run's trajectory equals the run alone to the bit), or ``torch``,
one batched state on the device (:mod:`mdxrd.engine.runs`: the same files from the same start,
Berendsen trajectories equal to round-off), reuses every run whose outputs carry the stamp of the same
parameters and start structure, and fails naming the runs that blew up after the others are
written.
"""

from __future__ import annotations

import argparse
import csv
import enum
import hashlib
import logging
import math
import pickle
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ase import units
from ase.calculators.singlepoint import SinglePointCalculator
from ase.constraints import FixCom
from ase.io import read
from ase.io.trajectory import Trajectory
from ase.md.langevin import Langevin
from ase.md.nptberendsen import NPTBerendsen
from ase.md.nvtberendsen import NVTBerendsen
from ase.md.velocitydistribution import Stationary, thermalize_momenta

from mdxrd import batch
from mdxrd.cli import UserError
from mdxrd.integrators import NPTBerendsenOneForce, cartesian_point_group, elastic_compliance
from mdxrd.io import atomic_path, load_params, read_json, write_json
from mdxrd.potentials import DEFAULT as DEFAULT_POTENTIAL
from mdxrd.potentials import make_potential
from mdxrd.shard import fail_if, file_sha256, fill, is_current, stamp, write_manifest

log = logging.getLogger(__name__)

#: Steps between checks of the smallest interatomic distance (a neighbour-list build).
DISTANCE_CHECK_INTERVAL = 10

#: Fraction of the NPT pre-equilibration spent at the strong coupling time; over the rest the
#: coupling time grows geometrically to 10x, so the cell averages out pressure noise before step 0.
STRONG_BAROSTAT_FRACTION = 0.7

#: Boltzmann constant in eV/K (CODATA 2018), as in METHOD.md.
K_B_EV_PER_K = 8.617333262e-5


#: Values of ``MDParams.npt_cell``.
NPT_CELLS = ("auto", "isotropic", "symmetric", "free")

#: Hermann-Mauguin symbols of the cubic point groups (their NPT cell scales isotropically).
CUBIC_POINT_GROUPS = ("23", "m-3", "432", "-43m", "m-3m")


class Ensemble(str, enum.Enum):
    """Thermodynamic ensembles of the MD grid (value = the name used in config and files)."""

    NVT_LANGEVIN = "nvt_langevin"
    NVT_BERENDSEN = "nvt_berendsen"
    NPT_BERENDSEN = "npt_berendsen"

    @property
    def fixed_cell(self) -> bool:
        """True for NVT ensembles (constant volume and cell)."""
        return self is not Ensemble.NPT_BERENDSEN


def degrees_of_freedom(n_atoms: int) -> int:
    """Kinetic degrees of freedom of ``n_atoms`` atoms with the centre of mass fixed: 3N - 3."""
    return 3 * n_atoms - 3


def kinetic_temperature(e_kin_eV: float, n_atoms: int) -> float:
    """T = 2 E_kin / ((3N - 3) k_B), K, for a kinetic energy in eV (centre of mass fixed)."""
    return 2.0 * e_kin_eV / (degrees_of_freedom(n_atoms) * K_B_EV_PER_K)


class MDError(RuntimeError):
    """An MD run that went wrong physically (NaN, runaway temperature, atoms too close)."""


@dataclass(frozen=True)
class MDParams:
    """Hyperparameters of one MD run (defaults: METHOD.md, "Hyperparameters").

    Attributes
    ----------
    ensemble : one of :class:`Ensemble`.
    temperature_K : target temperature T0, K.
    timestep_fs : integration timestep dt, fs.
    n_steps : total MD steps after the start.
    n_equil : equilibration steps dropped before sampling.
    n_interval : sampling interval in steps after equilibration.
    friction_per_fs : Langevin friction gamma, 1/fs.
    taut_fs : Berendsen temperature coupling time tau_T, fs.
    taup_fs : Berendsen pressure coupling time tau_P, fs.
    pressure_GPa : target pressure P0 for NPT, GPa (default 1 atm).
    compressibility_per_GPa : isothermal compressibility kappa for NPT, 1/GPa.
    thermo_interval : thermo log written every this many steps.
    seed : seed of the run's random generator (initial velocities, Langevin noise).
    device : torch device: "auto" (cuda if available, else cpu), "cpu", "cuda", "cuda:N".
    engine : "ase" (ASE's integrators, :func:`run_md`; batches in lockstep threads, :mod:`mdxrd.batch`),
        "torch" (one batched state, :mod:`mdxrd.engine.runs`) or "auto" (torch on a CUDA device where the
        potential allows it, else ase); how runs are executed, not what they sample.
    threads : torch CPU threads (1 is bit-reproducible and fastest per core under load).
    calculator : "fast" (inference-only, :class:`mdxrd.calculator.FastCHGNetCalculator`) or "stock"
        (chgnet's CHGNetCalculator).
    npt_integrator : "mdxrd" (:class:`mdxrd.integrators.NPTBerendsenOneForce`, one force call per
        step) or "ase" (ASE's NPTBerendsen, two force calls per step).
    max_temperature_ratio : the run fails when T exceeds this multiple of T0 (runaway).
    min_distance_A : the run fails when two atoms come closer than this (Angstrom).
    checkpoint_interval : write the full state every this many steps (0: never) so a killed
        run resumes where it stopped.
    start_temperature_factor : initial Maxwell-Boltzmann velocities at this multiple of T0
        (2: equipartition from the 0 K sites brings the crystal to T0).
    npt_pre_steps : NPT pre-equilibration steps before step 0 (not recorded), strongly coupled
        barostat with the model's own compressibility.
    equil_taup_fs : barostat coupling time of the pre-equilibration's first 70 %, fs.
    npt_cell : "auto" (isotropic for cubic crystals, "symmetric" otherwise), "isotropic" (one
        scale factor, cell shape kept), "symmetric" (strain from the stress symmetrized with the
        parent crystal's point group: the lattice system is kept, its free parameters follow
        the stress) or "free" (no symmetry: all six cell parameters follow the stress).
    progress_interval : a progress line (step, T, P, V, steps/s, ETA) goes to the log every this
        many steps, so ``tail -f`` on a job's log shows where a long run is.
    """

    ensemble: Ensemble
    temperature_K: float
    timestep_fs: float = 1.0
    n_steps: int = 500
    n_equil: int = 100
    n_interval: int = 50
    friction_per_fs: float = 0.01
    taut_fs: float = 100.0
    taup_fs: float = 1000.0
    pressure_GPa: float = 1.01325e-4
    compressibility_per_GPa: float = 0.01
    thermo_interval: int = 1
    seed: int = 0
    device: str = "auto"
    engine: str = "ase"
    threads: int = 1
    calculator: str = "fast"
    npt_integrator: str = "mdxrd"
    max_temperature_ratio: float = 5.0
    min_distance_A: float = 0.5
    checkpoint_interval: int = 100
    start_temperature_factor: float = 2.0
    npt_pre_steps: int = 150
    equil_taup_fs: float = 20.0
    npt_cell: str = "auto"
    progress_interval: int = 50
    potential: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "ensemble", Ensemble(self.ensemble))
        if not self.temperature_K > 0:
            raise ValueError(f"temperature_K must be > 0, got {self.temperature_K}")
        if not 0 <= self.n_equil < self.n_steps:
            raise ValueError(f"need 0 <= n_equil < n_steps, got n_equil={self.n_equil}, n_steps={self.n_steps}")
        if self.calculator not in ("fast", "stock"):
            raise ValueError(f"calculator must be 'fast' or 'stock', got {self.calculator!r}")
        if self.npt_cell not in NPT_CELLS:
            raise ValueError(f"npt_cell must be one of {', '.join(NPT_CELLS)}, got {self.npt_cell!r}")
        if not self.start_temperature_factor > 0 or not self.equil_taup_fs > 0 or self.npt_pre_steps < 0:
            raise ValueError("start_temperature_factor and equil_taup_fs must be > 0, npt_pre_steps >= 0")
        if self.engine not in ("auto", "ase", "torch"):
            raise ValueError(f"engine must be 'auto', 'ase' or 'torch', got {self.engine!r}")
        if self.npt_integrator not in ("mdxrd", "ase"):
            raise ValueError(f"npt_integrator must be 'mdxrd' or 'ase', got {self.npt_integrator!r}")
        if self.n_interval < 1 or self.n_equil + self.n_interval > self.n_steps:
            raise ValueError(
                f"n_interval={self.n_interval} gives no snapshot: need 1 <= n_interval <= n_steps - n_equil "
                f"= {self.n_steps - self.n_equil}"
            )

    def checkpoint_due(self, step: int) -> bool:
        """A checkpoint is written after this step: every ``checkpoint_interval`` steps, not at 0 nor the last."""
        return bool(self.checkpoint_interval) and 0 < step < self.n_steps and step % self.checkpoint_interval == 0

    @property
    def sample_steps(self) -> list[int]:
        """MD steps kept as snapshots: n_equil + k n_interval for k = 1, 2, ... up to n_steps."""
        return list(range(self.n_equil + self.n_interval, self.n_steps + 1, self.n_interval))


def run_seed(global_seed: int, crystal: str, ensemble: str, temperature_K: float, replica: int) -> int:
    """Derive a run's 63-bit seed from the global seed and the run's identity.

    The seed is the first 8 bytes of SHA-256 of ``"{global_seed}/{crystal}/{ensemble}/{T:g}/{replica}"``,
    so it is stable across machines, Python versions and grid changes.
    """
    key = f"{global_seed}/{crystal}/{ensemble}/{float(temperature_K):g}/{replica}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little") & (2**63 - 1)


def npt_cell_update(atoms: Any, npt_cell: str) -> tuple[str, Any, str]:
    """How an NPT run's cell changes: the integrator's cell mode, point group and its symbol.

    Parameters
    ----------
    atoms
        The MD start structure (the relaxed supercell, at rest on its sites); ``atoms.info
        ["supercell"]`` (set by the structure stage) names the repetitions of the parent cell,
        whose point group is used (spglib via pymatgen, symprec 1e-3 Angstrom).
    npt_cell
        One of :data:`NPT_CELLS`.

    Returns
    -------
    (cell, rotations, label)
        ``cell`` "isotropic" or "tensor" (:class:`mdxrd.integrators.NPTBerendsenOneForce`),
        ``rotations`` (n_ops, 3, 3) Cartesian point-group rotations or None, and ``label``:
        "isotropic", "symmetric <point group>" or "free".
    """
    if npt_cell == "isotropic":
        return "isotropic", None, "isotropic"
    if npt_cell == "free":
        return "tensor", None, "free"
    supercell = atoms.info.get("supercell")
    rotations, symbol = cartesian_point_group(atoms, tuple(supercell) if supercell is not None else None)
    if npt_cell == "auto" and symbol in CUBIC_POINT_GROUPS:
        return "isotropic", None, "isotropic"
    return "tensor", rotations, f"symmetric {symbol}"


def make_dynamics(atoms: Any, params: MDParams, rng: np.random.Generator, cell: str = "isotropic",
                  point_group: Any = None) -> Any:
    """Build the ASE integrator of ``params.ensemble`` for ``atoms`` (ASE units converted from fs, GPa).

    Every ensemble gets a ``FixCom`` constraint, so ASE's thermostats count 3N - 3 degrees of
    freedom. ``cell`` and ``point_group`` select the NPT cell update (:func:`npt_cell_update`).

    Raises
    ------
    ValueError
        ``npt_integrator`` "ase" with a cell that is not isotropic (ASE's NPTBerendsen scales
        per Cartesian axis and would break a non-orthogonal lattice system).
    """
    dt = params.timestep_fs * units.fs
    atoms.set_constraint(FixCom())
    if params.ensemble is Ensemble.NVT_LANGEVIN:
        # ASE >= 3.28: fixcm=False with a FixCom constraint samples NVT correctly.
        return Langevin(atoms, dt, temperature_K=params.temperature_K,
                        friction=params.friction_per_fs / units.fs, fixcm=False, rng=rng)
    if params.ensemble is Ensemble.NVT_BERENDSEN:
        return NVTBerendsen(atoms, dt, temperature_K=params.temperature_K, taut=params.taut_fs * units.fs)
    kwargs = dict(temperature_K=params.temperature_K, taut=params.taut_fs * units.fs,
                  pressure_au=params.pressure_GPa * units.GPa, taup=params.taup_fs * units.fs,
                  compressibility_au=params.compressibility_per_GPa / units.GPa)
    if params.npt_integrator == "mdxrd":
        return NPTBerendsenOneForce(atoms, dt, cell=cell, point_group=point_group, **kwargs)
    if cell != "isotropic":
        raise ValueError("md.npt_integrator: 'ase' scales the cell isotropically only; a non-cubic crystal needs "
                         "'mdxrd' (or md.npt_cell: isotropic)")
    return NPTBerendsen(atoms, dt, **kwargs)


def _rescale_to(atoms: Any, temperature_K: float) -> None:
    """Scale velocities so the kinetic temperature (3N - 3 degrees of freedom) equals ``temperature_K``."""
    e_kin = atoms.get_kinetic_energy()
    if e_kin > 0:
        target = 0.5 * degrees_of_freedom(len(atoms)) * K_B_EV_PER_K * temperature_K
        atoms.set_momenta(atoms.get_momenta() * math.sqrt(target / e_kin))


def model_bulk_modulus(atoms: Any, calc: Any, strain: float = 0.005) -> float:
    """Bulk modulus of the potential at the structure of ``atoms``, GPa (static, clamped ions).

    B = -(P(V+) - P(V-)) / ln(V+/V-), V+- = V (1 +- ``strain``), positions scaled with the
    cell, P = -trace(sigma)/3 from ``calc`` (no kinetic term). Central difference, error
    O(strain^2) (Birch, Phys. Rev. 71, 809 (1947) for B = -V dP/dV).

    Raises
    ------
    MDError
        B not positive (the structure is mechanically unstable under the potential).
    """
    pressures = []
    for factor in (1.0 + strain, 1.0 - strain):
        trial = atoms.copy()
        trial.set_constraint()
        trial.set_cell(atoms.cell.array * factor ** (1.0 / 3.0), scale_atoms=True)
        trial.calc = calc
        pressures.append(-float(trial.get_stress()[:3].mean()))
    bulk = -(pressures[0] - pressures[1]) / math.log((1.0 + strain) / (1.0 - strain)) / units.GPa
    if not bulk > 0:
        raise MDError(f"the potential's bulk modulus at the start structure is {bulk:.3g} GPa (not > 0)")
    return bulk


def _model_compliance(atoms: Any, calc: Any) -> np.ndarray:
    """:func:`mdxrd.integrators.elastic_compliance` of the start structure; MDError when unstable."""
    try:
        return elastic_compliance(atoms, calc)
    except ValueError as err:
        raise MDError(f"the potential's {err} at the start structure") from None


def _min_distance(atoms: Any) -> float:
    """Smallest interatomic distance under periodic boundary conditions below 1.5 Angstrom, else inf (pymatgen's
    cell list, ~0.1 ms for 64 atoms; ASE's neighbor_list ~2.6 ms)."""
    from pymatgen.optimization.neighbors import find_points_in_spheres  # lazy: not needed to import mdxrd.md

    pos = np.ascontiguousarray(atoms.positions, dtype=np.float64)
    center, neighbor, image, d = find_points_in_spheres(
        pos, pos, r=1.5, pbc=np.ones(3, dtype=np.int64), lattice=np.ascontiguousarray(atoms.cell.array, dtype=np.float64),
        tol=1e-8)
    d = d[(center != neighbor) | np.any(image != 0, axis=1)]  # an atom is not its own neighbour
    return float(d.min()) if len(d) else math.inf


@dataclass
class _Records:
    """What a run gathers as it goes (and a checkpoint holds): thermo rows, the sampling window's velocities,
    positions and cells, and the trajectory's frames."""

    thermo: list[tuple[float, ...]] = field(default_factory=list)
    velocities: list[np.ndarray] = field(default_factory=list)
    window_positions: list[np.ndarray] = field(default_factory=list)
    window_cells: list[np.ndarray] = field(default_factory=list)
    frames: list[Any] = field(default_factory=list)


@dataclass
class _Barostat:
    """An NPT run's cell update (:func:`npt_cell_update`) and the potential's stiffness at the start structure."""

    cell: str = "isotropic"
    point_group: Any = None
    label: str = "isotropic"
    bulk_GPa: float = 0.0
    compliance: Any = None  # (6, 6) clamped-ion compliance of tensor cells, Angstrom^3/eV


def _barostat(atoms: Any, params: MDParams, equilibration: dict[str, Any]) -> _Barostat | None:
    """The barostat of an NPT run, its figures recorded in ``equilibration``; None for NVT."""
    if params.ensemble is not Ensemble.NPT_BERENDSEN:
        return None
    cell, point_group, label = npt_cell_update(atoms, params.npt_cell)
    b = _Barostat(cell, point_group, label)
    if cell == "isotropic":
        b.bulk_GPa = model_bulk_modulus(atoms, atoms.calc)
    else:
        b.compliance = _model_compliance(atoms, atoms.calc)
        b.bulk_GPa = 1.0 / float(b.compliance[:3, :3].sum()) / units.GPa  # Reuss bound of the clamped-ion constants
        equilibration["model_linear_compressibility_per_GPa"] = (
            b.compliance[:3, :3].sum(axis=1) * units.GPa).tolist()  # along Cartesian x, y, z
    equilibration.update({"npt_cell": label, "model_bulk_modulus_GPa": b.bulk_GPa,
                          "npt_pre_steps": params.npt_pre_steps, "strong_taup_fs": params.equil_taup_fs})
    return b


def _production_compliance(b: _Barostat | None, params: MDParams) -> Any:
    """Tensor cells in production: the model's compliance scaled to the configured compressibility, so the
    volume relaxes as with kappa and every shape mode (c/a, beta) with the same tau_P."""
    if b is None or b.compliance is None:
        return None
    return b.compliance * (params.compressibility_per_GPa / units.GPa) / float(b.compliance[:3, :3].sum())


def _pre_equilibrate(dyn: Any, atoms: Any, params: MDParams, b: _Barostat) -> dict[str, float]:
    """NPT: relax the cell to its volume at T before step 0 (module docstring); returns the volume change
    and the temperature at its end."""
    strong = int(STRONG_BAROSTAT_FRACTION * params.npt_pre_steps)
    volume0 = float(atoms.get_volume())
    dyn.compressibility = 1.0 / b.bulk_GPa / units.GPa
    dyn.compliance = b.compliance  # tensor cells: every strain mode with the model's own stiffness
    for i in range(params.npt_pre_steps):
        growth = max(0, i - strong) / max(1, params.npt_pre_steps - strong)
        dyn.taup = params.equil_taup_fs * 10.0**growth * units.fs
        dyn.step()
    dyn.taup = params.taup_fs * units.fs
    dyn.compressibility = params.compressibility_per_GPa / units.GPa
    dyn.compliance = _production_compliance(b, params)
    dyn.nsteps = 0
    return {"pre_volume_change": float(atoms.get_volume()) / volume0 - 1.0,
            "pre_end_T_K": kinetic_temperature(float(atoms.get_kinetic_energy()), len(atoms))}


class _Checkpoint:
    """The whole state of a run (positions, momenta, cell, step, random generator state, records) in
    ``checkpoint.pkl``, written atomically; a rerun with the same parameters resumes from it."""

    def __init__(self, out_dir: Path, params: MDParams, n_atoms: int) -> None:
        self.path = out_dir / "checkpoint.pkl"
        self.key = {**asdict(params), "ensemble": params.ensemble.value, "n_atoms": n_atoms}

    def load(self, atoms: Any, rng: np.random.Generator, dyn: Any) -> tuple[_Records, dict[str, Any]] | None:
        """Restore ``atoms``, ``rng`` and ``dyn.nsteps`` from the checkpoint; its records and equilibration
        figures, or None (no checkpoint, or one of other parameters)."""
        if not self.path.is_file():
            return None
        with open(self.path, "rb") as fh:
            state = pickle.load(fh)
        if state["params"] != self.key or "window_positions" not in state:
            log.warning("ignoring %s: written with other parameters", self.path)
            return None
        atoms.set_cell(state["cell"], scale_atoms=False)
        atoms.set_positions(state["positions"], apply_constraint=False)
        atoms.set_momenta(state["momenta"], apply_constraint=False)
        rng.bit_generator.state = state["rng_state"]
        dyn.nsteps = state["step"]
        log.info("resuming from %s at step %d", self.path, state["step"])
        records = _Records(state["thermo"], state["velocities"], state["window_positions"], state["window_cells"],
                           state["frames"])
        return records, state["equilibration"]

    def save(self, step: int, atoms: Any, rng: np.random.Generator, records: _Records,
             equilibration: dict[str, Any]) -> None:
        state = {"params": self.key, "step": step, "cell": atoms.cell.array.copy(),
                 "positions": atoms.get_positions(), "momenta": atoms.get_momenta(),
                 "rng_state": rng.bit_generator.state, "thermo": records.thermo, "velocities": records.velocities,
                 "window_positions": records.window_positions, "window_cells": records.window_cells,
                 "frames": records.frames, "equilibration": equilibration}
        with atomic_path(self.path) as tmp, open(tmp, "wb") as fh:
            pickle.dump(state, fh, protocol=pickle.HIGHEST_PROTOCOL)


class _Recorder:
    """Called after every MD step: the thermo row and its checks, the window's arrays, the trajectory's
    frames, checkpoints and progress lines."""

    def __init__(self, atoms: Any, dyn: Any, params: MDParams, records: _Records, checkpoint: _Checkpoint,
                 rng: np.random.Generator, equilibration: dict[str, Any]) -> None:
        self.atoms, self.dyn, self.params, self.records = atoms, dyn, params, records
        self.checkpoint, self.rng, self.equilibration = checkpoint, rng, equilibration
        self.frame_steps = {0, *range(params.n_equil % params.n_interval, params.n_steps + 1, params.n_interval)}
        self.start = dyn.nsteps
        self.t0 = time.perf_counter()

    def __call__(self) -> None:
        atoms, params, records = self.atoms, self.params, self.records
        step = self.dyn.nsteps
        if step % params.thermo_interval == 0 or step == params.n_steps:
            records.thermo.append(self.thermo_row(step))
        if step >= params.n_equil:
            records.velocities.append(atoms.get_velocities() * units.fs)  # Angstrom/fs
            records.window_positions.append(atoms.get_positions())
            records.window_cells.append(atoms.cell.array.copy())
        if step in self.frame_steps:
            frame = atoms.copy()
            frame.info = {"step": step, "time_fs": step * params.timestep_fs}
            frame.calc = _single_point(atoms)
            records.frames.append(frame)
        if params.checkpoint_due(step):
            self.checkpoint.save(step, atoms, self.rng, records, self.equilibration)
        if step > self.start and (step % params.progress_interval == 0 or step == params.n_steps):
            self.progress(step)

    def thermo_row(self, step: int) -> tuple[float, ...]:
        """step, time_fs, T_K, E_pot, E_kin, E_tot (eV), P_GPa, volume_A3; MDError when the run blew up."""
        atoms, params = self.atoms, self.params
        e_pot = float(atoms.get_potential_energy())
        e_kin = float(atoms.get_kinetic_energy())
        temp = kinetic_temperature(e_kin, len(atoms))
        pressure = float(-atoms.get_stress(include_ideal_gas=True)[:3].mean() / units.GPa)
        if not (math.isfinite(e_pot) and math.isfinite(temp)):
            raise MDError(f"step {step}: energy or temperature is NaN/inf (E_pot={e_pot}, T={temp})")
        if temp > params.max_temperature_ratio * params.temperature_K:
            raise MDError(f"step {step}: temperature {temp:.1f} K ran away (> {params.max_temperature_ratio:g}"
                          f" x target {params.temperature_K:g} K)")
        dmin = _min_distance(atoms) if step % DISTANCE_CHECK_INTERVAL == 0 else math.inf
        if dmin < params.min_distance_A:
            raise MDError(f"step {step}: atoms {dmin:.3f} A apart (< {params.min_distance_A} A)")
        return (step, step * params.timestep_fs, temp, e_pot, e_kin, e_pot + e_kin, pressure,
                float(atoms.get_volume()))

    def progress(self, step: int) -> None:
        """One log line: where the run is, its instantaneous T, P, V and speed, and the time left."""
        atoms, params = self.atoms, self.params
        elapsed = time.perf_counter() - self.t0
        rate = (step - self.start) / elapsed if elapsed > 0 else math.inf
        stress = atoms.get_stress(include_ideal_gas=True)
        log.info("step %d/%d  T %.1f K  P %.3f GPa  V %.2f A^3  %.2f steps/s  ETA %.0f s", step, params.n_steps,
                 kinetic_temperature(float(atoms.get_kinetic_energy()), len(atoms)),
                 float(-stress[:3].mean() / units.GPa), float(atoms.get_volume()), rate,
                 (params.n_steps - step) / rate if rate > 0 else math.inf)


def _write_outputs(out_dir: Path, params: MDParams, records: _Records) -> None:
    """thermo.csv, velocities.npy, positions.npz and trajectory.traj, each atomically."""
    with atomic_path(out_dir / "thermo.csv") as tmp, open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["step", "time_fs", "T_K", "E_pot_eV", "E_kin_eV", "E_tot_eV", "P_GPa", "volume_A3"])
        w.writerows([(int(r[0]), *(repr(float(x)) for x in r[1:])) for r in records.thermo])
    with atomic_path(out_dir / "velocities.npy") as tmp, open(tmp, "wb") as fh:
        np.save(fh, np.asarray(records.velocities, dtype=np.float64))
    with atomic_path(out_dir / "positions.npz") as tmp, open(tmp, "wb") as fh:
        np.savez(fh, steps=np.arange(params.n_equil, params.n_steps + 1),
                 positions_A=np.asarray(records.window_positions, dtype=np.float64),
                 cells_A=np.asarray(records.window_cells, dtype=np.float64))
    with atomic_path(out_dir / "trajectory.traj") as tmp:
        with Trajectory(str(tmp), "w") as traj:
            for frame in records.frames:
                traj.write(frame)


def run_md(atoms: Any, params: MDParams, out_dir: str | Path, calc: Any | None = None,
           stamp: str | None = None) -> dict[str, Any]:
    """Run one MD simulation of ``atoms`` and write its outputs into ``out_dir``.

    Parameters
    ----------
    atoms
        ASE Atoms of the supercell (not modified).
    params
        Run hyperparameters.
    out_dir
        Directory for thermo.csv, trajectory.traj, velocities.npy and run.json
        (each written to a temporary name and renamed when complete).
    calc
        ASE calculator to use instead of ``make_potential(params.potential, ...)``.
    stamp
        Recorded in run.json (:func:`mdxrd.shard.stamp` of the parameters and the start
        structure): a shard job reuses a run whose record carries the stamp it would write.

    Returns
    -------
    dict
        The run record written to run.json.

    Raises
    ------
    MDError
        Energy or temperature NaN, temperature above ``max_temperature_ratio`` x T0,
        or two atoms closer than ``min_distance_A`` (checked every
        ``DISTANCE_CHECK_INTERVAL`` steps); NaN and runaway are checked at every thermo step;
        the message names the step. Nothing is written into ``out_dir`` then.
    """
    import torch  # lazy: torch 1.3 s; not in envs/base.yaml, and loaded by every mdxrd command

    torch.set_num_threads(params.threads)
    out_dir = Path(out_dir)
    atoms = atoms.copy()
    atoms.calc = calc if calc is not None else make_potential(params.potential, params.device, params.calculator)
    n = len(atoms)
    equilibration: dict[str, Any] = {
        "start_temperature_K": params.start_temperature_factor * params.temperature_K,
        "degrees_of_freedom": degrees_of_freedom(n),
    }
    barostat = _barostat(atoms, params, equilibration)
    # set-up: velocities at start_temperature_factor x T (equipartition brings the crystal to T), the integrator
    rng = np.random.default_rng(params.seed)
    start_T = params.start_temperature_factor * params.temperature_K
    thermalize_momenta(atoms, start_T, rng=rng)
    Stationary(atoms)
    _rescale_to(atoms, start_T)
    dyn = make_dynamics(atoms, params, rng, cell=barostat.cell if barostat else "isotropic",
                        point_group=barostat.point_group if barostat else None)
    dyn.compliance = _production_compliance(barostat, params)
    checkpoint = _Checkpoint(out_dir, params, n)
    records = _Records()
    resumed = checkpoint.load(atoms, rng, dyn)
    if resumed is not None:
        records, equilibration = resumed
    if barostat is not None and dyn.nsteps == 0:
        log.info("NPT pre-equilibration: %d steps, model bulk modulus %.1f GPa", params.npt_pre_steps,
                 barostat.bulk_GPa)
        equilibration.update(_pre_equilibrate(dyn, atoms, params, barostat))
    recorder = _Recorder(atoms, dyn, params, records, checkpoint, rng, equilibration)
    dyn.attach(recorder, interval=1)
    start = dyn.nsteps
    log.info("%s %g K, %d atoms: steps %d to %d", params.ensemble.value, params.temperature_K, n, start,
             params.n_steps)
    try:
        dyn.run(params.n_steps - start)
    except MDError:
        checkpoint.path.unlink(missing_ok=True)  # a run that blew up is not resumed
        raise
    wall = time.perf_counter() - recorder.t0
    log.info("%s %g K: %d steps of %d atoms in %.1f s (%.3f s/step)", params.ensemble.value,
             params.temperature_K, params.n_steps - start, n, wall, wall / max(1, params.n_steps - start))
    return finish_run(out_dir, params, records, n_atoms=n, wall_s=wall, start=start,
                      calculator=getattr(atoms.calc, "calculator_name", type(atoms.calc).__name__), engine="ase",
                      runs_in_batch=getattr(atoms.calc, "batch_size", 1), equilibration=equilibration, stamp=stamp)


def finish_run(out_dir: Path, params: MDParams, records: _Records, *, n_atoms: int, wall_s: float, start: int,
               calculator: str, engine: str, runs_in_batch: int, equilibration: dict[str, Any],
               stamp: str | None) -> dict[str, Any]:
    """Write a finished run's files (:func:`_write_outputs`) and then its run.json, remove its checkpoint.

    Both engines end a run here (:func:`run_md`, :mod:`mdxrd.engine.runs`). ``start`` is the step the run
    (re)started from (>= 0), ``wall_s`` its wall time since then. Returns the run.json record: parameters,
    atoms, device (with torch's CUDA version and the GPU model), threads, timing, calculator, engine, runs
    sharing the batch, potential, equilibration figures and the stamp.
    """
    from mdxrd.calculator import device_info, resolve_device  # lazy: torch and chgnet.model

    import torch  # lazy: torch 1.3 s

    _write_outputs(out_dir, params, records)
    device = resolve_device(params.device)
    record = {
        "params": {**asdict(params), "ensemble": params.ensemble.value},
        "n_atoms": n_atoms,
        "device": device,
        **device_info(device),  # torch_cuda (torch.version.cuda), gpu (model name)
        "torch_threads": torch.get_num_threads(),
        "wall_s": wall_s,
        "s_per_step": wall_s / max(1, params.n_steps - start),
        "resumed_from_step": start,
        "calculator": calculator,
        "engine": engine,
        "runs_in_batch": runs_in_batch,
        "potential": params.potential["name"] if params.potential else DEFAULT_POTENTIAL,
        "equilibration": equilibration,
        "stamp": stamp,
    }
    write_json(out_dir / "run.json", record)
    (out_dir / "checkpoint.pkl").unlink(missing_ok=True)
    return record


def _single_point(atoms: Any) -> Any:
    """A SinglePointCalculator holding the current energy, forces and stress of ``atoms``."""
    return SinglePointCalculator(atoms, energy=float(atoms.get_potential_energy()), forces=atoms.get_forces(),
                                 stress=atoms.get_stress())


#: The files of a run directory (the rule's ``--run-dir`` template, filled per run).
FILES = ("thermo.csv", "trajectory.traj", "velocities.npy", "positions.npz", "run.json")


#: MDParams fields that say where and how a run is executed and logged, not what it samples: a change of
#: them keeps finished runs (each run's run.json records its device and threads).
EXECUTION_FIELDS = ("device", "engine", "threads", "progress_interval", "checkpoint_interval")


def run_stamp(params: dict[str, Any], structure_sha256: str) -> str:
    """The stamp of a run: its parameters other than :data:`EXECUTION_FIELDS` and its start structure's SHA-256."""
    return stamp({k: v for k, v in params.items() if k not in EXECUTION_FIELDS}, structure_sha256)


def _legacy_run(out_dir: Path, params: MDParams) -> bool:
    """A finished run of mdxrd before shards (run.json without a stamp) with exactly these parameters and every
    file of :data:`FILES`: reused, with a log line (its start structure is the relax stage's, which is
    deterministic)."""
    try:
        record = read_json(out_dir / "run.json")
    except (OSError, ValueError):
        return False
    if record.get("stamp") is not None or not all((out_dir / f).is_file() for f in FILES):
        return False
    recorded, wanted = record.get("params") or {}, {**asdict(params), "ensemble": params.ensemble.value}
    if any(recorded.get(k) != v for k, v in wanted.items() if k not in EXECUTION_FIELDS):
        return False
    log.info("reusing %s: a run of mdxrd before shards with the same parameters", out_dir)
    return True


def engine_for(params: MDParams) -> str:
    """The engine that runs ``params`` (``md.engine``): "ase" or "torch"; auto is torch where the device resolves to
    CUDA, the potential is a built-in CHGNet (with the fast calculator) or SevenNet and NPT uses one force call per
    step."""
    if params.engine != "auto":
        return params.engine
    from mdxrd.calculator import resolve_device  # lazy: torch and chgnet.model

    kind = "chgnet" if params.potential is None else params.potential.get("kind")
    fits = (kind == "sevennet" or kind == "chgnet" and params.calculator == "fast") and params.npt_integrator == "mdxrd"
    return "torch" if fits and resolve_device(params.device).startswith("cuda") else "ase"


def run_shard(params: dict[str, Any], supercell_template: str, run_template: str, manifest: str | Path) -> int:
    """The MD job of a shard: every run of its batches, reusing finished runs; write the manifest last.

    Parameters
    ----------
    params
        The shard's ``md`` parameter file (:func:`mdxrd.params.shard_params`): ``batches``, each a
        list of runs (unit, ensemble, temperature_K, replica, params = :class:`MDParams` fields).
    supercell_template
        Path template of a unit's start structure (``{unit}``; the relax stage's supercell.traj).
    run_template
        Path template of a run's directory (``{unit}``, ``{ensemble}``, ``{temperature}``,
        ``{replica}``), into which :data:`FILES` go.
    manifest
        The shard's manifest (:func:`mdxrd.shard.write_manifest`), written when every run succeeded.

    Notes
    -----
    A run is reused when its run.json carries the stamp of its parameters and start structure
    and all its files exist (a shard whose membership changed, or the rerun of a job in which a
    run failed, runs MD only for the others). With ``md.engine`` ase the rest run batch by batch, each
    batch in lockstep (:func:`mdxrd.batch.run_md_batch`; alone: :func:`run_md`); with torch the runs of
    consecutive batches of one potential share one batched state, at most a batch's size of them at
    once, the next joining as one leaves (:func:`mdxrd.engine.runs.run_md_engine`).

    Returns
    -------
    int
        The number of runs made (not reused).

    Raises
    ------
    mdxrd.shard.ShardError
        Some runs failed (each named with its error); the others' outputs are written.
    RuntimeError
        At the start, before any run: ``md.device`` asks for a CUDA device torch does not see
        (:func:`mdxrd.calculator.resolve_device`).
    """
    from mdxrd.calculator import resolve_device  # lazy: torch and chgnet.model (3.2 s)

    for device in {run["params"].get("device", MDParams.device) for runs in params["batches"] for run in runs}:
        resolve_device(device)  # at job start: md.device cuda without a CUDA device (or auto with a GPU unseen)
    started = time.perf_counter()
    entries, failures, made = [], [], 0
    structures: dict[str, tuple[Any, str]] = {}
    total = sum(len(b) for b in params["batches"])
    groups: list[tuple[str, int, list]] = []  # (engine, capacity, todo) with consecutive torch batches merged
    for runs in params["batches"]:
        todo = []
        for run in runs:
            fields = {"unit": run["unit"], "ensemble": run["ensemble"],
                      "temperature": f"{float(run['temperature_K']):g}", "replica": run["replica"]}
            out_dir = fill(run_template, **fields)
            if run["unit"] not in structures:
                path = fill(supercell_template, unit=run["unit"])
                structures[run["unit"]] = (read(str(path)), file_sha256(path))
            atoms, sha = structures[run["unit"]]
            this_stamp = run_stamp(run["params"], sha)
            entry = {**fields, "dir": str(out_dir)}
            files = [out_dir / f for f in FILES]
            # the second stamp is that of mdxrd before EXECUTION_FIELDS left the stamp (all parameters)
            if is_current(out_dir / "run.json", this_stamp, files) or \
                    is_current(out_dir / "run.json", stamp(run["params"], sha), files) or \
                    _legacy_run(out_dir, MDParams(**run["params"])):
                entries.append({**entry, "reused": True})
                continue
            todo.append((atoms, MDParams(**run["params"]), out_dir, this_stamp, entry))
        if not todo:
            continue
        engine = engine_for(todo[0][1])
        if engine == "torch" and groups and groups[-1][0] == "torch" and \
                groups[-1][2][0][1].potential == todo[0][1].potential:
            # one state for the job's runs of a potential: a batch's size bounds the runs in it at once
            groups[-1] = ("torch", max(groups[-1][1], len(runs)), groups[-1][2] + todo)
        else:
            groups.append((engine, len(runs), todo))
    for engine, capacity, todo in groups:
        if engine == "torch":
            from mdxrd.engine.runs import run_md_engine  # lazy: torch

            outcomes = run_md_engine([(a, p, d) for a, p, d, _, _ in todo], stamps=[t[3] for t in todo],
                                     capacity=capacity)
        elif len(todo) == 1:
            atoms, p, out_dir, one_stamp, entry = todo[0]
            try:
                outcomes: list[Any] = [run_md(atoms, p, out_dir, stamp=one_stamp)]
            except Exception as err:  # noqa: BLE001 - reported with the shard's failures
                outcomes = [err]
        else:
            outcomes = batch.run_md_batch([(a, p, d) for a, p, d, _, _ in todo], stamps=[t[3] for t in todo])
        for (_, _, out_dir, _, entry), outcome in zip(todo, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                failures.append(f"{out_dir}: {outcome}")
            else:
                entries.append({**entry, "reused": False})
                made += 1
    fail_if(failures, "MD runs", total)
    write_manifest(manifest, "md", entries, started)
    log.info("md: %d runs made, %d reused", made, len(entries) - made)
    return made


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``mdxrd md`` (the workflow's MD stage: the runs of one shard)."""
    p = subparsers.add_parser("md", help="MD stage: every run of a shard, in lockstep batches")
    p.add_argument("--params", required=True, help="the shard's md parameter file (results/params/<shard>/md.json)")
    p.add_argument("--supercell", required=True,
                   help="path template of a unit's start structure, e.g. results/structure/{unit}/supercell.traj")
    p.add_argument("--run-dir", required=True,
                   help="path template of a run's directory, e.g. results/md/{unit}/{ensemble}/{temperature}K/r{replica}")
    p.add_argument("--manifest", required=True, help="the shard's manifest (JSON), written last")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    try:
        params = load_params(args.params)
    except ValueError as err:
        raise UserError(f"--params {args.params}: {err}") from None
    run_shard(params, args.supercell, args.run_dir, args.manifest)
    return 0
