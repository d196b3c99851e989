"""Plots stage: the figures of one crystal for the Snakemake report (matplotlib, PNG).

* ``patterns.png``: the averaged pattern of every run (one panel per ensemble, one line
  per temperature) over the static pattern of the relaxed 0 K cell. Patterns are those of
  the first instrument condition.
* ``zoom.png``: the strongest static reflection and every run's peak: the thermal peak shift
  (NPT: expansion moves the peak to lower 2theta) and the Debye-Waller decay of its height.
* ``thermal.png``: a(T) (NPT snapshots' mean, and the 0 K relaxed cell) and B(T) per
  element (every run), with the experimental references of the crystal's entry.
* ``traces.png``: T, P and V of every run against time, the sampling window shaded.
* ``qc.html``: the QC table (:mod:`mdxrd.qc`), warnings first.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import numpy as np

from mdxrd.io import atomic_path, read_json

#: Line colour per temperature rank and marker per ensemble.
ENSEMBLE_STYLE = {"nvt_langevin": ("o", "NVT-Langevin"), "nvt_berendsen": ("s", "NVT-Berendsen"),
                  "npt_berendsen": ("^", "NPT-Berendsen")}


def _save(fig: Any, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(str(tmp), format="png", dpi=110, bbox_inches="tight")


def _temperature_colours(temperatures: list[float]) -> dict[float, Any]:
    import matplotlib  # lazy: matplotlib 0.19 s, not in envs/chgnet.yaml (jobs import this module)

    cmap = matplotlib.colormaps["plasma"]
    ts = sorted(set(temperatures))
    return {t: cmap(0.15 + 0.7 * i / max(1, len(ts) - 1)) for i, t in enumerate(ts)}


def plot_patterns(name: str, static: Any, runs: list[dict[str, Any]], out: str | Path) -> None:
    """``patterns.png``: averaged patterns per ensemble and temperature over the static pattern."""
    import matplotlib.pyplot as plt  # lazy: pyplot 0.40 s, not in envs/chgnet.yaml (jobs import this module)

    ensembles = list(dict.fromkeys(r["ensemble"] for r in runs))
    colours = _temperature_colours([r["temperature_K"] for r in runs])
    fig, axes = plt.subplots(len(ensembles), 1, figsize=(9, 2.6 * len(ensembles)), sharex=True, squeeze=False)
    for ax, ens in zip(axes[:, 0], ensembles, strict=True):
        ax.plot(static["two_theta"], static["intensity_relaxed"], color="0.55", lw=0.8, ls="--",
                label="static, relaxed 0 K cell")
        for r in (r for r in runs if r["ensemble"] == ens):
            ax.plot(r["two_theta"], r["intensity"], color=colours[r["temperature_K"]], lw=0.9,
                    label=f"{r['temperature_K']:g} K (measured {r['T_K']:.0f} K)")
        ax.set_title(f"{name}, {ENSEMBLE_STYLE.get(ens, (None, ens))[1]}: averaged patterns", fontsize=10)
        ax.set_ylabel("intensity (e$^2$/deg per cell)")
        ax.legend(fontsize=8, loc="upper right")
    axes[-1, 0].set_xlabel("2θ (deg)")
    fig.tight_layout()
    _save(fig, out)
    plt.close(fig)


def plot_zoom(name: str, static: Any, runs: list[dict[str, Any]], out: str | Path, margin_deg: float = 1.0) -> None:
    """``zoom.png``: the strongest static reflection, every run's averaged peak beside it.

    The window spans the maxima of the static patterns and of every run within 3 degrees of the
    strongest static reflection, plus ``margin_deg`` on each side.
    """
    import matplotlib.pyplot as plt  # lazy: pyplot 0.40 s, not in envs/chgnet.yaml (jobs import this module)

    tt = static["two_theta"]
    peak = float(tt[int(np.argmax(static["intensity_relaxed"]))])

    def maximum(x: np.ndarray, y: np.ndarray) -> float:
        near = np.abs(x - peak) <= 3.0
        return float(x[near][int(np.argmax(y[near]))])

    maxima = [peak, maximum(tt, static["intensity_cif"])] + [maximum(r["two_theta"], r["intensity"]) for r in runs]
    lo, hi = min(maxima) - margin_deg, max(maxima) + margin_deg
    window = (tt >= lo) & (tt <= hi)
    ensembles = list(dict.fromkeys(r["ensemble"] for r in runs))
    colours = _temperature_colours([r["temperature_K"] for r in runs])
    fig, axes = plt.subplots(1, len(ensembles), figsize=(3.8 * len(ensembles), 3.4), sharey=True, squeeze=False)
    for ax, ens in zip(axes[0], ensembles, strict=True):
        ax.plot(tt[window], static["intensity_relaxed"][window], color="0.4", ls="--", lw=1.0,
                label="static, relaxed 0 K")
        ax.plot(tt[window], static["intensity_cif"][window], color="k", ls=":", lw=1.0, label="static, CIF cell")
        for r in (r for r in runs if r["ensemble"] == ens):
            y = r["intensity"][window]
            x = r["two_theta"][window]
            ax.plot(x, y, color=colours[r["temperature_K"]], lw=1.2, label=f"{r['temperature_K']:g} K")
            ax.axvline(float(x[int(np.argmax(y))]), color=colours[r["temperature_K"]], lw=0.6, ls=":")
        ax.set_title(ENSEMBLE_STYLE.get(ens, (None, ens))[1], fontsize=10)
        ax.set_xlabel("2θ (deg)")
    axes[0, 0].set_ylabel("intensity (e$^2$/deg per cell)")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    fig.suptitle(f"{name}: strongest reflection ({peak:.2f}° in the relaxed 0 K cell); dotted lines mark the maxima",
                 fontsize=10)
    fig.tight_layout(rect=(0.0, 0.07, 1.0, 1.0))
    _save(fig, out)
    plt.close(fig)


def plot_thermal(qc: dict[str, Any], out: str | Path) -> None:
    """``thermal.png``: a(T) with the 0 K cell and experiment (a non-cubic crystal: every independent axis,
    relative to its 0 K length); B(T) per element with experiment."""
    import matplotlib.pyplot as plt  # lazy: pyplot 0.40 s, not in envs/chgnet.yaml (jobs import this module)

    fig, (ax_a, ax_b) = plt.subplots(1, 2, figsize=(10, 3.8))
    exp = qc["experiment"]
    pts = qc["a_T"]
    relaxed = [p for p in pts if p["ensemble"] == "relaxed"]
    npt = [p for p in pts if p["ensemble"] != "relaxed"]
    axes = qc.get("axes", ["a"])
    if len(axes) == 1:  # cubic: a(T) in Angstrom
        ax_a.plot([p["temperature_K"] for p in relaxed], [p["a"] for p in relaxed], "ks", label="0 K relaxed")
        if npt:
            ax_a.plot([p["temperature_K"] for p in npt], [p["a"] for p in npt], "^-", color="C0",
                      label="NPT-Berendsen, mean of snapshots")
        anchored = qc.get("a_T_anchored") or []
        if anchored:
            ax_a.plot([p["temperature_K"] for p in anchored], [p["a"] for p in anchored], "D", color="C2", mfc="none",
                      label="patterns' a (lattice: experiment)")
        if "a_exp_A" in exp:
            e = exp["a_exp_A"]
            ax_a.plot([e["T_K"]], [e["value"]], "r*", ms=11, label=f"experiment, {e['T_K']:g} K (source: QC table)")
        title = f"{qc['crystal']}: lattice constant a"
        if qc.get("alpha_L_per_K") is not None:
            title += f"; α_L = {qc['alpha_L_per_K'] * 1e6:.1f}×10⁻⁶/K"
            if "alpha_exp_per_K" in exp:
                title += f" (exp. {exp['alpha_exp_per_K']['value'] * 1e6:.1f})"
        ax_a.set_ylabel("a (Å)")
    else:  # each independent axis relative to its 0 K length: anisotropic expansion side by side
        zero = relaxed[0]
        for i, x in enumerate(axes):
            colour = f"C{i}"
            ax_a.plot([0.0], [0.0], "s", color=colour)
            if npt:
                ax_a.plot([p["temperature_K"] for p in npt], [100 * (p[x] / zero[x] - 1) for p in npt], "^-",
                          color=colour, label=f"{x}, NPT-Berendsen (0 K relaxed {x} = {zero[x]:.4f} Å)")
            if f"{x}_exp_A" in exp:
                e = exp[f"{x}_exp_A"]
                ax_a.plot([e["T_K"]], [100 * (e["value"] / zero[x] - 1)], "*", color=colour, mec="k", ms=11,
                          label=f"{x} experiment, {e['T_K']:g} K")
        alphas = qc.get("alpha_axes_per_K") or {}
        title = f"{qc['crystal']}: lattice lengths relative to the 0 K cell"
        if alphas:
            title += "; " + ", ".join(f"α_{x} = {alphas[x] * 1e6:.1f}" + (
                f" (exp. {exp[f'alpha_{x}_exp_per_K']['value'] * 1e6:.1f})" if f"alpha_{x}_exp_per_K" in exp else "")
                for x in axes) + " ×10⁻⁶/K"
        ax_a.set_ylabel("x(T) / x(0 K) − 1 (%)")
    ax_a.set_title(title, fontsize=9)
    ax_a.set_xlabel("T (K)")
    ax_a.legend(fontsize=7, loc="best")

    elements = [k for k in qc["B_at_reference_A2"]]
    t_max = max([p["temperature_K"] for p in qc["B_T"]] + [exp.get("B_exp_A2", {}).get("T_K", 0.0)])
    for i, el in enumerate(elements):
        colour = f"C{i}"
        for ens, (marker, label) in ENSEMBLE_STYLE.items():
            sel = [p for p in qc["B_T"] if p["ensemble"] == ens]
            if sel:
                ax_b.errorbar([p["temperature_K"] for p in sel], [p[el] for p in sel],
                              yerr=[p.get(f"{el}_sem", 0.0) for p in sel], fmt=marker, color=colour, capsize=2,
                              label=f"{el}, {label}")
        slope = qc["B_at_reference_A2"][el] / qc["reference_T_K"]
        ax_b.plot([0, t_max * 1.05], [0, slope * t_max * 1.05], color=colour, lw=0.8,
                  label=f"{el}: B = cT ({qc['B_reference_runs'].upper() if qc['B_reference_runs'] == 'npt' else 'all'}"
                        " runs)")
        if "B_exp_A2" in exp and el in exp["B_exp_A2"]["value"]:
            e = exp["B_exp_A2"]
            ax_b.plot([e["T_K"]], [e["value"][el]], "*", color=colour, mec="k", ms=12,
                      label=f"{el} experiment, {e['T_K']:g} K")
    ax_b.set_xlim(left=0)
    ax_b.set_ylim(bottom=0)
    ax_b.set_title(f"{qc['crystal']}: Debye–Waller B = 8π²⟨u²⟩ per element", fontsize=10)
    ax_b.set_xlabel("T (K)")
    ax_b.set_ylabel("B (Å²)")
    ax_b.legend(fontsize=7, ncol=1 if len(elements) == 1 else 2)
    fig.tight_layout()
    _save(fig, out)
    plt.close(fig)


def plot_traces(name: str, runs: list[dict[str, Any]], out: str | Path) -> None:
    """``traces.png``: T, P, V against time for every run; the sampling window shaded."""
    import matplotlib.pyplot as plt  # lazy: pyplot 0.40 s, not in envs/chgnet.yaml (jobs import this module)
    import pandas as pd  # lazy: pandas 0.33 s; loaded by every mdxrd command

    colours = _temperature_colours([r["temperature_K"] for r in runs])
    fig, axes = plt.subplots(3, 1, figsize=(9, 7), sharex=True)
    styles = {"nvt_langevin": "-", "nvt_berendsen": "--", "npt_berendsen": ":"}
    for r in runs:
        th = pd.read_csv(r["thermo"])
        label = f"{ENSEMBLE_STYLE.get(r['ensemble'], (None, r['ensemble']))[1]} {r['temperature_K']:g} K"
        kw = {"color": colours[r["temperature_K"]], "ls": styles.get(r["ensemble"], "-"), "lw": 0.8}
        axes[0].plot(th["time_fs"], th["T_K"], label=label, **kw)
        axes[1].plot(th["time_fs"], th["P_GPa"], **kw)
        axes[2].plot(th["time_fs"], th["volume_A3"] / r["n_atoms"], **kw)
    t_equil = runs[0]["n_equil"] * runs[0]["timestep_fs"]
    t_end = max(float(pd.read_csv(r["thermo"], usecols=["time_fs"])["time_fs"].max()) for r in runs)
    for ax in axes:
        ax.axvspan(t_equil, t_end, color="0.92", zorder=0)
        ax.set_xlim(0.0, t_end)
    for t in sorted({r["temperature_K"] for r in runs}):
        axes[0].axhline(t, color=colours[t], lw=0.5)
    axes[0].set_ylabel("T (K)")
    axes[1].set_ylabel("P (GPa)")
    axes[2].set_ylabel("V per atom (Å³)")
    axes[2].set_xlabel("time (fs); shaded: sampling window")
    axes[0].set_title(f"{name}: thermo traces (solid NVT-Langevin, dashed NVT-Berendsen, dotted NPT-Berendsen)",
                      fontsize=10)
    axes[0].legend(fontsize=7, ncol=3, loc="upper right")
    fig.tight_layout()
    _save(fig, out)
    plt.close(fig)


def qc_html(table: str | Path, out: str | Path) -> None:
    """``qc.html``: the QC table as a standalone HTML page, warnings first."""
    import pandas as pd  # lazy: pandas 0.33 s; loaded by every mdxrd command

    df = pd.read_parquet(table)
    df = df.sort_values(["status", "scope", "check"], key=lambda c: c.map({"warn": 0, "pass": 1}) if c.name == "status"
                        else c, kind="stable")
    rows = []
    for r in df.itertuples(index=False):
        colour = "#fde2e1" if r.status == "warn" else "#e3f6e3"

        def num(x: Any) -> str:
            return "" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.4g}"

        dev = "" if r.deviation is None or np.isnan(r.deviation) else f"{100 * r.deviation:+.1f} %"
        rows.append(f"<tr style='background:{colour}'><td>{html.escape(r.scope)}</td><td>{html.escape(r.check)}</td>"
                    f"<td><b>{r.status}</b></td><td>{num(r.value)}</td><td>{num(r.reference)}</td><td>{dev}</td>"
                    f"<td>{html.escape(r.detail)}</td></tr>")
    n_warn = int((df.status == "warn").sum())
    page = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>QC</title><style>"
        "body{font-family:sans-serif;font-size:13px} table{border-collapse:collapse}"
        "td,th{border:1px solid #bbb;padding:3px 6px;text-align:left;vertical-align:top}</style></head><body>"
        f"<p>{len(df)} checks, {n_warn} warnings.</p><table><tr><th>scope</th><th>check</th><th>status</th>"
        "<th>value</th><th>reference</th><th>deviation</th><th>detail</th></tr>" + "".join(rows) + "</table></body></html>"
    )
    with atomic_path(out) as tmp:
        tmp.write_text(page)


def run_stage(name: str, static: str | Path, qc: str | Path, table: str | Path, runs: list[dict[str, Any]],
              md: dict[str, Any], outputs: dict[str, str]) -> None:
    """Write the crystal's figures.

    Parameters
    ----------
    name
        Crystal name.
    static, qc, table
        The reference stage's static.npz, the QC stage's qc.json and qc.parquet.
    runs
        One dict per run: ensemble, temperature_K, average (average.npz), thermo (thermo.csv),
        snapshots_summary (summary.json), run_info (run.json).
    md
        n_equil, timestep_fs of the runs.
    outputs
        Paths of patterns, zoom, thermal, traces (PNG) and qc_html.
    """
    import matplotlib  # lazy: matplotlib 0.19 s, not in envs/chgnet.yaml (jobs import this module)

    matplotlib.use("Agg")
    # The figures show the first instrument condition (config instrument[0]).
    st = {k: (v[0] if k.startswith("intensity") else v) for k, v in np.load(static).items()}
    loaded = []
    for r in runs:
        avg = np.load(r["average"])
        summary = read_json(r["snapshots_summary"])
        loaded.append({**r, "n_atoms": read_json(r["run_info"])["n_atoms"], "two_theta": avg["two_theta"],
                       "intensity": avg["intensity"][0], "T_K": summary["window_T_K"],
                       "n_equil": md["n_equil"], "timestep_fs": md["timestep_fs"]})
    plot_patterns(name, st, loaded, outputs["patterns"])
    plot_zoom(name, st, loaded, outputs["zoom"])
    plot_thermal(read_json(qc), outputs["thermal"])
    plot_traces(name, loaded, outputs["traces"])
    qc_html(table, outputs["qc_html"])


#: The files of a unit's plots directory: the report's figures (PNG) and the QC table page.
FILES = {"patterns": "patterns.png", "zoom": "zoom.png", "thermal": "thermal.png", "traces": "traces.png",
         "qc_html": "qc.html"}
