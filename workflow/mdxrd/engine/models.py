"""Models over a :class:`~mdxrd.engine.state.BatchState`: ``energy_forces_stress(state)`` returns
energies (S,) eV, forces (N, 3) eV/Angstrom and stresses (S, 3, 3) eV/Angstrom^3 (ASE's sign,
tensile positive)."""
from __future__ import annotations

import numpy as np
import torch
from ase import units
from ase.neighborlist import primitive_neighbor_list

from mdxrd.engine.state import BatchState

__all__ = ["CHGNetModel", "LennardJonesModel", "ZeroModel"]


class ZeroModel:
    """Zero energy, forces and stress (benchmarks of the integrators alone)."""

    def energy_forces_stress(self, state: BatchState) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Zeros of shapes (S,), (N, 3), (S, 3, 3)."""
        z = state.positions.new_zeros
        return z(state.n_systems), z(state.positions.shape), z((state.n_systems, 3, 3))


class LennardJonesModel:
    """Lennard-Jones pair potential over the batch, equal to ``ase.calculators.lj.LennardJones``.

    ``u(r) = 4 eps ((sigma/r)^12 - (sigma/r)^6)`` for ``r < rc``, shifted by ``u(rc)`` or, with
    ``smooth``, multiplied by ASE's C^1 cutoff function between ``ro`` and ``rc`` (Jones, Proc. R.
    Soc. A 106, 463 (1924); ASE's implementation). Forces ``F_i = sum_j u'(r_ij) r_ij_hat`` and the
    virial stress ``sigma = (1/V) sum_i (1/2) sum_j f_ij d_ij^T`` (Allen & Tildesley, Computer
    Simulation of Liquids (2017), eq. 2.60) as ASE computes them.

    Pairs come from a Verlet list per system (``ase.neighborlist.primitive_neighbor_list`` at
    ``rc + skin``, on the host), rebuilt for a system only when ``2 max|dr| + max|n| |dh|_F`` since
    its build exceeds ``skin`` (``n`` the image shifts); the pair terms are computed on the state's
    device, vectorized over all systems. Lists are keyed by ``state.system_id``, so a system leaving
    the batch does not change the others' lists.

    Parameters
    ----------
    sigma, epsilon, rc, ro, smooth : as ``ase.calculators.lj.LennardJones`` (Angstrom, eV;
        ``rc`` default 3 sigma, ``ro`` default 0.66 rc).
    skin : float
        Verlet-list skin, Angstrom.
    """

    def __init__(self, sigma: float = 1.0, epsilon: float = 1.0, rc: float | None = None, ro: float | None = None,
                 smooth: bool = False, skin: float = 0.5) -> None:
        self.sigma, self.epsilon = float(sigma), float(epsilon)
        self.rc = 3.0 * self.sigma if rc is None else float(rc)
        self.ro = 0.66 * self.rc if ro is None else float(ro)
        self.smooth, self.skin = bool(smooth), float(skin)
        self._lists: dict[int, tuple] = {}  # system_id -> (i, j, shifts (P,3), ref positions, ref cell, max |n|)
        self._cache = None  # (system ids, i, j, shifts, ref positions (N,3), ref cells (S,3,3), max |n| (S,))
        self.builds = 0

    def _pairs(self, state: BatchState) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Global (i, j, image shift (P, 3)) over the batch, rebuilding stale systems' lists."""
        ids = tuple(state.system_id.tolist())
        pos = state.positions.detach()
        verified = self._cache is not None and self._cache[0] == ids
        if verified:  # same systems: one vectorized staleness check
            _, i, j, shift, ref_pos, ref_cell, nmax = self._cache
            disp = pos.new_zeros(len(ids)).scatter_reduce_(0, state.system_idx, (pos - ref_pos).norm(dim=1), "amax")
            dcell = (state.cell.detach() - ref_cell).flatten(1).norm(dim=1)
            bad = 2 * disp + nmax * dcell > self.skin
            if not bool(bad.any()):
                return i, j, shift
            for k in torch.nonzero(bad).flatten().tolist():
                del self._lists[ids[k]]
        counts = state.n_atoms.tolist()
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        stale = [k for k, sid in enumerate(ids) if sid not in self._lists]
        if stale:
            host = state.positions.detach().cpu().numpy()
            cells = state.cell.detach().cpu().numpy()
            for k in stale:
                r = host[starts[k]:starts[k] + counts[k]]
                i, j, shift = primitive_neighbor_list("ijS", (True,) * 3, cells[k], r, self.rc + self.skin,
                                                      self_interaction=False)
                dev = state.positions.device
                self._lists[ids[k]] = (torch.as_tensor(i, device=dev), torch.as_tensor(j, device=dev),
                                       torch.as_tensor(shift, dtype=state.positions.dtype, device=dev),
                                       state.positions[starts[k]:starts[k] + counts[k]].detach().clone(),
                                       state.cell[k].detach().clone(),
                                       float(np.linalg.norm(shift, axis=1).max()) if len(shift) else 0.0)
                self.builds += 1
        lists = [self._lists[sid] for sid in ids]
        i = torch.cat([lst[0] + int(s0) for lst, s0 in zip(lists, starts)])
        j = torch.cat([lst[1] + int(s0) for lst, s0 in zip(lists, starts)])
        shift = torch.cat([lst[2] for lst in lists])
        nmax = torch.tensor([lst[5] for lst in lists], dtype=pos.dtype, device=pos.device)
        self._cache = (ids, i, j, shift, torch.cat([lst[3] for lst in lists]), torch.stack([lst[4] for lst in lists]),
                       nmax)
        if not verified and len(stale) < len(ids):  # lists kept from another batch: check them now
            return self._pairs(state)
        return i, j, shift

    def energy_forces_stress(self, state: BatchState) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Energies (S,) eV, forces (N, 3) eV/Angstrom, stresses (S, 3, 3) eV/Angstrom^3 of every system.
        Periodic images are listed, so cells smaller than ``rc`` are handled."""
        i, j, shift = self._pairs(state)
        sys_i = state.system_idx[i]
        d = state.positions[j] + torch.bmm(shift[:, None, :], state.cell[sys_i])[:, 0] - state.positions[i]
        r2 = (d * d).sum(1)
        inside = r2 <= self.rc ** 2
        x = torch.where(inside, self.sigma ** 2 / r2, torch.zeros_like(r2))
        c6 = x * x * x
        c12 = c6 * c6
        e_pair = 4 * self.epsilon * (c12 - c6)
        du = -24 * self.epsilon * (2 * c12 - c6) / r2
        if self.smooth:
            rc2, ro2 = self.rc ** 2, self.ro ** 2
            fc = torch.where(r2 < ro2, torch.ones_like(r2),
                             torch.where(r2 < rc2, (rc2 - r2) ** 2 * (rc2 + 2 * r2 - 3 * ro2) / (rc2 - ro2) ** 3,
                                         torch.zeros_like(r2)))
            dfc = torch.where(r2 < ro2, torch.zeros_like(r2),
                              torch.where(r2 < rc2, 6 * (rc2 - r2) * (ro2 - r2) / (rc2 - ro2) ** 3,
                                          torch.zeros_like(r2)))
            du = fc * du + 2 * dfc * e_pair
            e_pair = e_pair * fc
        else:
            e0 = 4 * self.epsilon * ((self.sigma / self.rc) ** 12 - (self.sigma / self.rc) ** 6)
            e_pair = torch.where(c6 != 0.0, e_pair - e0, e_pair)
        f_pair = du[:, None] * d
        s = state.n_systems
        forces = torch.zeros_like(state.positions).index_add_(0, i, f_pair)
        energy = state.positions.new_zeros(s).index_add_(0, sys_i, 0.5 * e_pair)
        virial = state.positions.new_zeros((s, 3, 3)).index_add_(0, sys_i, 0.5 * f_pair[:, :, None] * d[:, None, :])
        return energy, forces, virial / state.volume()[:, None, None]


class CHGNetModel:
    """CHGNet over a batch: the crystal graphs of all systems built at once, batched forward and backward
    passes (:func:`mdxrd.calculator.energy_forces_stress`; Deng et al., Nat. Mach. Intell. 5, 1031 (2023)).

    The graphs: for a state on the CPU on the host with NumPy and pymatgen's neighbour search
    (:func:`mdxrd.crystal_graph.batch_graphs`, each equal to CHGNet's converter's to the bit, so the
    results equal the ASE calculator's to the bit); for a state on another device (a GPU) with torch on
    that device (:func:`mdxrd.crystal_graph.batch_graphs_torch`: the same graphs with the edges in another
    order, results equal to float32 rounding), sparing the positions' copy to the host every step.

    Parameters
    ----------
    model : chgnet.model.model.CHGNet
        On its device (``mdxrd.calculator.load_model``).
    calculator : mdxrd.calculator.FastCHGNetCalculator or None
        The calculator of ``model``: its passes fit the device's memory (``evaluate_graphs``: as many
        graphs per pass as the free GPU memory holds, halved after an out-of-memory error; one per pass
        on the CPU) and its ``stress_weight`` converts GPa. None: one pass for the whole batch.
    graphs_on_device : bool or None
        True: always build the graphs with torch on the state's device (``batch_graphs_torch``, on the CPU
        too: for tests); False: always on the host (``batch_graphs``); None (default): with torch when the
        state is not on the CPU.
    """

    def __init__(self, model, calculator=None, graphs_on_device: bool | None = None) -> None:
        self.model = model
        self.calculator = calculator
        self.graphs_on_device = graphs_on_device
        self.device = next(model.parameters()).device
        self.stress_weight = units.GPa if calculator is None else calculator.stress_weight
        self._numbers: tuple | None = None  # (state.numbers, host copy): atomic numbers change only with the batch

    def energy_forces_stress(self, state: BatchState) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Energies (S,) eV, forces (N, 3) eV/Angstrom, stresses (S, 3, 3) eV/Angstrom^3 (ASE sign), in
        the state's dtype and device; as ``FastCHGNetCalculator`` per structure."""
        from mdxrd.calculator import energy_forces_stress
        from mdxrd.crystal_graph import batch_graphs, batch_graphs_torch

        if self._numbers is None or self._numbers[0] is not state.numbers:
            self._numbers = (state.numbers, state.numbers.cpu().numpy())
        on_device = (state.positions.device.type != "cpu" if self.graphs_on_device is None
                     else self.graphs_on_device)
        if on_device:
            graphs = batch_graphs_torch(self.model.graph_converter, state.positions.detach(), state.cell.detach(),
                                        state.numbers, list(state.atom_counts()),
                                        numbers_host=self._numbers[1])
        else:
            graphs = batch_graphs(self.model.graph_converter, state.positions.detach().cpu().double().numpy(),
                                  state.cell.detach().cpu().double().numpy(), self._numbers[1],
                                  np.asarray(state.atom_counts()))
        graphs = [graph.to(self.device) for graph in graphs]
        energy, forces, stress_gpa = (energy_forces_stress(self.model, graphs, host=False) if self.calculator is None
                                      else self.calculator.evaluate_graphs(graphs, host=False))
        like = {"dtype": state.positions.dtype, "device": state.positions.device}
        return energy.to(**like), forces.to(**like), (stress_gpa * self.stress_weight).to(**like)


class SevenNetModel:
    """SevenNet over a batch: each system's graph built on the host as sevenn's ``SevenNetCalculator`` builds it
    (``unlabeled_atoms_to_graph`` at the model's cutoff), the graphs collated into one torch_geometric batch and
    passed through the network once (the model in sevenn's batch mode, as its TorchSim interface runs it; Park
    et al., J. Chem. Theory Comput. 20, 4857 (2024)).

    Parameters
    ----------
    calculator : sevenn.calculator.SevenNetCalculator
        The potential's calculator (:func:`mdxrd.potentials.make_potential`): its model, cutoff, modal and
        device are used; the model is switched to batch mode for a call and back after it.
    """

    def __init__(self, calculator) -> None:
        self.calculator = calculator
        self.device = calculator.device

    def energy_forces_stress(self, state: BatchState) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Energies (S,) eV, forces (N, 3) eV/Angstrom, stresses (S, 3, 3) eV/Angstrom^3 (ASE sign), in the
        state's dtype and device; as ``SevenNetCalculator`` per structure (float32 round-off)."""
        import sevenn._keys as KEY  # lazy: sevenn imports e3nn (seconds)
        from sevenn.atom_graph_data import AtomGraphData
        from sevenn.train.dataload import unlabeled_atoms_to_graph
        from torch_geometric.loader.dataloader import Collater

        calc = self.calculator
        data_list = []
        for atoms in state.to_atoms():
            data = AtomGraphData.from_numpy_dict(unlabeled_atoms_to_graph(atoms, calc.cutoff, with_shift=False))
            if calc.modal:
                data[KEY.DATA_MODALITY] = calc.modal
            data_list.append(data)
        batch = Collater([], follow_batch=None, exclude_keys=None)(data_list)
        batch.to(self.device)
        calc.model.set_is_batch_data(True)
        try:
            out = calc.model(batch)
        finally:
            calc.model.set_is_batch_data(False)
        like = {"dtype": state.positions.dtype, "device": state.positions.device}
        xx, yy, zz, xy, yz, zx = (-out[KEY.PRED_STRESS].detach()).to(**like).unbind(1)  # sevenn's order
        stress = torch.stack([torch.stack([xx, xy, zx], 1), torch.stack([xy, yy, yz], 1),
                              torch.stack([zx, yz, zz], 1)], 1)
        return (out[KEY.PRED_TOTAL_ENERGY].detach().to(**like).reshape(-1),
                out[KEY.PRED_FORCE].detach().to(**like), stress)
