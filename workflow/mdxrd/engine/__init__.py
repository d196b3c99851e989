"""Batched MD engine on a torch device: many systems in one state, integrators over all of them.

Design after TorchSim (github.com/TorchSim/torch-sim): one :class:`~mdxrd.engine.state.BatchState`
holds every system's atoms as flat tensors with ``system_idx`` (N,), per-system parameters as (S,)
tensors; one step (:func:`mdxrd.engine.integrators.md_step`) updates every system at once, each in its own
ensemble; a model (:mod:`mdxrd.engine.models`) maps a state to energies (S,), forces (N, 3) and stresses
(S, 3, 3); :mod:`mdxrd.engine.runner` advances a state, :mod:`mdxrd.engine.runs` runs the MD stage's
runs on it (``md.engine: torch``) and writes their files.
"""
from mdxrd.engine.state import BatchState

__all__ = ["BatchState"]
