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
fit times the window length, over the mean volume). A window mean is off target
when it misses the target by more than its tolerance (|<T>/T0 - 1| >
temperature_tolerance; for NPT |<P> - P0| > pressure_tolerance_GPa) *and* by more
than 3 of its block standard errors: a finite window of a small cell samples the
canonical ensemble correctly while its mean T strays by the canonical spread, about
T0 sqrt(2/(3N-3)) sqrt(2 tau_E / t_window) for Langevin dynamics (tau_E ~ 1/gamma the
energy relaxation time), several % for tens of atoms and a few hundred fs. For NPT
the volume must also not drift by more than volume_drift_tolerance across the
window. The run is ``equilibrated`` when nothing is off target; the log says which
deviations are misses and which are within the window's statistics.

Thermal motion (:mod:`mdxrd.displacements`): the displacements of every atom from
its lattice site at every step of the window (sites of the parent crystal from the
0 K supercell, the free coordinates re-estimated from the window over all
translation-equivalent atoms; scaled coordinates, so an NPT cell scales the sites)
give, per element, the isotropic Debye-Waller factor B = 8 pi^2 <u^2> (<u^2> along
one direction, Angstrom^2) with its block-averaged standard error, and the Lindemann
ratio in its usual 3-D form sqrt(<|u|^2>)/d_nn, d_nn the nearest-neighbour distance
of the sites (Lindemann, Phys. Z. 11, 609 (1910)). Above ``lindemann_threshold``
(default 0.2) the run is flagged ``melted``: it has lost long-range order and its
patterns are not a crystal's. The criterion puts melting of simple solids at about
0.1-0.15 in this form, but a universal potential's softer crystal runs higher (CHGNet
NaCl at 600 K: 0.17, half its melting point), while a liquid, whose atoms diffuse
away from any site, gives far more.

Statistics: the integrated autocorrelation times of the displacements (``tau_int_u_fs``),
of their mean square (``tau_int_msd_fs``) and of the potential energy
(``tau_int_E_pot_fs``) over the window (Sokal windowing); the number of effectively
independent snapshots is N_s / max(1, tau / (n_interval dt)) with tau the longer of the
displacements' two; the slope of the total energy over the window is the energy drift
(meV/atom/ps).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
from ase.io import read, write

from mdxrd.displacements import PHASE_TOLERANCE_A, phase_check, thermal_motion
from mdxrd.io import atomic_path, read_json, write_json
from mdxrd.statistics import block_standard_error, integrated_autocorrelation_time

log = logging.getLogger(__name__)

#: A window mean beyond its tolerance is off target only when it is also this many block standard errors off.
SEM_FACTOR = 3.0


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
    :math:`|C(t')|` < threshold for every t' >= t in ``vacf``; ``resolved`` is False when
    :math:`|C|` is still above the threshold at the last lag (tau is then a lower bound,
    the last lag).
    """
    above = np.flatnonzero(np.abs(vacf) >= threshold)
    last = int(above[-1]) if above.size else 0
    if last == len(vacf) - 1:
        return last * dt_fs, False
    return (last + 1) * dt_fs, True


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
        Allowed |<T>/T0 - 1|, |<P> - P0| (GPa) and |volume drift| (fraction). A mean beyond
        its tolerance is a miss only when it is also more than 3 block standard errors off.

    Returns
    -------
    dict
        window_T_K, window_T_sem_K, window_T_ratio, window_P_GPa, window_P_sem_GPa, window_volume_A3,
        window_volume_sem_A3, window_volume_drift (fraction across the window), equilibrated (bool),
        misses (list of str: what is off target), within_noise (list of str: deviations beyond the
        tolerance but within 3 standard errors).
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
    misses: list[str] = []
    within_noise: list[str] = []

    def judge(deviation: float, tolerance: float, sem: float, what: str) -> None:
        if abs(deviation) <= tolerance:
            return
        if abs(deviation) > SEM_FACTOR * sem:
            misses.append(f"{what} (tolerance exceeded by more than {SEM_FACTOR:g} standard errors)")
        else:
            within_noise.append(f"{what}, within {SEM_FACTOR:g} standard errors: the window's statistics, "
                                "not a miss")

    judge(out["window_T_K"] - temperature_K, temperature_tolerance * temperature_K, out["window_T_sem_K"],
          f"mean T {out['window_T_K']:.1f} +- {out['window_T_sem_K']:.1f} K is "
          f"{100 * (out['window_T_ratio'] - 1):+.1f} % off the target {temperature_K:g} K "
          f"(tolerance {100 * temperature_tolerance:g} %)")
    if ensemble.startswith("npt"):
        judge(out["window_P_GPa"] - pressure_GPa, pressure_tolerance_GPa, out["window_P_sem_GPa"],
              f"mean P {out['window_P_GPa']:.2f} +- {out['window_P_sem_GPa']:.2f} GPa is off the target "
              f"{pressure_GPa:g} GPa by more than {pressure_tolerance_GPa:g} GPa")
        if abs(drift) > volume_drift_tolerance:
            misses.append(f"the volume drifts by {100 * drift:+.2f} % across the window "
                          f"(tolerance {100 * volume_drift_tolerance:g} %)")
    out["equilibrated"] = not misses
    out["misses"] = misses
    out["within_noise"] = within_noise
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
              summary_out: str | Path, *, run_info: str | Path, positions: str | Path, sites: str | Path,
              n_steps: int, n_equil: int, n_interval: int, timestep_fs: float, lindemann_threshold: float = 0.2,
              temperature_tolerance: float = 0.03, pressure_tolerance_GPa: float = 0.3,
              volume_drift_tolerance: float = 0.003, phase_tolerance_A: float = PHASE_TOLERANCE_A) -> dict:
    """Select snapshots of one MD run, measure tau_corr and the thermal motion, write the snapshots and a JSON summary.

    Parameters
    ----------
    trajectory, velocities, thermo, run_info, positions
        The MD stage's trajectory.traj, velocities.npy (steps n_equil..n_steps), thermo.csv,
        run.json (ensemble and targets) and positions.npz (positions and cells, steps
        n_equil..n_steps).
    sites
        The 0 K supercell the run started from (the structure stage's supercell.traj): the
        lattice sites of :mod:`mdxrd.displacements`.
    snapshots_out
        ASE trajectory of the selected frames (info: step, time_fs; energy, forces, stress kept).
    summary_out
        JSON: snapshot steps, n_snapshots, tau_corr_fs, tau_corr_resolved,
        sample_interval_fs, interval_too_short, lindemann_ratio, melted, the equilibration figures of
        :func:`equilibration_figures` (window means of T, P, V with standard errors, equilibrated flag),
        mean_E_pot_eV and the standard deviations std_T_K, std_P_GPa, std_volume_A3, std_E_pot_eV over
        the same window (steps >= n_equil), energy_drift_meV_per_atom_ps (:func:`energy_drift`),
        tau_int_E_pot_fs, tau_int_u_fs and tau_int_msd_fs (integrated autocorrelation times, fs),
        n_independent_snapshots, B_iso_A2 (element -> Angstrom^2) and B_iso_sem_A2
        (:func:`mdxrd.displacements.thermal_motion`), and the phase check's figures
        (:func:`mdxrd.displacements.phase_check`: space_group_mean, phase_kept, ...; ``phase_tolerance_A``
        its smallest distortion).

    Raises
    ------
    ValueError
        A snapshot step missing from the trajectory, or positions that do not cover the window.
    """
    import pandas as pd  # lazy: pandas 0.33 s; loaded by every mdxrd command

    wanted = select_steps(n_steps, n_equil, n_interval)
    frames = {int(a.info["step"]): a for a in read(str(trajectory), index=":")}
    missing = [s for s in wanted if s not in frames]
    if missing:
        raise ValueError(f"{trajectory}: snapshot steps {missing} are not in the trajectory")
    snaps = [frames[s] for s in wanted]

    reference = read(str(sites))
    window = np.load(positions)
    if window["steps"][0] != n_equil or window["steps"][-1] != n_steps:
        raise ValueError(f"{positions}: steps {window['steps'][0]}..{window['steps'][-1]}, expected "
                         f"{n_equil}..{n_steps}")
    motion = thermal_motion(window["positions_A"], window["cells_A"], reference, timestep_fs)
    lindemann = motion["lindemann_ratio"]
    melted = lindemann > lindemann_threshold
    if melted:
        log.warning("Lindemann ratio %.3f > %.3f: the crystal melted or lost long-range order", lindemann,
                    lindemann_threshold)
    log.info("B_iso about the lattice sites over %d steps: %s", motion["n_samples"],
             ", ".join(f"{el} {b:.3f} +- {motion['B_iso_sem_A2'][el]:.3f} A^2" for el, b in motion["B_iso_A2"].items()))

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
    for note in equil["within_noise"]:
        log.info("%s", note)
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
    in_window = th[th["step"] >= n_equil]  # the window of the equilibration figures (which hold the means)
    summary["mean_E_pot_eV"] = float(in_window["E_pot_eV"].mean())
    for col in ("T_K", "P_GPa", "volume_A3", "E_pot_eV"):
        summary[f"std_{col}"] = float(in_window[col].std(ddof=1)) if len(in_window) > 1 else 0.0
    n_atoms = len(snaps[0])
    summary["energy_drift_meV_per_atom_ps"] = energy_drift(in_window, n_atoms)
    sample_dt_fs = float(np.median(np.diff(in_window["time_fs"]))) if len(in_window) > 1 else timestep_fs
    summary["tau_int_E_pot_fs"] = integrated_autocorrelation_time(in_window["E_pot_eV"].to_numpy()) * sample_dt_fs
    summary["tau_int_u_fs"] = motion["tau_int_u_fs"]
    summary["tau_int_msd_fs"] = motion["tau_int_msd_fs"]
    tau_motion = max(motion["tau_int_u_fs"], motion["tau_int_msd_fs"])
    summary["n_independent_snapshots"] = len(snaps) / max(1.0, tau_motion / t_sample)
    summary["B_iso_A2"] = motion["B_iso_A2"]
    summary["B_iso_sem_A2"] = motion["B_iso_sem_A2"]
    symbols = reference.get_chemical_symbols()
    u2 = float(np.mean([motion["B_iso_A2"][el] for el in symbols])) / (8.0 * math.pi**2)
    phase = phase_check(window["positions_A"], window["cells_A"], reference, u2, motion["tau_int_u_fs"],
                        (n_steps - n_equil) * timestep_fs, bool(melted), tolerance_A=phase_tolerance_A)
    summary.update(phase)
    if phase["phase_kept"]:
        log.info("phase kept: the time-averaged crystal has every operation of %s", phase["space_group_input"])
    else:
        log.warning("phase not kept: %s%d of the input's %s operations broken (distortion %.3f A, noise of the mean "
                    "positions %.3f A), time-averaged group %s; Lindemann ratio %.3f",
                    "melted; " if melted else "", phase["phase_broken_operations"], phase["space_group_input"],
                    phase["phase_distortion_A"], phase["phase_noise_A"], phase["space_group_mean"], lindemann)
    log.info("integrated autocorrelation times: displacements %.1f fs, their mean square %.1f fs, E_pot %.1f fs: "
             "%.1f effectively independent snapshots of %d; E_tot drift %.3f meV/atom/ps", motion["tau_int_u_fs"],
             motion["tau_int_msd_fs"], summary["tau_int_E_pot_fs"], summary["n_independent_snapshots"], len(snaps),
             summary["energy_drift_meV_per_atom_ps"])
    with atomic_path(snapshots_out) as tmp:
        write(str(tmp), snaps, format="traj")
    write_json(summary_out, summary)
    return summary
