"""CHGNet 0.3.0 (Deng et al., Nat. Mach. Intell. 5, 1031 (2023)); its weights ship inside the chgnet wheel.

Built through :func:`mdxrd.calculator.make_calculator`: mdxrd's inference-only
:class:`~mdxrd.calculator.FastCHGNetCalculator` (``md.calculator: fast``, batched evaluation) or
chgnet's own ``CHGNetCalculator`` (``stock``).
"""

from __future__ import annotations

from typing import Any

from mdxrd.potentials.base import BuiltinPotential


def build(device: str, calculator: str) -> Any:
    """An ASE calculator of CHGNet 0.3.0 on ``device`` (``calculator``: ``fast`` or ``stock``)."""
    from mdxrd.calculator import make_calculator  # lazy: imports torch and chgnet (seconds), not needed to resolve

    return make_calculator(calculator, device=device)  # type: ignore[arg-type]


POTENTIAL = BuiltinPotential(name="chgnet", kind="chgnet", package="chgnet",
                             model_file="pretrained/0.3.0/chgnet_0.3.0_e29f68s314m37.pth.tar",
                             install="pip install chgnet", build=build)
