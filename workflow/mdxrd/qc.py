"""QC stage: per crystal, the potential's thermal physics against experiment and the runs' health.

From the crystal's runs (snapshots summaries, snapshots, run records) and its 0 K
reference (:mod:`mdxrd.reference`):

* a(T), b(T), c(T): the mean parent-cell lattice lengths over each NPT run's
  snapshots, Angstrom; the 0 K relaxed cell is the T = 0 point. The axes the lattice
  system leaves independent (a; a and c; a, b and c) are the crystal's ``axes``.
* alpha_L: the mean linear thermal expansion coefficient, one third of the volumetric
  one, alpha_L = (1/3) (1/V) dV/dT, from a least-squares line through the NPT runs'
  window-mean volumes against T (1/K; >= 2 temperatures). For a cubic crystal this is
  (1/a) da/dT. Per axis alpha_x = (1/x) dx/dT from the line through x(T), at the mean
  temperature (a non-cubic crystal expands anisotropically: alpha_a != alpha_c).
* B(T) per element from each run's displacements about the lattice sites
  (:mod:`mdxrd.displacements`). For NVT runs B is also checked against the pattern it
  describes: the Debye-Waller decay of the run's averaged Bragg intensities
  (:func:`mdxrd.displacements.pattern_debye_waller`) must imply the same B within
  ``B_iso_pattern_tolerance``. In the
  classical harmonic limit B is proportional to T (Willis & Pryor, Thermal Vibrations in
  Crystallography (1975), ch. 4), so B at a reference temperature is the slope of a
  line through the origin fitted to the NPT runs (the cell of ambient pressure at T;
  all runs when there is no NPT run) times that temperature. Classical MD has no
  zero-point motion, so for a crystal whose Debye temperature is near or above T it
  falls below experiment (Si at 300 K: about 11 % by a Debye model).
* The lattice constant at the reference temperature from the line through a(T).
* Experiment, where the crystal's entry gives it (each value with its source and an
  optional temperature): a_exp_A, b_exp_A, c_exp_A, alpha_exp_per_K, alpha_a_exp_per_K,
  alpha_b_exp_per_K, alpha_c_exp_per_K, bulk_modulus_exp_GPa (against the 0 K
  Birch-Murnaghan B0), B_exp_A2 (per element).

The QC table is long: one row per check with crystal, scope (``crystal`` or the run
``ensemble/TK/rN``), check, value, reference, deviation (relative), status (``pass``
or ``warn``) and detail. Checks: per run equilibrated, independent snapshots >=
``min_independent_snapshots``, not melted, phase kept (:func:`mdxrd.displacements.phase_check`), B_iso against the run's own pattern (NVT);
per crystal the 0 K relaxation converged and every experimental comparison within its
tolerance.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from ase.io import read

from mdxrd import plots
from mdxrd.displacements import pattern_debye_waller
from mdxrd.grid import units
from mdxrd.io import atomic_path, load_params, read_json, write_json
from mdxrd.lattice import distinct_axes
from mdxrd.phonons import PHONON_FILE
from mdxrd.shard import fail_if, fill, run_all, write_manifest

log = logging.getLogger(__name__)

#: QC table columns and their pyarrow types.
QC_COLUMNS = (("crystal", "string"), ("scope", "string"), ("check", "string"), ("value", "float64"),
              ("reference", "float64"), ("deviation", "float64"), ("status", "string"), ("detail", "string"))


def expansion_coefficient(temperatures_K: np.ndarray, volumes_A3: np.ndarray) -> tuple[float, float]:
    """Mean linear thermal expansion coefficient from volumes at several temperatures.

    alpha_L = (1/3) (dV/dT) / V(T_mid), dV/dT the slope of a least-squares line, V at the
    mean of the temperatures (for a cubic crystal equal to (1/a) da/dT to first order).

    Parameters
    ----------
    temperatures_K, volumes_A3
        (n,) float, n >= 2 distinct temperatures (K) and mean volumes (Angstrom^3, any cell).

    Returns
    -------
    (alpha_L_per_K, V_mid_A3)

    Raises
    ------
    ValueError
        Fewer than two distinct temperatures.
    """
    t = np.asarray(temperatures_K, dtype=np.float64)
    v = np.asarray(volumes_A3, dtype=np.float64)
    if np.unique(t).size < 2:
        raise ValueError("alpha_L needs NPT runs at two or more temperatures")
    slope, intercept = np.polyfit(t, v, 1)
    v_mid = slope * t.mean() + intercept
    return float(slope / (3.0 * v_mid)), float(v_mid)


def b_at(temperatures_K: np.ndarray, b_A2: np.ndarray, temperature_K: float) -> float:
    """B at ``temperature_K`` from a line through the origin (classical harmonic B = c T).

    c = sum(B_i T_i) / sum(T_i^2), least squares; returns c temperature_K in Angstrom^2.
    """
    t = np.asarray(temperatures_K, dtype=np.float64)
    b = np.asarray(b_A2, dtype=np.float64)
    return float(np.sum(b * t) / np.sum(t * t) * temperature_K)


def axis_expansion(temperatures_K: np.ndarray, lengths_A: np.ndarray) -> float:
    """Thermal expansion coefficient of one axis, (1/x) dx/dT at the mean temperature, 1/K.

    Parameters
    ----------
    temperatures_K, lengths_A
        (n,) float, n >= 2 distinct temperatures (K) and mean lattice lengths (Angstrom).

    Raises
    ------
    ValueError
        Fewer than two distinct temperatures.
    """
    t = np.asarray(temperatures_K, dtype=np.float64)
    if np.unique(t).size < 2:
        raise ValueError("axis expansion needs NPT runs at two or more temperatures")
    slope, intercept = np.polyfit(t, np.asarray(lengths_A, dtype=np.float64), 1)
    return float(slope / (slope * t.mean() + intercept))


def _row(crystal: str, scope: str, check: str, value: float | None, reference: float | None, ok: bool,
         detail: str, compare: bool = False) -> dict[str, Any]:
    """One QC row; ``compare``: a comparison of a figure with a reference value (deviation = value/reference - 1)."""
    dev = None
    if compare and value is not None and reference not in (None, 0.0):
        dev = float(value / reference - 1.0)
    return {"crystal": crystal, "scope": scope, "check": check, "value": value, "reference": reference,
            "deviation": dev, "status": "pass" if ok else "warn", "detail": detail}


def _experiment(entry: dict[str, Any], key: str, default_T: float) -> tuple[Any, float, str] | None:
    ref = entry.get(key)
    if ref is None:
        return None
    return ref["value"], float(ref.get("T_K", default_T)), ref["source"]


def _run_rows(name: str, runs: list[dict[str, Any]], tolerances: dict[str, Any]) -> list[dict[str, Any]]:
    """Per-run rows: equilibrated, independent snapshots, not melted, B_iso against the run's own pattern."""
    rows = []
    for r in runs:
        s = r["summary"]
        scope = f"{r['ensemble']}/{r['temperature_K']:g}K/r{r['replica']}"
        rows.append(_row(name, scope, "equilibrated", None, None, bool(s["equilibrated"]),
                         "; ".join(s.get("misses", [])) or
                         f"mean T {s['window_T_K']:.1f} +- {s['window_T_sem_K']:.1f} K"))
        n_ind = float(s["n_independent_snapshots"])
        need = float(tolerances["min_independent_snapshots"])
        rows.append(_row(name, scope, "independent_snapshots", n_ind, need, n_ind >= need,
                         f"{s['n_snapshots']} snapshots {s['sample_interval_fs']:g} fs apart; integrated "
                         f"autocorrelation times: displacements {s['tau_int_u_fs']:.0f} fs, their mean square "
                         f"{s['tau_int_msd_fs']:.0f} fs (E_pot {s['tau_int_E_pot_fs']:.0f} fs)"))
        rows.append(_row(name, scope, "not_melted", float(s["lindemann_ratio"]), None, not s["melted"],
                         f"Lindemann ratio {s['lindemann_ratio']:.3f}"))
        if "phase_kept" in s:
            mean_group = s["space_group_mean"] or ("none (melted)" if s["melted"] else "unnamed subgroup")
            rows.append(_row(name, scope, "phase_kept", s["phase_distortion_A"], None, bool(s["phase_kept"]),
                             f"time-averaged crystal {mean_group} vs input "
                             f"{s['space_group_input']}: {s['phase_broken_operations']} operations broken, "
                             f"distortion {s['phase_distortion_A']:.3f} A (noise {s['phase_noise_A']:.3f} A, "
                             f"tolerance {s['phase_tolerance_A']:g} A); Lindemann ratio {s['lindemann_ratio']:.3f}"))
        anchored = s.get("lattice_anchor")
        if anchored is not None:
            kept = anchored["method"] is None
            rows.append(_row(name, scope, "lattice_anchored", None if kept else anchored["scale"]["a"], None,
                             not kept, f"lattice: experiment needs {', '.join(anchored['missing'])}: the potential's "
                             "lattice is kept" if kept else f"patterns on experiment's lattice ({anchored['method']}): "
                             + ", ".join(f"{x} {anchored['potential_A'][x]:.4f} -> {anchored['target_A'][x]:.4f} A"
                                         for x in "abc")))
        dw = r.get("pattern_debye_waller")
        if dw is not None:
            tol = tolerances["B_iso_pattern_tolerance"]
            rows.append(_row(name, scope, "B_iso_vs_pattern", dw["scale"], 1.0, abs(dw["scale"] - 1.0) <= tol,
                             f"the Debye-Waller decay of the run's averaged Bragg intensities ({dw['n_reflections']} "
                             f"reflections, s^2 <= {dw['s2_max_per_A2']:.2f} 1/A^2) implies B = "
                             + ", ".join(f"{el} {b:.3f}" for el, b in dw["B_pattern_A2"].items())
                             + " A^2 against the label " + ", ".join(f"{el} {b:.3f}" for el, b in
                                                                     s["B_iso_A2"].items()), compare=True))
    return rows


def _harmonic_rows(name: str, phonons: dict[str, Any], runs: list[dict[str, Any]], tolerances: dict[str, Any]
                   ) -> list[dict[str, Any]]:
    """Rows from the harmonic phonons (:mod:`mdxrd.phonons`): per temperature and element the zero-point ratio
    B_quantum / B_classical (information), and per NVT run and element the MD's B_iso against the classical
    harmonic B (the same potential: they differ by anharmonicity and sampling only); and ``phonons_stable``,
    a warning when the relaxed cell has imaginary modes (left out of the harmonic B)."""
    n_imag = int(phonons["n_imaginary"])
    rows = [_row(name, "harmonic", "phonons_stable", float(n_imag), 0.0, n_imag == 0,
                 f"{n_imag} imaginary modes (lowest {phonons['min_frequency_THz']:.3f} THz) of the relaxed cell in "
                 "its MD supercell" + (": left out of the harmonic B; the structure is unstable there with this "
                                       "potential" if n_imag else ""))]
    temps = [float(t) for t in phonons["temperatures_K"]]
    for t, quantum, classical in zip(temps, phonons["B_quantum_harmonic_A2"], phonons["B_classical_harmonic_A2"],
                                     strict=True):
        for el, b in quantum.items():
            rows.append(_row(name, f"harmonic/{t:g}K", f"B_quantum_ratio_{el}", b / classical[el], 1.0, True,
                             f"harmonic phonons: B {el} quantum {b:.3f}, classical {classical[el]:.3f} A^2 "
                             f"(zero-point motion the classical MD lacks)"))
    for r in runs:
        if r["ensemble"].startswith("npt") or float(r["temperature_K"]) not in temps:
            continue
        classical = phonons["B_classical_harmonic_A2"][temps.index(float(r["temperature_K"]))]
        scope = f"{r['ensemble']}/{r['temperature_K']:g}K/r{r['replica']}"
        for el, b in r["summary"]["B_iso_A2"].items():
            rows.append(_row(name, scope, f"B_iso_vs_harmonic_{el}", b, classical[el],
                             abs(b / classical[el] - 1.0) <= tolerances["B_iso_tolerance"],
                             f"MD B_iso {b:.3f} against the classical harmonic B {classical[el]:.3f} A^2 of the same "
                             "potential and supercell (anharmonicity and sampling)", compare=True))
    return rows


def crystal_qc(crystal: dict[str, Any], reference: dict[str, Any], runs: list[dict[str, Any]],
               tolerances: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Per-crystal figures and QC rows.

    Parameters
    ----------
    crystal
        The config's crystal entry (name; optional reference_T_K and experimental fields).
    reference
        The reference stage's record (:func:`mdxrd.reference.run_stage`).
    runs
        One dict per run: ensemble, temperature_K, replica, summary (the snapshots summary),
        lattice (mean a, b, c of the parent cell over the snapshots, Angstrom), volume_parent_A3
        (window-mean volume of the parent cell), and for NVT runs optionally pattern_debye_waller
        (:func:`mdxrd.displacements.pattern_debye_waller`).
    tolerances
        min_independent_snapshots, lattice_tolerance, alpha_tolerance, bulk_modulus_tolerance,
        B_iso_tolerance, B_iso_pattern_tolerance (relative deviations that still pass).

    Returns
    -------
    (figures, rows)
        figures: a_T (list of {temperature_K, a, b, c}), axes (the independent axes of the lattice
        system), alpha_L_per_K and alpha_axes_per_K (axis -> (1/x) dx/dT; None without NPT runs at two
        temperatures), lattice_at_reference_A (axis -> length at reference_T_K), a_at_reference_A,
        B_T (list of {ensemble, temperature_K, element -> B}), B_at_reference_A2, the EOS figures, the
        experiment used; rows: the QC table rows (:data:`QC_COLUMNS`).
    """
    name = crystal["name"]
    t_ref = float(crystal.get("reference_T_K", 293.0))
    rows = _run_rows(name, runs, tolerances)
    rows.append(_row(name, "crystal", "relaxation_converged", None, None,
                     bool(reference.get("relax_converged")) or not reference.get("relaxed", True),
                     "0 K relaxation (structure stage) reached fmax" if reference.get("relax_converged")
                     else "0 K relaxation did not reach fmax" if reference.get("relaxed", True)
                     else "relaxation switched off"))
    dev = reference["lattice_deviation_pct"]
    rows.append(_row(name, "crystal", "relaxed_vs_cif_a", reference["relaxed_lattice"]["a"],
                     reference["cif_lattice"]["a"], abs(dev["a_pct"]) <= 100 * tolerances["lattice_tolerance"],
                     f"relaxed a, b, c {dev['a_pct']:+.2f} %, {dev['b_pct']:+.2f} %, {dev['c_pct']:+.2f} % off the CIF",
                     compare=True))

    relaxed = reference["relaxed_lattice"]
    axes = distinct_axes(relaxed)
    npt = [r for r in runs if r["ensemble"].startswith("npt")]
    temps = np.array([r["temperature_K"] for r in npt])
    two_temperatures = np.unique(temps).size >= 2
    a_t = [{"temperature_K": 0.0, **{k: relaxed[k] for k in "abc"}, "ensemble": "relaxed"}]
    a_t += [{"temperature_K": r["temperature_K"], **r["lattice"], "ensemble": r["ensemble"]} for r in npt]

    def length_at(axis: str, temperature_K: float) -> tuple[float, str]:
        """The model's lattice length at a temperature: the line through the NPT runs, else the 0 K cell."""
        if not npt:
            return relaxed[axis], f"0 K relaxed {axis} (no NPT run)"
        lengths = np.array([r["lattice"][axis] for r in npt])
        value = float(np.polyval(np.polyfit(temps, lengths, 1), temperature_K)) if two_temperatures \
            else float(lengths.mean())
        return value, f"NPT {axis} at {temperature_K:g} K"

    alpha = alpha_axes = None
    if two_temperatures:
        alpha, _ = expansion_coefficient(temps, np.array([r["volume_parent_A3"] for r in npt]))
        alpha_axes = {x: axis_expansion(temps, np.array([r["lattice"][x] for r in npt])) for x in "abc"}
    b_runs = npt or runs
    elements = list(runs[0]["summary"]["B_iso_A2"]) if runs else []

    def b_model(element: str, temperature_K: float) -> float:
        return b_at(np.array([r["temperature_K"] for r in b_runs]),
                    np.array([r["summary"]["B_iso_A2"][element] for r in b_runs]), temperature_K)

    eos = reference["eos"]
    figures: dict[str, Any] = {
        "crystal": name, "reference_T_K": t_ref, "a_T": a_t, "axes": axes, "alpha_L_per_K": alpha,
        "alpha_axes_per_K": alpha_axes,
        "lattice_at_reference_A": {x: length_at(x, t_ref)[0] for x in "abc"} if npt else None,
        "a_at_reference_A": length_at("a", t_ref)[0] if npt else None,
        "B_T": [{"ensemble": r["ensemble"], "temperature_K": r["temperature_K"], **r["summary"]["B_iso_A2"],
                 **{f"{el}_sem": v for el, v in r["summary"].get("B_iso_sem_A2", {}).items()}} for r in runs],
        "B_at_reference_A2": {el: b_model(el, t_ref) for el in elements}, "B_reference_runs": "npt" if npt else "all",
        "eos": {k: eos[k] for k in ("V0_A3", "E0_eV", "B0_GPa", "B0_prime", "fit_rms_meV")},
        "lattice_deviation_pct": dev, "experiment": {},
        "a_T_anchored": [{"temperature_K": r["temperature_K"], "ensemble": r["ensemble"],
                          **r["summary"]["lattice_anchor"]["target_A"]} for r in runs
                         if (r["summary"].get("lattice_anchor") or {}).get("method")],
    }

    def compare(key: str, check: str, model: Any, tolerance: str, describe: Any) -> None:
        """A row comparing ``model(T_exp)`` (None: nothing to compare) with the entry's experimental ``key``."""
        exp = _experiment(crystal, key, t_ref)
        if exp is None:
            return
        value, t_exp, source = exp
        figures["experiment"][key] = {"value": value, "T_K": t_exp, "source": source}
        got = model(t_exp)
        if got is None:
            return
        rows.append(_row(name, "crystal", check, got, float(value), abs(got / value - 1) <= tolerances[tolerance],
                         f"{describe(got, t_exp)} vs {value:g} ({source})", compare=True))

    for x in ("a", "b", "c"):
        key = f"{x}_exp_A"
        compare(key, "lattice_constant_vs_experiment" if x == "a" else f"lattice_{x}_vs_experiment",
                lambda t, x=x: length_at(x, t)[0], "lattice_tolerance",
                lambda v, t, x=x: f"{length_at(x, t)[1]} {v:.4f} A")
    compare("alpha_exp_per_K", "alpha_L_vs_experiment", lambda t: alpha, "alpha_tolerance",
            lambda v, t: f"alpha_L {v * 1e6:.1f}e-6/K over {temps.min():g}-{temps.max():g} K")
    for x in ("a", "b", "c"):
        compare(f"alpha_{x}_exp_per_K", f"alpha_{x}_vs_experiment",
                lambda t, x=x: alpha_axes[x] if alpha_axes else None, "alpha_tolerance",
                lambda v, t, x=x: f"alpha_{x} {v * 1e6:.1f}e-6/K over {temps.min():g}-{temps.max():g} K")
    compare("bulk_modulus_exp_GPa", "bulk_modulus_vs_experiment", lambda t: eos["B0_GPa"], "bulk_modulus_tolerance",
            lambda v, t: f"0 K Birch-Murnaghan B0 {v:.1f} GPa")
    exp = _experiment(crystal, "B_exp_A2", t_ref)
    if exp is not None:
        values, t_exp, source = exp
        figures["experiment"]["B_exp_A2"] = {"value": values, "T_K": t_exp, "source": source}
        for el, value in values.items():
            model = b_model(el, t_exp)
            rows.append(_row(name, "crystal", f"B_iso_{el}_vs_experiment", model, float(value),
                             abs(model / value - 1) <= tolerances["B_iso_tolerance"],
                             f"B({el}) {model:.3f} A^2 at {t_exp:g} K ({'NPT' if npt else 'all'} runs, B = cT) vs "
                             f"{value:g} A^2 ({source})", compare=True))
    return figures, rows


def run_stage(reference: str | Path, run_dirs: list[dict[str, Any]], crystal: dict[str, Any],
              tolerances: dict[str, Any], qc_out: str | Path, table_out: str | Path,
              sites: str | Path | None = None) -> dict[str, Any]:
    """Run the QC stage for one crystal; write ``qc.json`` and the QC table (Parquet) atomically.

    Parameters
    ----------
    reference
        The reference stage's reference.json.
    run_dirs
        One dict per run: ensemble, temperature_K, replica, snapshots_summary (path of summary.json), snapshots
        (path of snapshots.traj), supercell (na, nb, nc).
    crystal, tolerances
        See :func:`crystal_qc`.
    qc_out, table_out
        Output JSON (figures, and the QC rows) and Parquet (:data:`QC_COLUMNS`).
    sites
        The 0 K supercell (structure stage): with it, every NVT run's B_iso is checked against the
        Debye-Waller decay of its own snapshots' Bragg intensities.

    Returns
    -------
    dict
        The figures of :func:`crystal_qc`, with ``checks`` (the rows).
    """
    site_atoms = read(str(sites)) if sites is not None else None
    runs = []
    for rd in run_dirs:
        summary = read_json(rd["snapshots_summary"])
        frames = read(str(rd["snapshots"]), index=":")
        na, nb, nc = rd["supercell"]
        lengths = np.mean([f.cell.lengths() for f in frames], axis=0) / np.array([na, nb, nc])
        run = {"ensemble": rd["ensemble"], "temperature_K": float(rd["temperature_K"]), "replica": rd["replica"],
               "summary": summary, "lattice": dict(zip("abc", map(float, lengths), strict=True)),
               "volume_parent_A3": summary["window_volume_A3"] / (na * nb * nc)}
        if site_atoms is not None and not rd["ensemble"].startswith("npt") and not summary["melted"]:
            run["pattern_debye_waller"] = pattern_debye_waller(frames, site_atoms, summary["B_iso_A2"])
        runs.append(run)
    figures, rows = crystal_qc(crystal, read_json(reference), runs, tolerances)
    phonon_file = Path(reference).parent / PHONON_FILE
    if phonon_file.is_file():
        rows += _harmonic_rows(crystal["name"], read_json(phonon_file), runs, tolerances)
    for row in rows:
        (log.info if row["status"] == "pass" else log.warning)("%s %s %s: %s", row["scope"], row["check"],
                                                                row["status"], row["detail"])
    schema = pa.schema([(n, getattr(pa, t)()) for n, t in QC_COLUMNS])
    with atomic_path(table_out) as tmp:
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), str(tmp))
    write_json(qc_out, {**figures, "checks": rows})
    return {**figures, "checks": rows}


#: The checks :func:`compare_potentials` puts side by side (check name -> quantity, unit).
COMPARED = {"relaxed_vs_cif_a": ("a relaxed 0 K vs CIF", "A"), "lattice_constant_vs_experiment": ("a(T_ref) NPT", "A"),
            "lattice_b_vs_experiment": ("b(T_ref) NPT", "A"), "lattice_c_vs_experiment": ("c(T_ref) NPT", "A"),
            "alpha_L_vs_experiment": ("alpha_L", "1/K"), "alpha_a_vs_experiment": ("alpha_a", "1/K"),
            "alpha_b_vs_experiment": ("alpha_b", "1/K"), "alpha_c_vs_experiment": ("alpha_c", "1/K"),
            "bulk_modulus_vs_experiment": ("B0 (0 K BM3)", "GPa")}

#: The files of a unit's qc directory.
FILES = ("qc.json", "qc.parquet")


def compare_potentials(config: dict[str, Any], qc_template: str) -> Any:
    """The potentials side by side against experiment, from every unit's QC table.

    One row per crystal and quantity (the checks of :data:`COMPARED` and every
    ``B_iso_<el>_vs_experiment``), one value column and one deviation column (%) per
    potential, and the reference (experiment, or the CIF for the relaxed a).

    Parameters
    ----------
    config
        The resolved configuration (its units: :func:`mdxrd.grid.units`).
    qc_template
        Path template (``{unit}``) of a unit's qc directory.

    Returns
    -------
    pandas.DataFrame
    """
    import pandas as pd  # lazy: pandas 0.33 s; loaded by every mdxrd command

    frames = []
    for unit in units(config):
        table = pd.read_parquet(fill(qc_template, unit=unit["name"]) / "qc.parquet")
        table = table[table["check"].isin(list(COMPARED)) | table["check"].str.match(r"B_iso_\w+_vs_experiment")]
        frames.append(table.assign(crystal=unit["crystal"], potential=unit["potential"]["name"]))
    rows = pd.concat(frames, ignore_index=True)

    def quantity(check: str) -> str:
        if check in COMPARED:
            return f"{COMPARED[check][0]} ({COMPARED[check][1]})"
        return f"B_iso {check.split('_')[2]} (A^2)"

    rows["quantity"] = rows["check"].map(quantity)
    rows["deviation_pct"] = 100.0 * rows["deviation"]
    order = {c["name"]: i for i, c in enumerate(config["crystals"])}
    wide = rows.groupby(["crystal", "quantity", "potential"])[["value", "deviation_pct"]].first().unstack("potential")
    wide.columns = [f"{pot} {'value' if what == 'value' else 'dev %'}" for what, pot in wide.columns]
    potentials = [p["name"] for p in config["potentials"]]
    wide = wide[[f"{p} {w}" for p in potentials for w in ("value", "dev %") if f"{p} {w}" in wide.columns]]
    ref = rows.groupby(["crystal", "quantity"])["reference"].first()
    wide.insert(0, "reference", ref)
    wide = wide.reset_index()
    return wide.sort_values(["crystal", "quantity"], key=lambda s: s.map(order) if s.name == "crystal" else s,
                            ignore_index=True)


def write_comparison(config: dict[str, Any], qc_template: str, csv_out: str | Path, html_out: str | Path) -> Any:
    """Write :func:`compare_potentials` as CSV and as an HTML table (the report's "potentials" page)."""
    table = compare_potentials(config, qc_template)
    with atomic_path(csv_out) as tmp:
        table.to_csv(tmp, index=False)
    html = table.to_html(index=False, float_format=lambda x: f"{x:.4g}", na_rep="")
    with atomic_path(html_out) as tmp:
        Path(tmp).write_text(f"<html><body><h3>Potentials against experiment</h3>{html}</body></html>")
    return table


def run_shard(params: dict[str, Any], templates: dict[str, str], report_dir: str | Path, manifest: str | Path
              ) -> int:
    """QC and report figures of every unit of a shard; write the manifest last.

    Parameters
    ----------
    params
        The shard's ``qc`` parameter file (:func:`mdxrd.params.shard_params`): ``tolerances``, ``md``
        (n_equil, timestep_fs) and ``units`` (name, crystal entry, runs).
    templates
        Path templates: ``structure``, ``reference``, ``qc``, ``plots`` (``{unit}``) and ``md``,
        ``snapshots``, ``xrd`` (per run).
    report_dir
        The shard's report directory: each unit's figures are linked there as
        ``<unit>/<figure>`` for ``snakemake --report`` (hard links; copies where links fail).
    manifest
        The shard's manifest, written when every unit succeeded.

    Returns
    -------
    int
        The number of units.

    Raises
    ------
    mdxrd.shard.ShardError
        Some units failed (named, with their errors); the others are written.
    """
    started = time.perf_counter()

    def work(unit: dict[str, Any]) -> dict[str, Any]:
        name = unit["name"]
        qdir, pdir = fill(templates["qc"], unit=name), fill(templates["plots"], unit=name)
        rdir = fill(templates["reference"], unit=name)
        runs = []
        for r in unit["runs"]:
            fields = {"unit": name, "ensemble": r["ensemble"], "temperature": f"{float(r['temperature_K']):g}",
                      "replica": r["replica"]}
            snap, md, xrd = (fill(templates[k], **fields) for k in ("snapshots", "md", "xrd"))
            runs.append({**r, "snapshots_summary": str(snap / "summary.json"), "snapshots": str(snap / "snapshots.traj"),
                         "thermo": str(md / "thermo.csv"), "run_info": str(md / "run.json"),
                         "average": str(xrd / "average.npz")})
        run_stage(rdir / "reference.json", runs, unit["crystal"], params["tolerances"], qdir / "qc.json",
                  qdir / "qc.parquet", sites=fill(templates["structure"], unit=name) / "supercell.traj")
        figures = {k: str(pdir / f) for k, f in plots.FILES.items()}
        plots.run_stage(name, rdir / "static.npz", qdir / "qc.json", qdir / "qc.parquet", runs, params["md"], figures)
        for path in figures.values():
            link = Path(report_dir) / name / Path(path).name
            link.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(path, link)
            except OSError:
                shutil.copy2(path, link)
        return {"unit": name, "qc_dir": str(qdir), "plots_dir": str(pdir)}

    shutil.rmtree(report_dir, ignore_errors=True)
    entries, failures = run_all(params["units"], work, lambda u: u["name"])
    fail_if(failures, "units", len(params["units"]))
    write_manifest(manifest, "qc", entries, started)
    return len(entries)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``mdxrd qc`` (the workflow's QC stage: every unit of one shard) and ``mdxrd qc-potentials``."""
    c = subparsers.add_parser("qc-potentials", help="QC stage: every potential side by side against experiment")
    c.add_argument("--config", required=True, help="the resolved configuration (results/params/config.json)")
    c.add_argument("--qc-dir", required=True, help="path template of a unit's qc directory, e.g. results/qc/{unit}")
    c.add_argument("--csv-out", required=True)
    c.add_argument("--html-out", required=True)
    c.set_defaults(func=_compare_main)
    p = subparsers.add_parser("qc", help="QC stage: thermal expansion, B(T), experiment, pass/warn table, figures")
    p.add_argument("--params", required=True, help="the shard's qc parameter file")
    for kind, example in (("structure", "results/structure/{unit}"), ("reference", "results/reference/{unit}"),
                          ("qc", "results/qc/{unit}"), ("plots", "results/plots/{unit}"),
                          ("md", "results/md/{unit}/{ensemble}/{temperature}K/r{replica}"),
                          ("snapshots", "results/snapshots/{unit}/..."), ("xrd", "results/xrd/{unit}/...")):
        p.add_argument(f"--{kind}-dir", required=True, help=f"path template, e.g. {example}")
    p.add_argument("--report-dir", required=True, help="the shard's directory of figures for snakemake --report")
    p.add_argument("--manifest", required=True, help="the shard's manifest (JSON), written last")
    p.set_defaults(func=_main)


def _compare_main(args: argparse.Namespace) -> int:
    write_comparison(read_json(args.config), args.qc_dir, args.csv_out, args.html_out)
    return 0


def _main(args: argparse.Namespace) -> int:
    templates = {k: getattr(args, f"{k}_dir") for k in ("structure", "reference", "qc", "plots", "md", "snapshots",
                                                        "xrd")}
    run_shard(load_params(args.params), templates, args.report_dir, args.manifest)
    return 0
