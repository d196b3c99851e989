"""Snapshots stage: pick the structures to diffract from an MD run and judge their independence.

Selection: drop the first ``n_equil`` steps, keep every ``n_interval``-th step
after them (steps n_equil + k n_interval, k >= 1; METHOD.md step 3).

Independence: snapshots are independent only if the sampling interval
t_sample = n_interval dt exceeds the velocity autocorrelation time tau_corr.
The normalised, mass-weighted velocity autocorrelation function (VACF) over the
production part of the run,

    C(t) = < sum_i m_i v_i(t0) . v_i(t0 + t) >_t0 / < sum_i m_i v_i(t0) . v_i(t0) >_t0

(Allen & Tildesley, Computer Simulation of Liquids, 2nd ed. (2017), sec. 8.1),
oscillates in a crystal (phonons) rather than decaying monotonically, so its
integral is near zero and is no correlation time. tau_corr is therefore the lag
after which the envelope has decayed: the smallest t with |C(t')| < 1/e for all
t' >= t up to the largest lag analysed (half the production window, where the
origin average is still well sampled). When |C| has not decayed within that
window tau_corr is reported as that window with ``tau_corr_resolved = False``.
A warning is logged (and ``interval_too_short`` recorded) when t_sample < tau_corr.

Melting: the Lindemann ratio sqrt(<u^2>)/d_nn, with <u^2> the mean squared
displacement along one direction (as in B = 8 pi^2 <u^2>, METHOD.md) of the
snapshot atoms from their sites at step 0 (minimum image, centre-of-mass drift
removed) and d_nn the nearest-neighbour distance at step 0 (Lindemann, Phys. Z.
11, 609 (1910)). Above ``lindemann_threshold`` (default 0.1) the run is flagged
``melted``: it has lost long-range order and its patterns are not a crystal's.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from mdxrd.io import atomic_path, write_json

log = logging.getLogger(__name__)


def velocity_autocorrelation(velocities: np.ndarray, masses: np.ndarray, max_lag: int) -> np.ndarray:
    """Normalised mass-weighted VACF averaged over time origins.

    Parameters
    ----------
    velocities
        (n_t, N, 3) float, velocities at equally spaced times (any unit).
    masses
        (N,) float, atomic masses (any unit).
    max_lag
        Largest lag in samples, 0 <= max_lag < n_t.

    Returns
    -------
    numpy.ndarray
        (max_lag + 1,) float64, C(0) = 1. Computed with zero-padded FFTs
        (Wiener-Khinchin), each lag averaged over its n_t - lag origins.

    Raises
    ------
    ValueError
        Shapes that do not match, or max_lag outside [0, n_t).
    """
    v = np.asarray(velocities, dtype=np.float64)
    m = np.asarray(masses, dtype=np.float64)
    if v.ndim != 3 or v.shape[2] != 3 or v.shape[1] != m.shape[0]:
        raise ValueError(f"velocities must be (n_t, N, 3) with N = len(masses), got {v.shape} and {m.shape}")
    n_t = v.shape[0]
    if not 0 <= max_lag < n_t:
        raise ValueError(f"max_lag must be in [0, {n_t}), got {max_lag}")
    series = (v * np.sqrt(m)[None, :, None]).reshape(n_t, -1)
    n_fft = 1 << (2 * n_t - 1).bit_length()
    spec = np.fft.rfft(series, n=n_fft, axis=0)
    acf = np.fft.irfft((spec * spec.conj()).real.sum(axis=1), n=n_fft)[: max_lag + 1]
    acf /= n_t - np.arange(max_lag + 1)
    return acf / acf[0]


def correlation_time(vacf: np.ndarray, dt_fs: float, threshold: float = math.exp(-1)) -> tuple[float, bool]:
    """Envelope decay time of a normalised VACF, fs.

    Returns ``(tau_fs, resolved)``: tau is the smallest lag t such that
    |C(t')| < threshold for every t' >= t in ``vacf``; ``resolved`` is False when
    |C| is still above the threshold at the last lag (tau is then a lower bound,
    the last lag).
    """
    above = np.flatnonzero(np.abs(vacf) >= threshold)
    last = int(above[-1]) if above.size else 0
    if last == len(vacf) - 1:
        return last * dt_fs, False
    return (last + 1) * dt_fs, True


def lindemann_ratio(frames: list[Any], reference: Any) -> float:
    """Lindemann ratio sqrt(<u^2>)/d_nn of ``frames`` about the sites of ``reference``.

    Parameters
    ----------
    frames
        ASE Atoms (same atoms, unwrapped or wrapped positions, any cell).
    reference
        ASE Atoms with the lattice sites (e.g. the MD frame at step 0).

    Returns
    -------
    float
        sqrt of the mean over atoms, frames and the three directions of u_alpha^2,
        divided by the smallest interatomic distance of ``reference`` (dimensionless).
    """
    from ase.neighborlist import neighbor_list

    ref_frac = reference.cell.scaled_positions(reference.positions)
    u2 = []
    for f in frames:
        df = f.cell.scaled_positions(f.positions) - ref_frac
        df -= np.round(df)
        u = df @ f.cell.array
        u -= u.mean(axis=0)
        u2.append(np.mean(u * u))
    d = neighbor_list("d", reference, 6.0)
    d_nn = float(d.min()) if len(d) else float(np.min(reference.cell.lengths()))
    return float(np.sqrt(np.mean(u2)) / d_nn)


def select_steps(n_steps: int, n_equil: int, n_interval: int) -> list[int]:
    """Snapshot steps n_equil + k n_interval <= n_steps, k >= 1."""
    return list(range(n_equil + n_interval, n_steps + 1, n_interval))


def run_stage(trajectory: str | Path, velocities: str | Path, thermo: str | Path, snapshots_out: str | Path,
              summary_out: str | Path, *, n_steps: int, n_equil: int, n_interval: int, timestep_fs: float,
              lindemann_threshold: float = 0.1) -> dict:
    """Select snapshots of one MD run, measure tau_corr, write the snapshots and a JSON summary.

    Parameters
    ----------
    trajectory, velocities, thermo
        The MD stage's trajectory.traj, velocities.npy (steps n_equil..n_steps) and thermo.csv.
    snapshots_out
        ASE trajectory of the selected frames (info: step, time_fs; energy, forces, stress kept).
    summary_out
        JSON: snapshot steps, n_snapshots, tau_corr_fs, tau_corr_resolved,
        sample_interval_fs, interval_too_short, lindemann_ratio, melted, and production means of the thermo
        log (T_K, P_GPa, volume_A3, E_pot_eV with their standard deviations).

    Raises
    ------
    ValueError
        A snapshot step missing from the trajectory.
    """
    import pandas as pd
    from ase.io import read, write

    wanted = select_steps(n_steps, n_equil, n_interval)
    frames = {int(a.info["step"]): a for a in read(str(trajectory), index=":")}
    missing = [s for s in wanted if s not in frames]
    if missing:
        raise ValueError(f"{trajectory}: snapshot steps {missing} are not in the trajectory")
    snaps = [frames[s] for s in wanted]

    lindemann = lindemann_ratio(snaps, frames[min(frames)])
    melted = lindemann > lindemann_threshold
    if melted:
        log.warning("Lindemann ratio %.3f > %.3f: the crystal melted or lost long-range order", lindemann,
                    lindemann_threshold)

    vel = np.load(velocities)
    max_lag = max(1, (len(vel) - 1) // 2)
    vacf = velocity_autocorrelation(vel, snaps[0].get_masses(), max_lag)
    tau, resolved = correlation_time(vacf, timestep_fs)
    t_sample = n_interval * timestep_fs
    too_short = t_sample < tau
    if too_short:
        log.warning("sampling interval %.1f fs (n_interval x dt) is shorter than the velocity autocorrelation "
                    "time %.1f fs%s: snapshots are correlated", t_sample, tau, "" if resolved else " (lower bound)")
    else:
        log.info("tau_corr = %.1f fs <= sampling interval %.1f fs", tau, t_sample)

    th = pd.read_csv(thermo)
    prod = th[th["step"] > n_equil]
    summary: dict[str, Any] = {
        "steps": wanted,
        "n_snapshots": len(snaps),
        "tau_corr_fs": tau,
        "tau_corr_resolved": resolved,
        "sample_interval_fs": t_sample,
        "interval_too_short": bool(too_short),
        "lindemann_ratio": lindemann,
        "melted": bool(melted),
        "vacf": vacf.tolist(),
    }
    for col in ("T_K", "P_GPa", "volume_A3", "E_pot_eV"):
        summary[f"mean_{col}"] = float(prod[col].mean())
        summary[f"std_{col}"] = float(prod[col].std(ddof=1)) if len(prod) > 1 else 0.0
    with atomic_path(snapshots_out) as tmp:
        write(str(tmp), snaps, format="traj")
    write_json(summary_out, summary)
    return summary


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``mdxrd snapshots`` (the workflow's snapshots stage)."""
    p = subparsers.add_parser("snapshots", help="snapshots stage: select frames, measure tau_corr")
    p.add_argument("--trajectory", required=True)
    p.add_argument("--velocities", required=True)
    p.add_argument("--thermo", required=True)
    p.add_argument("--snapshots-out", required=True)
    p.add_argument("--summary-out", required=True)
    p.add_argument("--params", required=True,
                   help="JSON: n_steps, n_equil, n_interval, timestep_fs, lindemann_threshold")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    run_stage(args.trajectory, args.velocities, args.thermo, args.snapshots_out, args.summary_out,
              **json.loads(args.params))
    return 0
