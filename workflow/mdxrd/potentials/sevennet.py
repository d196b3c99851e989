"""SevenNet-0 (11 Jul 2024; Park et al., J. Chem. Theory Comput. 20, 4857 (2024)); its checkpoint ships
inside the ``sevenn`` wheel (``pip install '.[sevennet]'``). Built through sevenn's own ``SevenNetCalculator``.
"""

from __future__ import annotations

from typing import Any

from mdxrd.potentials.base import BuiltinPotential


def build(device: str, calculator: str) -> Any:
    """An ASE calculator of SevenNet-0 on ``device`` (``auto``: cuda if available; ``calculator`` is CHGNet's setting: ignored)."""
    from sevenn.calculator import SevenNetCalculator  # lazy: imports torch and e3nn (seconds)

    from mdxrd.calculator import resolve_device  # lazy: imports torch

    return SevenNetCalculator("7net-0", device=resolve_device(device))  # the checkpoint resolved by sevenn from its own package


POTENTIAL = BuiltinPotential(name="sevennet-0", kind="sevennet", package="sevenn",
                             model_file="pretrained_potentials/SevenNet_0__11Jul2024/checkpoint_sevennet_0.pth",
                             install="pip install '.[sevennet]' (sevenn 0.13.0)", build=build)
