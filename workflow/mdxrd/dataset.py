"""Dataset stage: every pattern of the grid, with labels and provenance, as a partitioned Parquet dataset.

Layout (one part per shard, so adding crystals writes only the parts of their shards)::

    results/dataset/part-<shard>.parquet    # rule dataset_part, one job per shard
    results/dataset/_common_metadata        # rule dataset: the shared schema and metadata

A flat directory of Parquet files: ``pd.read_parquet("results/dataset")``,
``pyarrow.dataset.dataset("results/dataset", partitioning="hive")``, polars, duckdb and
Hugging Face ``datasets`` (``results/dataset/*.parquet``) read it as one table, with
``crystal`` a column like any other; :func:`read_dataset` adds the 2theta grid and the
metadata.

One row per pattern and instrument condition: ``kind = "snapshot"`` (one MD snapshot's
broadened pattern), ``kind = "average"`` (the run's ensemble average) or ``kind =
"static"`` (the 0 K pattern of a crystal's relaxed cell or of its CIF cell, atoms at
rest), each once per condition of ``instrument:`` (:mod:`mdxrd.xrd.patterns`), so a grid
of U units (crystal x potential) and R runs in all with N_s snapshots each under K conditions has
K (2 U + R (N_s + 1)) rows. Run-level columns are null in static rows. The 2theta grid is stored once, in the
key-value metadata; every row's ``intensity`` (Bragg + thermal diffuse)
and ``intensity_bragg`` (parent Bragg reflections only) are float32 lists on it.

Columns: :data:`COLUMNS` (name, Arrow type, meaning and unit), the one definition the schema,
the documentation's column table and the row builders follow.

Metadata keys of ``_common_metadata``: ``mdxrd.config`` (resolved config, YAML),
``mdxrd.config_sha256``, ``mdxrd.versions`` (JSON: mdxrd, chgnet, chgnet_model, ase,
pymatgen, torch, numpy, pyarrow, python), ``mdxrd.two_theta_deg`` (JSON list),
``mdxrd.normalization``. Each part carries ``mdxrd.versions`` and ``mdxrd.two_theta_deg``
of its own.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import logging
import platform
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from ase import units
from ase.io import read

from mdxrd import CHGNET_MODEL
from mdxrd.grid import shards
from mdxrd.io import atomic_path, load_params, read_json
from mdxrd.layout import template
from mdxrd.md import kinetic_temperature
from mdxrd.params import config_hash, shard_params
from mdxrd.phonons import PHONON_FILE
from mdxrd.shard import fill
from mdxrd.xrd import two_theta_grid
from mdxrd.xrd.patterns import Instrument

log = logging.getLogger(__name__)

NORMALIZATION = (
    "Kinematic intensity |F|^2 LP per parent unit cell (electrons^2; |F|^2 of the simulation cell divided by "
    "(na nb nc)^2), B = 0 (thermal motion is in the coordinates), broadened by the unit-area profile of the "
    "row's instrument condition: values are intensity per degree 2theta, and sum(intensity_bragg) * step equals "
    "the summed reflection intensity in the grid. Averages are the mean over a run's snapshots, taken before "
    "the condition's background and noise are added."
)


#: The struct type of the ``instrument_params`` column: every field of :class:`mdxrd.xrd.patterns.Instrument`
#: but the name, and the source's lines.
INSTRUMENT_PARAMS = pa.struct([
    ("wavelength", pa.string()), ("lines_A", pa.list_(pa.float64())), ("line_weights", pa.list_(pa.float64())),
    ("sigma_deg", pa.float64()), ("caglioti", pa.list_(pa.float64())), ("lorentzian", pa.list_(pa.float64())),
    ("eta", pa.float64()), ("size_nm", pa.float64()), ("scherrer_k", pa.float64()), ("strain", pa.float64()),
    ("zero_shift_deg", pa.float64()), ("displacement_mm", pa.float64()), ("goniometer_radius_mm", pa.float64()),
    ("background", pa.list_(pa.float64())), ("noise_counts", pa.float64()), ("noise_seed", pa.int64()),
    ("monochromator_two_theta_deg", pa.float64()),
])

_B_HARMONIC = pa.list_(pa.struct([("element", pa.string()), ("B_A2", pa.float64()),
                                   ("ratio_to_classical", pa.float64())]))
_B_ISO = pa.list_(pa.struct([("element", pa.string()), ("B_A2", pa.float64()), ("B_sem_A2", pa.float64())]))

#: The dataset's columns, in order: name, Arrow type, meaning (units in the name or here).
COLUMNS: tuple[tuple[str, pa.DataType, str], ...] = (
    ("kind", pa.string(), '"snapshot" (one MD snapshot), "average" (a run\'s mean pattern) or "static" (0 K)'),
    ("crystal", pa.string(), "crystal name from the configuration"),
    ("split", pa.string(), '"train", "validation" or "test", fixed per crystal (mdxrd.grid.split_of)'),
    ("potential", pa.string(), "the interatomic potential of the row (config potentials, mdxrd.potentials)"),
    ("potential_version", pa.string(), "its package's version (chgnet, sevenn, ...)"),
    ("potential_model_sha256", pa.string(), "SHA-256 of its model file (null for a generic calculator without "
                                            "model_file)"),
    ("cif_sha256", pa.string(), "SHA-256 of the crystal's structure file"),
    ("formula", pa.string(), "reduced formula"),
    ("space_group", pa.string(), "Hermann-Mauguin symbol of the relaxed unit cell"),
    ("space_group_number", pa.int32(), "its number, 1-230"),
    ("ensemble", pa.string(), "nvt_langevin, nvt_berendsen or npt_berendsen; null for static rows"),
    ("temperature_K", pa.float64(), "target temperature, K (0 for the relaxed static row, null for the CIF one)"),
    ("pressure_GPa", pa.float64(), "target pressure, GPa (NPT); null for NVT"),
    ("replica", pa.int32(), "replica index of the run"),
    ("seed", pa.int64(), "the run's random seed"),
    ("snapshot", pa.int32(), "snapshot index in the run; null for averages"),
    ("step", pa.int64(), "MD step of the snapshot; null for averages"),
    ("time_fs", pa.float64(), "MD time of the snapshot, fs; null for averages"),
    ("n_snapshots", pa.int32(), "snapshots in the run"),
    ("T_K", pa.float64(), "measured kinetic temperature 2 E_kin / ((3N - 3) k_B), K (instantaneous; mean of the "
                          "snapshots for averages)"),
    ("P_GPa", pa.float64(), "measured pressure including the kinetic term, GPa (mean for averages)"),
    ("a", pa.float64(), "parent-cell lattice length a, Angstrom (supercell / na; mean for averages)"),
    ("b", pa.float64(), "parent-cell lattice length b, Angstrom"),
    ("c", pa.float64(), "parent-cell lattice length c, Angstrom"),
    ("alpha", pa.float64(), "lattice angle alpha, degrees"),
    ("beta", pa.float64(), "lattice angle beta, degrees"),
    ("gamma", pa.float64(), "lattice angle gamma, degrees"),
    ("volume_A3", pa.float64(), "parent-cell volume, Angstrom^3"),
    ("lattice_anchor", pa.string(), "null: a-gamma and the patterns are the potential's lattice (config lattice: "
                                    "potential); else how the run's cell was scaled to experiment's lattice at its "
                                    "temperature (mdxrd.lattice): alpha_exp, npt_fit or reference; a, b, c and "
                                    "volume_A3 are then the scaled cell's, the patterns' lattice"),
    ("lattice_scale_a", pa.float64(), "scale of cell vector a in the patterns over the MD's (1 when not anchored, "
                                      "null for static rows; the potential's a is a / lattice_scale_a)"),
    ("lattice_scale_b", pa.float64(), "same, b"),
    ("lattice_scale_c", pa.float64(), "same, c"),
    ("energy_per_atom_eV", pa.float64(), "potential energy per atom of the row's potential, eV"),
    ("tau_corr_fs", pa.float64(), "velocity autocorrelation time of the run, fs"),
    ("interval_too_short", pa.bool_(), "n_interval dt < tau_corr"),
    ("lindemann_ratio", pa.float64(), "sqrt(<|u|^2>)/d_nn of the run (3-D, about the lattice sites)"),
    ("melted", pa.bool_(), "lindemann_ratio above snapshots.lindemann_threshold"),
    ("space_group_mean", pa.string(), "Hermann-Mauguin symbol of the run's time-averaged crystal (every atom at its "
                                      "mean position over the window, mdxrd.displacements.phase_check); null when "
                                      "spglib names none"),
    ("space_group_mean_number", pa.int32(), "its number, 1-230"),
    ("phase_kept", pa.bool_(), "every symmetry operation of the input holds on the time-averaged crystal within the "
                               "noise of its mean positions and snapshots.phase_tolerance_A, and the run did not melt"),
    ("equilibrated", pa.bool_(), "the sampling window met its targets (mean T; NPT: mean P and volume drift); a mean "
                                 "beyond its tolerance but within 3 standard errors is not a miss"),
    ("window_T_K", pa.float64(), "mean kinetic T over the sampling window (steps >= n_equil), K"),
    ("window_T_sem_K", pa.float64(), "its standard error (block averaging), K"),
    ("window_P_GPa", pa.float64(), "mean pressure over the sampling window, GPa"),
    ("window_volume_drift", pa.float64(), "volume change across the sampling window (linear fit), fraction"),
    ("window_P_sem_GPa", pa.float64(), "standard error of window_P_GPa (block averaging), GPa"),
    ("window_volume_A3", pa.float64(), "mean simulation-cell volume over the sampling window, Angstrom^3"),
    ("window_volume_sem_A3", pa.float64(), "its standard error, Angstrom^3"),
    ("energy_drift_meV_per_atom_ps", pa.float64(), "slope of E_kin + E_pot over the window (0 within noise when "
                                                   "stationary)"),
    ("tau_int_E_pot_fs", pa.float64(), "integrated autocorrelation time of E_pot over the window, fs"),
    ("tau_int_u_fs", pa.float64(), "integrated autocorrelation time of the displacements from the lattice sites, fs"),
    ("tau_int_msd_fs", pa.float64(), "integrated autocorrelation time of their mean square (per step), fs"),
    ("n_independent_snapshots", pa.float64(), "N_s / max(1, max(tau_int_u_fs, tau_int_msd_fs) / (n_interval dt))"),
    ("B_iso", _B_ISO, "per element: Debye-Waller B = 8 pi^2 <u^2>, Angstrom^2 (B_A2), u the displacements from the "
                      "lattice sites at every step of the window (mdxrd.displacements), and its block-averaged "
                      "standard error (B_sem_A2); a list of structs, not a map, so that Hugging Face datasets reads it"),
    ("B_quantum_harmonic", _B_HARMONIC, "per element: B of the unit's harmonic phonons with zero-point motion at the "
                                        "run's temperature, Angstrom^2 (B_A2), and its ratio to the classical harmonic "
                                        "B (ratio_to_classical; the classical MD's B_iso lacks this factor); "
                                        "mdxrd.phonons; null when phonons.enabled is false"),
    ("zero_point_corrected", pa.bool_(), "the Bragg intensities carry exp(-(B_quantum - B_classical) s^2) per element "
                                         "(config xrd.zero_point_correction)"),
    ("static_cell", pa.string(), 'static rows: "relaxed" (the potential\'s 0 K cell) or "cif" (the input cell); '
                                 "else null"),
    ("supercell", pa.list_(pa.int32()), "(na, nb, nc), as given or chosen by supercell: auto"),
    ("n_atoms", pa.int32(), "atoms in the simulation cell"),
    ("device", pa.string(), "the device the MD ran on (cpu, cuda:0, ...); null for static rows"),
    ("md_engine", pa.string(), "how the MD ran (md.engine): ase (ASE's integrators, runs in lockstep threads) or torch "
                               "(mdxrd.engine's batched state; Langevin by BAOAB); null for static rows"),
    ("instrument", pa.string(), "name of the instrument condition (config instrument[].name)"),
    ("wavelength_A", pa.float64(), "the condition's (first) source line, Angstrom (K-alpha1 of a doublet)"),
    ("instrument_params", INSTRUMENT_PARAMS, "the condition's settings: wavelength (as configured), lines_A and "
                                             "line_weights, sigma_deg, caglioti [U, V, W] (deg^2), lorentzian [X, Y] "
                                             "(deg), eta, size_nm, scherrer_k, strain, zero_shift_deg, displacement_mm, "
                                             "goniometer_radius_mm, background (Chebyshev coefficients), noise_counts, "
                                             "noise_seed, monochromator_two_theta_deg; null when unset"),
    ("intensity", pa.list_(pa.float32()), "pattern on the 2theta grid (metadata mdxrd.two_theta_deg), per degree, per "
                                          "parent cell: Bragg reflections (the condition's profile) plus thermal diffuse "
                                          "scattering as a smooth continuum in |Q|, plus the condition's background "
                                          "and counting noise"),
    ("intensity_bragg", pa.list_(pa.float32()), "same, Bragg reflections of the parent's primitive lattice only, "
                                                "without background or noise"),
)


def schema() -> pa.Schema:
    """The Arrow schema of the dataset table (without metadata), from :data:`COLUMNS`."""
    return pa.schema([(name, kind) for name, kind, _ in COLUMNS])


def instrument_columns(spec: dict[str, Any]) -> dict[str, Any]:
    """The ``instrument``, ``wavelength_A`` and ``instrument_params`` values of one condition (a config entry)."""
    inst = Instrument.from_dict(spec)
    params = inst.to_dict()
    del params["name"]
    params["wavelength"] = str(inst.wavelength)
    params["lines_A"] = [lam for lam, _ in inst.lines]
    params["line_weights"] = [w for _, w in inst.lines]
    return {"instrument": inst.name, "wavelength_A": inst.lines[0][0], "instrument_params": params}


def versions() -> dict[str, str]:
    """Versions of the software that made the data (and CHGNet's model version)."""
    out = {"python": platform.python_version()}
    for name in ("mdxrd", "chgnet", "ase", "pymatgen", "torch", "numpy", "pyarrow"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "unknown"
    out["chgnet_model"] = CHGNET_MODEL
    return out


def _snapshot_labels(atoms: Any, supercell: list[int]) -> dict[str, float]:
    """Measured labels of one snapshot frame: T, P, parent-cell lattice, energy per atom."""
    n = len(atoms)
    e_kin = float(atoms.get_kinetic_energy())
    temp = kinetic_temperature(e_kin, n)
    volume = float(atoms.get_volume())
    stress = atoms.get_stress()  # potential part, eV/A^3 (ASE sign: P = -trace/3)
    pressure = (-float(np.mean(stress[:3])) + 2.0 * e_kin / (3.0 * volume)) / units.GPa
    a, b, c, alpha, beta, gamma = atoms.cell.cellpar()
    na, nb, nc = supercell
    return {"T_K": temp, "P_GPa": pressure, "a": a / na, "b": b / nb, "c": c / nc, "alpha": alpha, "beta": beta,
            "gamma": gamma, "volume_A3": volume / (na * nb * nc),
            "energy_per_atom_eV": float(atoms.get_potential_energy()) / n}


def _scaled_labels(labels: dict[str, float], scale: dict[str, float]) -> dict[str, float]:
    """Snapshot labels of the cell scaled per axis (``scale``: axis -> factor; empty: unchanged)."""
    if not scale:
        return labels
    out = {**labels, **{x: labels[x] * scale[x] for x in "abc"}}
    out["volume_A3"] = labels["volume_A3"] * scale["a"] * scale["b"] * scale["c"]
    return out


#: Per-run figures of the snapshots summary copied into every row of the run.
RUN_FIGURES = ("equilibrated", "window_T_K", "window_T_sem_K", "window_P_GPa", "window_P_sem_GPa",
               "window_volume_A3", "window_volume_sem_A3", "window_volume_drift", "energy_drift_meV_per_atom_ps",
               "tau_int_E_pot_fs", "tau_int_u_fs", "tau_int_msd_fs", "n_independent_snapshots")


def _static_rows(section: dict[str, Any], reference_dir: Path, info: dict[str, Any], grid: np.ndarray
                 ) -> list[dict[str, Any]]:
    """Two ``static`` rows per condition of a unit (``info``: its structure.json): the 0 K patterns of its
    relaxed and input cells, from the relax stage's static.npz and the lattices of its reference.json."""
    static = np.load(reference_dir / "static.npz")
    if not np.array_equal(static["two_theta"], grid):
        raise ValueError(f"{reference_dir / 'static.npz'}: 2theta grid differs from the runs'")
    reference = read_json(reference_dir / "reference.json")
    names = [str(n) for n in static["instrument"]]
    rows = []
    for cell, lattice in (("relaxed", reference["relaxed_lattice"]), ("cif", reference["cif_lattice"])):
        base = {
            "kind": "static", "formula": info["formula"], "space_group": info["space_group"],
            "space_group_number": info["space_group_number"], "static_cell": cell,
            "temperature_K": 0.0 if cell == "relaxed" else None,
            **{k: lattice[k] for k in ("a", "b", "c", "alpha", "beta", "gamma", "volume_A3")},
            "energy_per_atom_eV": info["E0_eV_per_atom"] if cell == "relaxed" else None,
            "supercell": list(info["supercell"]),
        }
        for c, inst in enumerate(_conditions(section, names, reference_dir / "static.npz")):
            rows.append({**base, **inst, "intensity": static[f"intensity_{cell}"][c].astype(np.float32),
                         "intensity_bragg": static[f"intensity_bragg_{cell}"][c].astype(np.float32)})
    return rows


def _conditions(section: dict[str, Any], names: list[str], path: str | Path) -> list[dict[str, Any]]:
    """The instrument columns of each condition of a patterns file, in its order; its names must be the config's.
    ``section["conditions"]`` holds the columns of the configured conditions (made once by :func:`write_part`)."""
    configured = [c["instrument"] for c in section["conditions"]]
    if names != configured:
        raise ValueError(f"{path}: instrument conditions {names} differ from the configuration's {configured}")
    return section["conditions"]


def _run_rows(section: dict[str, Any], key: dict[str, Any], summary: dict[str, Any], grid: np.ndarray
              ) -> list[dict[str, Any]]:
    """The ``snapshot`` rows and the ``average`` row of one run for each instrument condition (``key``: a run
    of the dataset section with its ``md``, ``snapshots`` and ``xrd`` directories, ``summary``: its
    snapshots summary)."""
    run = read_json(key["md"] / "run.json")
    frames = read(str(key["snapshots"] / "snapshots.traj"), index=":")
    patterns = np.load(key["xrd"] / "patterns.npz")
    average = np.load(key["xrd"] / "average.npz")
    if not (np.array_equal(grid, patterns["two_theta"]) and np.array_equal(grid, average["two_theta"])):
        raise ValueError(f"{key['xrd'] / 'patterns.npz'}: 2theta grid differs from the crystal's other patterns")
    supercell = list(key["supercell"])
    common = {
        "ensemble": key["ensemble"], "temperature_K": float(key["temperature_K"]),
        "pressure_GPa": run["params"]["pressure_GPa"] if key["ensemble"].startswith("npt") else None,
        "replica": key["replica"], "seed": run["params"]["seed"], "n_snapshots": len(frames),
        "tau_corr_fs": summary["tau_corr_fs"], "interval_too_short": summary["interval_too_short"],
        "lindemann_ratio": summary["lindemann_ratio"], "melted": summary["melted"],
        **{k: summary.get(k) for k in ("space_group_mean", "space_group_mean_number", "phase_kept")},
        **{k: summary[k] for k in RUN_FIGURES},
        "B_iso": [{"element": el, "B_A2": b, "B_sem_A2": summary["B_iso_sem_A2"][el]}
                  for el, b in summary["B_iso_A2"].items()],
        "supercell": supercell, "n_atoms": run["n_atoms"], "device": run["device"],
        "md_engine": run.get("engine", "ase"),
    }
    ph = key.get("phonons")
    i = next((j for j, t in enumerate(ph["temperatures_K"]) if abs(float(t) - float(key["temperature_K"])) < 1e-9),
             None) if ph is not None else None
    if i is not None:
        quantum, classical = ph["B_quantum_harmonic_A2"][i], ph["B_classical_harmonic_A2"][i]
        common["B_quantum_harmonic"] = [{"element": el, "B_A2": b, "ratio_to_classical": b / classical[el]}
                                        for el, b in quantum.items()]
    common["zero_point_corrected"] = "zero_point_dB_A2" in summary
    anchored = summary.get("lattice_anchor") or {}
    scale = anchored.get("scale", {}) if anchored.get("method") else {}
    common.update({"lattice_anchor": anchored.get("method"),
                   **{f"lattice_scale_{x}": float(scale.get(x, 1.0)) for x in "abc"}})
    labels = [_scaled_labels(_snapshot_labels(f, supercell), scale) for f in frames]
    mean = {k: float(np.mean([lab[k] for lab in labels])) for k in labels[0]}
    rows = []
    names = [str(n) for n in patterns["instrument"]]
    for c, inst in enumerate(_conditions(section, names, key["xrd"] / "patterns.npz")):
        rows += [{"kind": "snapshot", **common, **inst, "snapshot": i, "step": int(frame.info["step"]),
                  "time_fs": float(frame.info["time_fs"]), **lab,
                  "intensity": patterns["intensity"][c, i].astype(np.float32),
                  "intensity_bragg": patterns["intensity_bragg"][c, i].astype(np.float32)}
                 for i, (frame, lab) in enumerate(zip(frames, labels, strict=True))]
        rows.append({"kind": "average", **common, **inst, "snapshot": None, "step": None, "time_fs": None, **mean,
                     "intensity": average["intensity"][c].astype(np.float32),
                     "intensity_bragg": average["intensity_bragg"][c].astype(np.float32)})
    return rows


def write_part(section: dict[str, Any], templates: dict[str, str], out: str | Path) -> int:
    """Write one shard's part of the dataset (atomically); return its row count.

    Parameters
    ----------
    section
        The shard's ``dataset`` parameters (:func:`mdxrd.params.shard_params`): ``drop_melted``,
        ``instrument`` and ``crystals``, each with its config entry, ``split`` and ``units`` (one per
        potential: name, resolved potential and runs: unit, ensemble, temperature_K, replica, supercell).
    templates
        Path templates of a unit's ``structure`` and ``reference`` directories (``{unit}``) and of a
        run's ``md``, ``snapshots`` and ``xrd`` directories.
    out
        The part's Parquet file.

    The part is written one row group per run, so memory holds one run's patterns at a
    time, whatever the size of the grid.

    Raises
    ------
    ValueError
        A 2theta grid that differs between a crystal's patterns, or a crystal with no run left
        (every run dropped as melted).
    """
    section = {**section, "conditions": [instrument_columns(spec) for spec in section["instrument"]]}
    sch = schema()
    parts = []
    for crystal in section["crystals"]:
        kept: list[tuple[dict[str, Any], list[tuple[dict[str, Any], dict[str, Any]]]]] = []
        for unit in crystal["units"]:
            unit_runs = []
            for r in unit["runs"]:
                fields = {"unit": unit["name"], "ensemble": r["ensemble"],
                          "temperature": f"{float(r['temperature_K']):g}", "replica": r["replica"]}
                key = {**r, **{k: fill(templates[k], **fields) for k in ("md", "snapshots", "xrd")}}
                summary = read_json(key["snapshots"] / "summary.json")
                if section["drop_melted"] and summary["melted"]:
                    log.warning("dropping %s: melted (Lindemann ratio %.3f)", key["snapshots"],
                                summary["lindemann_ratio"])
                    continue
                unit_runs.append((key, summary))
            if unit_runs:
                kept.append((unit, unit_runs))
        if not kept:
            raise ValueError(f"crystal {crystal['crystal']['name']}: no run left for the dataset (all dropped as "
                             "melted)")
        parts.append((crystal, kept))
    grid = np.load(parts[0][1][0][1][0][0]["xrd"] / "patterns.npz")["two_theta"]
    meta = {"mdxrd.versions": json.dumps(versions(), sort_keys=True), "mdxrd.two_theta_deg": json.dumps(grid.tolist())}
    n_rows = 0
    with atomic_path(out) as tmp:
        with pq.ParquetWriter(str(tmp), sch.with_metadata(meta), compression="zstd") as writer:
            for crystal, kept in parts:
                entry = crystal["crystal"]
                for unit, unit_runs in kept:
                    info = read_json(fill(templates["structure"], unit=unit["name"]) / "structure.json")
                    pot = unit["potential"]
                    unit_cols = {"crystal": entry["name"], "split": crystal["split"], "cif_sha256": entry["cif_sha256"],
                                 "formula": info["formula"], "space_group": info["space_group"],
                                 "space_group_number": info["space_group_number"], "potential": pot["name"],
                                 "potential_version": pot["version"], "potential_model_sha256": pot["model_sha256"]}
                    reference_dir = fill(templates["reference"], unit=unit["name"])
                    phonons = read_json(reference_dir / PHONON_FILE) if (reference_dir / PHONON_FILE).is_file() \
                        else None
                    for rows in (_static_rows(section, reference_dir, info, grid),
                                 *(_run_rows(section, {**k, "phonons": phonons}, summary, grid)
                                   for k, summary in unit_runs)):
                        writer.write_table(pa.Table.from_pylist([{**unit_cols, **r} for r in rows], schema=sch))
                        n_rows += len(rows)
    return n_rows


def common_metadata(config: dict[str, Any]) -> dict[str, str]:
    """The dataset's shared key-value metadata (see the module docstring) of a resolved config."""
    x = config["xrd"]
    grid = two_theta_grid(x["two_theta_min"], x["two_theta_max"], x["two_theta_step"])
    return {
        "mdxrd.config": yaml.safe_dump(config, sort_keys=True),
        "mdxrd.config_sha256": config_hash(config),
        "mdxrd.versions": json.dumps(versions(), sort_keys=True),
        "mdxrd.two_theta_deg": json.dumps(grid.tolist()),
        "mdxrd.normalization": NORMALIZATION,
    }


def write_common_metadata(config: dict[str, Any], parts: list[str | Path], out: str | Path) -> int:
    """Check every shard's part against the shared schema and grid; write ``_common_metadata`` beside them.

    Reads only each part's footer (schema and key-value metadata), so its memory and
    time grow with the number of parts, not with the patterns in them. Other Parquet files
    of the directory (parts of shards the configuration no longer has, or the per-crystal
    ``crystal=<name>/`` parts of mdxrd before shards) are deleted with a warning, so that
    reading the directory gives exactly the configured crystals. Returns the number of rows
    over all parts.

    Raises
    ------
    ValueError
        A part missing, with another schema, or on another 2theta grid.
    """
    sch = schema()
    meta = common_metadata(config)
    dataset_dir = Path(out).parent
    keep = {Path(p).resolve() for p in parts}
    for stale in sorted(dataset_dir.glob("*.parquet")):
        if stale.resolve() not in keep:
            log.warning("removing %s: not a part of the configured shards", stale)
            stale.unlink()
    for stale in sorted(dataset_dir.glob("crystal=*")):
        log.warning("removing %s: a per-crystal part of mdxrd before shards (the rows are in the shard parts)", stale)
        shutil.rmtree(stale)
    n_rows = 0
    for path in parts:
        md = pq.read_metadata(path)
        part_schema = md.schema.to_arrow_schema()
        if not part_schema.remove_metadata().equals(sch):
            raise ValueError(f"{path}: schema differs from the dataset's")
        if part_schema.metadata[b"mdxrd.two_theta_deg"].decode() != meta["mdxrd.two_theta_deg"]:
            raise ValueError(f"{path}: 2theta grid differs from the configuration's (xrd.two_theta_*)")
        n_rows += md.num_rows
    with atomic_path(out) as tmp:
        pq.write_metadata(sch.with_metadata(meta), str(tmp))
    return n_rows


def write_dataset(config: dict[str, Any], results: str | Path, dataset_dir: str | Path) -> int:
    """Write the whole dataset (every shard's part, then ``_common_metadata``) in this process.

    What the workflow's dataset_part and dataset jobs do, from the outputs under ``results``
    (:mod:`mdxrd.layout`), for use without Snakemake (e.g. a second dataset with other
    ``dataset`` options from the same results). Returns the total row count.
    """
    dataset_dir = Path(dataset_dir)
    templates = {k: template(k, results) for k in ("structure", "reference", "md", "snapshots", "xrd")}
    parts = []
    for shard in shards(config):
        part = dataset_dir / f"part-{shard}.parquet"
        write_part(shard_params(config, shard)["dataset"], templates, part)
        parts.append(part)
    return write_common_metadata(config, parts, dataset_dir / "_common_metadata")


def _dataset_dir(path: str | Path) -> Path:
    path = Path(path)
    return path.parent if path.name == "_common_metadata" else path


def content_hash(path: str | Path) -> str:
    """SHA-256 of a dataset's table content: every column's values, not the file bytes or metadata.

    ``path`` is the dataset directory (or its ``_common_metadata``). Two datasets with
    equal hashes hold bit-identical rows in the same order (used to check regeneration).
    """
    table = pq.read_table(_dataset_dir(path)).replace_schema_metadata(None)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table.combine_chunks())
    return hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()


def read_dataset(path: str | Path, **read_options: Any) -> tuple[Any, np.ndarray, dict[str, Any]]:
    """Read a dataset: (pandas DataFrame, two_theta grid (n_grid,) float64 deg, metadata dict).

    ``path`` is the dataset directory (or its ``_common_metadata``); ``read_options`` are
    passed to :func:`pyarrow.parquet.read_table` (e.g. ``filters=[("split", "=", "train")]``).
    The metadata dict holds ``config`` (parsed YAML), ``versions`` (dict) and the
    other ``mdxrd.*`` keys of ``_common_metadata`` as strings.
    """
    root = _dataset_dir(path)
    table = pq.read_table(root, **read_options)
    raw = {k.decode(): v.decode() for k, v in (pq.read_schema(root / "_common_metadata").metadata or {}).items()
           if k.startswith(b"mdxrd.")}
    meta: dict[str, Any] = {k.removeprefix("mdxrd."): v for k, v in raw.items()}
    meta["config"] = yaml.safe_load(meta["config"])
    meta["versions"] = json.loads(meta["versions"])
    grid = np.asarray(json.loads(meta.pop("two_theta_deg")), dtype=np.float64)
    return table.to_pandas(), grid, meta


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``mdxrd dataset-part`` and ``mdxrd dataset`` (the workflow's dataset stage)."""
    p = subparsers.add_parser("dataset-part", help="dataset stage: one shard's patterns with labels as Parquet")
    p.add_argument("--params", required=True, help="the shard's dataset parameter file")
    for kind, example in (("structure", "results/structure/{unit}"), ("reference", "results/reference/{unit}"),
                          ("md", "results/md/{unit}/{ensemble}/{temperature}K/r{replica}"),
                          ("snapshots", "results/snapshots/{unit}/..."), ("xrd", "results/xrd/{unit}/...")):
        p.add_argument(f"--{kind}-dir", required=True, help=f"path template, e.g. {example}")
    p.add_argument("-o", "--output", required=True, help="output Parquet file (the part)")
    p.set_defaults(func=_main_part)
    p = subparsers.add_parser("dataset", help="dataset stage: check the parts, write the shared _common_metadata")
    p.add_argument("--config", required=True, help="the resolved configuration (JSON file, results/params/config.json)")
    p.add_argument("--part", required=True, action="append", help="a shard's part (repeat)")
    p.add_argument("-o", "--output", required=True, help="output _common_metadata file, beside the parts")
    p.set_defaults(func=_main)


def _main_part(args: argparse.Namespace) -> int:
    templates = {k: getattr(args, f"{k}_dir") for k in ("structure", "reference", "md", "snapshots", "xrd")}
    n = write_part(load_params(args.params), templates, args.output)
    log.info("wrote %d rows to %s", n, args.output)
    return 0


def _main(args: argparse.Namespace) -> int:
    n = write_common_metadata(load_params(args.config), args.part, args.output)
    log.info("dataset: %d rows in %d parts; wrote %s", n, len(args.part), args.output)
    return 0
