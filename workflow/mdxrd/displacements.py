"""Thermal displacements about the lattice sites: B_iso, the Lindemann ratio and their statistics.

Why about the lattice sites. B = 8 pi^2 <u^2> needs the displacement u of every atom
from its site. The mean position of an atom over a short MD window is not its site:
it follows the slow part of the atom's own motion, so the variance about it misses
<u^2> 2 tau_u / T_window (tau_u the integrated autocorrelation time of u, ~100 fs
for heavy or soft atoms; METHOD.md, "What a finite supercell and a short run do to
the data"). For a heavy fcc metal and a 400 fs window that is half of B.

The sites here are those of the parent crystal, estimated without that bias:

1. Every atom of the supercell belongs to a sublattice: the atoms that are the same
   atom of the primitive cell in different cells, i.e. its orbit under the crystal's
   pure translations (:func:`sublattices`, spglib on the 0 K sites the MD started from).
2. Per MD step t the atom's scaled (fractional) coordinates in that step's cell,
   unwrapped by minimum image from its 0 K site s0_i: d_i(t) = s_i(t) - s0_i.
   Scaled coordinates follow a barostat's cell, so an NPT run's strain is not
   counted as displacement.
3. The site of a sublattice p is s0 + delta_p, delta_p the mean of d_i(t) over the
   window and over all atoms i of p (one per primitive cell of the supercell). A
   coordinate that symmetry leaves free (O in rutile, LiCoO2 or corundum) moves with
   temperature; delta_p follows it. Averaging over the translation-equivalent atoms
   cancels every phonon of nonzero wave vector, so the site does not follow the atoms'
   slow motion: only the q = 0 optical modes (fast) enter it.
4. u_i(t) = (d_i(t) - delta_p(i)) h(t), h(t) the step's cell (rows the cell vectors),
   minus the mass-weighted mean of u over all atoms of the step (the centre of mass,
   which the MD keeps fixed).

Then per element B = 8 pi^2 <u^2> (the mean over the element's atoms, the window's
steps and the three directions; Willis & Pryor, Thermal Vibrations in Crystallography
(1975), ch. 4), its standard error from the per-step series B(t) by block averaging,
and the Lindemann ratio sqrt(<|u|^2>)/d_nn (3-D form; Lindemann, Phys. Z. 11, 609
(1910)).

Statistics: the integrated autocorrelation time of the displacements themselves
(:func:`mdxrd.statistics.integrated_autocorrelation_time` of u_i,alpha(t) about zero,
autocovariances pooled over atoms and directions, Sokal's window) and that of the
mean-square displacement series <u^2>(t), whose fluctuations set the standard error of B.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from ase import Atoms
from ase.neighborlist import neighbor_list

from mdxrd.statistics import block_standard_error, integrated_autocorrelation_time

#: Tolerance on parent-cell fractional coordinates when grouping atoms into sublattices.
SITE_TOLERANCE = 1e-4


def sublattices(sites: Atoms, symprec: float = 1e-3) -> np.ndarray:
    """The sublattice of every atom: its orbit under the pure translations of the crystal.

    The pure translations are the symmetry operations of ``sites`` with the identity as
    rotation (spglib): the supercell's lattice translations and the centring translations
    of its cell (an F, I, C or R cell holds several primitive cells), so each sublattice is
    one atom of the *primitive* cell and all its images.

    Parameters
    ----------
    sites
        The supercell with its atoms on their 0 K sites (N atoms).
    symprec
        spglib's distance tolerance, Angstrom.

    Returns
    -------
    numpy.ndarray
        (N,) int64 labels 0 .. n_sublattices - 1, in order of first appearance.

    Raises
    ------
    ValueError
        spglib finds no symmetry (atoms far from any lattice).
    """
    import spglib

    cell = (sites.cell.array, sites.get_scaled_positions(wrap=True), sites.numbers)
    sym = spglib.get_symmetry(cell, symprec=symprec)
    if sym is None:
        raise ValueError("spglib found no symmetry in the 0 K sites")
    identity = np.all(sym["rotations"] == np.eye(3, dtype=int), axis=(1, 2))
    translations = sym["translations"][identity]
    scaled = cell[1]
    labels = np.full(len(sites), -1, dtype=np.int64)
    tol = symprec / np.max(sites.cell.lengths())
    next_label = 0
    for i in range(len(sites)):
        if labels[i] >= 0:
            continue
        images = (scaled[i] + translations)[:, None, :] - scaled[None, :, :]
        images -= np.round(images)
        match = np.any(np.all(np.abs(images) < 10 * tol, axis=2), axis=0) & (sites.numbers == sites.numbers[i])
        labels[match] = next_label
        next_label += 1
    return labels


def site_displacements(positions: np.ndarray, cells: np.ndarray, sites: Atoms,
                       masses: np.ndarray | None = None) -> np.ndarray:
    """Displacements of every atom from its lattice site, per MD step, Angstrom (module docstring, steps 1-4).

    Parameters
    ----------
    positions
        (n_t, N, 3) float, Cartesian positions of N atoms at n_t steps, Angstrom (wrapped or not).
    cells
        (n_t, 3, 3) float, the cell of each step (rows are the cell vectors), Angstrom.
    sites
        The same N atoms on their 0 K sites (the supercell the MD started from).
    masses
        (N,) float, atomic masses for the centre-of-mass correction; None: ``sites``' masses.

    Returns
    -------
    numpy.ndarray
        (n_t, N, 3) float64 displacements u, Angstrom.

    Raises
    ------
    ValueError
        Shapes that do not match ``sites``, or sites that form no sublattices.
    """
    d, offset, labels, h = _scaled_offsets(positions, cells, sites)
    u = np.einsum("tij,tjk->tik", d - offset[labels][None], h)
    m = np.asarray(sites.get_masses() if masses is None else masses, dtype=np.float64)
    return u - (np.einsum("i,tij->tj", m, u) / m.sum())[:, None, :]


def _scaled_offsets(positions: np.ndarray, cells: np.ndarray, sites: Atoms
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Scaled displacements d (n_t, N, 3) from the 0 K sites, the sublattice offsets delta_p (n_p, 3),
    the sublattice labels (N,) and the cells (n_t, 3, 3) (module docstring, steps 1-3)."""
    pos = np.asarray(positions, dtype=np.float64)
    h = np.asarray(cells, dtype=np.float64)
    n_t = pos.shape[0]
    if pos.shape != (n_t, len(sites), 3) or h.shape != (n_t, 3, 3):
        raise ValueError(f"positions {pos.shape} and cells {h.shape} do not fit {len(sites)} sites")
    labels = sublattices(sites)
    d = np.einsum("tij,tjk->tik", pos, np.linalg.inv(h)) - sites.get_scaled_positions(wrap=False)[None]
    d -= np.round(d)
    n_sub = labels.max() + 1
    offset = np.zeros((n_sub, 3))
    np.add.at(offset, labels, d.mean(axis=0))
    offset /= np.bincount(labels, minlength=n_sub)[:, None]
    return d, offset, labels, h


def mean_structure(positions: np.ndarray, cells: np.ndarray, sites: Atoms) -> Atoms:
    """The time-averaged crystal: the 0 K sites moved by their sublattices' mean offsets, in the mean cell.

    Parameters
    ----------
    positions, cells, sites
        As :func:`site_displacements`.

    Returns
    -------
    ase.Atoms
        ``sites`` with scaled positions s0 + delta_p (free coordinates at their thermal
        average) and the mean of ``cells``.
    """
    _, offset, labels, h = _scaled_offsets(positions, cells, sites)
    out = sites.copy()
    out.set_cell(h.mean(axis=0), scale_atoms=False)
    out.set_scaled_positions(sites.get_scaled_positions(wrap=False) + offset[labels])
    return out


def b_iso_series(u: np.ndarray, symbols: Sequence[str]) -> dict[str, np.ndarray]:
    """Per element, the Debye-Waller B of each step, 8 pi^2 <u^2>_(atoms, directions), Angstrom^2.

    Parameters
    ----------
    u
        (n_t, N, 3) displacements, Angstrom (:func:`site_displacements`).
    symbols
        (N,) element symbols.

    Returns
    -------
    dict
        Element -> (n_t,) float64, elements in order of first appearance.
    """
    sym = np.asarray(symbols)
    return {el: 8.0 * math.pi**2 * np.mean(u[:, sym == el, :] ** 2, axis=(1, 2))
            for el in dict.fromkeys(sym.tolist())}


def lindemann_ratio(u: np.ndarray, sites: Atoms) -> float:
    """Lindemann ratio sqrt(<|u|^2>)/d_nn, dimensionless (3-D form, about the lattice sites).

    Parameters
    ----------
    u
        (n_t, N, 3) displacements, Angstrom.
    sites
        The structure whose nearest-neighbour distance d_nn is used (the 0 K sites).

    Returns
    -------
    float
        sqrt of the mean over steps and atoms of |u|^2 (three times the one-direction <u^2> of
        B), over d_nn (Lindemann, Phys. Z. 11, 609 (1910); about 0.1-0.15 at melting).
    """
    d = neighbor_list("d", sites, 6.0)
    d_nn = float(d.min()) if len(d) else float(np.min(sites.cell.lengths()))
    return float(np.sqrt(np.mean(np.sum(u * u, axis=-1))) / d_nn)


def thermal_motion(positions: np.ndarray, cells: np.ndarray, sites: Atoms, dt_fs: float) -> dict[str, Any]:
    """B_iso per element with its standard error, the Lindemann ratio and the displacements' correlation times.

    Parameters
    ----------
    positions, cells
        (n_t, N, 3) positions and (n_t, 3, 3) cells of consecutive samples of the window, Angstrom.
    sites
        The 0 K supercell (:func:`site_displacements`).
    dt_fs
        Time between samples, fs.

    Returns
    -------
    dict
        ``B_iso_A2`` (element -> B, Angstrom^2), ``B_iso_sem_A2`` (element -> block-averaged
        standard error of the per-step series), ``lindemann_ratio``, ``tau_int_u_fs`` (integrated
        autocorrelation time of the displacements), ``tau_int_msd_fs`` (of the all-atom
        mean-square displacement per step), ``n_samples``.
    """
    u = site_displacements(positions, cells, sites)
    series = b_iso_series(u, sites.get_chemical_symbols())
    msd = np.mean(u * u, axis=(1, 2))
    return {
        "B_iso_A2": {el: float(b.mean()) for el, b in series.items()},
        "B_iso_sem_A2": {el: block_standard_error(b) for el, b in series.items()},
        "lindemann_ratio": lindemann_ratio(u, sites),
        "tau_int_u_fs": integrated_autocorrelation_time(u.reshape(len(u), -1), known_mean_zero=True) * dt_fs,
        "tau_int_msd_fs": integrated_autocorrelation_time(msd) * dt_fs,
        "n_samples": len(u),
    }


def pattern_debye_waller(frames: Sequence[Atoms], sites: Atoms, b_iso: dict[str, float],
                         wavelength: float = 0.7, two_theta_max: float = 120.0,
                         min_intensity: float = 1e-3) -> dict[str, Any]:
    """The Debye-Waller decay of the frames' averaged Bragg intensities, against B_iso.

    The oracle of B_iso from the diffraction it is meant to describe: the averaged intensities
    of the frames at the reciprocal lattice points of the crystal, I_T(hkl), against those of the
    time-averaged structure at rest with Debye-Waller factors lambda B_el
    (:func:`mean_structure`, :func:`mdxrd.xrd.diffract` with ``b_iso``), I_0(hkl; lambda B).
    lambda minimises sum_hkl w (ln I_T - ln I_0)^2 with weights w = I_0(hkl; 0) (golden
    section in ln lambda). For one element ln(I_T/I_0) = -2 lambda B s^2 (Warren, X-Ray
    Diffraction (1969), ch. 11), so lambda B is the B fitted to the pattern; lambda = 1 when
    the label describes the pattern.

    Parameters
    ----------
    frames
        Snapshots of one run, all in the same cell (NVT).
    sites
        The 0 K supercell of the run (:func:`mean_structure`).
    b_iso
        The run's B per element, Angstrom^2.
    wavelength, two_theta_max
        Radiation (Angstrom) and largest 2theta (deg) of the fit: s = sin(theta)/lambda up to
        sin(60 deg)/0.7 = 1.24 1/Angstrom by default, where exp(-2 B s^2) has decayed enough to
        measure B.
    min_intensity
        Reflections weaker than this fraction of the strongest static one are left out.

    Returns
    -------
    dict
        ``scale`` (lambda), ``B_pattern_A2`` (element -> lambda B), ``n_reflections``,
        ``s2_max_per_A2`` (largest s^2 used).

    Raises
    ------
    ValueError
        Frames with different cells, or no reflection to fit.
    """
    from mdxrd.xrd import diffract

    cells = np.array([f.cell.array for f in frames])
    if np.ptp(cells, axis=0).max() > 1e-9:
        raise ValueError("pattern_debye_waller needs frames of one fixed cell (an NVT run)")
    positions = np.array([f.positions for f in frames])
    mean = mean_structure(positions, cells, sites)
    species = sites.get_chemical_symbols()
    kwargs = {"wavelength": wavelength, "two_theta_range": (1.0, two_theta_max)}
    thermal = diffract(cells, np.einsum("tij,jk->tik", positions, np.linalg.inv(cells[0])), species, **kwargs)
    static0 = diffract(mean.cell.array, mean.get_scaled_positions(wrap=False), species, **kwargs)[0]
    keep = static0.intensity > min_intensity * static0.intensity.max()
    if not keep.any():
        raise ValueError("no reflection to fit")
    index = {tuple(h): i for i, h in enumerate(static0.hkl)}
    i_t = np.zeros(len(static0))
    for r in thermal:
        rows = [index[tuple(h)] for h in r.hkl]
        np.add.at(i_t, rows, r.intensity)
    i_t /= len(thermal)
    keep &= i_t > 0
    weights = static0.intensity[keep] / static0.intensity[keep].sum()
    log_t = np.log(i_t[keep])

    def misfit(log_scale: float) -> float:
        scale = math.exp(log_scale)
        model = diffract(mean.cell.array, mean.get_scaled_positions(wrap=False), species,
                         b_iso={el: scale * b for el, b in b_iso.items()}, **kwargs)[0]
        return float(np.sum(weights * (log_t - np.log(model.intensity[keep])) ** 2))

    lo, hi = math.log(0.05), math.log(20.0)
    golden = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = hi - golden * (hi - lo), lo + golden * (hi - lo)
    fa, fb = misfit(a), misfit(b)
    for _ in range(50):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - golden * (hi - lo)
            fa = misfit(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + golden * (hi - lo)
            fb = misfit(b)
    scale = math.exp(0.5 * (lo + hi))
    s2 = (0.5 / static0.d_spacing[keep]) ** 2
    return {"scale": scale, "B_pattern_A2": {el: scale * b for el, b in b_iso.items()},
            "n_reflections": int(keep.sum()), "s2_max_per_A2": float(s2.max())}
