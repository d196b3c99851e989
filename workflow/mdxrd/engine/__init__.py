"""Batched MD engine on a torch device: many systems in one state, integrators over all of them.

Design after TorchSim (github.com/TorchSim/torch-sim): one :class:`~mdxrd.engine.state.BatchState`
holds every system's atoms as flat tensors with ``system_idx`` (N,), per-system parameters as (S,)
tensors; the integrators in :mod:`mdxrd.engine.integrators` update every system at once; a model
(:mod:`mdxrd.engine.models`) maps a state to energies (S,), forces (N, 3) and stresses (S, 3, 3).
Not yet used by the workflow's MD stage (:mod:`mdxrd.md`).
"""
from mdxrd.engine.state import BatchState

__all__ = ["BatchState"]
