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
import spglib
from ase import Atoms
from ase.neighborlist import neighbor_list

from mdxrd.statistics import block_standard_error, integrated_autocorrelation_time
from mdxrd.xrd import scattering_factor

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


#: Phase check: the smallest rms static distortion per atom counted as a change of phase, Angstrom
#: (config snapshots.phase_tolerance_A), and the significance of a distortion against the noise of
#: the mean positions (in standard deviations of D_g^2 under the kept phase).
PHASE_TOLERANCE_A = 0.02
PHASE_SIGNIFICANCE = 5.0
#: Relative tolerance on the mean cell's metric under an operation (a strain of 0.2 % breaks it).
METRIC_TOLERANCE = 2e-3


def symmetry_operations(sites: Atoms, symprec_A: float = 1e-3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The space-group operations of the 0 K supercell and the atom each maps each atom onto.

    Parameters
    ----------
    sites
        The supercell on its 0 K sites (N atoms).
    symprec_A
        spglib's distance tolerance, Angstrom.

    Returns
    -------
    (rotations, translations, mapping)
        (n_g, 3, 3) int rotations and (n_g, 3) translations in the supercell's fractional
        coordinates (s -> R s + t), and (n_g, N) int: operation g takes atom i onto atom mapping[g, i].

    Raises
    ------
    ValueError
        spglib finds no symmetry in the sites.
    """
    frac = sites.get_scaled_positions(wrap=True)
    sym = spglib.get_symmetry((sites.cell.array, frac, sites.numbers), symprec=symprec_A)
    if sym is None:
        raise ValueError("spglib found no symmetry in the 0 K sites")
    rot, trans = sym["rotations"], sym["translations"]
    images = np.einsum("gij,nj->gni", rot, frac) + trans[:, None, :]
    diff = images[:, :, None, :] - frac[None, None, :, :]
    diff -= np.round(diff)
    dist = np.linalg.norm(np.einsum("gnmi,ij->gnmj", diff, sites.cell.array), axis=-1)
    dist += np.where(sites.numbers[None, :] == sites.numbers[:, None], 0.0, np.inf)[None]
    return rot, trans, np.argmin(dist, axis=2)


def phase_check(positions: np.ndarray, cells: np.ndarray, sites: Atoms, u2_per_direction_A2: float,
                tau_u_fs: float, window_fs: float, melted: bool, tolerance_A: float = PHASE_TOLERANCE_A
                ) -> dict[str, Any]:
    """Did the run stay in its phase? Each symmetry operation of the input tested on the time-averaged crystal.

    The time-averaged crystal: every atom at its own mean fractional position over the window (its
    mean displacement d_i from its 0 K site, steps 1-2 of the module) in the mean cell h. Its own
    mean, not its sublattice's, so that a distortion of nonzero wave vector (octahedra tilting in
    opposite senses in neighbouring cells) is seen. For every space-group operation g = (R, t) of
    the 0 K supercell (spglib; Togo & Tanaka, arXiv:1808.01590), taking atom i onto atom g(i):

    * positions: the rms residual D_g^2 = <|(R d_i - d_g(i)) h|^2>_i / 3 per direction. A mean
      position carries noise of variance sigma^2 = <u^2> 2 tau_u / T_window per direction (the
      atom's slow motion; ``tau_u`` the displacements' integrated autocorrelation time), so in the
      kept phase D_g^2 ~ 2 sigma^2 with relative spread ~ sqrt(2/N). The operation is broken when
      D_g^2 > 2 sigma^2 (1 + ``PHASE_SIGNIFICANCE`` sqrt(2/N)) and the largest excess over all
      operations, sqrt(D_g^2 - 2 sigma^2), exceeds ``tolerance_A`` (smaller static distortions are not
      a phase; beyond it every significant operation is broken, so that those left name the subgroup);
    * cell: broken when the mean metric G = h h^T changes under R by more than
      :data:`METRIC_TOLERANCE` relative (a strained cell).

    The phase is kept when no operation is broken and the run did not melt (a liquid's mean
    positions mean nothing). The mean structure's space group: the input's when nothing broke, else
    spglib's on the mean displacements averaged over the operations that hold (which leaves the
    distortion and divides the noise by their number), at tolerance max(``tolerance_A``,
    3 sigma / sqrt(n_held)).

    Parameters
    ----------
    positions, cells, sites
        As :func:`site_displacements`.
    u2_per_direction_A2
        <u^2> per direction over all atoms (B / (8 pi^2) averaged), Angstrom^2.
    tau_u_fs, window_fs
        The displacements' integrated autocorrelation time and the window's length, fs.
    melted
        The run's Lindemann flag.
    tolerance_A
        Smallest rms static distortion per atom that counts, Angstrom.

    Returns
    -------
    dict
        ``space_group_input`` and ``space_group_input_number`` (the 0 K supercell's),
        ``space_group_mean`` and ``space_group_mean_number`` (see above; None when spglib finds none,
        or finds the input's although operations broke: a marginal distortion; None for a melted run), ``phase_kept``, ``phase_broken_operations`` (how
        many of the input's fail), ``phase_distortion_A`` (largest excess sqrt(D_g^2 - 2 sigma^2)),
        ``phase_noise_A`` (sigma) and ``phase_tolerance_A``.
    """
    rot, trans, mapping = symmetry_operations(sites)
    d, _, _, h = _scaled_offsets(positions, cells, sites)
    d_mean, h_mean = d.mean(axis=0), h.mean(axis=0)
    n = len(sites)
    sigma2 = float(u2_per_direction_A2) * min(1.0, 2.0 * float(tau_u_fs) / max(float(window_fs), 1e-12))
    resid = np.einsum("gij,nj->gni", rot, d_mean) - d_mean[mapping]
    d2 = np.mean(np.einsum("gni,ij->gnj", resid, h_mean) ** 2, axis=(1, 2))
    excess = np.sqrt(np.clip(d2 - 2.0 * sigma2, 0.0, None))
    # significant against the noise; once one distortion is beyond the tolerance every significant operation counts,
    # so that the operations left name the subgroup (a 1 degree tilt: each operation's own excess is below it)
    broken_pos = (d2 > 2.0 * sigma2 * (1.0 + PHASE_SIGNIFICANCE * math.sqrt(2.0 / n))) & (excess.max() > tolerance_A)
    # the metric in fractional coordinates, G = h h^T: an operation R keeps it when R^T G R = G
    metric = h_mean @ h_mean.T
    change = np.linalg.norm(np.einsum("gji,jk,gkl->gil", rot, metric, rot) - metric, axis=(1, 2))
    broken = broken_pos | (change > METRIC_TOLERANCE * np.linalg.norm(metric))
    symbol_in, number_in = _type_of(rot, trans, sites.cell.array)
    symbol, number = symbol_in, number_in
    if broken.any():  # the group of the mean structure symmetrized by the operations that hold
        kept = np.flatnonzero(~broken)
        d_sym = np.zeros_like(d_mean)
        for g in kept:
            d_sym[mapping[g]] += d_mean @ rot[g].T
        mean = sites.copy()
        mean.set_cell(h_mean, scale_atoms=False)
        mean.set_scaled_positions(sites.get_scaled_positions(wrap=False) + d_sym / len(kept))
        symprec = max(tolerance_A, 3.0 * math.sqrt(sigma2 / len(kept)))
        found = spglib.get_symmetry_dataset((mean.cell.array, mean.get_scaled_positions(wrap=True), mean.numbers),
                                            symprec=symprec)
        symbol, number = (str(found.international), int(found.number)) if found is not None else (None, None)
        if number == number_in:  # a marginal distortion: the held operations do not name a subgroup
            symbol, number = None, None
    if melted:  # a liquid has no space group; its mean positions are noise
        symbol, number = None, None
    return {"space_group_input": symbol_in, "space_group_input_number": number_in, "space_group_mean": symbol,
            "space_group_mean_number": number, "phase_kept": bool(not broken.any() and not melted),
            "phase_broken_operations": int(broken.sum()), "phase_distortion_A": float(excess.max()),
            "phase_noise_A": math.sqrt(sigma2), "phase_tolerance_A": float(tolerance_A)}


def _type_of(rotations: np.ndarray, translations: np.ndarray, lattice: np.ndarray) -> tuple[str | None, int | None]:
    """(Hermann-Mauguin symbol, number) of a set of operations; (None, None) when spglib finds no type."""
    if len(rotations) == 0:
        return None, None
    found = spglib.get_spacegroup_type_from_symmetry(np.ascontiguousarray(rotations, dtype="intc"),
                                                     np.ascontiguousarray(translations, dtype="d"),
                                                     lattice=np.ascontiguousarray(lattice, dtype="d"))
    if found is None:
        return None, None
    return str(found.international_short), int(found.number)


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


def pattern_debye_waller(frames: Sequence[Atoms], sites: Atoms, b_iso: dict[str, float], s_max: float = 1.25,
                         min_intensity: float = 1e-3) -> dict[str, Any]:
    """The Debye-Waller decay of the frames' Bragg intensities, against B_iso: the oracle of the label.

    At every reciprocal lattice point G of the crystal (the primitive lattice of the sites, spglib)
    with s = |G|/2 <= ``s_max``, the structure factor of each frame, F_t(G) = sum_j f_j(s)
    exp(2 pi i G.r_j) (:func:`mdxrd.xrd.scattering_factor`), gives the coherent (Bragg) intensity
    I_T(G) = |<F>|^2 with the bias of a mean over N_s frames removed,
    (N_s |<F>_t|^2 - <|F_t|^2>_t) / (N_s - 1): the diffuse share that a finite supercell puts on its
    Bragg points (<|F|^2> - |<F>|^2, which at large s and B outweighs the Bragg part) is not counted.
    Against the time-averaged structure at rest (:func:`mean_structure`) with Debye-Waller factors
    lambda B_el, I_0(G; lambda) = |sum_el f_el exp(-lambda B_el s^2) S_el(G)|^2, lambda minimises
    sum_G w (ln I_T - ln I_0)^2, w = I_0(G; 0) (golden section in ln lambda). For harmonic motion
    <exp(iG.u)> = exp(-B s^2) per atom (Warren, X-Ray Diffraction (1969), ch. 11), so lambda = 1
    when the label describes the pattern, and for one element lambda B is the B of the pattern.

    Parameters
    ----------
    frames
        Snapshots of one run, all in the same cell (NVT), at least 2.
    sites
        The 0 K supercell of the run (:func:`mean_structure`).
    b_iso
        The run's B per element, Angstrom^2.
    s_max
        Largest sin(theta)/lambda of the fit, 1/Angstrom (Mo K-alpha reaches 1.4).
    min_intensity
        Reflections whose static intensity is below this fraction of the strongest are left out, and
        so are those where the label's exp(-2 B s^2) is below exp(-2) (there the Bragg part of a few
        frames' mean drowns in the diffuse share; chosen by the label, so no selection bias).

    Returns
    -------
    dict
        ``scale`` (lambda), ``B_pattern_A2`` (element -> lambda B), ``n_reflections`` (points G used),
        ``s2_max_per_A2`` (largest s^2 used).

    Raises
    ------
    ValueError
        Frames with different cells, fewer than 2 frames, or no reflection to fit.
    """
    cells = np.array([f.cell.array for f in frames])
    if len(frames) < 2 or np.ptp(cells, axis=0).max() > 1e-9:
        raise ValueError("pattern_debye_waller needs at least 2 frames of one fixed cell (an NVT run)")
    positions = np.array([f.positions for f in frames])
    mean = mean_structure(positions, cells, sites)
    prim = spglib.standardize_cell((sites.cell.array, sites.get_scaled_positions(), sites.numbers),
                                   to_primitive=True, no_idealize=True, symprec=1e-3)
    recip = np.linalg.inv(np.asarray(prim[0], dtype=np.float64)).T  # rows b_i, b_i . a_j = delta_ij
    n_max = np.ceil(2 * s_max * np.linalg.norm(np.linalg.inv(recip).T, axis=1)).astype(int)
    grid = np.stack(np.meshgrid(*(np.arange(-n, n + 1) for n in n_max), indexing="ij"), -1).reshape(-1, 3)
    g = grid @ recip
    s = 0.5 * np.linalg.norm(g, axis=1)
    keep = (s > 0) & (s <= s_max)
    g, s = g[keep], s[keep]
    symbols = np.array(sites.get_chemical_symbols())
    elements = list(dict.fromkeys(symbols.tolist()))
    f = {el: scattering_factor(el, s) for el in elements}

    def partial(pos: np.ndarray, el: str) -> np.ndarray:
        """sum over the element's atoms of exp(2 pi i G.r), (..., n_G) complex."""
        return np.exp(2j * np.pi * np.einsum("...jk,gk->...jg", pos[..., symbols == el, :], g)).sum(axis=-2)

    f_t = sum(f[el] * partial(positions, el) for el in elements)  # (n_t, n_G)
    n_t = len(frames)
    coherent = (n_t * np.abs(f_t.mean(axis=0)) ** 2 - np.mean(np.abs(f_t) ** 2, axis=0)) / (n_t - 1)
    static = {el: f[el] * partial(mean.positions, el) for el in elements}

    def model(scale: float) -> np.ndarray:
        return np.abs(sum(static[el] * np.exp(-scale * b_iso[el] * s * s) for el in elements)) ** 2

    i0 = model(0.0)
    # Where the label's Debye-Waller factor exp(-2 B s^2) >= exp(-2) the Bragg part stands well above the
    # noise of a mean over the frames; chosen by the label, not by the measured intensity (no selection bias).
    use = (i0 > min_intensity * i0.max()) & (max(b_iso.values()) * s * s <= 1.0) & (coherent > 0)
    if not use.any():
        raise ValueError("no reflection to fit")
    weights = i0[use] / i0[use].sum()
    log_t = np.log(coherent[use])

    def misfit(log_scale: float) -> float:
        return float(np.sum(weights * (log_t - np.log(model(math.exp(log_scale))[use])) ** 2))

    lo, hi = math.log(0.05), math.log(20.0)
    golden = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = hi - golden * (hi - lo), lo + golden * (hi - lo)
    fa, fb = misfit(a), misfit(b)
    for _ in range(60):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - golden * (hi - lo)
            fa = misfit(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + golden * (hi - lo)
            fb = misfit(b)
    scale = math.exp(0.5 * (lo + hi))
    return {"scale": scale, "B_pattern_A2": {el: scale * b for el, b in b_iso.items()},
            "n_reflections": int(use.sum()), "s2_max_per_A2": float((s[use] ** 2).max())}
