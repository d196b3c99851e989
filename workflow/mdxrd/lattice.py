"""Anchored lattices (config ``lattice: experiment``): the run's cell scaled to experiment's lattice.

A universal potential's lattice is off by up to a few per cent (CHGNet 0.3.0: Si +1.4 %, NaCl's
(200) 0.8 degrees 2theta low at room temperature), more than the whole thermal shift the dataset
exists for. With ``lattice: experiment`` the post stage scales every snapshot's cell, per axis,
so that the run's mean lattice lengths equal the experimental ones at the run's temperature,
keeping the fractional coordinates: the thermal displacements, the diffuse scattering and the
cell's fluctuations stay the potential's, the peak positions move to experiment's. This is a
correction of the potential's lattice error, not physics the potential produced.

Steps, per run at temperature T and per cell axis x (a, b, c; axes the lattice system ties
together, :func:`mdxrd.qc.distinct_axes` of the 0 K cell, take the same target):

1. the run's mean length <L_x> over the sampling window (every step, parent cell);
2. the target, by the first method the crystal's entry allows (``method``):

   * ``alpha_exp``: L_x(T) = L_x,exp (1 + alpha_x,exp (T - T_x)), with the experimental
     length L_x,exp at T_x (``a_exp_A``, its ``T_K`` or the crystal's ``reference_T_K``) and the
     experimental linear expansion coefficient of the axis (``alpha_a_exp_per_K``...) or of the
     crystal (``alpha_exp_per_K``);
   * ``npt_fit``: L_x(T) = L_x,exp L_x,pot(T) / L_x,pot(T_x), L_x,pot the straight line through the
     mean lengths of the unit's NPT runs (two or more temperatures): the potential's own expansion;
   * ``reference``: L_x(T) = L_x,exp (no experimental expansion and no NPT line: the anchored cell
     does not expand; the NVT cell is the potential's 0 K relaxed cell in any case);

3. the scale s_x = L_x(T) / <L_x>, the same for every snapshot of the run.

A crystal without an experimental length for each of its independent axes keeps the
potential's lattice (``method`` None, a warning).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

#: The values of the config key ``lattice``.
MODES = ("potential", "experiment")
AXES = ("a", "b", "c")


def distinct_axes(lengths: dict[str, float], rtol: float = 1e-4) -> list[str]:
    """The axes whose lengths the lattice system leaves independent: ["a"] (cubic), ["a", "c"]
    (tetragonal, hexagonal, trigonal), ["a", "b", "c"] (orthorhombic and lower), from the 0 K lengths."""
    axes = ["a"]
    if abs(lengths["b"] / lengths["a"] - 1.0) > rtol:
        axes.append("b")
    if all(abs(lengths["c"] / lengths[x] - 1.0) > rtol for x in axes):
        axes.append("c")
    return axes


def _tied(axes: list[str], lengths: dict[str, float], rtol: float = 1e-4) -> dict[str, str]:
    """Each axis -> the independent axis whose length it shares (itself when independent)."""
    return {x: next(y for y in axes if abs(lengths[x] / lengths[y] - 1.0) <= rtol) if x not in axes else x
            for x in AXES}


def missing_fields(crystal: dict[str, Any], lengths_0K: dict[str, float]) -> list[str]:
    """The experimental lattice fields ``lattice: experiment`` needs and the crystal's entry lacks.

    Parameters
    ----------
    crystal
        The crystal's config entry (experimental fields as ``{"value", "source", "T_K"}``).
    lengths_0K
        Its cell lengths a, b, c (Angstrom): the CIF's or the relaxed ones (only equalities matter).

    Returns
    -------
    list of str
        E.g. ``["c_exp_A"]`` for a hexagonal crystal with only ``a_exp_A``; empty when it can be anchored.
    """
    return [f"{x}_exp_A" for x in distinct_axes(lengths_0K) if crystal.get(f"{x}_exp_A") is None]


def npt_line(npt_runs: Sequence[tuple[float, dict[str, float]]]) -> dict[str, np.ndarray] | None:
    """The straight line L_x(T) through NPT runs' mean lengths, per axis (``np.polyfit`` coefficients);
    None with fewer than two temperatures. ``npt_runs``: (temperature_K, {axis: mean length, Angstrom})."""
    temps = np.array([t for t, _ in npt_runs], dtype=np.float64)
    if np.unique(temps).size < 2:
        return None
    return {x: np.polyfit(temps, np.array([lengths[x] for _, lengths in npt_runs]), 1) for x in AXES}


def anchor(crystal: dict[str, Any], temperature_K: float, mean_lengths: dict[str, float],
           lengths_0K: dict[str, float], npt_runs: Sequence[tuple[float, dict[str, float]]] = ()
           ) -> dict[str, Any]:
    """The anchored lattice of one run (see the module): method, targets and scale factors.

    Parameters
    ----------
    crystal
        The crystal's config entry: ``a_exp_A`` (and ``b_exp_A``, ``c_exp_A`` for independent axes),
        optional ``alpha_exp_per_K`` / ``alpha_<x>_exp_per_K``, ``reference_T_K`` (default 293 K).
    temperature_K
        The run's target temperature, K.
    mean_lengths
        The run's mean parent-cell lengths a, b, c over the sampling window, Angstrom.
    lengths_0K
        The 0 K relaxed parent-cell lengths (they decide which axes are tied by the lattice system).
    npt_runs
        (temperature_K, mean lengths) of the unit's NPT runs, for the ``npt_fit`` method.

    Returns
    -------
    dict
        ``method`` (``alpha_exp``, ``npt_fit``, ``reference``; None when the crystal lacks an experimental
        length: then every scale is 1), ``scale`` (axis -> s_x), ``target_A`` and ``potential_A`` (axis ->
        Angstrom; the anchored and the run's own mean lengths), ``missing`` (the fields it lacks).
    """
    missing = missing_fields(crystal, lengths_0K)
    potential = {x: float(mean_lengths[x]) for x in AXES}
    if missing:
        return {"method": None, "scale": dict.fromkeys(AXES, 1.0), "target_A": potential, "potential_A": potential,
                "missing": missing}
    tied = _tied(distinct_axes(lengths_0K), lengths_0K)
    t_default = float(crystal.get("reference_T_K", 293.0))
    line = npt_line(npt_runs)
    alpha_any = crystal.get("alpha_exp_per_K")
    method = "alpha_exp" if alpha_any is not None or all(
        crystal.get(f"alpha_{tied[x]}_exp_per_K") is not None for x in AXES) else "npt_fit" if line else "reference"
    target = {}
    for x in AXES:
        exp = crystal[f"{tied[x]}_exp_A"]
        length, t_exp = float(exp["value"]), float(exp.get("T_K", t_default))
        if method == "alpha_exp":
            alpha = crystal.get(f"alpha_{tied[x]}_exp_per_K") or alpha_any
            target[x] = length * (1.0 + float(alpha["value"]) * (temperature_K - t_exp))
        elif method == "npt_fit":
            target[x] = length * float(np.polyval(line[x], temperature_K) / np.polyval(line[x], t_exp))
        else:
            target[x] = length
    return {"method": method, "scale": {x: target[x] / potential[x] for x in AXES}, "target_A": target,
            "potential_A": potential, "missing": []}


def mean_lengths(cells_A: np.ndarray, supercell: Sequence[int]) -> dict[str, float]:
    """Mean parent-cell lengths a, b, c (Angstrom) of (n, 3, 3) supercell cells (rows the cell vectors)."""
    lengths = np.linalg.norm(np.asarray(cells_A, dtype=np.float64), axis=-1).mean(axis=0) / np.asarray(supercell)
    return dict(zip(AXES, map(float, lengths), strict=True))


def scale_cell(atoms: Any, scale: dict[str, float]) -> Any:
    """A copy of ``atoms`` with cell vector x multiplied by ``scale[x]`` and the fractional coordinates kept
    (angles unchanged)."""
    out = atoms.copy()
    out.set_cell(np.asarray(atoms.cell) * np.array([scale[x] for x in AXES])[:, None], scale_atoms=True)
    return out
