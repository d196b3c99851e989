"""Any ASE calculator, named in the config by module and class: ``{name, module, class, kwargs, model_file}``.

``getattr(importlib.import_module(module), class)(**kwargs)``; e.g. MACE with a local model file
``{name: mace-mp, module: mace.calculators, class: MACECalculator, kwargs: {model_paths: /models/mace.model,
device: cpu}, model_file: /models/mace.model}``. Packages that download weights at first use must be given
a local file: jobs may run offline. Such a calculator is called run after run in a batch.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from mdxrd.potentials.base import PotentialError, sha256, version


def resolve(spec: dict[str, Any]) -> dict[str, Any]:
    """Check that ``spec``'s module imports and has the class, and its model file exists; the provenance record.

    Returns
    -------
    dict
        name, kind ``ase``, package, version, module, class, kwargs, model_file (or None) and model_sha256
        (None without a model file).

    Raises
    ------
    PotentialError
        The module does not import (install its package), has no such class, or the model file is missing.
    """
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
        digest = sha256(Path(model_file))
    package = module.split(".")[0]
    return {"name": name, "kind": "ase", "package": package, "version": version(package), "module": module,
            "class": cls, "kwargs": dict(spec.get("kwargs") or {}), "model_file": model_file, "model_sha256": digest}


def build(entry: dict[str, Any]) -> Any:
    """The calculator of a resolved entry (:func:`resolve`), with its kwargs (a device goes there)."""
    return getattr(importlib.import_module(entry["module"]), entry["class"])(**entry["kwargs"])
