"""The MD stage's runs on the batched engine (``md.engine: torch``): the runs of a job in one
:class:`~mdxrd.engine.state.BatchState`, one potential call per step for all of them.

:func:`run_md_engine` takes the runs :func:`mdxrd.batch.run_md_batch` takes and writes the same files
(:data:`mdxrd.md.FILES`: thermo.csv, trajectory.traj, velocities.npy, positions.npz, run.json) with
the same columns, from the same start: each run's velocities are drawn on the host exactly as
:func:`mdxrd.md.run_md` draws them (its seed, 2 x T0, rescaled), the NPT barostat is set up with the
potential's own bulk modulus or compliance at the start structure and pre-equilibrated with the same
schedule (:func:`mdxrd.md._pre_equilibrate`), and the integrators repeat ASE's order of operations
(:mod:`mdxrd.engine.integrators`). Berendsen runs therefore follow the ASE path's trajectories to
round-off; Langevin runs use BAOAB with a generator per run seeded from the run's seed (the same
canonical ensemble as ASE's Langevin, another noise realization).

Each system keeps its own step counter (NPT runs count their pre-equilibration from
-``npt_pre_steps``), so runs resumed from checkpoints at different steps, fresh runs and runs of other
lengths advance together; a run leaves the state when it reaches ``n_steps``, and with a ``capacity``
the next queued run joins then (prepared, evaluated alone once, appended), so one state serves all
runs of a job and the device stays full.

Off the hot path: each step appends to a buffer on the device (per-system thermo scalars, and
positions, momenta and cells only on the steps some run records; forces and stresses only on frame
steps); the buffer is copied to the host in one transfer per quantity when a run reaches a checkpoint
step or its end, when a run fails, or every :data:`FLUSH_STEPS` steps. The only per-step
device-to-host copies are two (S,) flags (a system's positions became non-finite before the model
call; its energy or temperature is non-finite or ran away after it).

Failures: a run whose positions become non-finite (an impossible barostat step), whose energy or
temperature is not finite or exceeds ``max_temperature_ratio`` x T0 (every step), or whose atoms come
closer than ``min_distance_A`` (every :data:`mdxrd.md.DISTANCE_CHECK_INTERVAL` steps, checked on the
host when the buffer is copied) leaves the state with an :class:`mdxrd.md.MDError` naming the step;
its checkpoint is removed; the others go on.

Checkpoints: at every ``checkpoint_interval`` steps a run's state (positions, momenta, cell, step,
its Langevin generator's state, the records so far) is written atomically to its ``checkpoint.pkl``
(a key with ``engine: torch``: the ASE path's checkpoints are not read, and vice versa); a rerun
resumes every unfinished run from its own, bit-identically on the CPU (one torch thread: each
system's arithmetic does not depend on its batch-mates, CHGNet's batched pass equals the single
pass to the bit).
"""
from __future__ import annotations

import logging
import math
import pickle
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ase import Atoms, units
from ase.md.velocitydistribution import Stationary, thermalize_momenta

from mdxrd import md
from mdxrd.engine.integrators import advance_to_force, evaluate, finish_step
from mdxrd.engine.runner import unfinished
from mdxrd.engine.state import BatchState
from mdxrd.io import atomic_path
from mdxrd.potentials import make_potential

log = logging.getLogger("mdxrd.md")

__all__ = ["ENGINES", "FLUSH_STEPS", "engine_model", "run_md_engine"]

#: Values of ``md.engine``.
ENGINES = ("auto", "ase", "torch")

#: The device buffer is copied to the host at least every this many steps.
FLUSH_STEPS = 100


def engine_model(calc: Any) -> Any:
    """The engine's model for an ASE calculator, or None when the engine cannot run it.

    Parameters
    ----------
    calc
        The potential's calculator (:func:`mdxrd.potentials.make_potential`).

    Returns
    -------
    mdxrd.engine.models.CHGNetModel, mdxrd.engine.models.SevenNetModel or None
        For mdxrd's :class:`~mdxrd.calculator.FastCHGNetCalculator` (CHGNet and CHGNet-r2SCAN with
        ``md.calculator: fast``) and sevenn's ``SevenNetCalculator`` (the SevenNet built-ins); None for any
        other calculator.
    """
    from mdxrd.calculator import FastCHGNetCalculator
    from mdxrd.engine.models import CHGNetModel, SevenNetModel

    if isinstance(calc, FastCHGNetCalculator):
        return CHGNetModel(calc.model, calculator=calc)
    if type(calc).__name__ == "SevenNetCalculator" and type(calc).__module__.startswith("sevenn"):
        return SevenNetModel(calc)
    return None


@dataclass
class _Run:
    """One run's host-side bookkeeping."""

    atoms: Any
    params: md.MDParams
    out_dir: Path
    stamp: str | None
    records: md._Records = field(default_factory=md._Records)
    equilibration: dict[str, Any] = field(default_factory=dict)
    barostat: Any = None
    start: int = 0  # the step the run (re)started from; NPT pre-equilibration counts from -npt_pre_steps
    recorded: int = -1  # last step recorded
    frame_steps: set = field(default_factory=set)
    generator_state: Any = None
    t0: float = 0.0
    last: Any = None  # (positions, momenta, cell) of the last step copied to the host

    def key(self, n_atoms: int) -> dict[str, Any]:
        return {**asdict(self.params), "ensemble": self.params.ensemble.value, "n_atoms": n_atoms, "engine": "torch"}


@dataclass
class _Entry:
    """What one step leaves in the device buffer: the runs in the state (host), their step numbers (host), per
    system (S, 5) thermo scalars, and when some run records them, positions, momenta, cells, forces, energies,
    stresses."""

    runs: list[int]
    steps: list[int]
    scalars: torch.Tensor
    positions: torch.Tensor | None = None
    momenta: torch.Tensor | None = None
    cell: torch.Tensor | None = None
    forces: torch.Tensor | None = None
    stress: torch.Tensor | None = None


def _prepare(run: _Run, calc: Any) -> None:
    """Start velocities, barostat and resume of one run, on the host (as :func:`mdxrd.md.run_md`)."""
    params, atoms = run.params, run.atoms
    atoms.calc = calc
    n = len(atoms)
    run.equilibration = {"start_temperature_K": params.start_temperature_factor * params.temperature_K,
                         "degrees_of_freedom": md.degrees_of_freedom(n)}
    run.barostat = md._barostat(atoms, params, run.equilibration)
    rng = np.random.default_rng(params.seed)
    start_t = params.start_temperature_factor * params.temperature_K
    thermalize_momenta(atoms, start_t, rng=rng)
    Stationary(atoms)
    md._rescale_to(atoms, start_t)
    run.frame_steps = {0, *range(params.n_equil % params.n_interval, params.n_steps + 1, params.n_interval)}
    run.start = -params.npt_pre_steps if run.barostat is not None else 0
    path = run.out_dir / "checkpoint.pkl"
    if path.is_file():
        with open(path, "rb") as fh:
            state = pickle.load(fh)
        if state.get("params") != run.key(n):
            log.warning("ignoring %s: written with other parameters or by the ASE engine", path)
            return
        atoms.set_cell(state["cell"], scale_atoms=False)
        atoms.set_positions(state["positions"], apply_constraint=False)
        atoms.set_momenta(state["momenta"], apply_constraint=False)
        run.generator_state = state["generator_state"]
        run.start = run.recorded = state["step"]
        run.records = md._Records(state["thermo"], state["velocities"], state["window_positions"],
                                  state["window_cells"], state["frames"])
        run.equilibration = state["equilibration"]
        log.info("resuming %s from its checkpoint at step %d", run.out_dir, run.start)


def _schedule(run: _Run, step: int) -> tuple[float, float, Any]:
    """(tau_P in ASE time, kappa in Angstrom^3/eV, compliance or None) of the NPT step taken from ``step``: the
    pre-equilibration's (strong coupling with the model's stiffness, tau_P growing 10x over its last 30 %;
    :func:`mdxrd.md._pre_equilibrate`) for step < 0, else production."""
    p, b = run.params, run.barostat
    if b is None or step >= 0:
        return p.taup_fs * units.fs, p.compressibility_per_GPa / units.GPa, md._production_compliance(b, p)
    i = step + p.npt_pre_steps
    strong = int(md.STRONG_BAROSTAT_FRACTION * p.npt_pre_steps)
    growth = max(0, i - strong) / max(1, p.npt_pre_steps - strong)
    return p.equil_taup_fs * 10.0**growth * units.fs, 1.0 / b.bulk_GPa / units.GPa, b.compliance


class _Engine:
    """The state, the buffer and the runs of one job: at most ``capacity`` runs in the state; a run that finishes
    or fails leaves it and the next queued run joins (prepared then, evaluated alone once, appended)."""

    def __init__(self, runs: list[_Run], model: Any, device: str, calc: Any, capacity: int | None = None) -> None:
        self.runs, self.model, self.device, self.calc = runs, model, device, calc
        self.capacity = len(runs) if capacity is None else max(1, int(capacity))
        self.queue = list(range(len(runs)))  # runs waiting to join, in order
        self.failures: dict[int, BaseException] = {}
        self.done: dict[int, dict[str, Any]] = {}
        self.state: BatchState | None = None
        self.steps: list[int] = []  # per system in the state, in state order
        self.order: list[int] = []  # run index of each system in the state
        self.buffer: list[_Entry] = []
        self._limit: tuple[list[int], torch.Tensor] | None = None  # (order, T_max) of _t_max

    def _join(self) -> None:
        """Prepare queued runs (:func:`_prepare`) up to the capacity, evaluate them, append them to the state and
        record their start."""
        new = []
        while self.queue and len(self.order) + len(new) < self.capacity:
            r = self.queue.pop(0)
            try:
                _prepare(self.runs[r], self.calc)
            except Exception as err:  # noqa: BLE001 - reported per run
                self._failed(r, err)
                continue
            new.append(r)
        if not new:
            return
        runs = [self.runs[r] for r in new]
        p = [r.params for r in runs]
        sched = [_schedule(r, r.start) for r in runs]
        sub = BatchState.from_atoms(
            [r.atoms for r in runs], temperature_K=[q.temperature_K for q in p], timestep_fs=[q.timestep_fs for q in p],
            taut_fs=[q.taut_fs for q in p], friction_per_fs=[q.friction_per_fs for q in p],
            taup_fs=[s[0] / units.fs for s in sched], compressibility_per_GPa=[s[1] * units.GPa for s in sched],
            pressure_GPa=[q.pressure_GPa for q in p], seeds=[q.seed for q in p],
            ensemble=[q.ensemble.value for q in p],
            npt_cell=[r.barostat.cell if r.barostat else "isotropic" for r in runs],
            rotations=[r.barostat.point_group if r.barostat else None for r in runs],
            compliance=[s[2] for s in sched], device=self.device)
        sub.system_id = torch.as_tensor(new, device=sub.system_id.device)  # unique in the job (models key on it)
        for g, r in zip(sub.generators, runs):
            if r.generator_state is not None:
                g.set_state(r.generator_state)
        evaluate(sub, self.model)
        self._flush()  # the buffer holds the old composition
        self.state = sub if self.state is None else self.state.concat(sub)
        self.order += new
        self.steps += [r.start for r in runs]
        t0 = time.perf_counter()
        for r in runs:
            r.t0 = t0
        self._append()  # the new runs' step 0 (the others: already recorded)
        self._after_record()

    # ---- per step
    def _update_schedule(self) -> None:
        """Set tau_P, kappa and compliance of NPT systems in (or leaving) pre-equilibration."""
        rows = [(k, _schedule(self.runs[r], s)) for k, (r, s) in enumerate(zip(self.order, self.steps))
                if self.runs[r].barostat is not None and (s < 0 or s == 0 and self.runs[r].start < 0)]
        if not rows:
            return
        st = self.state
        like = {"dtype": st.dt.dtype, "device": st.dt.device}
        idx = torch.as_tensor([k for k, _ in rows], device=st.dt.device)
        st.tau_P = st.tau_P.index_put((idx,), torch.as_tensor([s[0] for _, s in rows], **like))
        st.kappa = st.kappa.index_put((idx,), torch.as_tensor([s[1] for _, s in rows], **like))
        tensor_rows = [(k, s[2]) for k, s in rows if s[2] is not None]
        if tensor_rows:
            t_idx = torch.as_tensor([k for k, _ in tensor_rows], device=st.dt.device)
            st.compliance = st.compliance.index_put((t_idx,), torch.as_tensor(np.stack([c for _, c in tensor_rows]),
                                                                               **like))

    def _t_max(self) -> torch.Tensor:
        """(S,) runaway temperature of each system, ``max_temperature_ratio`` x T0, K (built once per composition)."""
        if self._limit is None or self._limit[0] != self.order:
            ratio = torch.as_tensor([self.runs[r].params.max_temperature_ratio for r in self.order],
                                    dtype=self.state.temperature_K.dtype, device=self.state.temperature_K.device)
            self._limit = (list(self.order), self.state.temperature_K * ratio)
        return self._limit[1]

    def _scalars(self) -> torch.Tensor:
        """(S, 5): E_pot, E_kin (eV), T (K), P with the kinetic term (GPa), volume (Angstrom^3)."""
        st = self.state
        e_kin = st.kinetic_energy()
        sigma = st.stress + st.kinetic_stress()
        pressure = -torch.diagonal(sigma, dim1=1, dim2=2).sum(1) / 3.0 / units.GPa
        return torch.stack([st.energy, e_kin, st.temperature(), pressure, st.volume()], 1)

    def _append(self) -> None:
        runs = [self.runs[r] for r in self.order]
        need_pos = any(s >= 0 and (s >= r.params.n_equil or s in r.frame_steps or s % md.DISTANCE_CHECK_INTERVAL == 0
                                   or r.params.checkpoint_due(s) or s == r.params.n_steps) and s > r.recorded
                       for r, s in zip(runs, self.steps))
        need_frame = any(s in r.frame_steps and s > r.recorded for r, s in zip(runs, self.steps))
        st = self.state
        self.buffer.append(_Entry(list(self.order), list(self.steps), self._scalars(),
                                  st.positions.clone() if need_pos else None, st.momenta.clone() if need_pos else None,
                                  st.cell.clone() if need_pos else None, st.forces.clone() if need_frame else None,
                                  st.stress.clone() if need_frame else None))

    def run(self) -> None:
        """Advance until every run finished or failed."""
        self._join()
        while self.state is not None and self.state.n_systems:
            self._update_schedule()
            advance_to_force(self.state)
            bad = unfinished(self.state)
            self.steps = [s + 1 for s in self.steps]
            if bool(bad.any()):
                self._fail(bad, "positions or cell not finite after the barostat and drift (pressure coupling too "
                                "strong: reduce md.timestep_fs or the compressibility, or raise md.taup_fs)")
                if not self.state.n_systems:
                    self._join()
                    continue
            finish_step(evaluate(self.state, self.model))
            st = self.state
            t = st.temperature()
            hot = ~torch.isfinite(st.energy) | ~torch.isfinite(t) | (t > self._t_max())
            self._append()
            if bool(hot.any()):
                vals = torch.stack([st.energy, t], 1)[hot].cpu().tolist()
                msgs = []
                for (e, temp), k in zip(vals, torch.nonzero(hot).flatten().tolist()):
                    p = self.runs[self.order[k]].params
                    msgs.append(f"step {self.steps[k]}: energy or temperature is NaN/inf (E_pot={e}, T={temp})"
                                if not (math.isfinite(e) and math.isfinite(temp)) else
                                f"step {self.steps[k]}: temperature {temp:.1f} K ran away "
                                f"(> {p.max_temperature_ratio:g} x target {p.temperature_K:g} K)")
                self._fail(hot, msgs)
            self._after_record()
            if self.queue and len(self.order) < self.capacity:
                self._join()

    def _fail(self, bad: torch.Tensor, message: str | list[str]) -> None:
        """Mark the systems where ``bad`` as failed runs, copy the buffer, remove them from the state."""
        ks = torch.nonzero(bad).flatten().tolist()
        msgs = message if isinstance(message, list) else [f"step {self.steps[k]}: {message}" for k in ks]
        self._flush()  # an earlier step's check (atoms too close) names the failure first, as on the ASE path
        for k, msg in zip(ks, msgs):
            self._failed(self.order[k], md.MDError(msg))
        self._remove()

    def _failed(self, r: int, err: BaseException) -> None:
        run = self.runs[r]
        if r not in self.failures:
            self.failures[r] = err
            log.error("[%s] %s", run.out_dir, err)
            (run.out_dir / "checkpoint.pkl").unlink(missing_ok=True)  # a run that blew up is not resumed

    def _remove(self) -> None:
        """Drop failed and finished runs from the state."""
        keep = [r not in self.failures and r not in self.done for r in self.order]
        if all(keep):
            return
        self.state = self.state.select(torch.as_tensor(keep, device=self.state.cell.device))
        self.steps = [s for s, k in zip(self.steps, keep) if k]
        self.order = [r for r, k in zip(self.order, keep) if k]

    def _after_record(self) -> None:
        """Copy the buffer when a run reached a checkpoint step, its end or the end of pre-equilibration, or the
        buffer is full; write those checkpoints and outputs; drop finished runs."""
        due = any(s == run.params.n_steps or s == 0 and run.start < 0 or run.params.checkpoint_due(s)
                  for run, s in zip((self.runs[r] for r in self.order), self.steps))
        if not due and len(self.buffer) < FLUSH_STEPS:
            return
        self._flush()
        for k, (r, s) in enumerate(zip(self.order, self.steps)):
            run = self.runs[r]
            p = run.params
            if r in self.failures:
                continue
            if s == p.n_steps:
                self._finish(r)
            elif run.params.checkpoint_due(s) and s > run.start:
                self._checkpoint(k, r, s)
        self._remove()

    # ---- host side
    def _flush(self) -> None:
        """One device-to-host copy per quantity for the buffered steps; records, checks and progress lines."""
        if not self.buffer:
            return
        entries, self.buffer = self.buffer, []
        scalars = torch.stack([e.scalars for e in entries]).cpu().numpy()
        with_pos = [j for j, e in enumerate(entries) if e.positions is not None]
        host: dict[int, tuple] = {}
        if with_pos:
            pos = torch.stack([entries[j].positions for j in with_pos]).cpu().numpy()
            mom = torch.stack([entries[j].momenta for j in with_pos]).cpu().numpy()
            cell = torch.stack([entries[j].cell for j in with_pos]).cpu().numpy()
            for i, j in enumerate(with_pos):
                host[j] = (pos[i], mom[i], cell[i])
        with_f = [j for j, e in enumerate(entries) if e.forces is not None]
        forces = {}
        if with_f:
            f = torch.stack([entries[j].forces for j in with_f]).cpu().numpy()
            s = torch.stack([entries[j].stress for j in with_f]).cpu().numpy()
            forces = {j: (f[i], s[i]) for i, j in enumerate(with_f)}
        starts = self.state.atom_starts()
        counts = self.state.atom_counts()
        masses = self.state.masses.cpu().numpy()
        numbers = self.state.numbers.cpu().numpy()
        for j, e in enumerate(entries):
            for k, (r, step) in enumerate(zip(e.runs, e.steps)):
                run = self.runs[r]
                if r in self.failures or step < 0 or step <= run.recorded:
                    continue
                try:
                    self._record(run, step, scalars[j, k], host.get(j), forces.get(j), k, starts[k], counts[k],
                                 masses, numbers)
                except md.MDError as err:
                    self._failed(r, err)

    def _record(self, run: _Run, step: int, sc: np.ndarray, host: tuple | None, frc: tuple | None, k: int, s0: int,
                n: int, masses: np.ndarray, numbers: np.ndarray) -> None:
        """The ASE path's recorder (:class:`mdxrd.md._Recorder`) for one run and step, from host copies."""
        p, rec = run.params, run.records
        run.recorded = step
        e_pot, e_kin, temp, pressure, volume = (float(x) for x in sc)
        if step == 0 and run.start < 0:  # end of the NPT pre-equilibration
            v0 = float(abs(np.linalg.det(run.atoms.cell.array)))
            run.equilibration.update({"pre_volume_change": volume / v0 - 1.0, "pre_end_T_K": temp})
        if step % p.thermo_interval == 0 or step == p.n_steps:
            rec.thermo.append((step, step * p.timestep_fs, temp, e_pot, e_kin, e_pot + e_kin, pressure, volume))
        if host is None:
            return
        pos, mom, cell = host[0][s0:s0 + n], host[1][s0:s0 + n], host[2][k]
        m = masses[s0:s0 + n]
        if step % md.DISTANCE_CHECK_INTERVAL == 0:
            atoms = Atoms(numbers=numbers[s0:s0 + n], positions=pos, cell=cell, pbc=True)
            dmin = md._min_distance(atoms)
            if dmin < p.min_distance_A:
                raise md.MDError(f"step {step}: atoms {dmin:.3f} A apart (< {p.min_distance_A} A)")
        if step >= p.n_equil:
            rec.velocities.append(mom / m[:, None] * units.fs)  # Angstrom/fs
            rec.window_positions.append(pos.copy())
            rec.window_cells.append(cell.copy())
        if step in run.frame_steps:
            from ase.calculators.singlepoint import SinglePointCalculator
            from mdxrd.integrators import stress_to_voigt

            frame = Atoms(numbers=numbers[s0:s0 + n], positions=pos, cell=cell, pbc=True, masses=m)
            frame.set_momenta(mom)
            frame.info = {"step": step, "time_fs": step * p.timestep_fs}
            frame.calc = SinglePointCalculator(frame, energy=e_pot, forces=frc[0][s0:s0 + n].copy(),
                                               stress=stress_to_voigt(frc[1][k]))
            rec.frames.append(frame)
        run.last = (pos.copy(), mom.copy(), cell.copy())
        if step > max(run.start, 0) and (step % p.progress_interval == 0 or step == p.n_steps):
            elapsed = time.perf_counter() - run.t0
            rate = (step - max(run.start, 0)) / elapsed if elapsed > 0 else math.inf
            log.info("[%s] step %d/%d  T %.1f K  P %.3f GPa  V %.2f A^3  %.2f steps/s  ETA %.0f s", run.out_dir, step,
                     p.n_steps, temp, pressure, volume, rate, (p.n_steps - step) / rate if rate > 0 else math.inf)

    def _checkpoint(self, k: int, r: int, step: int) -> None:
        run = self.runs[r]
        pos, mom, cell = run.last
        state = {"params": run.key(len(pos)), "step": step, "cell": cell, "positions": pos, "momenta": mom,
                 "generator_state": self.state.generators[k].get_state(), "thermo": run.records.thermo,
                 "velocities": run.records.velocities, "window_positions": run.records.window_positions,
                 "window_cells": run.records.window_cells, "frames": run.records.frames,
                 "equilibration": run.equilibration}
        with atomic_path(run.out_dir / "checkpoint.pkl") as tmp, open(tmp, "wb") as fh:
            pickle.dump(state, fh, protocol=pickle.HIGHEST_PROTOCOL)

    def _finish(self, r: int) -> None:
        run = self.runs[r]
        p = run.params
        start = max(run.start, 0)
        wall = time.perf_counter() - run.t0
        self.done[r] = md.finish_run(run.out_dir, p, run.records, n_atoms=len(run.atoms), wall_s=wall, start=start,
                                     calculator=f"{type(run.atoms.calc).__name__} (mdxrd.engine)", engine="torch",
                                     runs_in_batch=len(self.runs), equilibration=run.equilibration, stamp=run.stamp)
        log.info("[%s] %s %g K: %d steps of %d atoms in %.1f s (%.3f s/step)", run.out_dir, p.ensemble.value,
                 p.temperature_K, p.n_steps - start, len(run.atoms), wall, wall / max(1, p.n_steps - start))


def run_md_engine(runs: list[tuple[Any, md.MDParams, str | Path]], calc: Any | None = None,
                  stamps: list[str | None] | None = None, model: Any | None = None,
                  capacity: int | None = None) -> list[dict[str, Any] | BaseException]:
    """Run K MD simulations as one batched state on ``md.device`` (module docstring).

    Parameters
    ----------
    runs
        K tuples (atoms, params, out_dir) as :func:`mdxrd.batch.run_md_batch` takes them; all share the
        potential, device, calculator and threads of the first.
    calc
        The potential's ASE calculator (a :class:`~mdxrd.calculator.FastCHGNetCalculator`); None:
        ``make_potential`` of the first run's potential, device and calculator.
    stamps
        Per run, the stamp its run.json records; None: none.
    model
        The engine's model (:mod:`mdxrd.engine.models`); None: :func:`engine_model` of ``calc``. ``calc``
        still serves the host-side set-up (the NPT barostat's stiffness at the start structure).
    capacity
        At most this many runs in the state at once (None: all); when one finishes or fails the next joins,
        so the device stays full (runs of other lengths, NPT runs with their pre-equilibration). A run's
        trajectory does not depend on when it joined or with whom (each system's arithmetic is its own).

    Returns
    -------
    list
        Per run, in order: its run.json record, or the exception that ended it (:class:`mdxrd.md.MDError`
        for a run that blew up).

    Raises
    ------
    ValueError
        The potential has no engine model (:func:`engine_model`: not mdxrd's fast CHGNet calculator nor SevenNet), or
        a run asks for ``npt_integrator: ase``.
    """
    from mdxrd.calculator import resolve_device

    first = runs[0][1]
    torch.set_num_threads(first.threads)
    device = resolve_device(first.device)
    if calc is None:
        calc = make_potential(first.potential, first.device, first.calculator)
    if model is None:
        model = engine_model(calc)
    if model is None:
        raise ValueError(f"md.engine torch: the potential's calculator {type(calc).__name__} has no batched engine "
                         "model (CHGNet with md.calculator: fast and SevenNet have); use md.engine: ase")
    if any(p.npt_integrator != "mdxrd" for _, p, _ in runs):
        raise ValueError("md.engine torch integrates NPT with one force call per step (md.npt_integrator: mdxrd)")
    items = []
    for i, (atoms, params, out_dir) in enumerate(runs):
        run = _Run(atoms.copy(), params, Path(out_dir), stamps[i] if stamps else None)
        run.out_dir.mkdir(parents=True, exist_ok=True)
        items.append(run)
    engine = _Engine(items, model, device, calc, capacity)
    engine.run()
    outcomes: list[Any] = [engine.failures.get(i) or engine.done.get(i) for i in range(len(runs))]
    log.info("%d runs on the batched engine (%s)", len(runs), device)
    return outcomes
