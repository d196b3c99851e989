"""Interatomic potentials: CHGNet (default), SevenNet-0, or any ASE calculator, chosen in the config.

``potentials:`` is a list; each entry is a name of :data:`BUILTIN` or a mapping
``{name, module, class, kwargs, model_file}`` that imports any ASE calculator
(:mod:`mdxrd.potentials.ase_calculator`). Several entries multiply the grid: every crystal runs
with every potential (:func:`unit_name`).

One file per built-in potential, each a :class:`~mdxrd.potentials.base.BuiltinPotential`
(build, batch evaluation, provenance; the interface is in :mod:`mdxrd.potentials.base`):

* :mod:`mdxrd.potentials.chgnet`: ``chgnet``, CHGNet 0.3.0, the default;
* :mod:`mdxrd.potentials.chgnet_r2scan`: ``chgnet-r2scan``, CHGNet transfer-learned on r2SCAN;
* :mod:`mdxrd.potentials.sevennet`: ``sevennet-0``, SevenNet-0;
* :mod:`mdxrd.potentials.sevennet_l3i5`: ``sevennet-l3i5``;
* :mod:`mdxrd.potentials.sevennet_mf_0`: ``sevennet-mf-0``, multi-fidelity (``modal``: PBE or R2SCAN).

Adding one is adding a file that defines ``POTENTIAL``. :func:`resolve_potential` checks at parse time
that the package is installed and the weights are on disk, without importing torch-heavy packages, and
records the package version and the SHA-256 of the model file (the dataset's provenance).
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from mdxrd.potentials import ase_calculator
from mdxrd.potentials.base import BuiltinPotential, PotentialError

#: What this module documents (BuiltinPotential and PotentialError are documented in mdxrd.potentials.base).
__all__ = ["BUILTIN", "DEFAULT", "make_potential", "resolve_potential", "unit_name"]


def _builtin() -> dict[str, BuiltinPotential]:
    found = {}
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        potential = getattr(module, "POTENTIAL", None)
        if isinstance(potential, BuiltinPotential):
            found[potential.name] = potential
    return dict(sorted(found.items(), key=lambda item: item[0] != DEFAULT))


#: The default potential.
DEFAULT = "chgnet"

#: Built-in potentials by name: every module of this package that defines ``POTENTIAL`` (the default first).
BUILTIN: dict[str, BuiltinPotential] = _builtin()


def unit_name(crystal: str, potential: str) -> str:
    """Name of one crystal run with one potential, used in paths and as the wildcard ``{crystal}``.

    CHGNet (the default) keeps the crystal's name, so its results do not move when another
    potential is added; any other potential appends ``@name`` (``Si@sevennet-0``).
    """
    return crystal if potential == DEFAULT else f"{crystal}@{potential}"


def resolve_potential(spec: str | dict[str, Any]) -> dict[str, Any]:
    """Check one ``potentials`` entry and return it resolved.

    Parameters
    ----------
    spec
        A name of :data:`BUILTIN`, ``{name: <built-in>, <option>: value}`` (a built-in's options, e.g.
        SevenNet-MF-0's ``modal``) or ``{name, module, class, kwargs, model_file}``.

    Returns
    -------
    dict
        name, kind (``chgnet``, ``sevennet`` or ``ase``), package, version, model_file (for a
        built-in one relative to its installed package), model_sha256, and for ``ase`` module,
        class and kwargs.

    Raises
    ------
    PotentialError
        Unknown name (the allowed ones listed), package not installed (what to install),
        model file missing (what to point to), class not found in the module.
    """
    if isinstance(spec, str) or "module" not in spec:
        name, options = (spec, {}) if isinstance(spec, str) else \
            (spec.get("name"), {k: v for k, v in spec.items() if k != "name"})
        if name not in BUILTIN:
            raise PotentialError(f"unknown potential {name!r}: allowed are {', '.join(BUILTIN)}, "
                                 "{name: <built-in>, <option>: <value>} or {name, module, class, kwargs} for any ASE "
                                 "calculator")
        return BUILTIN[name].resolve(**options)
    return ase_calculator.resolve(spec)


def make_potential(potential: dict[str, Any] | None, device: str = "auto", calculator: str = "fast") -> Any:
    """An ASE calculator for a resolved potential (:func:`resolve_potential`).

    Parameters
    ----------
    potential
        The resolved entry; None: CHGNet.
    device
        ``auto``, ``cpu`` or ``cuda[:n]`` (ignored by generic calculators: give it in their kwargs).
    calculator
        CHGNet only: ``fast`` (:class:`mdxrd.calculator.FastCHGNetCalculator`) or ``stock``.
    """
    if potential is None:
        return BUILTIN[DEFAULT].build(device, calculator)
    if potential["kind"] == "ase":
        return ase_calculator.build(potential)
    return BUILTIN[potential.get("builtin", potential["name"])].build(device, calculator,
                                                                      **potential.get("options", {}))
