"""Reference stage: the potential's 0 K reference of one crystal, beside the experimental cell.

Steps
-----
1. E(V) scan of the relaxed unit cell: ``eos_points`` volumes evenly spaced over
   V0 (1 +- ``eos_volume_range``), the cell scaled isotropically (shape kept), the
   atoms' positions relaxed at each fixed cell with CHGNet (FIRE, symmetry kept; for
   crystals whose sites are all fixed by symmetry, such as Si, NaCl and Cu, nothing
   moves).
2. Birch-Murnaghan fit of E(V) with pymatgen's ``EOS("birch_murnaghan")`` (third
   order; F. Birch, Phys. Rev. 71, 809 (1947)): the potential's equilibrium volume
   V0, bulk modulus B0 = V d2E/dV2 at V0 (GPa) and its pressure derivative B0'.
3. The relaxed lattice parameters a, b, c against the CIF's, in %.
4. The static patterns (0 K, no displacement; B = 0, Bragg reflections only) of the
   relaxed cell and of the CIF cell, on the workflow's 2theta grid for each
   instrument condition (:func:`mdxrd.xrd.diffract_structure`,
   :func:`mdxrd.xrd.powder_pattern`): every thermal pattern then has its reference.

Outputs: ``reference.json`` (the figures above and the E(V) points) and
``static.npz`` (two_theta (n_grid,), instrument (n_cond,) names, intensity_relaxed and
intensity_cif (n_cond, n_grid) float64 with each condition's background and noise,
intensity_bragg_relaxed and intensity_bragg_cif without; per degree 2theta per unit
cell, the same normalization as the MD patterns' parent cell).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from ase.constraints import FixSymmetry
from ase.optimize import FIRE

from mdxrd.io import atomic_path, read_json, write_json
from mdxrd.potentials import make_potential
from mdxrd.structure import read_checked_structure
from mdxrd.xrd import (diffract_structure, instruments_of, kernel_settings, observed_pattern, powder_pattern,
                       two_theta_grid)

log = logging.getLogger(__name__)

#: 1 eV/Angstrom^3 in GPa.
EV_PER_A3_IN_GPA = 160.21766208


@dataclass(frozen=True)
class ReferenceParams:
    """Parameters of the reference stage.

    Attributes
    ----------
    eos_volume_range : the E(V) scan spans V0 (1 - r) .. V0 (1 + r).
    eos_points : volumes in the scan (>= 5 for a three-parameter fit with residuals).
    fmax_eV_per_A : force criterion of the fixed-cell relaxation at each volume, eV/Angstrom.
    relax_max_steps : FIRE step limit at each volume.
    device, threads : torch device and CPU threads for CHGNet.
    potential : the resolved potential (:func:`mdxrd.potentials.resolve_potential`); None: CHGNet.
    """

    eos_volume_range: float = 0.06
    eos_points: int = 9
    fmax_eV_per_A: float = 0.02
    relax_max_steps: int = 100
    device: str = "auto"
    threads: int = 1
    potential: dict[str, Any] | None = None


def eos_scan(atoms: Any, calc: Any, params: ReferenceParams) -> tuple[np.ndarray, np.ndarray]:
    """Energies of ``atoms`` at isotropically scaled volumes, positions relaxed at fixed cell.

    Parameters
    ----------
    atoms
        ASE Atoms, the relaxed unit cell.
    calc
        ASE calculator (CHGNet).
    params
        Scan range and points, fixed-cell relaxation settings.

    Returns
    -------
    (volumes_A3, energies_eV)
        (eos_points,) float64 each: cell volume in Angstrom^3 and potential energy of the cell in eV.
    """
    v0 = atoms.get_volume()
    volumes = v0 * np.linspace(1.0 - params.eos_volume_range, 1.0 + params.eos_volume_range, params.eos_points)
    energies = []
    for v in volumes:
        a = atoms.copy()
        a.set_cell(atoms.cell.array * (v / v0) ** (1.0 / 3.0), scale_atoms=True)
        a.calc = calc
        a.set_constraint(FixSymmetry(a, symprec=1e-3))
        FIRE(a, logfile=None).run(fmax=params.fmax_eV_per_A, steps=params.relax_max_steps)
        energies.append(float(a.get_potential_energy()))
    return volumes, np.asarray(energies)


def birch_murnaghan(volumes_A3: np.ndarray, energies_eV: np.ndarray) -> dict[str, float]:
    """Third-order Birch-Murnaghan fit (pymatgen ``EOS("birch_murnaghan")``).

    Parameters
    ----------
    volumes_A3, energies_eV
        (n,) float, n >= 4: volumes (Angstrom^3) and energies (eV) of one cell.

    Returns
    -------
    dict
        V0_A3, E0_eV, B0_GPa, B0_prime (dimensionless) and fit_rms_meV (root-mean-square residual).

    Raises
    ------
    ValueError
        Fewer than 4 points, or a minimum outside the scanned volumes (the fit extrapolates).
    """
    from pymatgen.analysis.eos import EOS  # lazy: pymatgen.analysis.eos 0.80 s; loaded by every mdxrd command

    v = np.asarray(volumes_A3, dtype=np.float64)
    e = np.asarray(energies_eV, dtype=np.float64)
    if v.size < 4:
        raise ValueError(f"a Birch-Murnaghan fit needs at least 4 volumes, got {v.size}")
    fit = EOS("birch_murnaghan").fit(v.tolist(), e.tolist())
    if not v.min() <= fit.v0 <= v.max():
        raise ValueError(f"the E(V) minimum V0 = {fit.v0:.3f} A^3 lies outside the scanned volumes "
                         f"{v.min():.3f}..{v.max():.3f} A^3: widen reference.eos_volume_range")
    residual = e - np.asarray(fit.func(v))
    return {"V0_A3": float(fit.v0), "E0_eV": float(fit.e0), "B0_GPa": float(fit.b0_GPa), "B0_prime": float(fit.b1),
            "fit_rms_meV": float(np.sqrt(np.mean(residual**2)) * 1000.0)}


def static_pattern(structure: Any, grid: np.ndarray, instruments: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    """Static (0 K, atoms at their sites, B = 0) powder patterns of one cell on ``grid``, one per condition.

    Parameters
    ----------
    structure
        pymatgen Structure or ASE Atoms (the cell the intensity is normalized to).
    grid
        (n_grid,) uniform 2theta grid, degrees.
    instruments
        Conditions (:class:`mdxrd.xrd.patterns.Instrument` or config mappings).

    Returns
    -------
    (observed, clean)
        (n_cond, n_grid) float64 each, intensity per degree 2theta per cell (electrons^2), all
        Bragg: with the condition's background and noise, and without
        (:func:`mdxrd.xrd.patterns.powder_pattern`, :func:`mdxrd.xrd.patterns.observed_pattern`).
    """
    insts = instruments_of(instruments)
    lam, ext = kernel_settings(insts, (grid[0], grid[-1]))
    refl = diffract_structure(structure, wavelength=lam, two_theta_range=ext)
    clean = np.stack([powder_pattern(refl, refl.intensity, grid, lam, inst)[0] for inst in insts])
    return np.stack([observed_pattern(inst, y, grid) for inst, y in zip(insts, clean)]), clean


def lattice_deviation(relaxed: Any, experimental: Any) -> dict[str, float]:
    """Relaxed minus CIF lattice parameters a, b, c (and volume), in % of the CIF's.

    Parameters
    ----------
    relaxed, experimental
        pymatgen Structures of the same cell setting.

    Returns
    -------
    dict
        a_pct, b_pct, c_pct, volume_pct.
    """
    r, x = relaxed.lattice, experimental.lattice
    return {"a_pct": 100.0 * (r.a / x.a - 1.0), "b_pct": 100.0 * (r.b / x.b - 1.0), "c_pct": 100.0 * (r.c / x.c - 1.0),
            "volume_pct": 100.0 * (r.volume / x.volume - 1.0)}


def run_stage(cif: str | Path, relaxed_cif: str | Path, structure_info: str | Path, reference_out: str | Path,
              static_out: str | Path, *, params: ReferenceParams, xrd: dict[str, Any],
              stamp: str | None = None) -> dict[str, Any]:
    """Run the reference stage for one crystal; write ``reference.json`` and ``static.npz`` atomically.

    Parameters
    ----------
    cif, relaxed_cif, structure_info
        The crystal's input CIF, the structure stage's relaxed CIF and its structure.json.
    reference_out, static_out
        Output JSON and npz (see the module docstring).
    params
        :class:`ReferenceParams`.
    xrd
        two_theta_range (min, max), two_theta_step and instrument (the conditions) of the workflow.
    stamp
        Recorded in the JSON (:func:`mdxrd.shard.stamp`): the relax stage reuses a unit whose record
        carries the stamp of the same parameters and structure file.

    Returns
    -------
    dict
        The JSON record: name, cif and relaxed lattices (a, b, c in Angstrom, angles in degrees,
        volume), lattice_deviation_pct, eos (V0_A3, E0_eV, B0_GPa, B0_prime, fit_rms_meV, volumes_A3,
        energies_eV, per unit cell), relax_converged (from the structure stage).

    Raises
    ------
    ValueError
        The E(V) minimum lies outside the scan (:func:`birch_murnaghan`).
    """
    import torch  # lazy: torch 1.3 s; not in envs/base.yaml, and loaded by every mdxrd command
    from pymatgen.core import Structure  # lazy: pymatgen.core 0.15 s (+45 ms on mdxrd --help)
    from pymatgen.io.ase import AseAtomsAdaptor  # lazy: pymatgen.io.ase 0.50 s; loaded by every mdxrd command

    torch.set_num_threads(params.threads)
    info = read_json(structure_info)
    experimental = read_checked_structure(cif)
    relaxed = Structure.from_file(str(relaxed_cif))
    calc = make_potential(params.potential, params.device)
    volumes, energies = eos_scan(AseAtomsAdaptor.get_atoms(relaxed), calc, params)
    eos = birch_murnaghan(volumes, energies)
    log.info("%s: Birch-Murnaghan V0 = %.3f A^3, B0 = %.1f GPa, B0' = %.2f (rms %.2f meV)", info["name"],
             eos["V0_A3"], eos["B0_GPa"], eos["B0_prime"], eos["fit_rms_meV"])
    deviation = lattice_deviation(relaxed, experimental)
    log.info("%s: relaxed a, b, c are %+.2f %%, %+.2f %%, %+.2f %% off the CIF's", info["name"], deviation["a_pct"],
             deviation["b_pct"], deviation["c_pct"])
    grid = two_theta_grid(xrd["two_theta_range"][0], xrd["two_theta_range"][1], xrd["two_theta_step"])
    patterns: dict[str, np.ndarray] = {}
    for name, s in (("relaxed", relaxed), ("cif", experimental)):
        patterns[f"intensity_{name}"], patterns[f"intensity_bragg_{name}"] = static_pattern(s, grid, xrd["instrument"])

    def lattice(s: Any) -> dict[str, float]:
        lat = s.lattice
        return {"a": lat.a, "b": lat.b, "c": lat.c, "alpha": lat.alpha, "beta": lat.beta, "gamma": lat.gamma,
                "volume_A3": lat.volume}

    record = {
        "name": info["name"], "n_atoms_cell": len(relaxed), "cif_lattice": lattice(experimental),
        "relaxed_lattice": lattice(relaxed), "lattice_deviation_pct": deviation,
        "eos": {**eos, "volumes_A3": volumes.tolist(), "energies_eV": energies.tolist()},
        "relax_converged": info.get("relax_converged"), "relaxed": info.get("relaxed"),
        "params": {**params.__dict__},
        "stamp": stamp,
    }
    with atomic_path(static_out) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, two_theta=grid, instrument=np.array([i["name"] for i in xrd["instrument"]]), **patterns)
    write_json(reference_out, record)
    return record
