r"""Powder X-ray diffraction reflections of a batch of crystal snapshots (the fast XRD kernel of mdxrd).

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

Patterns: :mod:`mdxrd.xrd.patterns` turns reflections into patterns on a
:math:`2\theta` grid (instrument and sample profiles, thermal diffuse continuum).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pyarrow as pa  # annotations only; at run time to_table imports it

#: X-ray wavelengths in Angstrom, by name. Values equal those of pymatgen's
#: ``pymatgen.analysis.diffraction.xrd.WAVELENGTHS`` (International Tables for
#: Crystallography Vol. C, Table 4.2.2.1) except ``"CuKa1"``, which is 1.5406 A as
#: METHOD.md and most powder software quote it (pymatgen lists 1.54056 A; Hoelzer
#: et al., Phys. Rev. A 56, 4554 (1997) give 1.540598 A). ``"XKa"`` is the weighted
#: K-alpha average (2 Ka1 + Ka2) / 3, not K-alpha1. K-alpha1 + K-alpha2 doublets are
#: named ``"XKa12"`` (:data:`mdxrd.xrd.patterns.KALPHA_DOUBLETS`).
WAVELENGTHS: dict[str, float] = {
    "CuKa1": 1.5406,
    "CuKa2": 1.54439,
    "CuKa": 1.54184,
    "MoKa1": 0.70930,
    "MoKa2": 0.71359,
    "MoKa": 0.71073,
    "CoKa1": 1.78896,
    "CoKa2": 1.79285,
    "CoKa": 1.79026,
    "FeKa1": 1.93604,
    "FeKa2": 1.93998,
    "FeKa": 1.93735,
    "CrKa1": 2.28970,
    "CrKa2": 2.29361,
    "CrKa": 2.29100,
    "AgKa1": 0.559421,
    "AgKa2": 0.563813,
    "AgKa": 0.560885,
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
        import pyarrow as pa  # lazy: pyarrow 0.10 s; loaded at Snakefile parse

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


def lorentz_polarization(theta: np.ndarray, monochromator_two_theta_deg: float | None = None) -> np.ndarray:
    """Lorentz-polarization factor of a powder in Bragg-Brentano geometry.

    Unpolarized beam (the default):

        LP = (1 + cos^2 2theta) / (sin^2 theta cos theta)

    (Warren, *X-Ray Diffraction*, 1969, ch. 4). With a crystal monochromator of
    diffraction angle 2theta_M in the diffracted beam, the polarization term becomes

        (1 + cos^2 2theta_M cos^2 2theta) / (1 + cos^2 2theta_M)

    (Azaroff, Acta Cryst. 8, 701 (1955); International Tables for Crystallography
    Vol. C, sec. 6.2.2), here times 2 so that 2theta_M = 0 gives the unpolarized factor.

    Args:
        theta: Bragg angle(s) theta (half of 2theta), radians, in (0, pi/2).
        monochromator_two_theta_deg: 2theta_M of the monochromator, degrees (e.g.
            26.6 for graphite (002) with Cu K-alpha); None: no monochromator.

    Returns:
        LP, dimensionless, same shape as ``theta``.
    """
    cos2 = np.cos(2.0 * theta) ** 2
    if monochromator_two_theta_deg is None:
        polarization = 1.0 + cos2
    else:
        m = math.cos(math.radians(float(monochromator_two_theta_deg))) ** 2
        polarization = 2.0 * (1.0 + m * cos2) / (1.0 + m)
    return polarization / (np.sin(theta) ** 2 * np.cos(theta))


@functools.cache
def _scattering_params() -> Mapping[str, Any]:
    from pymatgen.analysis.diffraction.xrd import ATOMIC_SCATTERING_PARAMS  # lazy: 1.1 s; loaded at Snakefile parse

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
    from pymatgen.core.periodic_table import Element  # lazy: pymatgen.core 0.14 s; loaded at Snakefile parse

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
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer  # lazy: 0.37 s; loaded at Snakefile parse

    if not hasattr(structure, "lattice"):
        from pymatgen.io.ase import AseAtomsAdaptor  # lazy: pymatgen.io.ase 0.50 s; loaded at Snakefile parse

        structure = AseAtomsAdaptor.get_structure(structure)
    dataset = SpacegroupAnalyzer(structure, symprec=symprec, angle_tolerance=-1).get_symmetry_dataset()
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
        from pymatgen.core import Structure  # lazy: pymatgen.core 0.15 s; loaded at Snakefile parse
    except ImportError:  # pragma: no cover - pymatgen is a dependency
        Structure = None  # type: ignore[assignment,misc]
    if Structure is not None and isinstance(structure, Structure):
        if not structure.is_ordered:
            raise ValueError("structure has partial occupancies; only ordered structures are supported")
        species = [site.specie.symbol for site in structure]
        return np.array(structure.lattice.matrix, dtype=np.float64), np.array(structure.frac_coords), species
    from ase import Atoms  # lazy: ase 0.09 s; loaded at Snakefile parse

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
