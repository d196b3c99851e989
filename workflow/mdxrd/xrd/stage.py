"""The workflow's xrd stage: reflections, patterns and the run's average for every snapshot of a run.

For each snapshot the kernel (:mod:`mdxrd.xrd.reflections`) computes the reflections once;
each instrument condition (:mod:`mdxrd.xrd.patterns`) then makes its pattern from them,
so one MD run gives as many patterns per snapshot as there are conditions, with no
MD rerun. The run's average is the mean of the snapshot patterns of a condition
(METHOD.md step 5), taken before background and noise:

    I_avg(2theta) = (1/N_s) sum_i I_i(2theta)

Broadening is linear, so this equals the broadened mean of all snapshots' reflections
with weight 1/N_s. Background and counting noise are then added to each snapshot
pattern and to the average (:func:`mdxrd.xrd.patterns.observed_pattern`);
``intensity_bragg`` (parent Bragg reflections only) has neither.

Normalisation: intensities are kinematic |F|^2 LP per parent unit cell (electrons^2);
a pattern is an intensity density per degree 2theta, so sum(y) * step equals the
summed intensity of the reflections inside the grid.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mdxrd.io import atomic_path
from mdxrd.xrd.reflections import REFLECTION_COLUMNS, Reflections, _check_range, diffract
from mdxrd.xrd.patterns import (
    DEFAULT_INSTRUMENT,
    Instrument,
    as_instrument,
    debye_sphere_radius,
    kernel_settings,
    observed_pattern,
    powder_pattern,
    two_theta_grid,
)

log = logging.getLogger(__name__)


def _frame_info(atoms: Any, index: int) -> tuple[int, float]:
    step = atoms.info.get("step", index)
    time_fs = atoms.info.get("time_fs", float(index))
    return int(step), float(time_fs)


def instruments_of(specs: Sequence[Instrument | Mapping[str, Any]]) -> list[Instrument]:
    """Conditions from config entries or :class:`Instrument` objects; at least one, names unique.

    Raises:
        ValueError: none given, a duplicate name, or a bad entry (named).
    """
    insts = [as_instrument(s) for s in specs]
    if not insts:
        raise ValueError("instrument: give at least one condition")
    names = [i.name for i in insts]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"instrument: duplicate condition name(s) {', '.join(dup)}")
    return insts


def run_stage(
    snapshots_path: str | os.PathLike[str],
    reflections_out: str | os.PathLike[str],
    patterns_out: str | os.PathLike[str],
    average_out: str | os.PathLike[str] | None = None,
    *,
    two_theta_range: Sequence[float],
    two_theta_step: float,
    supercell: Sequence[int],
    centring: Sequence[Sequence[float]] = (),
    instrument: Sequence[Instrument | Mapping[str, Any]] = (DEFAULT_INSTRUMENT,),
    lattice_scale: Sequence[float] | None = None,
    zero_point_b: Mapping[str, float] | None = None,
) -> None:
    """XRD of every snapshot of a trajectory for every condition: reflections (Parquet), patterns and average (npz).

    Reflections are computed once per snapshot at the wavelength and over the range of
    :func:`mdxrd.xrd.patterns.kernel_settings` (every condition's lines and profile reach,
    and three widths of the diffuse kernel), so peaks and diffuse samples just outside
    the grid contribute; the Parquet file holds all of them, its key-value metadata
    ``mdxrd.wavelength_A`` says at which wavelength.

    Args:
        snapshots_path: ASE-readable trajectory; frames share species order;
            ``atoms.info["step"]`` (int) and ``["time_fs"]`` (float), else the frame index.
        reflections_out: Parquet with columns snapshot (int32, frame index), step (int64),
            two_theta, d_spacing, h, k, l, multiplicity, intensity, is_bragg.
        patterns_out: npz with two_theta (n_grid,), instrument (n_cond,) names,
            intensity (n_cond, n_snap, n_grid) float64 (Bragg + diffuse continuum, with the
            condition's background and noise), intensity_bragg (same shape; Bragg only,
            without background or noise), step (n_snap,) int64 and time_fs (n_snap,) float64.
        average_out: npz: two_theta, instrument, intensity and intensity_bragg (n_cond, n_grid),
            n_snapshots (None: not written).
        two_theta_range: (min, max) of the pattern grid, degrees.
        two_theta_step: Grid step, degrees.
        supercell: Supercell multiple (na, nb, nc) of the snapshots.
        centring: Centring translations of the parent cell (:func:`mdxrd.xrd.reflections.centring_translations`).
        instrument: The conditions (:class:`mdxrd.xrd.patterns.Instrument` or config mappings).
        lattice_scale: (s_a, s_b, s_c): every snapshot's cell vectors multiplied by these, the fractional
            coordinates kept (an anchored lattice, :mod:`mdxrd.lattice`); None: the cells as they are.
        zero_point_b: element -> dB, Angstrom^2 (:func:`mdxrd.phonons.delta_b`): the Bragg reflections'
            intensities are those with each element's f damped by exp(-dB s^2) (the zero-point Debye-Waller
            factor the classical snapshots lack; a second kernel call); diffuse ones are left as they are.

    Raises:
        ValueError: empty trajectory, frames with different species, a bad condition, or any
            error of :func:`mdxrd.xrd.reflections.diffract` / :func:`mdxrd.xrd.patterns.powder_pattern`.
    """
    import ase.io  # lazy: ase.io 0.45 s; loaded at Snakefile parse
    import pyarrow as pa  # lazy: pyarrow 0.10 s; loaded at Snakefile parse
    import pyarrow.parquet as pq  # lazy: pyarrow.parquet 0.12 s; loaded at Snakefile parse

    insts = instruments_of(instrument)
    frames = ase.io.read(str(snapshots_path), index=":")
    if not isinstance(frames, list):
        frames = [frames]
    if not frames:
        raise ValueError(f"{snapshots_path}: no frames")
    species = frames[0].get_chemical_symbols()
    for i, atoms in enumerate(frames):
        if atoms.get_chemical_symbols() != species:
            raise ValueError(f"{snapshots_path}: frame {i} has other species than frame 0")
    cells = np.stack([np.array(a.cell.array, dtype=np.float64) for a in frames])
    if lattice_scale is not None:
        cells = cells * np.asarray(lattice_scale, dtype=np.float64)[None, :, None]
    frac = np.stack([a.get_scaled_positions(wrap=False) for a in frames])
    info = [_frame_info(a, i) for i, a in enumerate(frames)]
    steps = np.array([s for s, _ in info], dtype=np.int64)
    times = np.array([t for _, t in info], dtype=np.float64)

    lo, hi = _check_range(two_theta_range)
    grid = two_theta_grid(lo, hi, float(two_theta_step))
    for inst in insts:
        inst.check((lo, hi))
    volumes = np.abs(np.linalg.det(cells))
    # The diffuse estimate at the grid's ends needs samples up to ~3 kernel widths beyond.
    lam, ext = kernel_settings(insts, (lo, hi), 3.0 * debye_sphere_radius(float(volumes.min())))
    bragg_fraction = 1.0 / (int(np.prod(supercell)) * (1 + len(centring)))
    n_snap = len(frames)
    patterns = np.zeros((len(insts), n_snap, grid.size))
    patterns_bragg = np.zeros((len(insts), n_snap, grid.size))

    # The kernel bounds its own work memory; calls of a few hundred snapshots
    # bound the memory of the reflections held before they are written.
    per_call = 256
    schema = pa.schema(
        [("snapshot", pa.int32()), ("step", pa.int64()), ("two_theta", pa.float64()), ("d_spacing", pa.float64()),
         ("h", pa.int64()), ("k", pa.int64()), ("l", pa.int64()), ("multiplicity", pa.int64()),
         ("intensity", pa.float64()), ("is_bragg", pa.bool_())],
        metadata={"mdxrd.wavelength_A": repr(lam)},
    )
    with atomic_path(reflections_out) as tmp_refl:
        with pq.ParquetWriter(str(tmp_refl), schema) as writer:
            for start in range(0, n_snap, per_call):
                idx = list(range(start, min(n_snap, start + per_call)))
                refls = diffract(cells[idx], frac[idx], species, wavelength=lam, two_theta_range=ext,
                                 supercell=tuple(supercell), centring=centring)  # type: ignore[arg-type]
                if zero_point_b:
                    damped = diffract(cells[idx], frac[idx], species, wavelength=lam, two_theta_range=ext,
                                      supercell=tuple(supercell), centring=centring,  # type: ignore[arg-type]
                                      b_iso=dict(zero_point_b))
                    refls = [dataclasses.replace(r, intensity=np.where(r.is_bragg, z.intensity, r.intensity))
                             for r, z in zip(refls, damped, strict=True)]
                for c, inst in enumerate(insts):
                    _broaden_batch(refls, idx, grid, inst, lam, volumes, bragg_fraction, patterns[c],
                                   patterns_bragg[c])
                counts = np.array([len(r) for r in refls])
                columns: dict[str, np.ndarray] = {
                    "snapshot": np.repeat(np.array(idx, dtype=np.int32), counts),
                    "step": np.repeat(steps[idx], counts),
                }
                dicts = [r.to_dict() for r in refls]
                for name in REFLECTION_COLUMNS:
                    columns[name] = np.concatenate([d[name] for d in dicts])
                writer.write_table(pa.table(columns, schema=schema))
    names = np.array([inst.name for inst in insts])
    mean, mean_bragg = patterns.mean(axis=1), patterns_bragg.mean(axis=1)
    observed = np.stack([observed_pattern(inst, patterns[c], grid) for c, inst in enumerate(insts)])
    with atomic_path(patterns_out) as tmp_pat, open(tmp_pat, "wb") as fh:
        np.savez(fh, two_theta=grid, instrument=names, intensity=observed, intensity_bragg=patterns_bragg,
                 step=steps, time_fs=times)
    if average_out is not None:
        observed_mean = np.stack([observed_pattern(inst, mean[c], grid) for c, inst in enumerate(insts)])
        with atomic_path(average_out) as tmp_avg, open(tmp_avg, "wb") as fh:
            np.savez(fh, two_theta=grid, instrument=names, intensity=observed_mean, intensity_bragg=mean_bragg,
                     n_snapshots=n_snap)
    log.info("xrd: %d snapshots of %d atoms, %d condition(s) -> %s, %s", n_snap, len(species), len(insts),
             reflections_out, patterns_out)


def _broaden_batch(
    refls: Sequence[Reflections],
    idx: Sequence[int],
    grid: np.ndarray,
    instrument: Instrument,
    wavelength: float,
    volumes: np.ndarray,
    bragg_fraction: float,
    patterns: np.ndarray,
    patterns_bragg: np.ndarray,
) -> None:
    """Patterns of snapshots into rows ``idx`` of the outputs (:func:`mdxrd.xrd.patterns.powder_pattern`),
    one call per run of snapshots that share reflection positions; ``volumes`` (n_snap,) cell volumes,
    Angstrom^3."""
    pos = 0
    while pos < len(refls):
        end = pos + 1
        while end < len(refls) and refls[end].two_theta is refls[pos].two_theta:
            end += 1
        rows = list(idx[pos:end])
        weights = np.stack([r.intensity for r in refls[pos:end]])
        patterns[rows], patterns_bragg[rows] = powder_pattern(
            refls[pos], weights, grid, wavelength, instrument, volume_A3=float(volumes[rows[0]]),
            bragg_fraction=bragg_fraction)
        pos = end
