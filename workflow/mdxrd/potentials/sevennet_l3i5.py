"""SevenNet-l3i5 (Park et al., J. Chem. Theory Comput. 20, 4857 (2024)): SevenNet-0's training set (MPtrj) with
l_max 3 and 5 interaction layers, more accurate and about 4x slower; its checkpoint ships inside the ``sevenn``
wheel (``pip install '.[sevennet]'``).
"""

from __future__ import annotations

from typing import Any

from mdxrd.potentials.base import BuiltinPotential


def build(device: str, calculator: str) -> Any:
    """An ASE calculator of SevenNet-l3i5 on ``device`` (``calculator`` is CHGNet's setting: ignored)."""
    from sevenn.calculator import SevenNetCalculator  # lazy: imports torch and e3nn (seconds)

    from mdxrd.calculator import resolve_device  # lazy: imports torch

    return SevenNetCalculator("7net-l3i5", device=resolve_device(device))


POTENTIAL = BuiltinPotential(name="sevennet-l3i5", kind="sevennet", package="sevenn",
                             model_file="pretrained_potentials/SevenNet_l3i5/checkpoint_l3i5.pth",
                             install="pip install '.[sevennet]' (sevenn 0.13.0)", build=build)
