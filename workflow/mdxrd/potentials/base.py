"""The interface every built-in potential implements: one :class:`BuiltinPotential` per file of this package.

A built-in potential is a module of :mod:`mdxrd.potentials` that defines ``POTENTIAL``, a
:class:`BuiltinPotential`: its name in ``potentials:``, the package whose wheel ships its weights (so
that jobs run offline), the weights' path inside that package, the install hint, and ``build``, which
returns an ASE calculator on a device. The three parts of the interface:

* **build**: ``build(device, calculator) -> ase.calculators.calculator.Calculator``; the package is
  imported here, not at parse time;
* **evaluate a batch**: a calculator with ``calculate_batch(list[Atoms]) -> list[dict]`` (energy eV,
  forces eV/Angstrom, stress eV/Angstrom^3) gets one call per lockstep step of a batch
  (:func:`mdxrd.batch.batch_evaluator`); any other is called run after run;
* **provenance**: :meth:`BuiltinPotential.resolve` checks the package and the weights at parse time
  and returns the record every parameter file and dataset row carries (package version, SHA-256 of
  the weights).

Adding a potential is adding a file with its ``POTENTIAL``; :data:`mdxrd.potentials.BUILTIN` finds it.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class PotentialError(ValueError):
    """A potential that cannot be used here; the message names the package and what to install or point to."""


def sha256(path: Path) -> str:
    """SHA-256 of a file's bytes (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def version(package: str) -> str | None:
    """The installed version of ``package``, None when it is not installed."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


@dataclass(frozen=True)
class BuiltinPotential:
    """A potential whose weights ship inside an installable wheel.

    Attributes
    ----------
    name : the name in ``potentials:`` and in unit names (``Si@<name>``).
    kind : recorded in the resolved entry (``chgnet``, ``sevennet``, ...).
    package : the importable package that holds the weights.
    model_file : the weights' path inside ``package``.
    install : what to run when ``package`` is missing.
    build : ``build(device, calculator, **options) -> ASE calculator``; ``device`` is ``md.device`` (``auto``,
        ``cpu``, ``cuda``, ``cuda:N``; :func:`mdxrd.calculator.resolve_device` resolves it), ``calculator`` the
        ``md.calculator`` setting (CHGNet's ``fast`` or ``stock``; others may ignore it).
    options : the model's choices (e.g. a multi-fidelity model's ``modal``): option -> allowed values, the
        first the default. A ``potentials:`` entry ``{name, <option>: value}`` picks one; a value other than
        the default is appended to the potential's name (``sevennet-mf-0-r2scan``).
    """

    name: str
    kind: str
    package: str
    model_file: str
    install: str
    build: Callable[..., Any]
    options: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def resolve(self, **chosen: Any) -> dict[str, Any]:
        """Check the package and its weights without importing the package; return the provenance record.

        Parameters
        ----------
        **chosen
            Values of :attr:`options` (the defaults where not given).

        Returns
        -------
        dict
            name (with a non-default option's value appended), builtin (this potential's name), kind,
            package, version, model_file (relative to the installed package, so that moving the
            installation changes no parameter file), model_sha256, and options (when it has any).

        Raises
        ------
        PotentialError
            The package is not installed (what to install), its weights are not where they should be, or
            an unknown option or value (the allowed ones named).
        """
        unknown = sorted(set(chosen) - set(self.options))
        if unknown:
            raise PotentialError(f"potential {self.name!r}: unknown option(s) {', '.join(unknown)}; allowed: "
                                 f"{', '.join(self.options) or 'none'}")
        options, suffix = {}, ""
        for key, allowed in self.options.items():
            value = chosen.get(key, allowed[0])
            if value not in allowed:
                raise PotentialError(f"potential {self.name!r}: {key}: {value!r} is not allowed; allowed: "
                                     f"{', '.join(allowed)}")
            options[key] = value
            suffix += "" if value == allowed[0] else f"-{str(value).lower()}"
        found = importlib.util.find_spec(self.package)
        if found is None or not found.submodule_search_locations:
            raise PotentialError(f"potential {self.name!r} needs the package {self.package}, which is not "
                                 f"installed: {self.install}")
        model = Path(list(found.submodule_search_locations)[0]) / self.model_file
        if not model.is_file():
            raise PotentialError(f"potential {self.name!r}: no weights at {model} (offline runs need them in the "
                                 f"{self.package} package): reinstall it, {self.install}")
        return {"name": self.name + suffix, "builtin": self.name, "kind": self.kind, "package": self.package,
                "version": version(self.package), "model_file": f"{self.package}/{self.model_file}",
                "model_sha256": sha256(model), **({"options": options} if options else {})}
