"""SevenNet-MF-0 (Kim et al., J. Am. Chem. Soc. 147, 1042 (2025), arXiv:2409.07947): a multi-fidelity SevenNet
trained on MPtrj (PBE/PBE+U) and MP r2SCAN at once, one output head per fidelity (``modal``); its checkpoint
ships inside the ``sevenn`` wheel. ``sevennet-mf-0`` is its PBE head; ``{name: sevennet-mf-0, modal: R2SCAN}``
in ``potentials:`` selects the r2SCAN head (unit names ``<crystal>@sevennet-mf-0-r2scan``).
"""

from __future__ import annotations

from typing import Any

from mdxrd.potentials.base import BuiltinPotential


def build(device: str, calculator: str, modal: str = "PBE") -> Any:
    """An ASE calculator of SevenNet-MF-0's ``modal`` head (``PBE`` or ``R2SCAN``) on ``device``."""
    from sevenn.calculator import SevenNetCalculator  # lazy: imports torch and e3nn (seconds)

    from mdxrd.calculator import resolve_device  # lazy: imports torch

    return SevenNetCalculator("7net-mf-0", device=resolve_device(device), modal=modal)


POTENTIAL = BuiltinPotential(name="sevennet-mf-0", kind="sevennet", package="sevenn",
                             model_file="pretrained_potentials/SevenNet_MF_0/checkpoint_sevennet_mf_0.pth",
                             install="pip install '.[sevennet]' (sevenn 0.13.0)", build=build,
                             options={"modal": ("PBE", "R2SCAN")})
