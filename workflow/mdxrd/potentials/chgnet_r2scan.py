"""CHGNet r2SCAN (Huang et al., npj Comput. Mater. 2025, arXiv:2412.02014): CHGNet 0.3.0 transfer-learned on
MP r2SCAN calculations; its weights ship inside the chgnet wheel (``chgnet/pretrained/r2scan``). The same
architecture and graph as CHGNet 0.3.0, so mdxrd's batched calculator serves it (``md.calculator``).
"""

from __future__ import annotations

from typing import Any

from mdxrd.potentials.base import BuiltinPotential


def build(device: str, calculator: str) -> Any:
    """An ASE calculator of CHGNet r2SCAN on ``device`` (``calculator``: ``fast`` or ``stock``)."""
    from mdxrd.calculator import load_model, make_calculator, resolve_device  # lazy: imports torch and chgnet

    dev = resolve_device(device)
    return make_calculator(calculator, device=dev, model=load_model(dev, model_name="r2scan"))  # type: ignore[arg-type]


POTENTIAL = BuiltinPotential(name="chgnet-r2scan", kind="chgnet", package="chgnet",
                             model_file="pretrained/r2scan/chgnet_r2scan_transfer_learning_e15f36s161m23.pth.tar",
                             install="pip install chgnet", build=build)
