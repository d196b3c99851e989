"""Powder X-ray diffraction: the kernel, instrument and sample profiles, the workflow stage and its CLI.

* :mod:`mdxrd.xrd.reflections`: the reflections of a batch of snapshots (structure factors,
  Lorentz-polarization, Bragg/diffuse split), equal to pymatgen's ``XRDCalculator``.
* :mod:`mdxrd.xrd.patterns`: instrument and sample conditions (:class:`Instrument`:
  K-alpha doublets, Caglioti/TCH pseudo-Voigt, Scherrer size, microstrain, shifts,
  background, noise) and the thermal diffuse continuum, reflections -> patterns.
* :mod:`mdxrd.xrd.stage`: the XRD of one run's snapshots, files in and out (:mod:`mdxrd.post`).
* :mod:`mdxrd.xrd.cli`: ``mdxrd xrd``.
"""

from mdxrd.xrd.cli import add_parser, read_structure_or_atoms
from mdxrd.xrd.reflections import (
    REFLECTION_COLUMNS,
    TWO_THETA_TOL,
    WAVELENGTHS,
    Reflections,
    centring_translations,
    diffract,
    diffract_structure,
    lorentz_polarization,
    resolve_wavelength,
    scattering_factor,
    structure_arrays,
)
from mdxrd.xrd.patterns import (
    DEFAULT_INSTRUMENT,
    KALPHA2_RATIO,
    KALPHA_DOUBLETS,
    Instrument,
    broaden,
    broaden_components,
    debye_sphere_radius,
    diffuse_continuum,
    kernel_settings,
    line_spectrum,
    observed_pattern,
    powder_pattern,
    tch_pseudo_voigt,
    two_theta_grid,
)
from mdxrd.xrd.stage import instruments_of, run_stage

__all__ = [
    "DEFAULT_INSTRUMENT", "KALPHA2_RATIO", "KALPHA_DOUBLETS", "REFLECTION_COLUMNS", "TWO_THETA_TOL", "WAVELENGTHS",
    "Instrument", "Reflections", "add_parser", "broaden", "broaden_components", "centring_translations",
    "debye_sphere_radius", "diffract", "diffract_structure", "diffuse_continuum",
    "instruments_of", "kernel_settings", "line_spectrum", "lorentz_polarization", "observed_pattern",
    "powder_pattern", "read_structure_or_atoms", "resolve_wavelength", "run_stage", "scattering_factor",
    "structure_arrays", "tch_pseudo_voigt", "two_theta_grid",
]
