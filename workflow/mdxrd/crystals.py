"""The crystal table: a list in the config, a sheet (TSV/CSV) or a glob of structure files.

``crystals:`` in the configuration takes one of three forms:

1. a YAML list of entries ``{name, cif, supercell, ...}`` (supercell default ``[2, 2, 2]``);
2. the path of a sheet, ``.tsv`` or ``.csv`` with a header row (the snakemake-workflows
   ``samples.tsv`` convention), one crystal per row, validated row by row against
   ``config/crystals.schema.yaml`` with :func:`snakemake.utils.validate`;
3. a glob of structure files, e.g. ``structures/*.cif``: one crystal per file, named by
   the file stem.

Sheets and globs default to ``supercell: auto``: the smallest diagonal repetition
(na, nb, nc) whose perpendicular widths ``n_i V / |a_j x a_k|`` are all at least
``structure.min_width_A``, so that an atom and its periodic images stay that far apart
in every direction (the minimum-image condition of MD; Allen & Tildesley, *Computer
Simulation of Liquids*, 2nd ed. (2017), sec. 1.6).

Reading and diffracting every CIF is the expensive part of checking a configuration.
Its result is a *checked record* per structure file, stored as JSON under a cache
directory and keyed by the SHA-256 of the file's bytes and the X-ray settings the check
uses, so a parse of the Snakefile reads thousands of small records instead of parsing
thousands of CIFs.
"""

from __future__ import annotations

import glob
import hashlib
import json
import math
import re
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np

from mdxrd import structure as mdstructure  # read_checked_structure looked up when called (tests replace it)
from mdxrd.io import write_cache
from mdxrd.structure import StructureError
from mdxrd.xrd import diffract_structure, line_spectrum

#: JSON schema of one sheet row (snakemake.utils.validate validates a DataFrame row by row).
SHEET_SCHEMA_PATH = Path(__file__).resolve().parents[2] / "config" / "crystals.schema.yaml"

#: Sheet file suffixes and their column separators.
SHEET_SEPARATORS = {".tsv": "\t", ".csv": ","}

#: Experimental reference fields of a crystal entry; a sheet spells each as the columns
#: ``<field>``, ``<field>_source`` and optionally ``<field>_T_K``.
EXPERIMENT_FIELDS = ("a_exp_A", "b_exp_A", "c_exp_A", "alpha_exp_per_K", "alpha_a_exp_per_K", "alpha_b_exp_per_K",
                     "alpha_c_exp_per_K", "bulk_modulus_exp_GPa", "B_exp_A2")

#: Bumped when the content of a checked record changes, so old records are not reused.
CHECK_VERSION = 1

_B_ITEM = re.compile(r"^\s*([A-Z][a-z]?)\s*[:=]\s*([0-9.eE+-]+)\s*$")


class CrystalTableError(ValueError):
    """A sheet, glob or entry that cannot be used; the message names the file, row and column."""


# ---------------------------------------------------------------- supercell

def perpendicular_widths(cell_A: Any) -> np.ndarray:
    """Perpendicular widths of a cell: the distances between opposite faces.

    Parameters
    ----------
    cell_A : array_like, shape (3, 3), float, Angstrom
        Cell vectors as rows.

    Returns
    -------
    numpy.ndarray, shape (3,), float64, Angstrom
        ``w_i = V / |a_j x a_k|`` for i = 0, 1, 2 (j, k the other two vectors).
    """
    m = np.asarray(cell_A, dtype=np.float64)
    volume = abs(float(np.linalg.det(m)))
    return np.array([volume / np.linalg.norm(np.cross(m[(i + 1) % 3], m[(i + 2) % 3])) for i in range(3)])


def auto_supercell(cell_A: Any, min_width_A: float) -> list[int]:
    """Smallest diagonal supercell (na, nb, nc) whose perpendicular widths are all >= ``min_width_A``.

    ``n_i = ceil(min_width_A / w_i)`` with ``w_i`` from :func:`perpendicular_widths`
    (a small tolerance keeps a width of exactly ``min_width_A`` at n_i = 1).
    """
    return supercell_for_widths(perpendicular_widths(cell_A), min_width_A)


def supercell_for_widths(widths_A: Any, min_width_A: float) -> list[int]:
    """:func:`auto_supercell` from the perpendicular widths (3,) in Angstrom, e.g. a checked record's."""
    return [max(1, math.ceil(min_width_A / float(w) - 1e-9)) for w in widths_A]


def parse_supercell(text: str) -> list[int] | str:
    """A sheet's supercell cell (``2x2x2`` or ``auto``, the sheet schema's pattern): a list or "auto"."""
    text = text.strip().lower()
    return "auto" if text == "auto" else [int(v) for v in text.split("x")]


# ---------------------------------------------------------------- checked records

def file_sha256(path: str | Path) -> str:
    """SHA-256 (hex) of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def checked_record(cif: str | Path, xrd: dict[str, Any], cache_dir: str | Path | None) -> dict[str, Any]:
    """The checked record of structure file ``cif``, from the cache when present.

    The record holds what the configuration check and the automatic supercell need:
    ``sha256`` (of the file), ``formula``, ``elements``, ``n_atoms_cell``, ``cell_A``
    (3x3 rows, Angstrom), ``widths_A`` (perpendicular widths) and
    ``reflection_in_range`` (at least one reflection of nonzero intensity inside the
    configured 2theta range at the configured wavelength).

    Parameters
    ----------
    cif
        Structure file (read by :func:`mdxrd.structure.read_checked_structure`).
    xrd
        The configuration's ``xrd`` section (wavelength, two_theta_min, two_theta_max).
    cache_dir
        Directory of cached records (``{sha256}-{settings hash}.json``); None: no cache.

    Raises
    ------
    mdxrd.structure.StructureError
        The file is missing, unreadable, disordered or has an element CHGNet lacks
        (never cached: the next parse reads the file again).
    """
    path = Path(cif)
    try:
        stat = path.stat()
    except OSError:
        stat = None
    if stat is None or not path.is_file():
        raise StructureError(f"{path}: file not found")
    settings = {"v": CHECK_VERSION, "wavelength": xrd["wavelength"], "two_theta_min": xrd["two_theta_min"],
                "two_theta_max": xrd["two_theta_max"]}
    # a sheet's rows often share files: one read per file and parse (the same path, size and time)
    memo = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, json.dumps(settings, sort_keys=True), str(cache_dir))
    if memo in _RECORDS:
        return _RECORDS[memo]
    record = _checked_record(path, settings, xrd, cache_dir)
    _RECORDS[memo] = record
    return record


#: Checked records of this process, by file path, size, modification time, settings and cache directory.
_RECORDS: dict[tuple[str, int, int, str, str], dict[str, Any]] = {}


def _checked_record(path: Path, settings: dict[str, Any], xrd: dict[str, Any], cache_dir: str | Path | None
                    ) -> dict[str, Any]:
    """:func:`checked_record` without the in-process memo: the cached record of the file's content, or a new one."""
    sha = file_sha256(path)
    key = f"{sha}-{hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]}"
    cached = Path(cache_dir) / f"{key}.json" if cache_dir is not None else None
    if cached is not None and cached.is_file():
        try:
            return json.loads(cached.read_text())
        except (OSError, ValueError):
            pass  # a damaged record is rebuilt
    structure = mdstructure.read_checked_structure(path)  # pymatgen: only when a file is checked for the first time
    refl = diffract_structure(structure, wavelength=line_spectrum(xrd["wavelength"])[0][0],
                              two_theta_range=(xrd["two_theta_min"], xrd["two_theta_max"]))
    cell = structure.lattice.matrix
    record = {
        "sha256": sha,
        "formula": structure.composition.reduced_formula,
        "elements": sorted({el.symbol for el in structure.composition.elements}),
        "n_atoms_cell": len(structure),
        "cell_A": cell.tolist(),
        "widths_A": perpendicular_widths(cell).tolist(),
        # Systematic absences come out at ~1e-27 electrons^2; a real reflection is many orders above 1e-6.
        "reflection_in_range": bool(refl.intensity.max(initial=0.0) > 1e-6),
    }
    if cached is not None:
        write_cache(cached, record)
    return record


# ---------------------------------------------------------------- sheets and globs

def is_sheet(spec: str) -> bool:
    """Whether a ``crystals:`` string names a sheet (by its suffix) rather than a glob."""
    return Path(spec).suffix.lower() in SHEET_SEPARATORS


def read_sheet(path: str | Path) -> list[dict[str, Any]]:
    """Read a crystal sheet into config entries (the list form of ``crystals:``).

    Empty cells are absent fields. ``supercell`` is ``auto`` when the column or the
    cell is empty; an experimental reference ``X`` is built from the columns ``X``,
    ``X_source`` and ``X_T_K``; ``B_exp_A2`` is written ``Na:1.6 Cl:1.2`` (element:B
    pairs separated by spaces or semicolons).

    Raises
    ------
    CrystalTableError
        File missing or unreadable, or a row that breaks ``config/crystals.schema.yaml``;
        the message names the file, the line and the column.
    """
    import pandas as pd  # lazy: pandas 0.33 s, only for a sheet (every validating parse imports this module)
    from snakemake.exceptions import WorkflowError  # lazy: snakemake 0.07 s and not in envs/*.yaml; only for a sheet
    from snakemake.utils import validate  # lazy: snakemake.utils 0.08 s and not in envs/*.yaml; only for a sheet

    path = Path(path)
    if not path.is_file():
        raise CrystalTableError(f"{path}: crystal sheet not found")
    try:
        raw = pd.read_csv(path, sep=SHEET_SEPARATORS[path.suffix.lower()], dtype=str, comment="#",
                          skip_blank_lines=True, keep_default_na=False)
    except (ValueError, OSError) as err:
        raise CrystalTableError(f"{path}: not a readable {path.suffix[1:].upper()} sheet: {err}") from None
    # File line of each data row (the header, blank and comment lines skipped as pandas does).
    text_lines = path.read_text().splitlines()
    lines = [n for n, line in enumerate(text_lines, 1) if line.strip() and not line.lstrip().startswith("#")][1:]
    numeric = {"compressibility_per_GPa", "reference_T_K",
               *(f"{f}{s}" for f in EXPERIMENT_FIELDS for s in ("", "_T_K") if f != "B_exp_A2" or s)}
    records = []
    for i, row in enumerate(raw.to_dict("records")):
        rec: dict[str, Any] = {}
        for col, text in row.items():
            col, text = str(col).strip(), str(text).strip()
            if not text:
                continue
            if col in numeric:
                try:
                    rec[col] = float(text)
                except ValueError:
                    raise CrystalTableError(f"{path}: line {lines[i]}, column {col}: {text!r} is not a number") from None
            else:
                rec[col] = text
        records.append(rec)
    df = pd.DataFrame.from_records(records, columns=list(dict.fromkeys(k for r in records for k in r)))
    try:
        validate(df, str(SHEET_SCHEMA_PATH), set_default=False)
    except WorkflowError as err:
        verr = next((e for e in (*err.args, err.__cause__, err.__context__)
                     if isinstance(e, jsonschema.ValidationError)), None)
        match = re.search(r"row (\d+)", str(err.args[0]) if err.args else "")
        if verr is None or match is None:
            raise
        i = int(match.group(1))
        column = verr.absolute_path[0] if verr.absolute_path else None
        if column is None:  # required, dependentRequired, additionalProperties: the message quotes the column
            column = next(iter(re.findall(r"'([^']+)'", verr.message)), "?")
        name = records[i].get("name")
        row = f"line {lines[i]}" + (f" ({name})" if isinstance(name, str) else "")
        raise CrystalTableError(f"{path}: {row}, column {column}: {verr.message}") from None
    return [_sheet_entry(rec, f"{path}: line {lines[i]} ({rec['name']})") for i, rec in enumerate(records)]


def _sheet_entry(rec: dict[str, Any], where: str) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": rec["name"], "cif": rec["cif"],
                             "supercell": parse_supercell(rec.get("supercell", "auto"))}
    for key in ("compressibility_per_GPa", "reference_T_K"):
        if key in rec:
            entry[key] = float(rec[key])
    for field in EXPERIMENT_FIELDS:
        if field not in rec:
            continue
        if field == "B_exp_A2":
            value: Any = {}
            for item in filter(None, re.split(r"[;\s]+(?=[A-Z])", rec[field])):
                m = _B_ITEM.match(item)
                if m is None:
                    raise CrystalTableError(f"{where}, column B_exp_A2: {item!r} is not element:B (e.g. Na:1.6 Cl:1.2)")
                value[m.group(1)] = float(m.group(2))
        else:
            value = float(rec[field])
        ref: dict[str, Any] = {"value": value}
        if f"{field}_source" in rec:
            ref["source"] = rec[f"{field}_source"]
        if f"{field}_T_K" in rec:
            ref["T_K"] = float(rec[f"{field}_T_K"])
        entry[field] = ref
    return entry


def glob_crystals(pattern: str) -> list[dict[str, Any]]:
    """One entry per structure file matching ``pattern`` (sorted), named by the file stem, supercell auto.

    Raises
    ------
    CrystalTableError
        No file matches, or two files share a stem.
    """
    files = sorted(p for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
    if not files:
        raise CrystalTableError(f"{pattern}: no structure file matches")
    stems: dict[str, str] = {}
    for f in files:
        stem = Path(f).stem
        if stem in stems:
            raise CrystalTableError(f"{pattern}: {stems[stem]} and {f} would both be crystal {stem}; "
                                    "crystal names (file stems) must be unique")
        stems[stem] = f
    return [{"name": stem, "cif": f, "supercell": "auto"} for stem, f in stems.items()]


def read_crystal_table(spec: Any) -> list[dict[str, Any]]:
    """The entries of ``crystals:``: the list itself, a sheet's rows or a glob's files."""
    if isinstance(spec, list):
        return spec
    return read_sheet(spec) if is_sheet(spec) else glob_crystals(spec)
