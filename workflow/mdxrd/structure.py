"""Structure stage: read a CIF, check it, relax it at 0 K with CHGNet, build the supercell.

Steps
-----
1. Read the CIF with pymatgen (``Structure.from_file``: symmetry operators are
   applied, so the structure is the full, symmetry-expanded cell as published).
2. Check it: every site fully occupied by one element (CHGNet needs an ordered
   structure), every element one CHGNet has parameters for (Z = 1..94).
3. Optionally relax positions and cell at 0 K with the same potential (CHGNet,
   ASE ``FIRE`` on a ``FrechetCellFilter``, symmetry kept by ``FixSymmetry``) to get
   the 0 K reference lattice a0 and energy E0.
4. Build the supercell (na, nb, nc) and refuse it when it exceeds ``max_atoms``.

Outputs: the relaxed unit cell (CIF), the supercell (ASE trajectory, one frame) and
a JSON record with formula, space group, a0 (a, b, c, alpha, beta, gamma), E0.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mdxrd.io import atomic_path, write_json
from mdxrd.potentials import make_potential
from mdxrd.xrd import centring_translations

# Every Snakefile parse that validates imports this module (StructureError, check_supercell_size), and every mdxrd
# command: the imports left inside functions below would add their seconds there (perf_counter, fresh process).

log = logging.getLogger(__name__)

#: Heaviest element with CHGNet parameters (its atom embedding covers Z = 1..94).
CHGNET_MAX_Z = 94


class StructureError(ValueError):
    """A structure file that cannot be used: unreadable, disordered, unknown element, too big."""


def read_checked_structure(path: str | Path) -> Any:
    """Read and check a crystal structure file (CIF or any format pymatgen reads).

    Parameters
    ----------
    path
        Structure file; CIF symmetry operators are applied (full cell).

    Returns
    -------
    pymatgen.core.Structure
        The ordered structure, as given in the file (no standardisation).

    Raises
    ------
    StructureError
        File missing, not parseable, without sites, with partial occupancies
        (disordered sites), or with an element CHGNet has no parameters for. The
        message names the file and what is allowed.
    """
    from pymatgen.core import Structure  # lazy: pymatgen.core 0.15 s; a parse reads checked records, not CIFs

    path = Path(path)
    if not path.is_file():
        raise StructureError(f"{path}: file not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            structure = Structure.from_file(str(path))
    except Exception as err:  # pymatgen raises many types for bad files
        msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise StructureError(f"{path}: not a readable structure file (CIF expected): {msg}") from None
    if len(structure) == 0:
        raise StructureError(f"{path}: the structure has no atoms")
    if not structure.is_ordered:
        site = next(s for s in structure if not s.is_ordered)
        raise StructureError(
            f"{path}: partial occupancies (disordered site {site.species}); CHGNet needs an ordered "
            "structure: order it first (e.g. pymatgen OrderDisorderedStructureTransformation or an "
            "enumeration tool) and give the ordered CIF"
        )
    bad = sorted({el.symbol for el in structure.composition.elements if not 1 <= el.Z <= CHGNET_MAX_Z})
    if bad:
        raise StructureError(
            f"{path}: element(s) {', '.join(bad)} have no CHGNet parameters (allowed: Z = 1..{CHGNET_MAX_Z}, H to Pu)"
        )
    return structure


def check_supercell_size(n_atoms_cell: int, supercell: Sequence[int], max_atoms: int, where: str) -> int:
    """Return the supercell's atom count; raise :class:`StructureError` above ``max_atoms``."""
    n = n_atoms_cell * int(np.prod(supercell))
    if n > max_atoms:
        raise StructureError(
            f"{where}: supercell {'x'.join(map(str, supercell))} of {n_atoms_cell} atoms would have "
            f"{n} atoms, more than structure.max_atoms = {max_atoms}"
        )
    return n


@dataclass(frozen=True)
class StructureParams:
    """Parameters of the structure stage.

    Attributes
    ----------
    supercell : (na, nb, nc) repetitions of the unit cell.
    relax : relax positions and cell at 0 K with CHGNet.
    fmax_eV_per_A : FIRE convergence criterion on forces (and cell, via the filter), eV/Angstrom.
    relax_max_steps : FIRE step limit.
    max_atoms : refuse supercells with more atoms.
    device : torch device for CHGNet ("auto", "cpu", "cuda", "cuda:N").
    threads : torch CPU threads.
    potential : the resolved potential (:func:`mdxrd.potentials.resolve_potential`); None: CHGNet.
    """

    supercell: tuple[int, int, int] = (2, 2, 2)
    relax: bool = True
    fmax_eV_per_A: float = 0.02
    relax_max_steps: int = 300
    max_atoms: int = 512
    device: str = "auto"
    threads: int = 1
    potential: dict[str, Any] | None = None


def relax(atoms: Any, fmax_eV_per_A: float, max_steps: int, device: str = "auto",
          potential: dict[str, Any] | None = None) -> tuple[Any, float, int, bool]:
    """Relax positions and cell of ``atoms`` at 0 K with the potential (CHGNet by default), keeping its space group.

    Uses ASE's FIRE (Bitzek et al., Phys. Rev. Lett. 97, 170201 (2006)) on a
    ``FrechetCellFilter`` with ``FixSymmetry`` so the cell keeps its symmetry.

    Returns
    -------
    (atoms, energy_eV, n_steps, converged)
        The relaxed copy (constraints removed), its potential energy (eV, whole
        cell), the FIRE steps taken and whether fmax was reached.
    """
    from ase.constraints import FixSymmetry  # lazy: ase.constraints 0.47 s (scipy), not needed at parse
    from ase.filters import FrechetCellFilter  # lazy: ase.filters 0.10 s, not needed at parse
    from ase.optimize import FIRE  # lazy: ase.optimize 0.47 s, not needed at parse

    atoms = atoms.copy()
    atoms.calc = make_potential(potential, device)
    atoms.set_constraint(FixSymmetry(atoms, symprec=1e-3))
    opt = FIRE(FrechetCellFilter(atoms), logfile=None)
    converged = bool(opt.run(fmax=fmax_eV_per_A, steps=max_steps))
    energy = float(atoms.get_potential_energy())
    atoms.set_constraint()
    return atoms, energy, int(opt.nsteps), converged


def run_stage(cif: str | Path, cif_out: str | Path, supercell_out: str | Path, info_out: str | Path,
              name: str, params: StructureParams) -> dict[str, Any]:
    """Run the structure stage for one crystal and write its three outputs atomically.

    Returns the JSON record (also written to ``info_out``): name, formula,
    space_group, space_group_number, n_atoms_cell, n_atoms, supercell,
    lattice a0 (a, b, c in Angstrom; alpha, beta, gamma in degrees), volume_A3 of
    the unit cell, centring_translations (fractional pure translations of the cell,
    :func:`mdxrd.xrd.centring_translations`, for the Bragg/diffuse split),
    E0_eV_per_atom, relaxed, relax_steps, relax_converged.
    """
    import torch  # lazy: torch 1.3 s, not in envs/base.yaml
    from ase.io import write  # lazy: ase.io 0.45 s, not needed at parse
    from pymatgen.io.ase import AseAtomsAdaptor  # lazy: pymatgen.io.ase 0.50 s, not needed at parse
    from pymatgen.io.cif import CifWriter  # lazy: pymatgen.io.cif 0.43 s, not needed at parse
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer  # lazy: pymatgen.symmetry 0.37 s, not needed at parse

    torch.set_num_threads(params.threads)
    structure = read_checked_structure(cif)
    check_supercell_size(len(structure), params.supercell, params.max_atoms, f"crystal {name} ({cif})")
    atoms = AseAtomsAdaptor.get_atoms(structure)
    energy = float("nan")
    steps, converged = 0, False
    if params.relax:
        atoms, energy, steps, converged = relax(atoms, params.fmax_eV_per_A, params.relax_max_steps, params.device,
                                                 params.potential)
        log.info("relaxed %s in %d FIRE steps (converged=%s), E0 = %.6f eV/atom", name, steps, converged,
                 energy / len(atoms))
        if not converged:
            log.warning("relaxation of %s did not reach fmax = %g eV/A in %d steps", name, params.fmax_eV_per_A, steps)
    relaxed = AseAtomsAdaptor.get_structure(atoms)
    sga = SpacegroupAnalyzer(relaxed, symprec=1e-3, angle_tolerance=-1)  # spglib: distances only, no 5 deg slack
    lat = relaxed.lattice
    info: dict[str, Any] = {
        "name": name,
        "cif": str(cif),
        "formula": relaxed.composition.reduced_formula,
        "space_group": sga.get_space_group_symbol(),
        "space_group_number": int(sga.get_space_group_number()),
        "n_atoms_cell": len(relaxed),
        "supercell": list(params.supercell),
        "n_atoms": len(relaxed) * int(np.prod(params.supercell)),
        "a0": {"a": lat.a, "b": lat.b, "c": lat.c, "alpha": lat.alpha, "beta": lat.beta, "gamma": lat.gamma},
        "volume_A3": lat.volume,
        "centring_translations": centring_translations(relaxed),
        "E0_eV_per_atom": energy / len(relaxed) if params.relax else None,
        "relaxed": params.relax,
        "relax_steps": steps,
        "relax_converged": converged if params.relax else None,
        "params": {**asdict(params), "supercell": list(params.supercell)},
    }
    sc = atoms.repeat(params.supercell)
    sc.calc = None
    sc.info = {"crystal": name, "supercell": list(params.supercell)}
    with atomic_path(cif_out) as tmp:
        CifWriter(relaxed).write_file(str(tmp))
    with atomic_path(supercell_out) as tmp:
        write(str(tmp), sc, format="traj")
    write_json(info_out, info)
    return info
