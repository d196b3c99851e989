"""Advance a :class:`~mdxrd.engine.state.BatchState` n steps; systems that fail leave, the others go on."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from mdxrd.engine.integrators import Model, advance_to_force, evaluate, finish_step
from mdxrd.engine.state import BatchState

__all__ = ["Removed", "run"]


@dataclass(frozen=True)
class Removed:
    """A system taken out of the batch: its ``system_id``, the step after which it left, and why."""

    system_id: int
    step: int
    reason: str


def unfinished(state: BatchState) -> torch.Tensor:
    """(S,) bool: the system's positions or cell are not all finite (one small device-to-host copy)."""
    return ~(torch.isfinite(state.sum(state.positions).sum(1)) & torch.isfinite(state.cell).flatten(1).all(1))


def run(state: BatchState, model: Model, n_steps: int, *,
        every: int = 0, callback: Callable[[int, BatchState], None] | None = None,
        max_temperature_factor: float = 5.0) -> tuple[BatchState, list[Removed]]:
    """Advance every system ``n_steps`` MD steps (:func:`mdxrd.engine.integrators.md_step`, each system in
    its own ensemble).

    Before the model call of a step, a system whose positions or cell are not finite (an impossible
    barostat step) leaves the batch; after the step, one whose kinetic temperature is not finite or above
    ``max_temperature_factor`` x T0 leaves it; the others go on unchanged (each system's arithmetic is
    independent of the others').
    ``callback(step, state)`` runs only every ``every`` steps (0: never): the only place where the
    caller should copy to the host (``state.to_atoms()``). The check costs one small device-to-host
    copy ((S,) booleans) per step.

    Parameters
    ----------
    state : BatchState
        Start; forces are evaluated first if ``state.forces`` is None.
    model : Model
        The potential.
    n_steps : int
        Steps, >= 0.
    every : int
        Callback interval in steps; 0 for none.
    callback : callable or None
        ``callback(step_number, state)``.
    max_temperature_factor : float
        Runaway threshold on T / T0.

    Returns
    -------
    (BatchState, list of Removed)
        The final state (the systems left) and the systems removed, in order.

    Raises
    ------
    ValueError
        ``n_steps`` or ``every`` negative.
    """
    if n_steps < 0 or every < 0:
        raise ValueError(f"run: n_steps and every must be >= 0, got {n_steps}, {every}")
    if state.forces is None:
        evaluate(state, model)
    removed: list[Removed] = []
    for n in range(1, n_steps + 1):
        advance_to_force(state)
        bad = unfinished(state)
        if bool(bad.any()):
            removed.extend(Removed(sid, n, "not finite") for sid in state.system_id[bad].tolist())
            state = state.select(~bad)
            if state.n_systems == 0:
                break
        finish_step(evaluate(state, model))
        t = state.temperature()
        bad = ~torch.isfinite(t) | (t > max_temperature_factor * state.temperature_K)
        if bool(bad.any()):
            removed.extend(Removed(sid, n, f"T not finite or > {max_temperature_factor:g} x T0")
                           for sid in state.system_id[bad].tolist())
            state = state.select(~bad)
            if state.n_systems == 0:
                break
        if every and callback is not None and n % every == 0:
            callback(n, state)
    return state, removed
