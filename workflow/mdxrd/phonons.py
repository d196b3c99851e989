"""Zero-point motion: harmonic phonons of the relaxed crystal and their quantum and classical <u^2>.

Classical MD gives every mode k_B T, so its B = 8 pi^2 <u^2> vanishes as T -> 0; a real crystal
keeps its zero-point motion, which for stiff or light crystals is a large part of B at room
temperature (Si: B_quantum / B_classical ~ 1.3 at 300 K). The harmonic model with the unit's own
potential measures the difference:

1. Force constants of the relaxed unit cell in the MD's supercell by finite displacements
   (phonopy; Togo, J. Phys. Soc. Jpn. 92, 012001 (2023)), forces from the unit's potential,
   displacement ``displacement_A`` (config default 0.05 A, about the thermal amplitude: CHGNet's
   forces are not linear in the displacement below ~0.03 A, where phonopy's 0.01 A for DFT would
   fall; measured for Cu, on-site force constant 1.8, 3.5 and 4.4 eV/A^2 at 0.002, 0.01 and
   0.05 A, and B 2.28, 0.68, 0.61 A^2 at 300 K with 0.01, 0.03 and 0.05 A).
2. Frequencies omega and eigenvectors e on the q-points commensurate with the supercell (the
   modes the MD itself has), without the three acoustic modes at Gamma (the MD fixes the centre
   of mass). Imaginary modes (below -``IMAGINARY_THz``) are counted, warned about and left out.
3. Per atom j and direction alpha, over the N_q q-points and the modes nu
   (Willis & Pryor, Thermal Vibrations in Crystallography (1975), ch. 4):

       <u^2>_quantum = (1/N_q) sum |e_j,alpha|^2 hbar / (2 m_j omega) coth(hbar omega / 2 k_B T)
       <u^2>_classical = (1/N_q) sum |e_j,alpha|^2 k_B T / (m_j omega^2)

   and per element B = 8 pi^2 <u^2> (mean over its atoms and the three directions). The ratio
   tends to 1 at high T (coth x ~ 1/x + x/3) and B_quantum to its zero-point value at T -> 0.
4. The Debye temperature with the same classical high-T B: B_classical = 6 h^2 T / (m k_B Theta^2)
   (Willis & Pryor eq. 4.61 at high T), for a monatomic crystal; for several elements the
   mass-weighted mean.

dB = B_quantum - B_classical is what the classical MD lacks; with ``xrd.zero_point_correction``
the XRD stage damps each element's Bragg scattering by exp(-dB s^2) (:mod:`mdxrd.xrd.stage`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

#: The unit's phonons file in its reference directory (the relax stage writes it).
PHONON_FILE = "phonons.json"
HBAR_J_S = 1.054571817e-34
KB_J_PER_K = 1.380649e-23
H_J_S = 2.0 * math.pi * HBAR_J_S
AMU_KG = 1.66053906660e-27
#: Modes below this (THz, phonopy's negative frequencies) are imaginary: the structure is unstable there.
IMAGINARY_THz = 0.1
#: Modes with |nu| below this (THz) at Gamma are the acoustic translations, left out.
ACOUSTIC_THz = 1e-3


def force_constants(unit_cell: Any, supercell: Sequence[int], calc: Any, displacement_A: float = 0.01) -> Any:
    """A phonopy object with the force constants of ``unit_cell`` in a ``supercell`` (finite displacements).

    Parameters
    ----------
    unit_cell
        ase.Atoms, the relaxed unit cell (the cell the MD's supercell repeats).
    supercell
        (na, nb, nc).
    calc
        An ASE calculator (forces, eV/Angstrom).
    displacement_A
        Finite displacement, Angstrom (phonopy's default 0.01).

    Returns
    -------
    phonopy.Phonopy
        With ``force_constants`` set; the unit cell is its primitive cell (no primitive matrix),
        so q-points are in the unit cell's reciprocal basis.
    """
    from ase import Atoms
    from phonopy import Phonopy
    from phonopy.structure.atoms import PhonopyAtoms

    cell = PhonopyAtoms(symbols=unit_cell.get_chemical_symbols(), cell=unit_cell.cell.array,
                        scaled_positions=unit_cell.get_scaled_positions(), masses=unit_cell.get_masses())
    phonon = Phonopy(cell, supercell_matrix=np.diag([int(n) for n in supercell]), primitive_matrix="P")
    phonon.generate_displacements(distance=displacement_A)
    forces = []
    for sc in phonon.supercells_with_displacements:
        atoms = Atoms(sc.symbols, cell=sc.cell, scaled_positions=sc.scaled_positions, pbc=True)
        atoms.calc = calc
        f = atoms.get_forces()
        forces.append(f - f.mean(axis=0))  # the drift of a finite displacement (momentum conservation)
    phonon.forces = np.array(forces)
    phonon.produce_force_constants()
    return phonon


def commensurate_qpoints(supercell: Sequence[int]) -> np.ndarray:
    """(na nb nc, 3) q-points i/na, j/nb, k/nc (reciprocal unit-cell coordinates): the modes a supercell has."""
    na, nb, nc = (int(n) for n in supercell)
    return np.array([(i / na, j / nb, k / nc) for i in range(na) for j in range(nb) for k in range(nc)])


def mean_square_displacements(phonon: Any, temperatures_K: Sequence[float], qpoints: np.ndarray
                              ) -> dict[str, Any]:
    """Quantum and classical harmonic <u^2> per atom and direction (module, step 3).

    Parameters
    ----------
    phonon
        :func:`force_constants`' phonopy object.
    temperatures_K
        (n_T,) temperatures, K (> 0).
    qpoints
        (n_q, 3) q-points, reciprocal unit-cell coordinates (:func:`commensurate_qpoints` or a mesh).

    Returns
    -------
    dict
        ``quantum_A2`` and ``classical_A2`` (n_T, n_atoms, 3) float64, Angstrom^2; ``n_imaginary`` (modes
        left out as imaginary); ``min_frequency_THz``.
    """
    phonon.run_qpoints(np.asarray(qpoints, dtype=np.float64), with_eigenvectors=True)
    d = phonon.get_qpoints_dict()
    nu = np.asarray(d["frequencies"], dtype=np.float64)  # (n_q, n_modes), THz
    e = np.asarray(d["eigenvectors"])  # (n_q, 3 n_atoms, n_modes)
    n_q, n_modes = nu.shape
    masses = np.asarray(phonon.unitcell.masses, dtype=np.float64) * AMU_KG
    weight = np.abs(e.reshape(n_q, n_modes // 3, 3, n_modes)) ** 2  # (q, atom, alpha, mode)
    imaginary = nu < -IMAGINARY_THz
    use = nu > ACOUSTIC_THz
    if imaginary.any():
        log.warning("%d imaginary modes (down to %.2f THz) left out of <u^2>: the relaxed structure is unstable "
                    "there with this potential", int(imaginary.sum()), float(nu.min()))
    omega = 2.0 * math.pi * 1e12 * np.where(use, nu, 1.0)
    quantum, classical = [], []
    for t in temperatures_K:
        x = HBAR_J_S * omega / (2.0 * KB_J_PER_K * float(t))
        q_mode = np.where(use, HBAR_J_S / (2.0 * omega) / np.tanh(x), 0.0)  # per unit mass, m^2 kg
        c_mode = np.where(use, KB_J_PER_K * float(t) / omega**2, 0.0)
        quantum.append(np.einsum("qjam,qm->ja", weight, q_mode) / n_q / masses[:, None] * 1e20)
        classical.append(np.einsum("qjam,qm->ja", weight, c_mode) / n_q / masses[:, None] * 1e20)
    return {"quantum_A2": np.array(quantum), "classical_A2": np.array(classical),
            "n_imaginary": int(imaginary.sum()), "min_frequency_THz": float(nu.min())}


def b_per_element(u2_A2: np.ndarray, symbols: Sequence[str]) -> dict[str, float]:
    """B = 8 pi^2 <u^2> per element (mean over its atoms and the three directions) from (n_atoms, 3) <u^2>."""
    sym = np.asarray(symbols)
    return {el: float(8.0 * math.pi**2 * u2_A2[sym == el].mean()) for el in dict.fromkeys(sym.tolist())}


def debye_temperature(b_classical_A2: float, mass_amu: float, temperature_K: float) -> float:
    """Theta_D (K) of a Debye crystal with the classical B at T: B = 6 h^2 T / (m k_B Theta^2) (Willis & Pryor)."""
    return math.sqrt(6.0 * H_J_S**2 * temperature_K / (mass_amu * AMU_KG * KB_J_PER_K * b_classical_A2 * 1e-20))


def debye_b(temperature_K: float, theta_K: float, mass_amu: float) -> float:
    """Debye-model B (Angstrom^2): 6 h^2 / (m k_B Theta) [phi(x)/x + 1/4], x = Theta/T, phi(x) = (1/x) int_0^x
    t/(e^t - 1) dt (Willis & Pryor, Thermal Vibrations in Crystallography (1975), eq. 4.60)."""
    x = theta_K / temperature_K
    t = np.linspace(1e-9, x, 4001)
    phi = float(np.trapezoid(t / np.expm1(t), t)) / x
    return 6.0 * H_J_S**2 / (mass_amu * AMU_KG * KB_J_PER_K * theta_K) * (phi / x + 0.25) * 1e20


def run_stage(relaxed_cif: str | Path, supercell: Sequence[int], calc: Any, temperatures_K: Sequence[float],
              out: str | Path, displacement_A: float = 0.05, stamp: str | None = None) -> dict[str, Any]:
    """Phonons of a unit and its harmonic B per element at each temperature; write ``out`` (JSON) atomically.

    Parameters
    ----------
    relaxed_cif
        The relaxed unit cell (the structure stage's relaxed.cif).
    supercell
        The MD's supercell (na, nb, nc): force constants in it, <u^2> on its commensurate q-points.
    calc
        The unit's ASE calculator.
    temperatures_K
        The grid's temperatures, K.
    out
        phonons.json: ``temperatures_K``, ``B_quantum_harmonic_A2`` and ``B_classical_harmonic_A2`` (one
        element -> B mapping per temperature, Angstrom^2), ``debye_temperature_K`` (element -> Theta from
        the classical B), ``n_imaginary``, ``min_frequency_THz``, ``supercell``, ``displacement_A``,
        ``n_displacements``, ``seconds``, ``stamp``.

    Returns
    -------
    dict
        What was written.
    """
    import time

    from ase.io import read

    from mdxrd.io import write_json

    started = time.perf_counter()
    unit = read(str(relaxed_cif))
    phonon = force_constants(unit, supercell, calc, displacement_A)
    temps = [float(t) for t in temperatures_K]
    msd = mean_square_displacements(phonon, temps, commensurate_qpoints(supercell))
    symbols = unit.get_chemical_symbols()
    quantum = [b_per_element(u, symbols) for u in msd["quantum_A2"]]
    classical = [b_per_element(u, symbols) for u in msd["classical_A2"]]
    masses = dict(zip(symbols, unit.get_masses(), strict=True))
    theta = {el: debye_temperature(classical[0][el], float(masses[el]), temps[0]) for el in classical[0]}
    record = {"temperatures_K": temps, "B_quantum_harmonic_A2": quantum, "B_classical_harmonic_A2": classical,
              "debye_temperature_K": theta, "n_imaginary": msd["n_imaginary"],
              "min_frequency_THz": msd["min_frequency_THz"], "supercell": [int(n) for n in supercell],
              "displacement_A": float(displacement_A), "n_displacements": len(phonon.supercells_with_displacements),
              "seconds": time.perf_counter() - started, "stamp": stamp}
    write_json(out, record)
    log.info("phonons: %d displacements, %.1f s; B quantum/classical at %g K: %s", record["n_displacements"],
             record["seconds"], temps[0], ", ".join(f"{el} {quantum[0][el]:.3f}/{classical[0][el]:.3f}"
                                                     for el in quantum[0]))
    return record


def delta_b(record: dict[str, Any], temperature_K: float) -> dict[str, float]:
    """dB = B_quantum - B_classical per element (Angstrom^2) at one of the record's temperatures.

    Raises
    ------
    KeyError
        ``temperature_K`` is not among the record's temperatures.
    """
    temps = [float(t) for t in record["temperatures_K"]]
    matches = [i for i, t in enumerate(temps) if abs(t - float(temperature_K)) < 1e-9]
    if not matches:
        raise KeyError(f"phonons: no harmonic B at {temperature_K} K (have {temps})")
    i = matches[0]
    return {el: record["B_quantum_harmonic_A2"][i][el] - record["B_classical_harmonic_A2"][i][el]
            for el in record["B_quantum_harmonic_A2"][i]}
