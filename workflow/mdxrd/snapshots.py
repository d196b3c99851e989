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

Equilibrium of the sampled ensemble: over the sampling window (thermo rows with
step >= n_equil) the stage measures the mean kinetic temperature, pressure and
volume with their standard errors (block averaging, Flyvbjerg & Petersen,
J. Chem. Phys. 91, 461 (1989)) and, for NPT, the volume drift (slope of a linear
fit times the window length, over the mean volume). The run is ``equilibrated``
when |<T>/T0 - 1| <= temperature_tolerance and, for NPT, |<P> - P0| <=
pressure_tolerance_GPa and |drift| <= volume_drift_tolerance; a miss is logged as
a warning. Note that these are targets on a finite window: the canonical spread
of a window mean of T is about T0 sqrt(2/(3N-3)) sqrt(2 tau_E / t_window) for
Langevin dynamics (tau_E ~ 1/gamma the energy relaxation time), a few % for tens
of atoms and a few hundred fs.

Thermal motion: the displacements of the snapshot atoms about their mean positions
over the snapshots (unwrapped in each frame's scaled cell, so an NPT cell scales the
sites; centre-of-mass shift removed) give, per element, the isotropic Debye-Waller
factor B = 8 pi^2 <u^2> (<u^2> along one direction, Angstrom^2), and the Lindemann
ratio in its usual 3-D form sqrt(<|u|^2>)/d_nn, d_nn the nearest-neighbour
distance of the mean structure (Lindemann, Phys. Z. 11, 609 (1910)). Above
``lindemann_threshold`` (default 0.2) the run is flagged ``melted``: it has lost
long-range order and its patterns are not a crystal's. The criterion puts melting of
simple solids at about 0.1-0.15 in this form, but a universal potential's softer
crystal runs higher (CHGNet NaCl at 600 K: 0.17, half its melting point), while a
liquid, whose atoms diffuse away from any mean site, gives far more.

Statistics: the integrated autocorrelation time tau_int of the potential energy
over the window (Sokal windowing, ``emcee``) gives the number of effectively
independent snapshots N_s / max(1, tau_int / (n_interval dt)); the slope of the
total energy over the window is the energy drift (meV/atom/ps).
"""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from mdxrd.io import atomic_path, load_params, read_json, write_json

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


def displacements(frames: list[Any]) -> np.ndarray:
    """Displacements of every atom about its mean position over ``frames``, Angstrom.

    Positions are unwrapped in the scaled (fractional) coordinates of each frame's own
    cell: the fractional displacement from the first frame by minimum image, so a
    barostat's changing cell (NPT) scales the sites with it. The mean over frames gives
    the sites; each frame's displacements are then taken back to Cartesian with that
    frame's cell and its centre-of-mass shift (equal weights) is removed.

    Parameters
    ----------
    frames
        At least two ASE Atoms of the same atoms (wrapped or unwrapped positions, any cells).

    Returns
    -------
    numpy.ndarray
        (n_frames, N, 3) float64, Angstrom.

    Raises
    ------
    ValueError
        Fewer than two frames.
    """
    if len(frames) < 2:
        raise ValueError(f"displacements about mean positions need at least two frames, got {len(frames)}")
    first = frames[0].cell.scaled_positions(frames[0].positions)
    scaled = []
    for f in frames:
        df = f.cell.scaled_positions(f.positions) - first
        df -= np.round(df)
        scaled.append(first + df)
    mean = np.mean(scaled, axis=0)
    out = np.stack([(sf - mean) @ f.cell.array for f, sf in zip(frames, scaled)])
    return out - out.mean(axis=1, keepdims=True)


def _mean_sites(frames: list[Any]) -> Any:
    """Atoms at the mean scaled positions of ``frames`` (first frame's cell)."""
    first = frames[0].cell.scaled_positions(frames[0].positions)
    scaled = []
    for f in frames:
        df = f.cell.scaled_positions(f.positions) - first
        scaled.append(first + df - np.round(df))
    sites = frames[0].copy()
    sites.set_scaled_positions(np.mean(scaled, axis=0))
    return sites


def b_iso(frames: list[Any]) -> dict[str, float]:
    """Isotropic Debye-Waller B per element from the snapshots, Angstrom^2.

    B = 8 pi^2 <u^2>, with <u^2> the mean-square displacement along one direction
    (the mean over atoms of the element, frames and the three directions) about the mean
    positions (:func:`displacements`), times N_s / (N_s - 1) for sites estimated from the
    same N_s frames (International Tables for Crystallography Vol. C, sec. 8.3; Willis &
    Pryor, Thermal Vibrations in Crystallography (1975)). Snapshots closer in time than
    the displacement correlation time make the correction too small, so B is then a
    lower bound.

    Parameters
    ----------
    frames
        At least two ASE Atoms of the same atoms.

    Returns
    -------
    dict
        Element symbol -> B in Angstrom^2, elements in order of first appearance.

    Raises
    ------
    ValueError
        Fewer than two frames.
    """
    return {el: float(b.mean()) for el, b in _frame_b(frames).items()}


def b_iso_standard_error(frames: list[Any]) -> dict[str, float]:
    """Standard error of :func:`b_iso` from its frame-to-frame spread, Angstrom^2.

    The standard deviation over frames of each frame's B (same correction) divided by
    sqrt(N_s): the error of independent snapshots. Correlated snapshots make the true error
    larger, so read it as a lower bound (see ``n_independent_snapshots``).

    Returns
    -------
    dict
        Element symbol -> standard error in Angstrom^2.
    """
    return {el: float(b.std(ddof=1) / math.sqrt(b.size)) for el, b in _frame_b(frames).items()}


def _frame_b(frames: list[Any]) -> dict[str, np.ndarray]:
    """Per element, (n_frames,) B of each frame, 8 pi^2 <u^2> N_s / (N_s - 1), Angstrom^2."""
    u = displacements(frames)
    n_s = len(frames)
    symbols = np.array(frames[0].get_chemical_symbols())
    return {el: 8.0 * math.pi**2 * np.mean(u[:, symbols == el, :] ** 2, axis=(1, 2)) * n_s / (n_s - 1)
            for el in dict.fromkeys(symbols.tolist())}


def lindemann_ratio(frames: list[Any]) -> float:
    """Lindemann ratio sqrt(<|u|^2>)/d_nn of ``frames`` about their mean positions (3-D form).

    Parameters
    ----------
    frames
        At least two ASE Atoms of the same atoms (:func:`displacements`).

    Returns
    -------
    float
        sqrt of the mean over atoms and frames of |u|^2 (the full 3-D mean-square
        displacement, three times the one-direction <u^2> of B = 8 pi^2 <u^2>; with the
        N_s / (N_s - 1) correction for sites estimated from the same N_s frames), divided by
        the nearest-neighbour distance of the mean structure (dimensionless; Lindemann,
        Phys. Z. 11, 609 (1910); in this form about 0.1-0.15 at melting).

    Raises
    ------
    ValueError
        Fewer than two frames.
    """
    from ase.neighborlist import neighbor_list

    u = displacements(frames)
    n_s = len(frames)
    msd_3d = float(np.mean(np.sum(u * u, axis=-1))) * n_s / (n_s - 1)
    sites = _mean_sites(frames)
    d = neighbor_list("d", sites, 6.0)
    d_nn = float(d.min()) if len(d) else float(np.min(sites.cell.lengths()))
    return float(np.sqrt(msd_3d) / d_nn)


def integrated_autocorrelation_time(series: np.ndarray) -> float:
    """Integrated autocorrelation time of a time series, in samples.

    tau = 1 + 2 sum_{k>=1} rho(k), the factor by which correlation inflates the variance of
    the mean (N_eff = N / tau), with Sokal's automatic window (the smallest M >= 5 tau(M))
    as implemented by ``emcee.autocorr.integrated_time`` (Sokal, Monte Carlo Methods in
    Statistical Mechanics (1997); Goodman & Weare, Commun. Appl. Math. Comput. Sci. 5, 65
    (2010)). Clipped below at 1 (an oscillating series, rho < 0, is not counted as more
    than independent).

    Parameters
    ----------
    series
        (n,) float, equally spaced samples (n >= 2).

    Returns
    -------
    float
        tau in samples, >= 1.
    """
    from emcee.autocorr import integrated_time

    x = np.asarray(series, dtype=np.float64)
    if x.size < 2 or np.ptp(x) == 0.0:
        return 1.0
    tau = float(integrated_time(x, c=5, tol=0, quiet=True)[0])
    return max(1.0, tau)


def block_standard_error(series: np.ndarray) -> float:
    """Standard error of the mean of a correlated time series by block averaging.

    The series is split into blocks of 1, 2, 4, ... samples; the standard error of the block
    means is computed at each level with at least 4 blocks, and the largest is returned
    (the plateau estimate of Flyvbjerg & Petersen, J. Chem. Phys. 91, 461 (1989)).

    Parameters
    ----------
    series
        (n,) float, equally spaced samples (any unit).

    Returns
    -------
    float
        Standard error of the mean (same unit); 0.0 for fewer than 2 samples.
    """
    x = np.asarray(series, dtype=np.float64)
    best = 0.0
    size = 1
    while x.size // size >= 4:
        n_blocks = x.size // size
        means = x[: n_blocks * size].reshape(n_blocks, size).mean(axis=1)
        best = max(best, float(means.std(ddof=1) / math.sqrt(n_blocks)))
        size *= 2
    return best


def equilibration_figures(thermo: Any, n_equil: int, ensemble: str, temperature_K: float, pressure_GPa: float, *,
                          temperature_tolerance: float = 0.03, pressure_tolerance_GPa: float = 0.3,
                          volume_drift_tolerance: float = 0.003) -> dict[str, Any]:
    """Means, standard errors and drift of the sampling window, and the ``equilibrated`` flag.

    Parameters
    ----------
    thermo
        pandas DataFrame of the MD thermo log (columns step, T_K, P_GPa, volume_A3).
    n_equil
        First step of the sampling window.
    ensemble, temperature_K, pressure_GPa
        The run's ensemble name and targets T0 (K) and P0 (GPa; checked for NPT only).
    temperature_tolerance, pressure_tolerance_GPa, volume_drift_tolerance
        Allowed |<T>/T0 - 1|, |<P> - P0| (GPa) and |volume drift| (fraction).

    Returns
    -------
    dict
        window_T_K, window_T_sem_K, window_T_ratio, window_P_GPa, window_P_sem_GPa, window_volume_A3,
        window_volume_sem_A3, window_volume_drift (fraction across the window), equilibrated (bool), misses (list of str).
    """
    w = thermo[thermo["step"] >= n_equil]
    steps = w["step"].to_numpy(dtype=np.float64)
    volume = w["volume_A3"].to_numpy()
    span = steps[-1] - steps[0] if steps.size > 1 else 0.0
    drift = float(np.polyfit(steps, volume, 1)[0] * span / volume.mean()) if steps.size > 1 else 0.0
    out: dict[str, Any] = {
        "window_T_K": float(w["T_K"].mean()), "window_T_sem_K": block_standard_error(w["T_K"].to_numpy()),
        "window_P_GPa": float(w["P_GPa"].mean()), "window_P_sem_GPa": block_standard_error(w["P_GPa"].to_numpy()),
        "window_volume_A3": float(volume.mean()), "window_volume_sem_A3": block_standard_error(volume),
        "window_volume_drift": drift,
    }
    out["window_T_ratio"] = out["window_T_K"] / temperature_K
    misses = []
    if abs(out["window_T_ratio"] - 1.0) > temperature_tolerance:
        misses.append(f"mean T {out['window_T_K']:.1f} +- {out['window_T_sem_K']:.1f} K is "
                      f"{100 * (out['window_T_ratio'] - 1):+.1f} % off the target {temperature_K:g} K "
                      f"(tolerance {100 * temperature_tolerance:g} %)")
    if ensemble.startswith("npt"):
        if abs(out["window_P_GPa"] - pressure_GPa) > pressure_tolerance_GPa:
            misses.append(f"mean P {out['window_P_GPa']:.2f} GPa is off the target {pressure_GPa:g} GPa by more "
                          f"than {pressure_tolerance_GPa:g} GPa")
        if abs(drift) > volume_drift_tolerance:
            misses.append(f"the volume drifts by {100 * drift:+.2f} % across the window "
                          f"(tolerance {100 * volume_drift_tolerance:g} %)")
    out["equilibrated"] = not misses
    out["misses"] = misses
    return out


def energy_drift(thermo: Any, n_atoms: int) -> float:
    """Drift of the total energy E_kin + E_pot over a thermo window, meV per atom per ps.

    The slope of a least-squares line through E_tot(t). A thermostat exchanges energy with
    the bath, so in a stationary NVT/NPT run the slope is zero within its noise; a
    systematic drift means the window is not yet stationary or the time step is too long
    for the integrator (Allen & Tildesley, Computer Simulation of Liquids, 2nd ed. (2017),
    sec. 3.5).

    Parameters
    ----------
    thermo
        pandas DataFrame with columns time_fs and E_tot_eV (whole cell).
    n_atoms
        Atoms in the cell.

    Returns
    -------
    float
        meV/atom/ps; 0.0 for fewer than 2 rows.
    """
    if len(thermo) < 2:
        return 0.0
    slope_eV_per_fs = np.polyfit(thermo["time_fs"].to_numpy(dtype=np.float64),
                                 thermo["E_tot_eV"].to_numpy(dtype=np.float64), 1)[0]
    return float(slope_eV_per_fs * 1000.0 * 1000.0 / n_atoms)


def select_steps(n_steps: int, n_equil: int, n_interval: int) -> list[int]:
    """Snapshot steps n_equil + k n_interval <= n_steps, k >= 1."""
    return list(range(n_equil + n_interval, n_steps + 1, n_interval))


def run_stage(trajectory: str | Path, velocities: str | Path, thermo: str | Path, snapshots_out: str | Path,
              summary_out: str | Path, *, run_info: str | Path, n_steps: int, n_equil: int, n_interval: int,
              timestep_fs: float, lindemann_threshold: float = 0.2, temperature_tolerance: float = 0.03,
              pressure_tolerance_GPa: float = 0.3, volume_drift_tolerance: float = 0.003) -> dict:
    """Select snapshots of one MD run, measure tau_corr, write the snapshots and a JSON summary.

    Parameters
    ----------
    trajectory, velocities, thermo, run_info
        The MD stage's trajectory.traj, velocities.npy (steps n_equil..n_steps), thermo.csv and
        run.json (ensemble and targets).
    snapshots_out
        ASE trajectory of the selected frames (info: step, time_fs; energy, forces, stress kept).
    summary_out
        JSON: snapshot steps, n_snapshots, tau_corr_fs, tau_corr_resolved,
        sample_interval_fs, interval_too_short, lindemann_ratio, melted, the equilibration figures of
        :func:`equilibration_figures` (window means of T, P, V with standard errors, equilibrated flag),
        mean_E_pot_eV and the standard deviations std_T_K, std_P_GPa, std_volume_A3, std_E_pot_eV over
        the same window (steps >= n_equil), energy_drift_meV_per_atom_ps (:func:`energy_drift`),
        tau_int_E_pot_fs (:func:`integrated_autocorrelation_time` of E_pot, fs), n_independent_snapshots
        B_iso_A2 (element -> Angstrom^2, :func:`b_iso`) and B_iso_sem_A2 (:func:`b_iso_standard_error`).

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

    # The displacement figures need >= 2 frames; with one snapshot the step-0 frame (the relaxed
    # sites at the start velocities) stands in as the second.
    motion_frames = [frames[min(frames)], *snaps] if len(snaps) < 2 else snaps
    lindemann = lindemann_ratio(motion_frames)
    b_factors = b_iso(motion_frames)
    b_errors = b_iso_standard_error(motion_frames)
    melted = lindemann > lindemann_threshold
    if melted:
        log.warning("Lindemann ratio %.3f > %.3f: the crystal melted or lost long-range order", lindemann,
                    lindemann_threshold)
    log.info("B_iso from the snapshots: %s", ", ".join(f"{el} {b:.3f} +- {b_errors[el]:.3f} A^2"
                                                       for el, b in b_factors.items()))

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
    md = read_json(run_info)["params"]
    equil = equilibration_figures(th, n_equil, md["ensemble"], md["temperature_K"], md["pressure_GPa"],
                                  temperature_tolerance=temperature_tolerance,
                                  pressure_tolerance_GPa=pressure_tolerance_GPa,
                                  volume_drift_tolerance=volume_drift_tolerance)
    if equil["equilibrated"]:
        log.info("sampled ensemble at its targets: mean T %.1f K (target %g K)", equil["window_T_K"],
                 md["temperature_K"])
    else:
        log.warning("run not equilibrated over its sampling window: %s", "; ".join(equil["misses"]))
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
        **equil,
    }
    window = th[th["step"] >= n_equil]  # the window of the equilibration figures (which hold the means)
    summary["mean_E_pot_eV"] = float(window["E_pot_eV"].mean())
    for col in ("T_K", "P_GPa", "volume_A3", "E_pot_eV"):
        summary[f"std_{col}"] = float(window[col].std(ddof=1)) if len(window) > 1 else 0.0
    n_atoms = len(snaps[0])
    summary["energy_drift_meV_per_atom_ps"] = energy_drift(window, n_atoms)
    sample_dt_fs = float(np.median(np.diff(window["time_fs"]))) if len(window) > 1 else timestep_fs
    tau_int = integrated_autocorrelation_time(window["E_pot_eV"].to_numpy()) * sample_dt_fs
    summary["tau_int_E_pot_fs"] = tau_int
    summary["n_independent_snapshots"] = len(snaps) / max(1.0, tau_int / t_sample)
    summary["B_iso_A2"] = b_factors
    summary["B_iso_sem_A2"] = b_errors
    log.info("E_pot integrated autocorrelation time %.1f fs: %.1f effectively independent snapshots of %d; "
             "E_tot drift %.3f meV/atom/ps", tau_int, summary["n_independent_snapshots"], len(snaps),
             summary["energy_drift_meV_per_atom_ps"])
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
    p.add_argument("--run-info", required=True, help="MD run.json (ensemble, target T and P)")
    p.add_argument("--snapshots-out", required=True)
    p.add_argument("--summary-out", required=True)
    p.add_argument("--params", required=True,
                   help="JSON: n_steps, n_equil, n_interval, timestep_fs, lindemann_threshold")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    run_stage(args.trajectory, args.velocities, args.thermo, args.snapshots_out, args.summary_out,
              run_info=args.run_info, **load_params(args.params))
    return 0
