"""Average stage: ensemble-averaged, broadened powder pattern of one MD run.

    I_avg(2theta) = (1/N_s) sum_i I_i(2theta)                       (METHOD.md step 5)

then convolution with a Gaussian of standard deviation sigma (degrees 2theta),
G(x) = exp(-x^2 / (2 sigma^2)) / sqrt(2 pi sigma^2)               (METHOD.md step 6).

Both steps are linear, so they are done exactly on the reflections ("sticks")
rather than on a binned pattern: every snapshot's reflections enter with weight
1/N_s and each one is broadened analytically on the grid by
:func:`mdxrd.xrd.broaden`. The result equals the mean of the snapshots'
broadened patterns, without the half-step peak shifts of binning.

Normalisation: intensities are kinematic |F|^2 LP per parent unit cell
(electrons^2, see :mod:`mdxrd.xrd`); the pattern is an intensity density per
degree 2theta, so its integral over 2theta (sum(y) * step) equals the summed
intensity of the averaged reflections inside the grid. Two patterns are made:
``intensity`` (Bragg + thermal diffuse) and ``intensity_bragg`` (parent Bragg
reflections only).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from mdxrd.io import atomic_path


def average_pattern(two_theta: np.ndarray, intensity: np.ndarray, n_snapshots: int, grid: np.ndarray,
                    sigma_deg: float) -> np.ndarray:
    """Mean over ``n_snapshots`` snapshots of their broadened patterns, from pooled reflections.

    Parameters
    ----------
    two_theta, intensity
        (n,) float64: the reflections of all snapshots pooled (degrees 2theta; intensity per parent cell).
    n_snapshots
        Number of snapshots pooled (>= 1).
    grid
        (n_grid,) float64, degrees 2theta, equally spaced.
    sigma_deg
        Gaussian standard deviation, degrees 2theta.

    Returns
    -------
    numpy.ndarray
        (n_grid,) float64 intensity per degree 2theta.
    """
    from mdxrd.xrd import broaden

    if n_snapshots < 1:
        raise ValueError(f"n_snapshots must be >= 1, got {n_snapshots}")
    return broaden(np.asarray(two_theta, float), np.asarray(intensity, float) / n_snapshots, grid, sigma_deg)


def run_stage(reflections: str | Path, average_out: str | Path, *, two_theta_range: tuple[float, float],
              two_theta_step: float, sigma_deg: float) -> None:
    """Write the run's averaged patterns (npz: two_theta, intensity, intensity_bragg, n_snapshots).

    ``reflections`` is the xrd stage's Parquet table (columns snapshot, two_theta,
    intensity, is_bragg, ...).
    """
    import pyarrow.parquet as pq

    from mdxrd.xrd import two_theta_grid

    table = pq.read_table(reflections, columns=["snapshot", "two_theta", "intensity", "is_bragg"])
    snap = table["snapshot"].to_numpy()
    tt = table["two_theta"].to_numpy()
    inten = table["intensity"].to_numpy()
    bragg = table["is_bragg"].to_numpy(zero_copy_only=False)
    n_snap = int(np.unique(snap).size)
    grid = two_theta_grid(two_theta_range[0], two_theta_range[1], two_theta_step)
    total = average_pattern(tt, inten, n_snap, grid, sigma_deg)
    bragg_only = average_pattern(tt[bragg], inten[bragg], n_snap, grid, sigma_deg)
    with atomic_path(average_out) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, two_theta=grid, intensity=total, intensity_bragg=bragg_only, n_snapshots=n_snap)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``mdxrd average`` (the workflow's average stage)."""
    p = subparsers.add_parser("average", help="average stage: mean broadened pattern of one run")
    p.add_argument("--reflections", required=True, help="xrd stage reflections (Parquet)")
    p.add_argument("--average-out", required=True, help="output .npz")
    p.add_argument("--params", required=True, help="JSON: two_theta_range, two_theta_step, sigma_deg")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    run_stage(args.reflections, args.average_out, **json.loads(args.params))
    return 0
