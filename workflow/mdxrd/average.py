"""Ensemble-averaged powder pattern of one MD run (written by the xrd stage, :func:`mdxrd.xrd.run_stage`).

    I_avg(2theta) = (1/N_s) sum_i I_i(2theta)                       (METHOD.md step 5)

over the run's N_s snapshot patterns of the xrd stage. Those are already broadened
(instrument Gaussian, METHOD.md step 6; thermal diffuse scattering spread over the
Debye sphere of each snapshot's cell, :func:`mdxrd.xrd.powder_pattern`), and
broadening is linear, so the mean of the broadened patterns equals the broadened
mean of all snapshots' reflections with weight 1/N_s, with no binning of its own.

Normalisation: intensities are kinematic |F|^2 LP per parent unit cell
(electrons^2, see :mod:`mdxrd.xrd`); the pattern is an intensity density per
degree 2theta, so its integral over 2theta (sum(y) * step) equals the summed
intensity of the averaged reflections inside the grid. Two patterns are made:
``intensity`` (Bragg + thermal diffuse) and ``intensity_bragg`` (parent Bragg
reflections only).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from mdxrd.io import atomic_path


def run_stage(patterns: str | Path, average_out: str | Path) -> None:
    """Write the run's averaged patterns.

    Parameters
    ----------
    patterns
        The xrd stage's npz: two_theta (n_grid,), intensity and intensity_bragg (n_snap, n_grid).
    average_out
        npz: two_theta (n_grid,), intensity and intensity_bragg (n_grid,) float64 (mean over
        snapshots, per degree), n_snapshots.

    Raises
    ------
    ValueError
        No snapshot in ``patterns``.
    """
    with np.load(patterns) as npz:
        grid, total, bragg = npz["two_theta"], npz["intensity"], npz["intensity_bragg"]
    if total.shape[0] < 1:
        raise ValueError(f"{patterns}: no snapshot pattern to average")
    with atomic_path(average_out) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, two_theta=grid, intensity=total.mean(axis=0), intensity_bragg=bragg.mean(axis=0),
                 n_snapshots=total.shape[0])


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``mdxrd average`` (the average of an xrd stage's patterns file)."""
    p = subparsers.add_parser("average", help="mean broadened pattern of one run (the xrd stage writes it too)")
    p.add_argument("--patterns", required=True, help="xrd stage patterns (.npz)")
    p.add_argument("--average-out", required=True, help="output .npz")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    run_stage(args.patterns, args.average_out)
    return 0
