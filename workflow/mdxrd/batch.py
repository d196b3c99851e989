"""Batched MD: K runs advanced in lockstep with one potential evaluation per step for all of them.

Each run is :func:`mdxrd.md.run_md` unchanged in its own thread (same integrators, seeds, checks,
checkpoints); a :class:`LockstepBatcher` gathers the energy/force/stress requests of every active
run and makes one call (for CHGNet one batched forward and backward pass,
:meth:`mdxrd.calculator.FastCHGNetCalculator.calculate_batch`). A batched run's trajectory equals
the run alone to the bit (the batched network pass repeats the single pass's arithmetic; tested for
CHGNet over 50 steps and EMT over 150). Runs may mix ensembles, temperatures, replicas and crystals;
a run that blows up leaves the batch and the others go on.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from ase.calculators.calculator import Calculator, all_changes

from mdxrd import md
from mdxrd.potentials import make_potential

log = logging.getLogger("mdxrd.md")  # one logger for a run, batched or alone: its lines carry the run tag


class LockstepBatcher:
    """One potential evaluation for K MD runs that advance in lockstep.

    Every run is a thread executing :func:`mdxrd.md.run_md` unchanged (same integrators, seeds, checks,
    checkpoints) with :meth:`calculator` as its ASE calculator. A run's energy/force/stress call
    blocks until every run still in the batch has made its own; the last run to call has all of
    them evaluated with one call of ``evaluate`` (for CHGNet one batched forward and backward pass,
    :meth:`mdxrd.calculator.FastCHGNetCalculator.calculate_batch`) and hands each run its result.
    The runs' own work between calls (integrator, thermo, checks) is NumPy on arrays of N atoms.
    A run that finishes or fails leaves the batch (:meth:`leave`) and the others go on without it.

    Parameters
    ----------
    evaluate
        Maps a list of K ASE Atoms to K result dicts (``energy``, ``free_energy`` in eV,
        ``forces`` (N_k, 3) eV/Angstrom, ``stress`` Voigt eV/Angstrom^3).
    n_runs
        Number of runs (threads) that will call; run indices are 0 .. n_runs - 1.
    name
        The calculator name recorded in run.json.

    Attributes
    ----------
    batch_sizes : list of int
        The number of structures of every evaluation made, in order.
    """

    def __init__(self, evaluate: Any, n_runs: int, name: str = "batched") -> None:
        self._evaluate = evaluate
        self._cond = threading.Condition()
        self._active = set(range(n_runs))
        self._pending: dict[int, Any] = {}
        self._results: dict[int, Any] = {}
        self.name = name
        self.n_runs = n_runs
        self.batch_sizes: list[int] = []

    def calculator(self, run: int) -> Any:
        """The ASE calculator of run ``run``: its calls go through the batch."""
        batcher = self

        class BatchMemberCalculator(Calculator):
            implemented_properties = ("energy", "free_energy", "forces", "stress")
            calculator_name = batcher.name
            batch_size = batcher.n_runs

            def calculate(self, atoms=None, properties=None, system_changes=all_changes):
                super().calculate(atoms, properties, system_changes)
                self.results = batcher.submit(run, self.atoms)

            def check_state(self, atoms, tol=1e-15):
                # exact comparison: ASE's np.allclose of every array costs ~1 ms per MD step,
                # CPU time a batch of K runs pays K times while the device waits
                old = self.atoms
                if old is None:
                    return list(all_changes)
                return [name for name, a, b in (("positions", old.positions, atoms.positions),
                                                ("numbers", old.numbers, atoms.numbers),
                                                ("cell", old.cell.array, atoms.cell.array),
                                                ("pbc", old.pbc, atoms.pbc))
                        if a.shape != b.shape or not np.array_equal(a, b)]

        return BatchMemberCalculator()

    def submit(self, run: int, atoms: Any) -> dict[str, Any]:
        """Evaluate ``atoms`` for run ``run`` together with the other runs' pending structures.

        Raises
        ------
        Exception
            What evaluating this run's structure raised (alone: a failing batch is evaluated
            again structure by structure, so an error reaches only the run that caused it).
        """
        with self._cond:
            self._pending[run] = atoms
            self._evaluate_when_all_pending()
            while run not in self._results:
                self._cond.wait()
            result = self._results.pop(run)
        if isinstance(result, BaseException):
            raise result
        return result

    def leave(self, run: int) -> None:
        """Run ``run`` is finished or failed: the batch no longer waits for it."""
        with self._cond:
            self._active.discard(run)
            self._evaluate_when_all_pending()

    def _evaluate_when_all_pending(self) -> None:
        # Called with the lock held. The other active runs are all waiting in submit().
        if not self._pending or len(self._pending) < len(self._active):
            return
        runs = sorted(self._pending)
        structures = [self._pending.pop(r) for r in runs]
        self.batch_sizes.append(len(runs))
        try:
            results: list[Any] = list(self._evaluate(structures))
        except Exception:
            results = []
            for atoms in structures:
                try:
                    results.extend(self._evaluate([atoms]))
                except Exception as err:  # noqa: BLE001 - handed to the run that owns the structure
                    results.append(err)
        self._results.update(zip(runs, results))
        self._cond.notify_all()


def batch_evaluator(calc: Any) -> Any:
    """``evaluate(list of Atoms) -> list of result dicts`` for :class:`LockstepBatcher`.

    ``calc.calculate_batch`` where the calculator has one (mdxrd's fast CHGNet: one batched
    forward pass); any other ASE calculator evaluates the structures one after the other.
    """
    if hasattr(calc, "calculate_batch"):
        return calc.calculate_batch

    def one_by_one(structures: list[Any]) -> list[dict[str, Any]]:
        results = []
        for atoms in structures:
            calc.calculate(atoms.copy(), ["energy", "forces", "stress"], all_changes)
            results.append({k: calc.results[k] for k in ("energy", "free_energy", "forces", "stress")
                            if k in calc.results})
        return results

    return one_by_one


_RUN_THREAD = "md-run:"


def _set_torch_threads(n: int) -> None:
    import torch  # lazy: torch 1.3 s; not in envs/base.yaml, and loaded by every mdxrd command

    torch.set_num_threads(n)


class _RunTag(logging.Filter):
    """Prefix the log records of a batched run's thread with the run's output directory."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.threadName.startswith(_RUN_THREAD):
            record.msg = f"[{record.threadName[len(_RUN_THREAD):]}] {record.msg}"
        return True


def run_md_batch(runs: list[tuple[Any, md.MDParams, str | Path]], calc: Any | None = None,
                 stamps: list[str | None] | None = None) -> list[dict[str, Any] | BaseException]:
    """Run K MD simulations in lockstep, one potential evaluation per step for all of them.

    Each run is :func:`mdxrd.md.run_md` in its own thread with a :class:`LockstepBatcher` calculator, so
    its trajectory, outputs, checkpoints and errors are those of the run alone; only the
    potential evaluations are batched. Runs may mix ensembles, temperatures, replicas and
    crystals. A run that blows up (:class:`mdxrd.md.MDError`) or fails otherwise leaves the batch and the
    others go on; their outputs are written (a shard job's rerun reuses them by their stamps).

    Parameters
    ----------
    runs
        K tuples (atoms, params, out_dir) as taken by :func:`mdxrd.md.run_md`.
    calc
        The potential shared by all runs; None: ``make_potential`` of the first run's
        potential, device and calculator (all runs share them and ``threads``).
    stamps
        Per run, the stamp its run.json records (:func:`mdxrd.md.run_md`); None: none.

    Returns
    -------
    list
        Per run, in order: its run.json record, or the exception that ended it.
    """
    first = runs[0][1]
    if calc is None:
        calc = make_potential(first.potential, first.device, first.calculator)
    # Every evaluation in one thread with `threads` torch threads: an OpenMP team per calling
    # thread would otherwise spin on the cores the batch shares.
    evaluator = ThreadPoolExecutor(1, initializer=_set_torch_threads, initargs=(first.threads,),
                                   thread_name_prefix="md-evaluate")
    evaluate = batch_evaluator(calc)
    batcher = LockstepBatcher(lambda structures: evaluator.submit(evaluate, structures).result(), len(runs),
                              name=type(calc).__name__)
    outcomes: list[Any] = [None] * len(runs)

    def one(i: int) -> None:
        atoms, params, out_dir = runs[i]
        try:
            outcomes[i] = md.run_md(atoms, params, out_dir, calc=batcher.calculator(i),
                                 stamp=stamps[i] if stamps else None)
        except BaseException as err:  # noqa: BLE001 - reported per run by the caller
            outcomes[i] = err
            log.error("run %d (%s) failed: %s", i, out_dir, err)
        finally:
            batcher.leave(i)

    workers = [threading.Thread(target=one, args=(i,), name=f"{_RUN_THREAD}{out_dir}")
               for i, (_, _, out_dir) in enumerate(runs)]
    tag = _RunTag()
    log.addFilter(tag)  # each log line of a run names it: "[results/md/Si/nvt_langevin/300K/r0] step 50/500 ..."
    try:
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    finally:
        log.removeFilter(tag)
        evaluator.shutdown()
    log.info("%d runs, %d batched evaluations, mean batch %.1f structures", len(runs), len(batcher.batch_sizes),
             sum(batcher.batch_sizes) / max(1, len(batcher.batch_sizes)))
    return outcomes
