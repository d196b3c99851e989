"""MD stage: one CHGNet molecular-dynamics run of a supercell in one ensemble at one temperature.

Ensembles (METHOD.md, "Ensembles"; all integrators are ASE's unless stated):

* ``nvt_langevin`` -- ``ase.md.Langevin``: m a = F - gamma m v + R(t),
  <R(t)R(t')> = 2 gamma m k_B T delta(t - t'), friction gamma in 1/fs
  (Schneider & Stoll, Phys. Rev. B 17, 1302 (1978); Vanden-Eijnden & Ciccotti
  integrator as implemented in ASE).
* ``nvt_berendsen`` -- ``ase.md.NVTBerendsen``: velocities scaled each step by
  lambda = sqrt(1 + (dt/tau_T)(T0/T - 1)) (Berendsen et al., J. Chem. Phys. 81, 3684 (1984)).
* ``npt_berendsen`` -- isotropic Berendsen barostat on top (by default
  :class:`mdxrd.integrators.NPTBerendsenOneForce`, one force evaluation per
  step; ASE's NPTBerendsen, which evaluates forces twice, on request): cell and positions
  scaled by mu = (1 - kappa (dt/tau_P)(P0 - P))^(1/3), kappa the isothermal
  compressibility, given explicitly (CHGNet's own MolecularDynamics fits an EOS
  for it instead, and has no Langevin).

Energies and forces: CHGNet (Deng et al., Nat. Mach. Intell. 5, 1031 (2023)).
The run starts from a Maxwell-Boltzmann distribution at T drawn from a seeded
generator, with zero total momentum, rescaled to exactly T. Outputs:

* ``thermo.csv``: step, time_fs, T_K, E_pot_eV, E_kin_eV, E_tot_eV, P_GPa,
  volume_A3 every ``thermo_interval`` steps (step 0 included). P includes the
  ideal-gas (kinetic) term.
* ``trajectory.traj`` (ASE): frames at step 0 and every step
  ``n_equil + k * n_interval`` (k >= 0), with momenta, energy, forces, stress and
  ``info`` {step, time_fs}; the snapshots stage keeps those after equilibration.
* ``velocities.npy``: float64 (n_steps - n_equil + 1, N, 3) velocities in
  Angstrom/fs from step n_equil to n_steps, for the velocity autocorrelation time.
* ``run.json``: seed, device, threads, calculator, timing and versions.

Checkpoints: every ``checkpoint_interval`` steps the whole state (positions,
momenta, cell, step, random generator state and the records gathered so far) is
written atomically to ``checkpoint.pkl`` in the output directory. A rerun of a
killed job with the same parameters resumes from it; with one torch thread the
resumed run is bit-identical to an uninterrupted one. The checkpoint is removed
once the outputs are written.
"""

from __future__ import annotations

import argparse
import csv
import enum
import hashlib
import json
import logging
import math
import pickle
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mdxrd.io import atomic_path, write_json

log = logging.getLogger(__name__)

#: Steps between checks of the smallest interatomic distance (a neighbour-list build).
DISTANCE_CHECK_INTERVAL = 10

#: Boltzmann constant in eV/K (CODATA 2018), as in METHOD.md.
K_B_EV_PER_K = 8.617333262e-5


class Ensemble(str, enum.Enum):
    """Thermodynamic ensembles of the MD grid (value = the name used in config and files)."""

    NVT_LANGEVIN = "nvt_langevin"
    NVT_BERENDSEN = "nvt_berendsen"
    NPT_BERENDSEN = "npt_berendsen"

    @property
    def fixed_cell(self) -> bool:
        """True for NVT ensembles (constant volume and cell)."""
        return self is not Ensemble.NPT_BERENDSEN


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
    threads : torch CPU threads (1 is bit-reproducible and fastest per core under load).
    calculator : "fast" (inference-only, :class:`mdxrd.calculator.FastCHGNetCalculator`) or "stock"
        (chgnet's CHGNetCalculator).
    npt_integrator : "mdxrd" (:class:`mdxrd.integrators.NPTBerendsenOneForce`, one force call per
        step) or "ase" (ASE's NPTBerendsen, two force calls per step).
    max_temperature_ratio : the run fails when T exceeds this multiple of T0 (runaway).
    min_distance_A : the run fails when two atoms come closer than this (Angstrom).
    checkpoint_interval : write the full state every this many steps (0: never) so a killed
        run resumes where it stopped.
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
    threads: int = 1
    calculator: str = "fast"
    npt_integrator: str = "mdxrd"
    max_temperature_ratio: float = 5.0
    min_distance_A: float = 0.5
    checkpoint_interval: int = 100

    def __post_init__(self) -> None:
        object.__setattr__(self, "ensemble", Ensemble(self.ensemble))
        if not self.temperature_K > 0:
            raise ValueError(f"temperature_K must be > 0, got {self.temperature_K}")
        if not 0 <= self.n_equil < self.n_steps:
            raise ValueError(f"need 0 <= n_equil < n_steps, got n_equil={self.n_equil}, n_steps={self.n_steps}")
        if self.calculator not in ("fast", "stock"):
            raise ValueError(f"calculator must be 'fast' or 'stock', got {self.calculator!r}")
        if self.npt_integrator not in ("mdxrd", "ase"):
            raise ValueError(f"npt_integrator must be 'mdxrd' or 'ase', got {self.npt_integrator!r}")
        if self.n_interval < 1 or self.n_equil + self.n_interval > self.n_steps:
            raise ValueError(
                f"n_interval={self.n_interval} gives no snapshot: need 1 <= n_interval <= n_steps - n_equil "
                f"= {self.n_steps - self.n_equil}"
            )

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


def make_dynamics(atoms: Any, params: MDParams, rng: np.random.Generator) -> Any:
    """Build the ASE integrator of ``params.ensemble`` for ``atoms`` (ASE units converted from fs, GPa)."""
    from ase import units

    dt = params.timestep_fs * units.fs
    if params.ensemble is Ensemble.NVT_LANGEVIN:
        from ase.md.langevin import Langevin

        from ase.constraints import FixCom

        # ASE >= 3.28: fixcm=False with a FixCom constraint samples NVT correctly.
        atoms.set_constraint(FixCom())
        return Langevin(atoms, dt, temperature_K=params.temperature_K,
                        friction=params.friction_per_fs / units.fs, fixcm=False, rng=rng)
    if params.ensemble is Ensemble.NVT_BERENDSEN:
        from ase.md.nvtberendsen import NVTBerendsen

        return NVTBerendsen(atoms, dt, temperature_K=params.temperature_K, taut=params.taut_fs * units.fs)
    if params.npt_integrator == "mdxrd":
        from mdxrd.integrators import NPTBerendsenOneForce as NPTBerendsen
    else:
        from ase.md.nptberendsen import NPTBerendsen

    return NPTBerendsen(atoms, dt, temperature_K=params.temperature_K, taut=params.taut_fs * units.fs,
                        pressure_au=params.pressure_GPa * units.GPa, taup=params.taup_fs * units.fs,
                        compressibility_au=params.compressibility_per_GPa / units.GPa)


def _rescale_to(atoms: Any, temperature_K: float) -> None:
    """Scale velocities so the instantaneous temperature (3N degrees of freedom) equals ``temperature_K``."""
    e_kin = atoms.get_kinetic_energy()
    if e_kin > 0:
        target = 1.5 * len(atoms) * K_B_EV_PER_K * temperature_K
        atoms.set_momenta(atoms.get_momenta() * math.sqrt(target / e_kin))


def _min_distance(atoms: Any) -> float:
    """Smallest interatomic distance under periodic boundary conditions, Angstrom."""
    from ase.neighborlist import neighbor_list

    d = neighbor_list("d", atoms, 1.5)
    return float(d.min()) if len(d) else math.inf


def run_md(atoms: Any, params: MDParams, out_dir: str | Path, calc: Any | None = None) -> dict[str, Any]:
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
        ASE calculator to use instead of ``make_calculator(params.calculator, params.device)``.

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
    import torch
    from ase import units
    from ase.io.trajectory import Trajectory
    from ase.md.velocitydistribution import Stationary, thermalize_momenta

    from mdxrd.calculator import make_calculator, resolve_device

    torch.set_num_threads(params.threads)
    out_dir = Path(out_dir)
    atoms = atoms.copy()
    atoms.calc = calc if calc is not None else make_calculator(params.calculator, device=params.device)
    rng = np.random.default_rng(params.seed)
    thermalize_momenta(atoms, params.temperature_K, rng=rng)
    Stationary(atoms)
    _rescale_to(atoms, params.temperature_K)
    dyn = make_dynamics(atoms, params, rng)

    n = len(atoms)
    frame_steps = {0, *range(params.n_equil % params.n_interval, params.n_steps + 1, params.n_interval)}
    thermo: list[tuple[float, ...]] = []
    velocities: list[np.ndarray] = []
    frames: list[Any] = []
    checkpoint = out_dir / "checkpoint.pkl"
    key = {**asdict(params), "ensemble": params.ensemble.value, "n_atoms": n}
    if checkpoint.is_file():
        with open(checkpoint, "rb") as fh:
            state = pickle.load(fh)
        if state["params"] == key:
            atoms.set_cell(state["cell"], scale_atoms=False)
            atoms.set_positions(state["positions"], apply_constraint=False)
            atoms.set_momenta(state["momenta"], apply_constraint=False)
            rng.bit_generator.state = state["rng_state"]
            thermo, velocities, frames = state["thermo"], state["velocities"], state["frames"]
            dyn.nsteps = state["step"]
            log.info("resuming from %s at step %d", checkpoint, state["step"])
        else:
            log.warning("ignoring %s: written with other parameters", checkpoint)

    def write_checkpoint(step: int) -> None:
        state = {"params": key, "step": step, "cell": atoms.cell.array.copy(),
                 "positions": atoms.get_positions(), "momenta": atoms.get_momenta(),
                 "rng_state": rng.bit_generator.state, "thermo": thermo, "velocities": velocities,
                 "frames": frames}
        with atomic_path(checkpoint) as tmp, open(tmp, "wb") as fh:
            pickle.dump(state, fh, protocol=pickle.HIGHEST_PROTOCOL)

    def observe() -> None:
        step = dyn.nsteps
        if step % params.thermo_interval == 0 or step == params.n_steps:
            e_pot = float(atoms.get_potential_energy())
            e_kin = float(atoms.get_kinetic_energy())
            temp = 2.0 * e_kin / (3.0 * n * K_B_EV_PER_K)
            stress = atoms.get_stress(include_ideal_gas=True)
            pressure = float(-stress[:3].mean() / units.GPa)
            if not (math.isfinite(e_pot) and math.isfinite(temp)):
                raise MDError(f"step {step}: energy or temperature is NaN/inf (E_pot={e_pot}, T={temp})")
            if temp > params.max_temperature_ratio * params.temperature_K:
                raise MDError(f"step {step}: temperature {temp:.1f} K ran away (> {params.max_temperature_ratio:g}"
                              f" x target {params.temperature_K:g} K)")
            dmin = _min_distance(atoms) if step % DISTANCE_CHECK_INTERVAL == 0 else math.inf
            if dmin < params.min_distance_A:
                raise MDError(f"step {step}: atoms {dmin:.3f} A apart (< {params.min_distance_A} A)")
            thermo.append((step, step * params.timestep_fs, temp, e_pot, e_kin, e_pot + e_kin, pressure,
                           float(atoms.get_volume())))
        if step >= params.n_equil:
            velocities.append(atoms.get_velocities() * units.fs)  # Angstrom/fs
        if step in frame_steps:
            frame = atoms.copy()
            frame.info = {"step": step, "time_fs": step * params.timestep_fs}
            frame.calc = _single_point(atoms)
            frames.append(frame)
        if params.checkpoint_interval and 0 < step < params.n_steps and step % params.checkpoint_interval == 0:
            write_checkpoint(step)

    dyn.attach(observe, interval=1)
    t0 = time.perf_counter()
    start = dyn.nsteps
    try:
        dyn.run(params.n_steps - start)
    except MDError:
        checkpoint.unlink(missing_ok=True)  # a run that blew up is not resumed
        raise
    wall = time.perf_counter() - t0
    log.info("%s %g K: %d steps of %d atoms in %.1f s (%.3f s/step)", params.ensemble.value,
             params.temperature_K, params.n_steps - start, n, wall, wall / max(1, params.n_steps - start))

    with atomic_path(out_dir / "thermo.csv") as tmp, open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["step", "time_fs", "T_K", "E_pot_eV", "E_kin_eV", "E_tot_eV", "P_GPa", "volume_A3"])
        w.writerows([(int(r[0]), *(repr(float(x)) for x in r[1:])) for r in thermo])
    with atomic_path(out_dir / "velocities.npy") as tmp, open(tmp, "wb") as fh:
        np.save(fh, np.asarray(velocities, dtype=np.float64))
    with atomic_path(out_dir / "trajectory.traj") as tmp:
        with Trajectory(str(tmp), "w") as traj:
            for frame in frames:
                traj.write(frame)
    record = {
        "params": {**asdict(params), "ensemble": params.ensemble.value},
        "n_atoms": n,
        "device": resolve_device(params.device),
        "torch_threads": torch.get_num_threads(),
        "wall_s": wall,
        "s_per_step": wall / max(1, params.n_steps - start),
        "resumed_from_step": start,
        "calculator": type(atoms.calc).__name__,
    }
    write_json(out_dir / "run.json", record)
    checkpoint.unlink(missing_ok=True)
    return record


def _single_point(atoms: Any) -> Any:
    """A SinglePointCalculator holding the current energy, forces and stress of ``atoms``."""
    from ase.calculators.singlepoint import SinglePointCalculator

    return SinglePointCalculator(atoms, energy=float(atoms.get_potential_energy()), forces=atoms.get_forces(),
                                 stress=atoms.get_stress())


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``mdxrd md`` (the workflow's MD stage)."""
    p = subparsers.add_parser("md", help="MD stage: one CHGNet MD run of a supercell")
    p.add_argument("supercell", help="supercell (ASE-readable, e.g. the structure stage's .traj)")
    p.add_argument("--out-dir", required=True, help="directory for thermo.csv, trajectory.traj, velocities.npy, run.json")
    p.add_argument("--params", required=True, help="JSON object of MDParams fields")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    from ase.io import read

    from mdxrd.cli import UserError

    try:
        params = MDParams(**json.loads(args.params))
    except (TypeError, ValueError) as err:
        raise UserError(f"--params: {err}") from None
    run_md(read(args.supercell), params, args.out_dir)
    return 0
