"""Interatomic potentials: CHGNet (default), SevenNet-0, or any ASE calculator, chosen in the config.

``potentials:`` is a list; each entry is a name of :data:`BUILTIN` or a mapping
``{name, module, class, kwargs, model_file}`` that imports any ASE calculator
(``getattr(importlib.import_module(module), class)(**kwargs)``). Several entries
multiply the grid: every crystal runs with every potential (:func:`unit_name`).

* ``chgnet``: CHGNet 0.3.0 (Deng et al., Nat. Mach. Intell. 5, 1031 (2023)) through
  :func:`mdxrd.calculator.make_calculator` (the fast inference-only calculator by default,
  ``md.calculator``). Its weights ship inside the chgnet wheel.
* ``sevennet-0``: SevenNet-0 (11 Jul 2024; Park et al., J. Chem. Theory Comput. 20, 4857
  (2024)) through its own ``sevenn.calculator.SevenNetCalculator``. Its checkpoint ships
  inside the ``sevenn`` wheel (``pip install '.[sevennet]'``).
* a mapping: any ASE calculator, e.g. MACE with a local model file
  ``{name: mace-mp, module: mace.calculators, class: MACECalculator, kwargs: {model_paths:
  /models/mace.model, device: cpu}, model_file: /models/mace.model}``. Packages that
  download weights at first use must be given a local file: jobs may run offline.

:func:`resolve_potential` checks at parse time that the package imports and the weights
are on disk, without importing torch-heavy packages for the built-in ones, and records
the package version and the SHA-256 of the model file (the dataset's provenance).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
from pathlib import Path
from typing import Any

#: Built-in potentials: name -> (package, model file inside the package, what to install).
BUILTIN: dict[str, tuple[str, str, str]] = {
    "chgnet": ("chgnet", "pretrained/0.3.0/chgnet_0.3.0_e29f68s314m37.pth.tar", "pip install chgnet"),
    "sevennet-0": ("sevenn", "pretrained_potentials/SevenNet_0__11Jul2024/checkpoint_sevennet_0.pth",
                   "pip install '.[sevennet]' (sevenn 0.13.0)"),
}

#: The default potential.
DEFAULT = "chgnet"


class PotentialError(ValueError):
    """A potential that cannot be used here; the message names the package and what to install or point to."""


def unit_name(crystal: str, potential: str) -> str:
    """Name of one crystal run with one potential, used in paths and as the wildcard ``{crystal}``.

    CHGNet (the default) keeps the crystal's name, so its results do not move when another
    potential is added; any other potential appends ``@name`` (``Si@sevennet-0``).
    """
    return crystal if potential == DEFAULT else f"{crystal}@{potential}"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def resolve_potential(spec: str | dict[str, Any]) -> dict[str, Any]:
    """Check one ``potentials`` entry and return it resolved.

    Parameters
    ----------
    spec
        A name of :data:`BUILTIN` or ``{name, module, class, kwargs, model_file}``.

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
    if isinstance(spec, str):
        if spec not in BUILTIN:
            raise PotentialError(f"unknown potential {spec!r}: allowed are {', '.join(BUILTIN)} or "
                                 "{name, module, class, kwargs} for any ASE calculator")
        package, rel, install = BUILTIN[spec]
        found = importlib.util.find_spec(package)
        if found is None or not found.submodule_search_locations:
            raise PotentialError(f"potential {spec!r} needs the package {package}, which is not installed: {install}")
        model = Path(list(found.submodule_search_locations)[0]) / rel
        if not model.is_file():
            raise PotentialError(f"potential {spec!r}: no weights at {model} (offline runs need them in the "
                                 f"{package} package): reinstall it, {install}")
        # model_file relative to the installed package: moving the installation changes no parameter file
        return {"name": spec, "kind": "chgnet" if spec == "chgnet" else "sevennet", "package": package,
                "version": _version(package), "model_file": f"{package}/{rel}", "model_sha256": _sha256(model)}
    name = spec.get("name")
    module, cls = spec.get("module"), spec.get("class")
    try:
        mod = importlib.import_module(module)
    except ImportError as err:
        raise PotentialError(f"potential {name!r}: cannot import module {module!r} ({err}); install its package") \
            from None
    if not callable(getattr(mod, cls, None)):
        raise PotentialError(f"potential {name!r}: module {module!r} has no class {cls!r}")
    model_file = spec.get("model_file")
    digest = None
    if model_file is not None:
        if not Path(model_file).is_file():
            raise PotentialError(f"potential {name!r}: model_file {model_file} not found: point it to a local "
                                 "model file (jobs may run offline)")
        digest = _sha256(Path(model_file))
    package = module.split(".")[0]
    return {"name": name, "kind": "ase", "package": package, "version": _version(package), "module": module,
            "class": cls, "kwargs": dict(spec.get("kwargs") or {}), "model_file": model_file, "model_sha256": digest}


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
    kind = "chgnet" if potential is None else potential["kind"]
    if kind == "chgnet":
        from mdxrd.calculator import make_calculator

        return make_calculator(calculator, device=device)  # type: ignore[arg-type]
    if kind == "sevennet":
        from sevenn.calculator import SevenNetCalculator

        from mdxrd.calculator import resolve_device

        device = resolve_device(device)
        return SevenNetCalculator("7net-0", device=device)  # resolved by sevenn from its own package
    assert potential is not None
    cls = getattr(importlib.import_module(potential["module"]), potential["class"])
    return cls(**potential["kwargs"])
