r"""Powder X-ray diffraction of crystal snapshots: a fast, batched kernel.

The kernel reproduces pymatgen's ``XRDCalculator`` (``symprec=0``,
``scaled=False``) exactly for a static cell, and adds what molecular-dynamics
snapshots of a supercell need: many snapshots per call, intensities per parent
unit cell, and Bragg reflections kept apart from thermal diffuse scattering.

Algorithm, for every snapshot (cell rows :math:`\mathbf a_1, \mathbf a_2,
\mathbf a_3` in Angstrom, fractional coordinates :math:`(x_j, y_j, z_j)`):

1. Reciprocal lattice (crystallographic, no factor :math:`2\pi`):
   :math:`\mathbf b_i \cdot \mathbf a_j = \delta_{ij}`, so
   :math:`\mathbf G_{hkl} = h\mathbf b_1 + k\mathbf b_2 + l\mathbf b_3` and
   :math:`|\mathbf G_{hkl}| = 1/d_{hkl}`.
2. Limiting shell. Bragg's law :math:`2 d \sin\theta = \lambda` gives
   :math:`|\mathbf G| = 2\sin\theta/\lambda`; every point with
   :math:`r_{min} \le |\mathbf G| \le r_{max}`, :math:`r = 2\sin(2\theta/2)/\lambda`
   at the ends of the :math:`2\theta` range, is enumerated (:math:`\mathbf G = 0`
   excluded). Since :math:`h = \mathbf G\cdot\mathbf a_1`, the box
   :math:`|h| \le \lfloor r_{max}|\mathbf a_1|\rfloor` (same for k, l) holds all of
   them. Friedel's law, :math:`|F(-\mathbf G)|^2 = |F(\mathbf G)|^2` for real
   scattering factors (no anomalous dispersion), lets the kernel compute only the
   lexicographically positive half of the box and count each point twice; the
   output is exactly that of enumerating every point.
3. Atomic scattering factor, pymatgen's fit (``XRDCalculator``; the coefficients
   are read from ``pymatgen.analysis.diffraction.xrd.ATOMIC_SCATTERING_PARAMS``):

   .. math:: f(s) = Z - 41.78214\, s^2 \sum_i a_i \exp(-b_i s^2),
             \qquad s = \sin\theta/\lambda = |\mathbf G|/2 .

4. Structure factor (Warren, *X-Ray Diffraction*, 1969, ch. 4; International
   Tables for Crystallography Vol. C, sec. 6.1):

   .. math:: F_{hkl} = \sum_j f_j(s)\, e^{-B_j s^2}\,
             e^{2\pi i (h x_j + k y_j + l z_j)} ,

   with :math:`B_j = 0` by default (see ``b_iso``). The phase factorizes,
   :math:`e^{2\pi i(hx+ky+lz)} = A_j(h) B_j(k) C_j(l)`, so for each element
   :math:`e` the lattice sum :math:`\Gamma_e(h,k,l) = \sum_{j\in e}
   A_j(h)B_j(k)C_j(l)` over the whole box is one complex matrix product,
   :math:`(A\odot B)_{(hk),j}\, C_{j,l}`, batched over snapshots; then
   :math:`F = \sum_e f_e(s)\,e^{-B_e s^2}\,\Gamma_e`.
5. Intensity with the Lorentz-polarization factor for unpolarized X-rays and
   a powder (Warren 1969, ch. 4; ITC Vol. C, sec. 6.2):

   .. math:: I_{hkl} = \frac{|F_{hkl}|^2}{M^2}\,
             \frac{1 + \cos^2 2\theta}{\sin^2\theta\cos\theta},

   where :math:`M = n_a n_b n_c` is the supercell multiple: intensities are per
   parent unit cell, so a static supercell gives the parent cell's pattern.
   The multiplicity is implicit: every point of the shell is enumerated.
6. Bragg versus diffuse. A point is a Bragg reflection of the parent crystal
   when its scattering vector is a reciprocal lattice vector of the parent's
   *primitive* lattice: the parent-cell indices
   :math:`(h/n_a, k/n_b, l/n_c)` are integers and
   :math:`(h/n_a) t_1 + (k/n_b) t_2 + (l/n_c) t_3 \in \mathbb Z` for every
   centring translation :math:`\mathbf t` of the parent cell (the pure
   translations of its space group, :func:`centring_translations`; e.g.
   (0, 1/2, 1/2) for F). For a centred cell the other integer points are
   zone-boundary points of the primitive lattice (fcc (100), bcc (100)) and
   carry thermal diffuse scattering, like every non-integer point. Reflections
   extinct by the basis only (diamond (200), (222)) stay Bragg: anharmonic
   motion can give them intensity. The split is by index, never by angle.
7. Merging. Points whose :math:`2\theta` agree within ``TWO_THETA_TOL``
   (1e-5 degrees, as pymatgen) and that have the same Bragg flag form one
   reflection: intensities summed, multiplicity = number of points, hkl = the
   lexicographically largest (h, k, l) of the group (pymatgen's first-listed
   one), :math:`2\theta` and d of the point with the smallest :math:`|\mathbf G|`.
   Nothing is dropped: pymatgen's threshold (1e-3 % of the strongest peak) is
   not applied.

For a supercell the reported hkl are the supercell's indices; the parent
indices of a Bragg reflection are ``hkl // supercell``.

With ``supercell=(1, 1, 1)`` and no ``b_iso`` the intensities equal
``XRDCalculator(wavelength, symprec=0).get_pattern(s, scaled=False)`` to
rounding (pymatgen merges Bragg and diffuse points of equal angle; this module
keeps them apart).

Broadening (:func:`broaden`) turns reflections into a pattern on a uniform
:math:`2\theta` grid: one area-normalized profile per reflection, Gaussian by
default, optionally pseudo-Voigt and with a Caglioti width (Caglioti, Paoletti
& Ricci, Nucl. Instrum. 3, 223 (1958)).

Thermal diffuse scattering as a continuum (:func:`diffuse_continuum`,
:func:`powder_pattern`). A supercell of volume :math:`V` samples the diffuse
intensity, a continuous function of :math:`\mathbf G`, only on its own
reciprocal lattice: one point per reciprocal cell of volume :math:`1/V`. Drawn
as sharp reflections those samples look like superlattice peaks that no
measured pattern has. A powder sees the spherical average of the diffuse
intensity at each :math:`q = |\mathbf G|`; it is estimated as a smooth function
of :math:`q` by kernel regression of the samples (mean intensity per point,
LP factor taken out) with a Gaussian kernel as wide as the radius
:math:`r = (3/(4\pi V))^{1/3}` of the sphere of one point's reciprocal volume
(Debye's equal-volume sphere; Debye, Ann. Phys. 344, 789 (1912)), multiplied
by the number of diffuse points per unit :math:`q`, :math:`4\pi q^2 V(1 - f_B)`,
and by LP(q). Its integral equals the samples' summed intensity. Bragg
reflections stay sharp (instrument profile only).
"""

from __future__ import annotations

import argparse
import functools
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mdxrd.io import atomic_path

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger(__name__)

#: X-ray wavelengths in Angstrom, by name. Values equal those of pymatgen's
#: ``pymatgen.analysis.diffraction.xrd.WAVELENGTHS`` except ``"CuKa1"``, which is
#: 1.5406 A as METHOD.md and most powder software quote it (pymatgen lists
#: 1.54056 A; Hoelzer et al., Phys. Rev. A 56, 4554 (1997) give 1.540598 A).
#: Note that ``"CuKa"`` (as in pymatgen) is the weighted K-alpha average
#: 1.54184 A, not K-alpha1.
WAVELENGTHS: dict[str, float] = {
    "CuKa1": 1.5406,
    "CuKa2": 1.54439,
    "CuKa": 1.54184,
    "MoKa1": 0.70930,
    "MoKa": 0.71073,
    "CoKa1": 1.78896,
    "CoKa": 1.79026,
    "CrKa1": 2.28970,
    "FeKa1": 1.93604,
    "AgKa1": 0.559421,
}

#: Two reflections closer than this in 2theta (degrees) merge (pymatgen's
#: ``AbstractDiffractionPatternCalculator.TWO_THETA_TOL``).
TWO_THETA_TOL: float = 1e-5

#: Prefactor of the s^2 term of pymatgen's scattering-factor fit.
_FIT_PREFACTOR = 41.78214

#: Upper bound on the bytes of complex work arrays one batch chunk allocates.
_CHUNK_BYTES = 256 * 2**20

#: Size of the (A * B) row blocks of the lattice-sum matrix product.
_BLOCK_BYTES = 2**20

#: Columns of :meth:`Reflections.to_dict`, in order.
REFLECTION_COLUMNS: tuple[str, ...] = (
    "two_theta",
    "d_spacing",
    "h",
    "k",
    "l",
    "multiplicity",
    "intensity",
    "is_bragg",
)

_FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))


# --------------------------------------------------------------------------
# Wavelength
# --------------------------------------------------------------------------


def resolve_wavelength(value: float | str) -> float:
    """Return a wavelength in Angstrom from a number or a name.

    Args:
        value: A positive finite number (Angstrom), a string holding one, or a
            name of :data:`WAVELENGTHS` (e.g. ``"CuKa1"``).

    Returns:
        The wavelength in Angstrom.

    Raises:
        ValueError: ``value`` is not positive and finite, or is an unknown name
            (the message lists the known names).
    """
    if isinstance(value, str):
        if value in WAVELENGTHS:
            return WAVELENGTHS[value]
        try:
            number = float(value)
        except ValueError:
            raise ValueError(
                f"unknown wavelength {value!r}: give a number in Angstrom or one of "
                f"{', '.join(WAVELENGTHS)}"
            ) from None
    elif isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(
            f"wavelength must be a number in Angstrom or one of {', '.join(WAVELENGTHS)}, "
            f"got {value!r}"
        )
    else:
        number = float(value)
    if not (math.isfinite(number) and number > 0):
        raise ValueError(
            f"wavelength must be > 0 Angstrom or one of {', '.join(WAVELENGTHS)}, got {value!r}"
        )
    return number


# --------------------------------------------------------------------------
# Reflections
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Reflections:
    """Merged reflections of one snapshot, sorted by ascending ``two_theta``.

    Snapshots of one :func:`diffract` call that share a cell share the
    read-only ``two_theta``, ``d_spacing``, ``hkl``, ``multiplicity`` and
    ``is_bragg`` arrays; only ``intensity`` is their own.

    Attributes:
        two_theta: (n,) float64, scattering angle 2theta in degrees, ascending
            (a Bragg and a diffuse reflection of equal angle, to rounding, come
            in either order).
        d_spacing: (n,) float64, interplanar spacing d = 1/|G| in Angstrom.
        hkl: (n, 3) int64, representative Miller indices in the indices of
            the cell given (the supercell's for a supercell snapshot), the
            lexicographically largest of the merged points.
        multiplicity: (n,) int64, number of reciprocal lattice points merged.
        intensity: (n,) float64, summed |F|^2 LP / M^2 (electrons^2 per parent
            unit cell, times the dimensionless LP factor).
        is_bragg: (n,) bool, True for parent-lattice Bragg reflections.
    """

    two_theta: np.ndarray
    d_spacing: np.ndarray
    hkl: np.ndarray
    multiplicity: np.ndarray
    intensity: np.ndarray
    is_bragg: np.ndarray

    def __len__(self) -> int:
        return int(self.two_theta.shape[0])

    def select(self, mask: np.ndarray) -> Reflections:
        """Return the reflections where the boolean (n,) ``mask`` is True."""
        return Reflections(
            two_theta=self.two_theta[mask],
            d_spacing=self.d_spacing[mask],
            hkl=self.hkl[mask],
            multiplicity=self.multiplicity[mask],
            intensity=self.intensity[mask],
            is_bragg=self.is_bragg[mask],
        )

    def to_dict(self) -> dict[str, np.ndarray]:
        """Return the columns two_theta, d_spacing, h, k, l, multiplicity,
        intensity, is_bragg as a dict of (n,) arrays."""
        return {
            "two_theta": self.two_theta,
            "d_spacing": self.d_spacing,
            "h": self.hkl[:, 0],
            "k": self.hkl[:, 1],
            "l": self.hkl[:, 2],
            "multiplicity": self.multiplicity,
            "intensity": self.intensity,
            "is_bragg": self.is_bragg,
        }

    def to_table(self) -> pa.Table:
        """Return the columns of :meth:`to_dict` as a ``pyarrow.Table``."""
        import pyarrow as pa

        return pa.table({name: np.ascontiguousarray(col) for name, col in self.to_dict().items()})


def _empty_reflections() -> Reflections:
    return Reflections(
        two_theta=np.zeros(0),
        d_spacing=np.zeros(0),
        hkl=np.zeros((0, 3), dtype=np.int64),
        multiplicity=np.zeros(0, dtype=np.int64),
        intensity=np.zeros(0),
        is_bragg=np.zeros(0, dtype=bool),
    )


# --------------------------------------------------------------------------
# Scattering factors
# --------------------------------------------------------------------------


def lorentz_polarization(theta: np.ndarray) -> np.ndarray:
    """Lorentz-polarization factor of an unpolarized powder, (1 + cos^2 2theta) / (sin^2 theta cos theta).

    Args:
        theta: Bragg angle(s) theta (half of 2theta), radians, in (0, pi/2).

    Returns:
        LP, dimensionless, same shape (Warren, *X-Ray Diffraction*, 1969, ch. 4).
    """
    return (1.0 + np.cos(2.0 * theta) ** 2) / (np.sin(theta) ** 2 * np.cos(theta))


@functools.cache
def _scattering_params() -> Mapping[str, Any]:
    # Imported lazily: pymatgen's diffraction module is slow to import.
    from pymatgen.analysis.diffraction.xrd import ATOMIC_SCATTERING_PARAMS

    return ATOMIC_SCATTERING_PARAMS


@functools.cache
def _element_fit(symbol: str) -> tuple[int, np.ndarray]:
    """Atomic number and (n, 2) fit coefficients (a_i, b_i) of ``symbol``."""
    params = _scattering_params()
    if symbol not in params:
        raise ValueError(
            f"no X-ray scattering factor for element {symbol!r} "
            "(pymatgen's ATOMIC_SCATTERING_PARAMS has none)"
        )
    from pymatgen.core.periodic_table import Element

    return int(Element(symbol).Z), np.asarray(params[symbol], dtype=np.float64)


def scattering_factor(symbol: str, s: np.ndarray) -> np.ndarray:
    """Atomic X-ray scattering factor f(s) in electrons, pymatgen's fit.

    f(s) = Z - 41.78214 s^2 sum_i a_i exp(-b_i s^2) (pymatgen ``XRDCalculator``).

    Args:
        symbol: Element symbol.
        s: Array of sin(theta)/lambda in 1/Angstrom.

    Returns:
        f(s), float64, same shape as ``s``.

    Raises:
        ValueError: no coefficients for ``symbol``.
    """
    z, coeff = _element_fit(symbol)
    s2 = np.asarray(s, dtype=np.float64) ** 2
    return z - _FIT_PREFACTOR * s2 * np.sum(coeff[:, 0] * np.exp(-coeff[:, 1] * s2[..., None]), axis=-1)


# --------------------------------------------------------------------------
# Geometry of one cell: the reciprocal points, their grouping into reflections
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Geometry:
    """Everything about one cell that does not depend on the atom positions.

    Points are the Friedel half of the shell, in "reduction order": grouped
    into the merged reflections, each group contiguous.
    """

    hmax: int  # h = 0..hmax (Friedel half)
    kmax: int  # k = -kmax..kmax
    lmax: int  # l = -lmax..lmax
    row_h: np.ndarray  # (nrows,) h of each kept (h, k) row
    row_k: np.ndarray  # (nrows,) k + kmax of each kept row
    sel: np.ndarray  # (npts,) flat index into (nrows, nl) of each point
    starts: np.ndarray  # (ngroups,) first point of each group
    point_f: np.ndarray | None  # (n_elements, npts) f_e exp(-B_e s^2); None for one element
    group_weight: np.ndarray  # (ngroups,) 2 LP / M^2, times f^2 for one element
    group_order: np.ndarray  # (ngroups,) reduction order -> output order
    template: Reflections  # output arrays, intensity zero


def _geometry(
    cell: np.ndarray,
    wavelength: float,
    two_theta_range: tuple[float, float],
    supercell: tuple[int, int, int],
    elements: Sequence[str],
    b_iso: Mapping[str, float],
    centring: np.ndarray,
) -> _Geometry | None:
    """Enumerate the Friedel half of the shell of ``cell`` and group it; None if empty."""
    recip = np.linalg.inv(cell).T  # rows b1, b2, b3: a_i . b_j = delta_ij
    lo_deg, hi_deg = two_theta_range
    min_r = 2.0 * math.sin(math.radians(lo_deg / 2.0)) / wavelength
    max_r = 2.0 * math.sin(math.radians(hi_deg / 2.0)) / wavelength
    hmax, kmax, lmax = (int(math.floor(max_r * float(np.linalg.norm(a)) + 1e-9)) for a in cell)

    h_int = np.arange(0, hmax + 1)
    k_int = np.arange(-kmax, kmax + 1)
    l_int = np.arange(-lmax, lmax + 1)
    nl = l_int.size
    # |G|^2 over the half box (h >= 0), (nh, nk, nl), with P = h b1 + k b2:
    # |G|^2 = |P|^2 + 2 l P.b3 + l^2 |b3|^2.
    p_vec = h_int[:, None, None] * recip[0] + k_int[None, :, None] * recip[1]  # (nh, nk, 3)
    pp = np.einsum("hki,hki->hk", p_vec, p_vec)
    pb = p_vec @ recip[2]
    lf = l_int.astype(np.float64)
    g2 = pp[:, :, None] + (2.0 * pb)[:, :, None] * lf + float(recip[2] @ recip[2]) * (lf * lf)
    inside = (g2 <= max_r * max_r) & (g2 >= min_r * min_r)
    # Friedel half space: h > 0, or h == 0 and k > 0, or h == k == 0 and l > 0.
    keep_l = inside[0, kmax, lmax + 1 :].copy()
    inside[0, : kmax + 1, :] = False
    inside[0, kmax, lmax + 1 :] = keep_l
    ih, ik, il = np.nonzero(inside)
    if ih.size == 0:
        return None

    # Keep only the (h, k) rows that hold a point: the matrix product skips the rest.
    row_any = inside.any(axis=2)
    row_h, row_k = np.nonzero(row_any)
    row_pos = np.full(row_any.shape, -1, dtype=np.int64)
    row_pos[row_h, row_k] = np.arange(row_h.size)
    flat = row_pos[ih, ik] * nl + il

    gp = np.sqrt(g2[ih, ik, il])
    two_theta = np.degrees(2.0 * np.arcsin(np.minimum(wavelength * gp / 2.0, 1.0)))
    na, nb, nc = supercell
    bragg = (h_int % na == 0)[ih] & (k_int % nb == 0)[ik] & (l_int % nc == 0)[il]
    for t in centring:  # G . t integer for every centring vector: a primitive-lattice vector
        phase = (h_int * (t[0] / na))[ih] + (k_int * (t[1] / nb))[ik] + (l_int * (t[2] / nc))[il]
        bragg &= np.abs(phase - np.round(phase)) < 1e-6

    # Group: sort by a key that puts Bragg points (key -2theta) before diffuse
    # ones (key +2theta, > 0 as G != 0); a group starts where the flag changes or
    # the angle steps by more than the tolerance.
    key = np.where(bragg, -two_theta, two_theta)
    order = np.argsort(key)
    key_s = key[order]
    br_s = bragg[order]
    new = np.empty(order.size, dtype=bool)
    new[0] = True
    np.logical_or(np.diff(key_s) > TWO_THETA_TOL, br_s[1:] != br_s[:-1], out=new[1:])
    starts = np.flatnonzero(new)
    counts = np.diff(np.append(starts, order.size))
    # Representative hkl: lexicographic maximum of the group via one int64 key.
    off = max(hmax, kmax, lmax)
    base = 2 * off + 1
    ih_s, ik_s, il_s = ih[order], ik[order], il[order]
    hkl_key = (ih_s * base + (ik_s + (off - kmax))) * base + (il_s + (off - lmax))
    key_g = np.maximum.reduceat(hkl_key, starts)
    hkl_g = np.stack([key_g // (base * base), (key_g // base) % base - off, key_g % base - off], axis=1)
    # 2theta and d of the point of smallest |G| of each group.
    g_min = np.minimum.reduceat(gp[order], starts)
    theta_g = np.arcsin(np.minimum(wavelength * g_min / 2.0, 1.0))
    tt_g = np.degrees(2.0 * theta_g)
    br_g = br_s[starts]
    group_order = np.argsort(tt_g, kind="stable")  # output: ascending 2theta

    # f and LP depend on |G| only: evaluate them per group (the points of a
    # group agree in |G| to rounding).
    s_g = g_min / 2.0
    f_g = np.empty((len(elements), starts.size))
    for e, symbol in enumerate(elements):
        f_g[e] = scattering_factor(symbol, s_g)
        if b_iso.get(symbol):
            f_g[e] *= np.exp(-float(b_iso[symbol]) * s_g * s_g)
    lp = lorentz_polarization(theta_g)
    multiple = na * nb * nc
    weight = 2.0 * lp / float(multiple * multiple)  # 2: the Friedel mate
    if len(elements) == 1:
        point_f = None
        weight = weight * f_g[0] ** 2
    else:
        point_f = np.repeat(f_g, counts, axis=1)

    template = Reflections(
        two_theta=tt_g[group_order],
        d_spacing=1.0 / g_min[group_order],
        hkl=hkl_g[group_order].astype(np.int64),
        multiplicity=(2 * counts[group_order]).astype(np.int64),
        intensity=np.zeros(starts.size),
        is_bragg=br_g[group_order],
    )
    for arr in (template.two_theta, template.d_spacing, template.hkl, template.multiplicity, template.is_bragg):
        arr.setflags(write=False)
    return _Geometry(
        hmax=hmax,
        kmax=kmax,
        lmax=lmax,
        row_h=row_h,
        row_k=row_k,
        sel=flat[order],
        starts=starts,
        point_f=point_f,
        group_weight=weight,
        group_order=group_order,
        template=template,
    )


def _cis(phase: np.ndarray) -> np.ndarray:
    """exp(i phase) for real ``phase`` (faster than np.exp of a complex array)."""
    out = np.empty(phase.shape, dtype=np.complex128)
    np.cos(phase, out=out.real)
    np.sin(phase, out=out.imag)
    return out


def _phase_table(x: np.ndarray, n_max: int, negative: bool) -> np.ndarray:
    """exp(i n x) for n = 0..n_max (or -n_max..n_max when ``negative``), shape
    (b, n, N) for ``x`` (b, N).

    Only exp(i x) needs trigonometry: exp(i (m + j) x) = exp(i m x) exp(i j x)
    fills the table by doubling (rounding error ~ log2(n_max) ulp), and
    exp(-i n x) is the conjugate.
    """
    b, n_atoms = x.shape
    off = n_max if negative else 0
    table = np.empty((b, off + n_max + 1, n_atoms), dtype=np.complex128)
    pos = table[:, off:]
    pos[:, 0] = 1.0
    if n_max >= 1:
        pos[:, 1] = _cis(x)
    m = 1
    while m < n_max:
        step = min(m, n_max - m)
        np.multiply(pos[:, 1 : step + 1], pos[:, m : m + 1], out=pos[:, m + 1 : m + step + 1])
        m += step
    if negative and n_max >= 1:
        np.conjugate(pos[:, n_max:0:-1], out=table[:, :off])
    return table


def _intensities(geo: _Geometry, frac: np.ndarray, element_atoms: Sequence[np.ndarray]) -> np.ndarray:
    """Merged intensities (b, ngroups) in output order for frac (b, N, 3)."""
    b = frac.shape[0]
    nrows, nl = geo.row_h.size, 2 * geo.lmax + 1
    total: np.ndarray | None = None  # F, complex (b, npts)
    lattice_sum = np.empty((b, nrows, nl), dtype=np.complex128)
    for e, atoms in enumerate(element_atoms):
        x = frac[:, atoms, :] * (2.0 * math.pi)  # (b, n_e, 3)
        a_tab = _phase_table(x[:, :, 0], geo.hmax, negative=False)  # (b, nh, n_e)
        b_tab = _phase_table(x[:, :, 1], geo.kmax, negative=True)  # (b, nk, n_e)
        c_tab = _phase_table(x[:, :, 2], geo.lmax, negative=True).transpose(0, 2, 1)  # (b, n_e, nl)
        # Gamma[(h,k), l] = sum_j A_j(h) B_j(k) C_j(l) = ((A * B) @ C)[(h,k), l], in
        # blocks of rows small enough (~1 MB) for the product to stay in cache.
        rows = max(32, _BLOCK_BYTES // (16 * atoms.size))
        for i in range(b):
            for r0 in range(0, nrows, rows):
                r1 = min(nrows, r0 + rows)
                ab = a_tab[i, geo.row_h[r0:r1]]
                ab *= b_tab[i, geo.row_k[r0:r1]]  # (rows, n_e)
                np.matmul(ab, c_tab[i], out=lattice_sum[i, r0:r1])
        gam = np.take(lattice_sum.reshape(b, -1), geo.sel, axis=1)  # (b, npts)
        if geo.point_f is None:  # one element: f^2 is in the group weight
            total = gam
            break
        gam *= geo.point_f[e]
        if total is None:
            total = gam
        else:
            total += gam
    assert total is not None
    intensity = total.real**2 + total.imag**2
    merged = np.add.reduceat(intensity, geo.starts, axis=1) * geo.group_weight
    return merged[:, geo.group_order]


# --------------------------------------------------------------------------
# Public kernel
# --------------------------------------------------------------------------


def _check_range(two_theta_range: Sequence[float]) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in two_theta_range)
    except (TypeError, ValueError):
        raise ValueError(f"two_theta_range must be two numbers, got {two_theta_range!r}") from None
    if not (0.0 <= lo < hi <= 180.0):
        raise ValueError(f"two_theta_range must satisfy 0 <= min < max <= 180 degrees, got {two_theta_range!r}")
    return lo, hi


def _check_supercell(supercell: Sequence[int]) -> tuple[int, int, int]:
    try:
        values = tuple(int(v) for v in supercell)
    except (TypeError, ValueError):
        raise ValueError(f"supercell must be three positive integers, got {supercell!r}") from None
    if len(values) != 3 or min(values) < 1 or any(float(v) != float(w) for v, w in zip(values, supercell)):
        raise ValueError(f"supercell must be three positive integers, got {supercell!r}")
    return values  # type: ignore[return-value]


def centring_translations(structure: Any, symprec: float = 1e-3) -> list[list[float]]:
    """Pure lattice translations of a crystal's cell (its centring vectors), fractional.

    The translations t != 0 (mod 1) of the space-group operations whose rotation is the
    identity (spglib through pymatgen's ``SpacegroupAnalyzer``), in the basis of the
    given cell, each component reduced to [0, 1) and snapped to a fraction with
    denominator <= 24. Empty for a primitive cell; [[0, .5, .5], [.5, 0, .5], [.5, .5, 0]]
    for a conventional F cell; [[2/3, 1/3, 1/3], [1/3, 2/3, 2/3]] for R in hexagonal axes.
    The primitive lattice of the crystal is the cell's lattice plus these vectors
    (International Tables for Crystallography Vol. A, sec. 1.2 and 2.1.3).

    Args:
        structure: pymatgen ``Structure`` or ASE ``Atoms`` (converted), ordered.
        symprec: symmetry tolerance, Angstrom.

    Returns:
        Sorted list of [t1, t2, t3].
    """
    from fractions import Fraction

    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    if not hasattr(structure, "lattice"):
        from pymatgen.io.ase import AseAtomsAdaptor

        structure = AseAtomsAdaptor.get_structure(structure)
    dataset = SpacegroupAnalyzer(structure, symprec=symprec).get_symmetry_dataset()
    out = set()
    for rot, trans in zip(dataset.rotations, dataset.translations):
        if np.array_equal(rot, np.eye(3, dtype=rot.dtype)):
            t = tuple(float(Fraction(float(x) % 1.0).limit_denominator(24)) % 1.0 for x in trans)
            if any(t):
                out.add(t)
    return [list(t) for t in sorted(out)]


def diffract(
    cells: np.ndarray,
    frac_coords: np.ndarray,
    species: Sequence[str],
    *,
    wavelength: float | str = 1.5406,
    two_theta_range: tuple[float, float] = (10.0, 90.0),
    supercell: tuple[int, int, int] = (1, 1, 1),
    b_iso: Mapping[str, float] | None = None,
    centring: Sequence[Sequence[float]] = (),
) -> list[Reflections]:
    """Powder diffraction reflections of a batch of snapshots (see module docstring).

    Args:
        cells: (B, 3, 3) float64, lattice vectors as rows, Angstrom; or one (3, 3) cell.
        frac_coords: (B, N, 3) float64 fractional coordinates (need not be
            wrapped into [0, 1)); or (N, 3) for one snapshot.
        species: N element symbols, the same for every snapshot.
        wavelength: Angstrom, or a name of :data:`WAVELENGTHS`. The default
            1.5406 A is Cu K-alpha1.
        two_theta_range: (min, max) 2theta in degrees, 0 <= min < max <= 180;
            both ends inclusive.
        supercell: (na, nb, nc), how many parent cells each cell vector spans.
            Intensities are divided by (na nb nc)^2 (per parent cell) and a point
            is Bragg when h, k, l are multiples of na, nb, nc.
        b_iso: Optional isotropic Debye-Waller B per element, Angstrom^2:
            f_e -> f_e exp(-B_e s^2) (pymatgen's ``debye_waller_factors``).
            Leave it None for MD snapshots: their coordinates already carry the
            thermal motion, and averaging snapshot intensities produces the
            Debye-Waller decay; adding B would count it twice.
        centring: Centring translations of the parent cell, fractional
            (:func:`centring_translations`); a point is Bragg only when its
            parent-cell indices are integers with an integer product with each.
            Empty: the parent cell is taken as primitive.

    Returns:
        One :class:`Reflections` per snapshot, in input order.

    Raises:
        ValueError: bad shapes, non-finite input, a singular cell, an element
            without scattering factor (named), an unknown wavelength name, a bad
            range or supercell.
    """
    cells_arr = np.asarray(cells, dtype=np.float64)
    frac_arr = np.asarray(frac_coords, dtype=np.float64)
    if cells_arr.ndim == 2:
        cells_arr = cells_arr[None]
    if frac_arr.ndim == 2:
        frac_arr = frac_arr[None]
    if cells_arr.ndim != 3 or cells_arr.shape[1:] != (3, 3):
        raise ValueError(f"cells must have shape (B, 3, 3) or (3, 3), got {np.shape(cells)}")
    if frac_arr.ndim != 3 or frac_arr.shape[2] != 3:
        raise ValueError(f"frac_coords must have shape (B, N, 3) or (N, 3), got {np.shape(frac_coords)}")
    if cells_arr.shape[0] != frac_arr.shape[0]:
        raise ValueError(f"{cells_arr.shape[0]} cells but {frac_arr.shape[0]} coordinate sets")
    species = [str(s) for s in species]
    if len(species) != frac_arr.shape[1]:
        raise ValueError(f"{len(species)} species for {frac_arr.shape[1]} atoms")
    if not (np.isfinite(cells_arr).all() and np.isfinite(frac_arr).all()):
        raise ValueError("cells and frac_coords must be finite")
    volumes = np.abs(np.linalg.det(cells_arr)) if cells_arr.size else np.zeros(0)
    if np.any(volumes < 1e-6):
        raise ValueError("cells must be non-singular (volume > 0)")
    lam = resolve_wavelength(wavelength)
    tt_range = _check_range(two_theta_range)
    sc = _check_supercell(supercell)
    b_iso = dict(b_iso or {})
    centring_arr = np.asarray(centring, dtype=np.float64).reshape(-1, 3)

    elements = list(dict.fromkeys(species))
    for symbol in elements:
        _element_fit(symbol)  # raises ValueError naming an unknown element
    for symbol, value in b_iso.items():
        _element_fit(str(symbol))
        if not math.isfinite(float(value)):
            raise ValueError(f"b_iso[{symbol!r}] must be finite, got {value!r}")
    species_arr = np.asarray(species)
    element_atoms = [np.flatnonzero(species_arr == symbol) for symbol in elements]

    n_snap = cells_arr.shape[0]
    results: list[Reflections | None] = [None] * n_snap
    # Snapshots sharing a cell (NVT) share the geometry; group them.
    by_cell: dict[bytes, list[int]] = {}
    for i in range(n_snap):
        by_cell.setdefault(cells_arr[i].tobytes(), []).append(i)
    for indices in by_cell.values():
        geo = _geometry(cells_arr[indices[0]], lam, tt_range, sc, elements, b_iso, centring_arr)
        if geo is None:
            for i in indices:
                results[i] = _empty_reflections()
            continue
        per_snapshot = 16 * (
            geo.row_h.size * (2 * geo.lmax + 1)
            + 3 * geo.sel.size
            + frac_arr.shape[1] * (geo.hmax + 2 * geo.kmax + 2 * geo.lmax + 3)
        )
        chunk = max(1, _CHUNK_BYTES // per_snapshot)
        for start in range(0, len(indices), chunk):
            part = indices[start : start + chunk]
            merged = _intensities(geo, frac_arr[part], element_atoms)
            t = geo.template
            for row, i in enumerate(part):
                results[i] = Reflections(
                    two_theta=t.two_theta,
                    d_spacing=t.d_spacing,
                    hkl=t.hkl,
                    multiplicity=t.multiplicity,
                    intensity=merged[row],
                    is_bragg=t.is_bragg,
                )
    return results  # type: ignore[return-value]


def structure_arrays(structure: Any) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Cell (3, 3), fractional coordinates (N, 3) and element symbols of a structure.

    Args:
        structure: A pymatgen ``Structure`` or an ASE ``Atoms``, ordered.

    Returns:
        (cell, frac_coords, species).

    Raises:
        ValueError: partial occupancy, or an unsupported object.
    """
    try:
        from pymatgen.core import Structure
    except ImportError:  # pragma: no cover - pymatgen is a dependency
        Structure = None  # type: ignore[assignment,misc]
    if Structure is not None and isinstance(structure, Structure):
        if not structure.is_ordered:
            raise ValueError("structure has partial occupancies; only ordered structures are supported")
        species = [site.specie.symbol for site in structure]
        return np.array(structure.lattice.matrix, dtype=np.float64), np.array(structure.frac_coords), species
    from ase import Atoms

    if isinstance(structure, Atoms):
        occupancy = structure.info.get("occupancy")
        if occupancy:
            for site_occ in occupancy.values():
                if any(abs(float(v) - 1.0) > 1e-6 for v in dict(site_occ).values()):
                    raise ValueError("structure has partial occupancies; only ordered structures are supported")
        if not structure.cell.rank == 3:
            raise ValueError("ASE Atoms needs a 3-D cell")
        return (
            np.array(structure.cell.array, dtype=np.float64),
            structure.get_scaled_positions(wrap=False),
            structure.get_chemical_symbols(),
        )
    raise ValueError(f"expected a pymatgen Structure or ASE Atoms, got {type(structure).__name__}")


def diffract_structure(structure: Any, **kwargs: Any) -> Reflections:
    """Reflections of one pymatgen ``Structure`` or ASE ``Atoms``.

    Args:
        structure: An ordered pymatgen ``Structure`` or ASE ``Atoms``.
        **kwargs: Keyword arguments of :func:`diffract`.

    Returns:
        The :class:`Reflections` of the structure.

    Raises:
        ValueError: partial occupancy, unsupported object, or any error of
            :func:`diffract`.
    """
    cell, frac, species = structure_arrays(structure)
    return diffract(cell, frac, species, **kwargs)[0]


# --------------------------------------------------------------------------
# Broadening
# --------------------------------------------------------------------------


def two_theta_grid(start: float = 10.0, stop: float = 90.0, step: float = 0.02) -> np.ndarray:
    """Uniform 2theta grid start, start + step, ..., stop (inclusive), degrees.

    ``stop`` is included when (stop - start) / step is an integer up to float
    rounding (1e-9 relative); otherwise the grid ends at the last point below it.

    Raises:
        ValueError: step <= 0 or stop < start.
    """
    if not (step > 0 and math.isfinite(step)):
        raise ValueError(f"step must be > 0, got {step!r}")
    if not (stop >= start):
        raise ValueError(f"stop ({stop}) must be >= start ({start})")
    n = int(math.floor((stop - start) / step * (1.0 + 1e-12) + 1e-9)) + 1
    return start + step * np.arange(n, dtype=np.float64)


def extended_range(
    two_theta_range: Sequence[float], sigma_deg: float, wavelength: float = 1.0, q_margin_per_A: float = 0.0
) -> tuple[float, float]:
    """``two_theta_range`` widened by 5 sigma each side, clipped to [0, 180] degrees.

    Reflections just outside a pattern's range spill into it once broadened;
    computing them over this range keeps the edge intensity right. With
    ``q_margin_per_A`` > 0 the range is widened further by that much in
    |G| = 2 sin(theta)/lambda (1/Angstrom, ``wavelength`` in Angstrom): the reach
    of :func:`diffuse_continuum`'s kernel.
    """
    lo, hi = (float(v) for v in two_theta_range)
    lo, hi = max(0.0, lo - 5.0 * sigma_deg), min(180.0, hi + 5.0 * sigma_deg)
    if q_margin_per_A > 0.0:
        g_lo = max(0.0, _g_of(lo, wavelength) - q_margin_per_A)
        g_hi = _g_of(hi, wavelength) + q_margin_per_A
        lo = _two_theta_of(g_lo, wavelength)
        hi = 180.0 if g_hi * wavelength >= 2.0 else _two_theta_of(g_hi, wavelength)
    return lo, hi


def _g_of(two_theta_deg: Any, wavelength: float) -> Any:
    """|G| = 2 sin(theta)/lambda, 1/Angstrom, of 2theta in degrees."""
    return 2.0 * np.sin(np.radians(np.asarray(two_theta_deg, dtype=np.float64) / 2.0)) / wavelength


def _two_theta_of(g: Any, wavelength: float) -> Any:
    """2theta in degrees of |G| (1/Angstrom), clipped at 180."""
    return np.degrees(2.0 * np.arcsin(np.minimum(np.asarray(g, dtype=np.float64) * wavelength / 2.0, 1.0)))


def debye_sphere_radius(volume_A3: float) -> float:
    """Radius of the sphere of volume 1/V in reciprocal space, 1/Angstrom: (3 / (4 pi V))^(1/3).

    ``volume_A3`` is the simulation cell (supercell) volume, Angstrom^3; its reciprocal cell,
    the reciprocal-space volume one diffuse sample stands for, has volume 1/V (Debye's
    equal-volume sphere, see the module docstring).

    Raises:
        ValueError: volume not positive.
    """
    if not volume_A3 > 0:
        raise ValueError(f"volume_A3 must be > 0, got {volume_A3!r}")
    return (3.0 / (4.0 * math.pi * float(volume_A3))) ** (1.0 / 3.0)


def diffuse_continuum(
    two_theta: np.ndarray,
    intensity: np.ndarray,
    multiplicity: np.ndarray,
    grid: np.ndarray,
    wavelength: float,
    volume_A3: float,
    bragg_fraction: float,
) -> np.ndarray:
    """Thermal diffuse scattering of a supercell's samples as a smooth function of |G|, on a 2theta grid.

    The diffuse reflections are samples of a continuous intensity at the supercell's
    reciprocal lattice points (module docstring). Their mean per point, with the
    Lorentz-polarization factor and the q^2 of one-phonon scattering taken out (first-order
    thermal diffuse scattering grows as |G|^2 f^2 kT / (m omega^2); Warren, *X-Ray
    Diffraction*, 1969, ch. 11), is estimated as a smooth function of q = |G| =
    2 sin(theta)/lambda by Nadaraya-Watson kernel regression (Nadaraya, Theory Probab.
    Appl. 9, 141 (1964); Watson, Sankhya A 26, 359 (1964)) with a Gaussian kernel of
    standard deviation r = :func:`debye_sphere_radius` (the reach of one sample):

        z(q) = sum_i (I_i / (LP_i q_i^2)) K(q - q_i) / sum_i m_i K(q - q_i),

    I_i the intensity and m_i the multiplicity (points) of reflection i; taking out q^2
    removes most of the bias a kernel average has where the points thin out towards q = 0.
    The diffuse pattern is then z(q) q^2 times the number of diffuse points per unit |G|,
    4 pi q^2 V (1 - f_B) (V the cell volume; a fraction f_B of the points is Bragg), times
    LP(q), converted to intensity per degree 2theta (dq/d2theta = cos(theta) pi / (180 lambda)).
    Unlike drawing each sample as a sharp reflection (false superlattice peaks) or
    spreading it over a sphere around itself (ripples where the lattice's shells crowd,
    holes at the Bragg points, whose own diffuse share no sample measures), the
    estimate has neither. Below the first sample the denominator is held at its value
    there, so the estimate fades with the kernel instead of extrapolating to 2theta = 0.
    Above the last sample it is zero (compute samples beyond the grid: :func:`extended_range`).
    A final factor per pattern (a few %: the kernel averages the steep LP(q) and the
    fade) makes the integral over |G| equal the samples' summed intensity, so the diffuse
    intensity is kept (to the grid's interpolation, ~1e-3) and only redistributed in |G|.

    Args:
        two_theta: (n,) diffuse reflection positions, degrees.
        intensity: (n,) or (m, n) intensities (per parent cell, LP included).
        multiplicity: (n,) points per reflection.
        grid: (n_grid,) uniform ascending 2theta grid, degrees.
        wavelength: Angstrom.
        volume_A3: simulation cell volume, Angstrom^3.
        bragg_fraction: fraction of the supercell's reciprocal lattice points that are
            Bragg points: 1 / (primitive parent cells in the supercell).

    Returns:
        (n_grid,) or (m, n_grid) float64, intensity per degree 2theta.

    Raises:
        ValueError: shape mismatch, volume not positive, bragg_fraction outside [0, 1).
    """
    from scipy.ndimage import gaussian_filter1d

    tt = np.asarray(two_theta, dtype=np.float64).ravel()
    weights = np.asarray(intensity, dtype=np.float64)
    mult = np.asarray(multiplicity, dtype=np.float64).ravel()
    grid = np.asarray(grid, dtype=np.float64)
    if weights.ndim not in (1, 2) or weights.shape[-1] != tt.size or mult.size != tt.size:
        raise ValueError(f"intensity must have shape ({tt.size},) or (m, {tt.size}) and multiplicity ({tt.size},)")
    if not 0.0 <= bragg_fraction < 1.0:
        raise ValueError(f"bragg_fraction must be in [0, 1), got {bragg_fraction!r}")
    radius = debye_sphere_radius(volume_A3)
    out = np.zeros(weights.shape[:-1] + (grid.size,))
    if tt.size == 0:
        return out
    g = _g_of(tt, wavelength)
    lp = lorentz_polarization(np.radians(tt / 2.0))
    # Kernel sums on a fine uniform |G| mesh (binning then Gaussian filtering).
    dq = radius / 40.0
    g_grid = _g_of(np.clip(grid, 1e-6, 180.0), wavelength)
    n_mesh = int(math.ceil(max(g.max(), g_grid.max()) / dq)) + 2
    pos = g / dq
    lo = np.floor(pos).astype(np.int64)
    frac = pos - lo
    def mesh(values: np.ndarray) -> np.ndarray:  # linear binning, then the Gaussian kernel
        flat = np.atleast_2d(values)
        res = np.zeros((flat.shape[0], n_mesh + 1))
        for row, v in enumerate(flat):
            res[row] = np.bincount(lo, v * (1.0 - frac), minlength=n_mesh + 1) + np.bincount(
                lo + 1, v * frac, minlength=n_mesh + 1)
        return gaussian_filter1d(res, radius / dq, axis=-1, mode="constant", truncate=6.0)

    mesh_g = dq * np.arange(n_mesh + 1)
    counts = mesh(mult)[0]
    # Below the first sample, hold the denominator at its value there: the estimate
    # then fades with the kernel's tail instead of extrapolating a plateau to 2theta = 0.
    first = min(int(round(g.min() / dq)), n_mesh)
    counts[:first] = counts[first]
    continuum = mesh(weights / (lp * g * g)) / np.maximum(counts, 1e-300)  # mean per point / (LP q^2)
    mesh_theta = np.arcsin(np.clip(mesh_g * wavelength / 2.0, 1e-9, 1.0 - 1e-12))
    continuum *= 4.0 * math.pi * mesh_g**4 * float(volume_A3) * (1.0 - bragg_fraction) * lorentz_polarization(
        mesh_theta)  # intensity per unit |G|
    continuum[:, mesh_g > g.max()] = 0.0  # no sample beyond the last one
    # One factor per pattern makes the estimate keep the samples' intensity exactly.
    total = continuum.sum(axis=1) * dq
    continuum *= (np.atleast_2d(weights).sum(axis=1) / np.where(total > 0, total, 1.0))[:, None]
    theta_grid = np.radians(np.clip(grid, 0.0, 180.0) / 2.0)
    per_degree = np.cos(theta_grid) * math.pi / (180.0 * wavelength)  # d|G| / d(2theta)
    result = np.stack([np.interp(g_grid, mesh_g, row) for row in continuum]) * per_degree
    return result.reshape(out.shape)


def _profile_block(
    kind: str, center: np.ndarray, width: np.ndarray, x0: float, step: float, n_grid: int
) -> tuple[np.ndarray, np.ndarray]:
    """Unit-area profiles of a block of peaks on the grid, in 1/degree.

    ``kind``: ``"sampled"`` (Gaussian of std ``width`` at the grid points,
    +-6 sigma), ``"binned"`` (the same Gaussian integrated over each grid bin,
    erf differences), ``"lorentz"`` (Lorentzian of half width ``width``
    integrated over bins, +-20 half widths, renormalized to unit area).

    Returns (idx, val), both (n_peaks, W): grid index (clipped into the grid)
    and value (0 where the window leaves the grid). All peaks of the block get
    the widest window of the block, W points from their first one.
    """
    if kind == "lorentz":
        half, pad = 20.0 * width, 0.5 * step
    else:
        half, pad = 6.0 * width, (0.0 if kind == "sampled" else 0.5 * step)
    lo = np.ceil((center - half - pad - x0) / step).astype(np.int64)
    hi = np.floor((center + half + pad - x0) / step).astype(np.int64)
    n_win = int((hi - lo).max()) + 1
    offsets = np.arange(n_win + (0 if kind == "sampled" else 1), dtype=np.int64)
    c = center[:, None]
    w = width[:, None]
    if kind == "sampled":
        idx = lo[:, None] + offsets
        z = (x0 + idx * step - c) / w
        val = np.exp(-0.5 * z * z) / (w * math.sqrt(2.0 * math.pi))
    else:
        edges = x0 + (lo[:, None] + offsets - 0.5) * step  # n_win + 1 bin edges
        if kind == "binned":
            from scipy.special import ndtr

            cdf = ndtr((edges - c) / w)
            val = np.diff(cdf, axis=1) / step
        else:
            cdf = np.arctan((edges - c) / w)
            val = np.diff(cdf, axis=1) / ((cdf[:, -1:] - cdf[:, :1]) * step)
        idx = lo[:, None] + offsets[:-1]
    outside = (idx < 0) | (idx >= n_grid)
    if outside.any():
        val[outside] = 0.0
        np.clip(idx, 0, n_grid - 1, out=idx)
    return idx, val


def broaden(
    two_theta: np.ndarray,
    intensity: np.ndarray,
    grid: np.ndarray,
    sigma_deg: float = 0.3,
    *,
    profile: str = "gaussian",
    eta: float = 0.5,
    caglioti: tuple[float, float, float] | None = None,
) -> np.ndarray:
    """Sum of one unit-area peak profile per reflection, scaled by its intensity.

    Each reflection i contributes ``intensity[i] * P(x - two_theta[i])`` with a
    profile P of unit area (1/degree), so the result is intensity per degree
    2theta and ``sum(y) * step == sum(intensity)`` for peaks more than 6 sigma
    inside the grid (to ~1e-9 relative). A Gaussian with sigma >= 2.5 grid steps
    is evaluated at the grid points; a narrower one is integrated over each grid
    bin [x - step/2, x + step/2] (erf differences divided by step), so its area
    is exact wherever it sits between grid points. Each peak is evaluated only
    within +-6 sigma.

    Args:
        two_theta: (n,) peak positions, degrees.
        intensity: (n,) peak areas, or (m, n) for m patterns sharing positions.
        grid: (n_grid,) uniform, ascending 2theta grid, degrees (see
            :func:`two_theta_grid`).
        sigma_deg: Gaussian standard deviation in degrees 2theta (ignored when
            ``caglioti`` is given); FWHM = 2 sqrt(2 ln 2) sigma.
        profile: ``"gaussian"`` or ``"pseudo_voigt"``: (1 - eta) Gaussian +
            eta Lorentzian of the same FWHM. The Lorentzian is integrated over
            bins, truncated at +-10 FWHM and renormalized to unit area (its
            tails beyond are dropped, ~3 % of a Lorentzian's area).
        eta: Lorentzian fraction of the pseudo-Voigt, in [0, 1].
        caglioti: Optional (U, V, W), deg^2: per-peak FWHM^2 = U tan^2(theta)
            + V tan(theta) + W (Caglioti, Paoletti & Ricci, Nucl. Instrum. 3,
            223 (1958)), replacing ``sigma_deg``.

    Returns:
        (n_grid,) float64, or (m, n_grid) for 2-D ``intensity``.

    Raises:
        ValueError: non-uniform or too short grid, non-positive width, shape
            mismatch, unknown profile or eta outside [0, 1].
    """
    tt = np.asarray(two_theta, dtype=np.float64).ravel()
    weights = np.asarray(intensity, dtype=np.float64)
    grid = np.asarray(grid, dtype=np.float64)
    if weights.ndim not in (1, 2) or weights.shape[-1] != tt.size:
        raise ValueError(f"intensity must have shape ({tt.size},) or (m, {tt.size}), got {weights.shape}")
    if grid.ndim != 1 or grid.size < 2:
        raise ValueError("grid must be a 1-D array of at least two points")
    step = (grid[-1] - grid[0]) / (grid.size - 1)
    if not step > 0 or np.max(np.abs(np.diff(grid) - step)) > 1e-6 * step:
        raise ValueError("grid must be uniform and ascending")
    if profile not in ("gaussian", "pseudo_voigt"):
        raise ValueError(f"profile must be 'gaussian' or 'pseudo_voigt', got {profile!r}")
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must be in [0, 1], got {eta!r}")
    if caglioti is not None:
        u, v, w = (float(c) for c in caglioti)
        tan_t = np.tan(np.radians(tt / 2.0))
        fwhm2 = u * tan_t**2 + v * tan_t + w
        if np.any(~(fwhm2 > 0)):
            raise ValueError("Caglioti FWHM^2 = U tan^2 + V tan + W must be > 0 at every peak")
        sigma = np.sqrt(fwhm2) / _FWHM_PER_SIGMA
    else:
        if not (sigma_deg > 0 and math.isfinite(sigma_deg)):
            raise ValueError(f"sigma_deg must be > 0, got {sigma_deg!r}")
        sigma = np.full(tt.size, float(sigma_deg))
    n_grid = grid.size
    out_shape = (n_grid,) if weights.ndim == 1 else (weights.shape[0], n_grid)
    if tt.size == 0:
        return np.zeros(out_shape)
    x0 = float(grid[0])

    # (kind, width, scale) of each profile component.
    components: list[tuple[str, np.ndarray, float]] = []
    gauss_scale = 1.0 - eta if profile == "pseudo_voigt" else 1.0
    if gauss_scale > 0.0:
        components.append(("gauss", sigma, gauss_scale))
    if profile == "pseudo_voigt" and eta > 0.0:
        components.append(("lorentz", sigma * (_FWHM_PER_SIGMA / 2.0), eta))

    out = np.zeros(out_shape)
    for kind, width, scale in components:
        if kind == "gauss":
            sampled = width >= 2.5 * step
            groups = [("sampled", np.flatnonzero(sampled)), ("binned", np.flatnonzero(~sampled))]
        else:
            groups = [("lorentz", np.arange(tt.size))]
        for sub_kind, members in groups:
            if members.size == 0:
                continue
            # Blocks of peaks of similar width, a few MB of work arrays each.
            members = members[np.argsort(width[members], kind="stable")]
            n_win = 2.0 * (20.0 if sub_kind == "lorentz" else 6.0) * float(width[members].max()) / step + 3.0
            block = max(1, int(2**19 // n_win))
            for start in range(0, members.size, block):
                peaks = members[start : start + block]
                idx, val = _profile_block(sub_kind, tt[peaks], width[peaks], x0, step, n_grid)
                if scale != 1.0:
                    val *= scale
                if weights.ndim == 1:
                    val *= weights[peaks][:, None]
                    out += np.bincount(idx.ravel(), weights=val.ravel(), minlength=n_grid)
                else:
                    from scipy.sparse import csr_matrix

                    cols = np.repeat(np.arange(peaks.size), idx.shape[1])
                    kernel = csr_matrix((val.ravel(), (idx.ravel(), cols)), shape=(n_grid, peaks.size))
                    out += (kernel @ weights[:, peaks].T).T
    return out


def powder_pattern(
    reflections: Reflections,
    intensity: np.ndarray,
    grid: np.ndarray,
    sigma_deg: float,
    wavelength: float,
    volume_A3: float,
    bragg_fraction: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Broadened pattern of reflections: Bragg sharp, thermal diffuse scattering as a continuum.

    Bragg reflections get the instrument Gaussian (:func:`broaden`); the diffuse ones
    become :func:`diffuse_continuum` on a grid padded by 6 sigma, then convolved with the
    same unit-area Gaussian (sampled, renormalized; ``scipy.ndimage.gaussian_filter1d``).

    Args:
        reflections: positions, multiplicities and flags shared by the patterns.
        intensity: (n,) or (m, n) intensities on those reflections.
        grid: (n_grid,) uniform ascending 2theta grid, degrees.
        sigma_deg: instrument Gaussian standard deviation, degrees 2theta.
        wavelength: Angstrom.
        volume_A3: simulation cell volume, Angstrom^3.
        bragg_fraction: 1 / (primitive parent cells in the supercell).

    Returns:
        (total, bragg): intensity per degree on ``grid``, shape (n_grid,) or (m, n_grid);
        total = Bragg + diffuse.
    """
    from scipy.ndimage import gaussian_filter1d

    weights = np.asarray(intensity, dtype=np.float64)
    bragg_mask = np.asarray(reflections.is_bragg, dtype=bool)
    tt = np.asarray(reflections.two_theta)
    bragg = broaden(tt[bragg_mask], weights[..., bragg_mask], grid, sigma_deg)
    step = (grid[-1] - grid[0]) / (grid.size - 1)
    pad = int(math.ceil(6.0 * sigma_deg / step))
    padded = grid[0] + step * np.arange(-pad, grid.size + pad)
    diffuse = diffuse_continuum(tt[~bragg_mask], weights[..., ~bragg_mask], reflections.multiplicity[~bragg_mask],
                                padded, wavelength, volume_A3, bragg_fraction)
    diffuse = gaussian_filter1d(diffuse, sigma_deg / step, axis=-1, mode="constant", truncate=6.0)
    return bragg + diffuse[..., pad : pad + grid.size], bragg


# --------------------------------------------------------------------------
# Workflow stage
# --------------------------------------------------------------------------


def _frame_info(atoms: Any, index: int) -> tuple[int, float]:
    step = atoms.info.get("step", index)
    time_fs = atoms.info.get("time_fs", float(index))
    return int(step), float(time_fs)


def run_stage(
    snapshots_path: str | os.PathLike[str],
    reflections_out: str | os.PathLike[str],
    patterns_out: str | os.PathLike[str],
    average_out: str | os.PathLike[str] | None = None,
    *,
    wavelength: float | str,
    two_theta_range: Sequence[float],
    two_theta_step: float,
    sigma_deg: float,
    supercell: Sequence[int],
    centring: Sequence[Sequence[float]] = (),
) -> None:
    """XRD of every snapshot of a trajectory: reflections (Parquet), patterns and their average (npz).

    Reflections are computed over :func:`extended_range` (widened by three widths of the
    diffuse kernel) so peaks and diffuse samples just outside the range contribute;
    the Parquet file holds all of them. Patterns: :func:`powder_pattern` (Bragg sharp,
    diffuse samples as a continuum in |G| for each snapshot's cell).

    Args:
        snapshots_path: ASE-readable trajectory; frames share species order;
            ``atoms.info["step"]`` (int) and ``["time_fs"]`` (float), else the
            frame index.
        reflections_out: Parquet with columns snapshot (int32, frame index),
            step (int64), two_theta, d_spacing, h, k, l, multiplicity,
            intensity, is_bragg.
        patterns_out: npz with two_theta (n_grid,), intensity and
            intensity_bragg (n_snap, n_grid) float64 (Bragg + diffuse continuum,
            and Bragg only, per degree), step (n_snap,) int64 and
            time_fs (n_snap,) float64.
        average_out: npz of the run's ensemble average, :func:`mdxrd.average.run_stage`
            (None: not written).
        wavelength: Angstrom or a name of :data:`WAVELENGTHS`.
        two_theta_range: (min, max) of the pattern grid, degrees.
        two_theta_step: Grid step, degrees.
        sigma_deg: Gaussian sigma, degrees.
        supercell: Supercell multiple (na, nb, nc) of the snapshots.
        centring: Centring translations of the parent cell (:func:`centring_translations`).

    Raises:
        ValueError: empty trajectory, frames with different species, or any
            error of :func:`diffract` / :func:`broaden`.
    """
    import ase.io
    import pyarrow as pa
    import pyarrow.parquet as pq

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
    frac = np.stack([a.get_scaled_positions(wrap=False) for a in frames])
    info = [_frame_info(a, i) for i, a in enumerate(frames)]
    steps = np.array([s for s, _ in info], dtype=np.int64)
    times = np.array([t for _, t in info], dtype=np.float64)

    lo, hi = _check_range(two_theta_range)
    grid = two_theta_grid(lo, hi, float(two_theta_step))
    lam = resolve_wavelength(wavelength)
    volumes = np.abs(np.linalg.det(cells))
    # The diffuse estimate at the grid's ends needs samples up to ~3 kernel widths beyond.
    ext = extended_range((lo, hi), float(sigma_deg), lam, 3.0 * debye_sphere_radius(float(volumes.min())))
    bragg_fraction = 1.0 / (int(np.prod(supercell)) * (1 + len(centring)))
    n_snap = len(frames)
    patterns = np.zeros((n_snap, grid.size))
    patterns_bragg = np.zeros((n_snap, grid.size))

    # The kernel bounds its own work memory; calls of a few hundred snapshots
    # bound the memory of the reflections held before they are written.
    per_call = 256
    schema = pa.schema(
        [
            ("snapshot", pa.int32()),
            ("step", pa.int64()),
            ("two_theta", pa.float64()),
            ("d_spacing", pa.float64()),
            ("h", pa.int64()),
            ("k", pa.int64()),
            ("l", pa.int64()),
            ("multiplicity", pa.int64()),
            ("intensity", pa.float64()),
            ("is_bragg", pa.bool_()),
        ]
    )
    with atomic_path(reflections_out) as tmp_refl:
        with pq.ParquetWriter(str(tmp_refl), schema) as writer:
            for start in range(0, n_snap, per_call):
                idx = list(range(start, min(n_snap, start + per_call)))
                refls = diffract(
                    cells[idx],
                    frac[idx],
                    species,
                    wavelength=wavelength,
                    two_theta_range=ext,
                    supercell=tuple(supercell),  # type: ignore[arg-type]
                    centring=centring,
                )
                _broaden_batch(refls, idx, grid, float(sigma_deg), lam, volumes, bragg_fraction, patterns,
                               patterns_bragg)
                counts = np.array([len(r) for r in refls])
                columns: dict[str, np.ndarray] = {
                    "snapshot": np.repeat(np.array(idx, dtype=np.int32), counts),
                    "step": np.repeat(steps[idx], counts),
                }
                dicts = [r.to_dict() for r in refls]
                for name in REFLECTION_COLUMNS:
                    columns[name] = np.concatenate([d[name] for d in dicts])
                writer.write_table(pa.table(columns, schema=schema))
    with atomic_path(patterns_out) as tmp_pat:
        with open(tmp_pat, "wb") as fh:
            np.savez(
                fh,
                two_theta=grid,
                intensity=patterns,
                intensity_bragg=patterns_bragg,
                step=steps,
                time_fs=times,
            )
    if average_out is not None:
        from mdxrd.average import run_stage as average_stage

        average_stage(patterns_out, average_out)
    log.info("xrd: %d snapshots of %d atoms -> %s, %s", n_snap, len(species), reflections_out, patterns_out)


def _broaden_batch(
    refls: Sequence[Reflections],
    idx: Sequence[int],
    grid: np.ndarray,
    sigma_deg: float,
    wavelength: float,
    volumes: np.ndarray,
    bragg_fraction: float,
    patterns: np.ndarray,
    patterns_bragg: np.ndarray,
) -> None:
    """Broaden snapshots into rows ``idx`` of the outputs (:func:`powder_pattern`), one call per
    run of snapshots that share reflection positions; ``volumes`` (n_snap,) cell volumes, Angstrom^3."""
    pos = 0
    while pos < len(refls):
        end = pos + 1
        while end < len(refls) and refls[end].two_theta is refls[pos].two_theta:
            end += 1
        r0 = refls[pos]
        rows = list(idx[pos:end])
        weights = np.stack([r.intensity for r in refls[pos:end]])
        patterns[rows], patterns_bragg[rows] = powder_pattern(r0, weights, grid, sigma_deg, wavelength,
                                                              float(volumes[rows[0]]), bragg_fraction)
        pos = end


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


def read_structure(path: str | os.PathLike[str]) -> Any:
    """Read a structure file with pymatgen (CIF, POSCAR, ...), else with ASE.

    Raises:
        ValueError: neither can read it.
    """
    from pymatgen.core import Structure

    try:
        return Structure.from_file(str(path))
    except Exception as pmg_err:  # noqa: BLE001 - fall back to ASE for any failure
        import ase.io

        try:
            return ase.io.read(str(path))
        except Exception as ase_err:  # noqa: BLE001
            raise ValueError(f"cannot read {path}: pymatgen: {pmg_err}; ASE: {ase_err}") from None


def _write_columns(columns: Mapping[str, np.ndarray], path: Path) -> None:
    import pandas as pd

    suffix = path.suffix.lower()
    frame = pd.DataFrame({name: np.asarray(col) for name, col in columns.items()})
    with atomic_path(path) as tmp:
        if suffix == ".csv":
            frame.to_csv(tmp, index=False)
        elif suffix in (".parquet", ".pq"):
            frame.to_parquet(tmp, index=False)
        else:  # checked before computing
            raise AssertionError(suffix)


def _cmd_xrd(args: argparse.Namespace) -> int:
    from mdxrd.cli import UserError

    out = Path(args.output)
    if out.suffix.lower() not in (".csv", ".parquet", ".pq"):
        raise UserError(f"output {out} must end in .csv or .parquet")
    if args.pattern is not None and Path(args.pattern).suffix.lower() != ".csv":
        raise UserError(f"pattern {args.pattern} must end in .csv")
    if not Path(args.structure).is_file():
        raise UserError(f"no such file: {args.structure}")
    try:
        structure = read_structure(args.structure)
        tt_range = _check_range((args.two_theta_min, args.two_theta_max))
        kwargs: dict[str, Any] = {
            "wavelength": resolve_wavelength(args.wavelength),
            "supercell": _check_supercell(args.supercell),
        }
        if args.pattern is not None:
            if not args.sigma > 0 or not args.step > 0:
                raise ValueError("--sigma and --step must be > 0")
            refl_all = diffract_structure(structure, two_theta_range=extended_range(tt_range, args.sigma), **kwargs)
            inside = (refl_all.two_theta >= tt_range[0]) & (refl_all.two_theta <= tt_range[1])
            refl = refl_all.select(inside)
        else:
            refl = diffract_structure(structure, two_theta_range=tt_range, **kwargs)
    except ValueError as err:
        raise UserError(str(err)) from None
    _write_columns(refl.to_dict(), out)
    if args.pattern is not None:
        grid = two_theta_grid(tt_range[0], tt_range[1], args.step)
        y = broaden(refl_all.two_theta, refl_all.intensity, grid, args.sigma)
        _write_columns({"two_theta": grid, "intensity": y}, Path(args.pattern))
    log.info("xrd: %d reflections -> %s", len(refl), out)
    return 0


def _cmd_xrd_stage(args: argparse.Namespace) -> int:
    from mdxrd.cli import UserError

    from mdxrd.io import load_params

    try:
        params = load_params(args.params)
    except ValueError as err:
        raise UserError(f"--params: {err}") from None
    required = ("wavelength", "two_theta_range", "two_theta_step", "sigma_deg", "supercell")
    if not isinstance(params, dict) or any(key not in params for key in required):
        raise UserError(f"--params must be a JSON object with keys {', '.join(required)}")
    unknown = sorted(set(params) - set(required))
    if unknown:
        raise UserError(f"--params has unknown keys {', '.join(unknown)}")
    if not Path(args.snapshots).is_file():
        raise UserError(f"no such file: {args.snapshots}")
    centring: list[list[float]] = []
    if args.structure_info:
        from mdxrd.io import read_json

        centring = read_json(args.structure_info)["centring_translations"]
    try:
        run_stage(args.snapshots, args.reflections, args.patterns, args.average, centring=centring,
                  **{key: params[key] for key in required})
    except ValueError as err:
        raise UserError(str(err)) from None
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register the ``xrd`` and ``xrd-stage`` subcommands."""
    p = subparsers.add_parser(
        "xrd",
        help="powder XRD reflections (and optionally a broadened pattern) of one structure file",
        description="Powder XRD reflections of a structure file read by pymatgen (CIF, POSCAR, ...) or ASE.",
    )
    p.add_argument("structure", help="structure file (CIF, POSCAR, extxyz, ...)")
    p.add_argument("--wavelength", default="1.5406", help="Angstrom or a name: " + ", ".join(WAVELENGTHS))
    p.add_argument("--two-theta-min", type=float, default=10.0, help="degrees (default 10)")
    p.add_argument("--two-theta-max", type=float, default=90.0, help="degrees (default 90)")
    p.add_argument("--supercell", type=int, nargs=3, default=[1, 1, 1], metavar=("NA", "NB", "NC"))
    p.add_argument("-o", "--output", required=True, help="reflections, .csv or .parquet")
    p.add_argument("--pattern", help="also write the broadened pattern (two_theta, intensity) to this .csv")
    p.add_argument("--sigma", type=float, default=0.3, help="Gaussian sigma, degrees (default 0.3)")
    p.add_argument("--step", type=float, default=0.02, help="pattern grid step, degrees (default 0.02)")
    p.set_defaults(func=_cmd_xrd)

    s = subparsers.add_parser(
        "xrd-stage",
        help="workflow stage: XRD of every snapshot of a trajectory",
        description="Reflections (Parquet) and broadened patterns (npz) of every snapshot, and their average.",
    )
    s.add_argument("--snapshots", required=True, help="ASE trajectory of snapshots")
    s.add_argument("--reflections", required=True, help="output Parquet")
    s.add_argument("--patterns", required=True, help="output .npz")
    s.add_argument("--average", help="output .npz: the run's average pattern (mdxrd.average)")
    s.add_argument("--structure-info", help="structure stage JSON: centring_translations of the parent cell "
                   "(without it the parent cell counts as primitive)")
    s.add_argument(
        "--params",
        required=True,
        help="JSON object: wavelength, two_theta_range, two_theta_step, sigma_deg, supercell",
    )
    s.set_defaults(func=_cmd_xrd_stage)
