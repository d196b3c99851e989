"""Command line of the XRD package: ``mdxrd xrd`` (one structure file) and ``mdxrd xrd-stage`` (the workflow stage)."""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mdxrd.cli import UserError
from mdxrd.io import atomic_path
from mdxrd.xrd.reflections import WAVELENGTHS, _check_range, _check_supercell, diffract_structure, structure_arrays
from mdxrd.xrd.patterns import KALPHA_DOUBLETS, Instrument, kernel_settings, observed_pattern, powder_pattern, two_theta_grid

log = logging.getLogger(__name__)


def read_structure_or_atoms(path: str | os.PathLike[str]) -> Any:
    """Read any structure file as it is: with pymatgen (CIF, POSCAR, ...), else with ASE.

    Unlike :func:`mdxrd.structure.read_checked_structure` it checks nothing the
    simulation needs (elements, occupancy): the kernel raises for what it cannot do.

    Returns:
        A pymatgen ``Structure`` or, when pymatgen cannot read the file, an ASE ``Atoms``.

    Raises:
        ValueError: neither can read it (both messages).
    """
    from pymatgen.core import Structure  # lazy: pymatgen.core 0.15 s; loaded at Snakefile parse

    try:
        return Structure.from_file(str(path))
    except Exception as pmg_err:  # noqa: BLE001 - fall back to ASE for any failure
        import ase.io  # lazy: ase.io 0.45 s; loaded at Snakefile parse

        try:
            return ase.io.read(str(path))
        except Exception as ase_err:  # noqa: BLE001
            raise ValueError(f"cannot read {path}: pymatgen: {pmg_err}; ASE: {ase_err}") from None


def _write_columns(columns: Mapping[str, np.ndarray], path: Path) -> None:
    import pandas as pd  # lazy: pandas 0.33 s; loaded at Snakefile parse

    suffix = path.suffix.lower()
    frame = pd.DataFrame({name: np.asarray(col) for name, col in columns.items()})
    with atomic_path(path) as tmp:
        if suffix == ".csv":
            frame.to_csv(tmp, index=False)
        elif suffix in (".parquet", ".pq"):
            frame.to_parquet(tmp, index=False)
        else:  # checked before computing
            raise AssertionError(suffix)


def instrument_from_args(args: argparse.Namespace) -> Instrument:
    """The :class:`mdxrd.xrd.patterns.Instrument` the ``mdxrd xrd`` flags describe.

    Raises:
        ValueError: a bad value (named as the config key).
    """
    spec: dict[str, Any] = {"name": "cli", "wavelength": args.wavelength}  # a name or a number as text
    optional = {"sigma_deg": args.sigma, "caglioti": args.caglioti, "lorentzian": args.lorentzian, "eta": args.eta, "size_nm": args.size_nm, "scherrer_k": args.scherrer_k,
                "strain": args.strain, "zero_shift_deg": args.zero_shift, "displacement_mm": args.displacement_mm,
                "goniometer_radius_mm": args.goniometer_radius_mm, "background": args.background,
                "noise_counts": args.noise_counts, "noise_seed": args.seed,
                "monochromator_two_theta_deg": args.monochromator}
    spec.update({k: v for k, v in optional.items() if v is not None})
    return Instrument.from_dict(spec)


def _cmd_xrd(args: argparse.Namespace) -> int:
    if args.output is None and args.pattern is None:
        raise UserError("give -o/--output (reflections), --pattern, or both")
    out = Path(args.output) if args.output is not None else None
    if out is not None and out.suffix.lower() not in (".csv", ".parquet", ".pq"):
        raise UserError(f"output {out} must end in .csv or .parquet")
    if args.pattern is not None and Path(args.pattern).suffix.lower() != ".csv":
        raise UserError(f"pattern {args.pattern} must end in .csv")
    if not Path(args.structure).is_file():
        raise UserError(f"no such file: {args.structure}")
    try:
        inst = instrument_from_args(args)
        structure = read_structure_or_atoms(args.structure)
        tt_range = _check_range((args.two_theta_min, args.two_theta_max))
        supercell = _check_supercell(args.supercell)
        inst.check(tt_range)
        # one kernel call at the shortest line over the profile's reach; -o lists those inside the range
        lam, ext = kernel_settings([inst], tt_range)
        refl_all = diffract_structure(structure, wavelength=lam, two_theta_range=ext, supercell=supercell)
        refl = refl_all.select((refl_all.two_theta >= tt_range[0]) & (refl_all.two_theta <= tt_range[1]))
        if args.pattern is not None:
            if not args.step > 0:
                raise ValueError("--step must be > 0")
            grid = two_theta_grid(tt_range[0], tt_range[1], args.step)
            volume = float(abs(np.linalg.det(structure_arrays(structure)[0])))
            total, _ = powder_pattern(refl_all, refl_all.intensity, grid, lam, inst, volume_A3=volume,
                                      bragg_fraction=1.0 / float(np.prod(supercell)))
            y = observed_pattern(inst, total, grid)
    except ValueError as err:
        raise UserError(str(err)) from None
    if out is not None:
        _write_columns(refl.to_dict(), out)
        log.info("xrd: %d reflections at %.5f A -> %s", len(refl), lam, out)
    if args.pattern is not None:
        _write_columns({"two_theta": grid, "intensity": y}, Path(args.pattern))
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register the ``xrd`` subcommand."""
    p = subparsers.add_parser(
        "xrd",
        help="powder XRD reflections and/or a pattern of one structure file, for one instrument condition",
        description="Powder XRD of a structure file read by pymatgen (CIF, POSCAR, ...) or ASE: its reflections "
        "(-o) and/or its pattern for one instrument and sample condition (--pattern). Angles in degrees 2theta.",
    )
    p.add_argument("structure", help="structure file (CIF, POSCAR, extxyz, ...)")
    p.add_argument("--wavelength", default="CuKa1",
                   help="Angstrom or a name: " + ", ".join([*WAVELENGTHS, *KALPHA_DOUBLETS]) + " (Ka12: K-alpha1 + "
                   "K-alpha2 at 2:1; reflections (-o) are listed for the shorter line)")
    p.add_argument("--two-theta-min", type=float, default=10.0, help="degrees (default 10)")
    p.add_argument("--two-theta-max", type=float, default=90.0, help="degrees (default 90)")
    p.add_argument("--supercell", type=int, nargs=3, default=[1, 1, 1], metavar=("NA", "NB", "NC"))
    p.add_argument("-o", "--output", help="reflections, .csv or .parquet")
    p.add_argument("--pattern", help="write the pattern (two_theta, intensity per degree) to this .csv")
    p.add_argument("--step", type=float, default=0.02, help="pattern grid step, degrees (default 0.02)")
    g = p.add_argument_group("instrument and sample (the config's instrument: keys)")
    g.add_argument("--sigma", type=float, help="constant Gaussian sigma, degrees (default 0.3 without --caglioti)")
    g.add_argument("--caglioti", type=float, nargs=3, metavar=("U", "V", "W"),
                   help="Gaussian FWHM^2 = U tan^2 + V tan + W, degrees^2")
    g.add_argument("--lorentzian", type=float, nargs=2, metavar=("X", "Y"),
                   help="instrument Lorentzian FWHM = X / cos + Y tan, degrees")
    g.add_argument("--eta", type=float, help="fixed Lorentzian fraction of the instrument profile, 0..1")
    g.add_argument("--size-nm", type=float, help="crystallite size L, nm (Scherrer K lambda / (L cos theta))")
    g.add_argument("--scherrer-k", type=float, help="Scherrer constant K (default 0.9)")
    g.add_argument("--strain", type=float, help="microstrain epsilon (FWHM 4 epsilon tan theta)")
    g.add_argument("--zero-shift", type=float, help="zero shift, degrees")
    g.add_argument("--displacement-mm", type=float, help="specimen displacement, mm")
    g.add_argument("--goniometer-radius-mm", type=float, help="goniometer radius, mm (default 240)")
    g.add_argument("--background", type=float, nargs="+", metavar="C",
                   help="Chebyshev background coefficients, fractions of the pattern's maximum")
    g.add_argument("--noise-counts", type=float, help="Poisson noise: the pattern's maximum in counts")
    g.add_argument("--seed", type=int, help="seed of the noise (default 0)")
    g.add_argument("--monochromator", type=float, metavar="TWO_THETA_M",
                   help="2theta of a diffracted-beam monochromator, degrees (polarization factor)")
    p.set_defaults(func=_cmd_xrd)
