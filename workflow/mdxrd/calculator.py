"""Inference-only CHGNet calculator for ASE: energy, forces and stress from one backward pass.

CHGNet (Deng et al., Nat. Mach. Intell. 5, 1031 (2023),
https://doi.org/10.1038/s42256-023-00716-3) predicts the energy
``E = f(G(r, Z))`` of a crystal graph ``G`` and obtains forces and stress by
automatic differentiation:

    F_i = -dE/dr_i                          (eV/Angstrom)
    sigma = (1/V) dE/d(epsilon)|_epsilon=0  (eV/Angstrom^3)

with ``epsilon`` a homogeneous strain applied to the lattice, ``L -> L (1 +
epsilon)``, and to the atoms with it. The stock ``chgnet.model.dynamics.
CHGNetCalculator`` computes the two derivatives in two separate
``torch.autograd.grad`` calls with ``create_graph=True`` (the setting needed
for training on forces, where the loss is differentiated again). During MD
nothing is differentiated twice, so :class:`FastCHGNetCalculator` asks for both
derivatives in one reverse pass with ``create_graph=False`` and
``retain_graph=False``: autograd frees every saved activation as soon as it has
been used and builds no graph of the gradient itself. The network weights are
marked as not requiring gradients for the duration of the call (and restored
after), so no activations are kept for weight gradients either. The crystal graph is
CHGNet's, built with array operations (:func:`mdxrd.crystal_graph.crystal_graph`, equal to
CHGNet's converter to the bit and 4-25x faster); the composition model and the network are
CHGNet's own; only the lines of ``CHGNet._compute`` that call ``autograd.grad`` are replaced. Results
equal the stock calculator's to float32 round-off (forces within ~1e-5 eV/A).

:func:`make_calculator` returns either calculator, so a workflow can switch back
to the stock one through its configuration.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from ase import units
from ase.calculators.calculator import Calculator, all_changes
from ase.stress import full_3x3_to_voigt_6_stress
from chgnet.model.model import CHGNet, BatchedGraph
from pymatgen.core import Structure

from mdxrd import CHGNET_MODEL
from mdxrd.crystal_graph import crystal_graph

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from ase import Atoms
    from chgnet.model.dynamics import CHGNetCalculator

__all__ = [
    "FastCHGNetCalculator",
    "device_info",
    "energy_forces_stress",
    "graph_memory_bytes",
    "load_model",
    "make_calculator",
    "resolve_device",
]

#: eV/Angstrom^3 -> GPa, the constant CHGNet hard-codes in ``CHGNet._compute``.
_EV_PER_A3_TO_GPA = 160.21766208


#: Environment variables in which SLURM names the GPUs it gave a job.
_GPU_ENV = ("SLURM_JOB_GPUS", "SLURM_STEP_GPUS", "SLURM_GPUS_ON_NODE")


def _nvidia_device_files() -> list[str]:
    """The NVIDIA GPU device files of this node (/dev/nvidia0, ...): present where a GPU is installed."""
    import glob

    return sorted(glob.glob("/dev/nvidia[0-9]*"))


def _gpus_assigned() -> dict[str, str]:
    """SLURM's GPU assignments in the environment (variable -> value, ignoring empty, "0" and "none") on a
    node with NVIDIA device files; empty where either is missing (a CPU node, a test cluster's fake GPUs)."""
    import os

    given = {k: os.environ[k] for k in _GPU_ENV if os.environ.get(k, "").strip() not in ("", "0", "none")}
    return given if given and _nvidia_device_files() else {}


def resolve_device(device: str | None = None) -> str:
    """Return the torch device to run CHGNet on, refusing a GPU that is asked for but not seen.

    Parameters
    ----------
    device : str or None
        A torch device string ("cpu", "cuda", "cuda:1", ...), the configuration key ``md.device``.
        ``None`` or ``"auto"`` picks ``"cuda"`` when ``torch.cuda.is_available()`` and ``"cpu"``
        otherwise, unless SLURM gave the job a GPU (SLURM_JOB_GPUS, SLURM_STEP_GPUS or
        SLURM_GPUS_ON_NODE set, and /dev/nvidia0... present) that torch cannot see: then it raises,
        instead of running silently on the CPU (a CPU build of torch on a GPU node).

    Returns
    -------
    str
        The device string.

    Raises
    ------
    RuntimeError
        If a CUDA device is requested, or ``auto`` is on a node that was given a GPU, but torch
        sees no CUDA device (or not that index); the message names ``md.device``, the CUDA devices
        torch sees, torch's CUDA version and the GPU variables of the environment.
    """
    n_cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    found = (f"torch {torch.__version__} (CUDA build: {torch.version.cuda or 'none, a CPU-only build'}) sees "
             f"{n_cuda} CUDA device(s); GPU variables: {_gpus_assigned() or 'none'}")
    if device is None or device == "auto":
        if n_cuda:
            return "cuda"
        if _gpus_assigned():
            raise RuntimeError(f"md.device: auto on a job that was given a GPU, but {found}; install the CUDA "
                               "environment (envs/chgnet-cuda.yaml, docs/slurm.md) or set md.device: cpu")
        return "cpu"
    if device.startswith("cuda"):
        index = int(device.partition(":")[2] or 0)
        if index >= n_cuda:
            raise RuntimeError(f"md.device: {device!r} requested but {found}; allowed here: "
                               f"{['cpu', 'auto'] + [f'cuda:{i}' for i in range(n_cuda)]}")
    return device


def device_info(device: str) -> dict[str, str | None]:
    """What run.json records about the device: torch's CUDA version and the GPU model.

    Parameters
    ----------
    device : str
        A resolved torch device string (:func:`resolve_device`).

    Returns
    -------
    dict
        ``torch_cuda``: ``torch.version.cuda`` (None for a CPU-only build of torch); ``gpu``: the CUDA
        device's name (``torch.cuda.get_device_name``), None on the CPU.
    """
    gpu = torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else None
    return {"torch_cuda": torch.version.cuda, "gpu": gpu}


@functools.lru_cache(maxsize=None)
def _load_model_cached(device: str, model_name: str) -> CHGNet:
    model = CHGNet.load(model_name=model_name, use_device=device, verbose=False)
    model.eval()
    return model


def load_model(device: str | None = None, model_name: str = CHGNET_MODEL) -> CHGNet:
    """Load the pretrained CHGNet once per process and device.

    Parameters
    ----------
    device : str or None
        Torch device, see :func:`resolve_device`.
    model_name : str
        CHGNet checkpoint name accepted by ``CHGNet.load`` ("0.3.0" is the
        MPtrj-trained default of Deng et al. 2023).

    Returns
    -------
    chgnet.model.model.CHGNet
        The model in eval mode on ``device``. The same object is returned on
        every call with the same arguments; do not modify it in place.

    Raises
    ------
    ValueError
        On an unknown ``model_name`` (raised by ``CHGNet.load``).
    """
    return _load_model_cached(resolve_device(device), model_name)


@contextlib.contextmanager
def _frozen_parameters(model: torch.nn.Module) -> Iterator[None]:
    """Temporarily set ``requires_grad=False`` on the model's parameters.

    Autograd then saves no activations for weight gradients (only for the
    gradient with respect to positions and strain): ~20% less peak memory and
    ~10% less time per evaluation on CPU. The flags are restored on exit, so a
    shared model (e.g. used by a stock CHGNetCalculator or for training) is
    left as it was.
    """
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in frozen:
            p.requires_grad_(True)


class FastCHGNetCalculator(Calculator):
    """ASE calculator for CHGNet with one backward pass per evaluation (inference only).

    Energy, forces and stress are those of ``chgnet.model.dynamics.
    CHGNetCalculator`` (same model, same graph converter, same units and sign
    convention) but computed from a single reverse-mode pass of the energy with
    respect to the atom positions and a lattice strain together, without
    building a graph for second derivatives. Measured on one CPU thread: 86 ms
    instead of 153 ms per evaluation for Si 64 atoms (1.8x), and 0.2x the peak
    memory increase for Al2O3 240 atoms (1.1-1.2 GiB instead of 5.9 GiB; see
    ``benchmarks/bench_md.py``). Not usable for training (no gradient of the
    forces with respect to the weights is possible).

    Parameters
    ----------
    model : chgnet.model.model.CHGNet or None
        The CHGNet model. ``None`` uses the pretrained model from
        :func:`load_model` (loaded once per process). A given model is moved to
        ``use_device`` and put in eval mode.
    use_device : str or None
        Torch device; ``None`` picks "cuda" when available, else "cpu".
    stress_weight : float
        Factor converting CHGNet's stress in GPa to the reported unit; the
        default ``ase.units.GPa`` (1/160.2177) gives eV/Angstrom^3, the ASE
        unit, as in ``CHGNetCalculator``.
    on_isolated_atoms : {"ignore", "warn", "error"}
        What CHGNet's graph converter does with an atom that has no neighbour
        within the atom-graph cutoff (6 Angstrom for CHGNet 0.3.0).
    max_batch : int, None or "auto"
        :meth:`calculate_batch` makes one forward pass per this many structures (None: one pass
        for the whole batch). On a GPU a pass takes at most as many as fit into
        ``GPU_MEMORY_FRACTION`` of the memory free at the first evaluation (:func:`graph_memory_bytes`),
        and a CUDA out-of-memory error halves ``max_batch`` for the rest of the run (the pass is
        redone in halves). "auto": None on a GPU, 1 on the CPU, where a batched pass gains
        nothing and loses once the activations outgrow the caches (one thread, ms per
        structure: Si 64 atoms 69-80 alone or in pairs, 88-99 eight at a time; Cu 32 atoms,
        4,224 angles each, 1.3x slower four at a time).
    **kwargs
        Passed to ``ase.calculators.calculator.Calculator``.

    Attributes
    ----------
    results : dict
        After a calculation: ``energy`` and ``free_energy`` (eV, float),
        ``forces`` (eV/Angstrom, shape (N, 3)), ``stress`` (eV/Angstrom^3,
        Voigt order xx, yy, zz, yz, xz, xy, ASE sign convention: positive is
        tensile, ``P = -trace/3``). All are always computed together, so one
        call to ``calculate`` serves ``get_forces`` and ``get_stress``.

    Raises
    ------
    ValueError
        From ``calculate`` via CHGNet's graph converter, when
        ``on_isolated_atoms="error"`` and an atom is isolated.
    RuntimeError
        From ``resolve_device`` when CUDA is requested but not available.

    Notes
    -----
    Relies on CHGNet's internal ``BatchedGraph.from_graphs`` and
    ``CHGNet._compute`` (checked against chgnet 0.4.2); the test suite compares
    this calculator with the stock one on several crystals.

    References
    ----------
    B. Deng et al., "CHGNet as a pretrained universal neural network potential
    for charge-informed atomistic modelling", Nat. Mach. Intell. 5, 1031 (2023).
    """

    implemented_properties = ("energy", "free_energy", "forces", "stress")

    def __init__(
        self,
        model: CHGNet | None = None,
        *,
        use_device: str | None = None,
        stress_weight: float = units.GPa,
        on_isolated_atoms: Literal["ignore", "warn", "error"] = "warn",
        max_batch: int | None | Literal["auto"] = "auto",
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.device = resolve_device(use_device)
        if model is None:
            model = load_model(self.device)
        self.model = model.to(self.device)
        self.model.eval()
        self.model.graph_converter.set_isolated_atom_response(on_isolated_atoms)
        self.stress_weight = float(stress_weight)
        if max_batch == "auto":
            max_batch = 1 if self.device == "cpu" else None
        self.max_batch = max_batch
        #: () -> free device memory, bytes, asked once at the first evaluation; None: no memory limit
        self.free_memory_bytes = (functools.partial(lambda d: torch.cuda.mem_get_info(d)[0], self.device)
                                  if self.device.startswith("cuda") else None)
        self._memory_budget: float | None = None

    @property
    def version(self) -> str | None:
        """Version string of the CHGNet checkpoint."""
        return self.model.version

    def calculate(
        self,
        atoms: Atoms | None = None,
        properties: list[str] | None = None,
        system_changes: list[str] = all_changes,
    ) -> None:
        """Compute energy, free energy, forces and stress into ``self.results``.

        Parameters
        ----------
        atoms : ase.Atoms or None
            Periodic structure (3D cell). ``None`` reuses ``self.atoms``.
        properties : list of str or None
            Ignored: all implemented properties are always computed, since
            they come from the same forward and backward pass.
        system_changes : list of str
            As in ``ase.calculators.calculator.Calculator.calculate``.
        """
        super().calculate(atoms, properties, system_changes)
        (self.results,) = self.calculate_batch([self.atoms])

    def calculate_batch(self, atoms_list: list[Atoms]) -> list[dict[str, float | np.ndarray]]:
        """Energy, forces and stress of several structures from one batched forward and backward pass.

        The crystal graphs are built one by one (on the CPU, :mod:`mdxrd.crystal_graph`) and batched
        with CHGNet's own ``BatchedGraph.from_graphs``: one network forward pass and one reverse
        pass serve ``max_batch`` structures (one at a time on the CPU; on a GPU as many as fit its free memory,
        see ``max_batch`` in the class). The
        structures are independent (no edge joins two graphs): each result equals :meth:`calculate`
        on that structure (to the bit in the tests; float32 round-off at most).

        Parameters
        ----------
        atoms_list : list of ase.Atoms
            K periodic structures (any sizes and compositions).

        Returns
        -------
        list of dict
            Per structure, ``self.results`` as after :meth:`calculate`: ``energy``,
            ``free_energy`` (eV), ``forces`` (eV/Angstrom, (N_k, 3) float64) and ``stress``
            (eV/Angstrom^3, Voigt, ASE sign convention).

        Raises
        ------
        torch.cuda.OutOfMemoryError
            Only when a single structure does not fit the device; a larger pass that runs out of
            memory is redone in halves, and ``max_batch`` stays halved for later calls.
        """
        graphs = [crystal_graph(self.model.graph_converter, _structure(a)).to(self.device) for a in atoms_list]
        return [_ase_results(e, f, s, self.stress_weight) for e, f, s in self.evaluate_graphs(graphs)]

    def evaluate_graphs(self, graphs: list, host: bool = True) -> Any:
        """:func:`energy_forces_stress` of crystal graphs on the model's device, in passes that fit its memory.

        Each pass takes as many graphs as :meth:`_batch_length` allows; a pass that runs out of device memory
        is redone in halves, and ``max_batch`` stays halved for later calls.

        Parameters
        ----------
        graphs : list of chgnet.graph.CrystalGraph
            K graphs on the model's device.
        host : bool
            As :func:`energy_forces_stress`; False: the passes' tensors concatenated.

        Returns
        -------
        list of (energy, forces, stress), or (energies, forces, stresses) tensors
            As :func:`energy_forces_stress`: eV, eV/Angstrom, GPa (CHGNet's sign).

        Raises
        ------
        torch.cuda.OutOfMemoryError
            Only when a single structure does not fit the device.
        """
        results: list = []
        start = 0
        while start < len(graphs):
            stop = start + self._batch_length(graphs[start:])
            try:
                batch = energy_forces_stress(self.model, graphs[start:stop], host=host)
            except torch.cuda.OutOfMemoryError:
                if stop - start == 1:
                    raise
                self.max_batch = (stop - start) // 2  # for the rest of the run: no retry at every step
                log.warning("%s out of memory with %d structures in one pass: %d from now on", self.device,
                            stop - start, self.max_batch)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                continue
            if host:
                results.extend(batch)
            else:
                results.append(batch)
            start = stop
        return results if host else tuple(torch.cat(parts) for parts in zip(*results))

    def _batch_length(self, graphs: list) -> int:
        """How many of ``graphs`` (from the first) one pass takes: ``max_batch``, and on a GPU as many as
        :func:`graph_memory_bytes` fits into ``GPU_MEMORY_FRACTION`` of the device memory free at the
        first call (``free_memory_bytes``); always at least one."""
        n = len(graphs) if self.max_batch is None else min(self.max_batch, len(graphs))
        if self.free_memory_bytes is None:
            return max(1, n)
        if self._memory_budget is None:  # once: later, torch's cache holds the earlier passes' memory
            self._memory_budget = GPU_MEMORY_FRACTION * self.free_memory_bytes()
        needed = np.cumsum([graph_memory_bytes(g) for g in graphs[:n]])
        return max(1, int(np.searchsorted(needed, self._memory_budget, side="right")))


#: Part of the device memory free at the first evaluation that a batched pass may be estimated to use.
GPU_MEMORY_FRACTION = 0.8
#: Memory estimate of one structure's pass, bytes per atom, per directed bond (atom graph, 6 A) and per
#: angle (bond graph, 3 A): a conservative guess, not measured on a GPU (on the CPU the fast
#: calculator's peak increase is ~0.1 GB for Si 64 atoms, ~3,000 bonds, and 1.1-1.2 GiB for Al2O3
#: 240 atoms); a pass that runs out of memory halves the batch all the same.
GRAPH_BYTES_PER_ATOM, GRAPH_BYTES_PER_BOND, GRAPH_BYTES_PER_ANGLE = 64_000, 64_000, 32_000


def graph_memory_bytes(graph) -> int:
    """Estimated device memory of one crystal graph's forward and backward pass, bytes.

    Parameters
    ----------
    graph : chgnet.graph.CrystalGraph
        The structure's graph (``atomic_number`` (N,), ``atom_graph`` (bonds, 2), ``bond_graph``
        (angles, 5)).

    Returns
    -------
    int
        ``GRAPH_BYTES_PER_ATOM`` N + ``GRAPH_BYTES_PER_BOND`` bonds + ``GRAPH_BYTES_PER_ANGLE`` angles:
        activations scale with the atoms, bonds and angles a message-passing network updates (CHGNet,
        Deng et al. 2023, Methods); the coefficients are an unmeasured, conservative estimate.
    """
    return (GRAPH_BYTES_PER_ATOM * int(graph.atomic_number.shape[0]) + GRAPH_BYTES_PER_BOND
            * int(graph.atom_graph.shape[0]) + GRAPH_BYTES_PER_ANGLE * int(graph.bond_graph.shape[0]))


def _structure(atoms: Atoms) -> Structure:
    """A pymatgen Structure from the cell, numbers and positions of ``atoms``.

    Built from the arrays as AseAtomsAdaptor does, without its warning about ASE constraints
    (FixCom, FixSymmetry) that a structure cannot carry and the model does not need.
    """
    return Structure(atoms.cell.array, atoms.numbers, atoms.positions, coords_are_cartesian=True)


def _ase_results(energy: float, forces: np.ndarray, stress_gpa: np.ndarray, stress_weight: float) -> dict:
    return {"energy": energy, "free_energy": energy, "forces": forces,
            "stress": full_3x3_to_voigt_6_stress(stress_gpa * stress_weight)}


def energy_forces_stress(model: CHGNet, graphs: list, host: bool = True) -> Any:
    """One CHGNet forward pass and one backward pass for a batch of crystal graphs.

    E_k is the model's energy of crystal k; one reverse pass of sum_k E_k gives every
    F_k = -dE_k/dr_k and sigma_k = (1/V_k) dE_k/d(strain_k), since crystal k's energy
    depends on its own positions and strain only (Deng et al. 2023, Methods).

    Parameters
    ----------
    model : chgnet.model.model.CHGNet
        The model (eval mode); its parameters are frozen for the duration of the call.
    graphs : list of chgnet.graph.CrystalGraph
        K graphs on the model's device.
    host : bool
        True: the results copied to the host, per graph; False: as tensors on the model's device (the
        batched engine: no copy of the forces to the host and back every step).

    Returns
    -------
    list of (energy, forces, stress), or (energies, forces, stresses) tensors
        host: per graph, total energy in eV (float), forces in eV/Angstrom ((N_k, 3) float64), stress in
        GPa ((3, 3) float64, CHGNet's sign convention). Not host: energies (K,), forces (N, 3),
        stresses (K, 3, 3), float64 on the device, the same numbers.
    """
    with torch.enable_grad(), _frozen_parameters(model), warnings.catch_warnings():
        # BatchedGraph.from_graphs builds a tensor from the strained volumes,
        # which require grad; harmless, the volume enters only as 1/V below.
        warnings.filterwarnings(
            "ignore", message="Converting a tensor with requires_grad", category=UserWarning
        )
        comp_energy = 0.0 if model.composition_model is None else model.composition_model(graphs)
        batched = BatchedGraph.from_graphs(
            graphs,
            bond_basis_expansion=model.bond_basis_expansion,
            angle_basis_expansion=model.angle_basis_expansion,
            compute_stress=True,
        )
        prediction = model._compute(batched, compute_force=False, compute_stress=False)
        energy = prediction["e"]  # (K,): per atom if model.is_intensive, else total
        n_atoms = torch.tensor([int(g.atomic_number.shape[0]) for g in graphs], device=energy.device)
        total = (energy * n_atoms).sum() if model.is_intensive else energy.sum()
        d_e_d_r = torch.autograd.grad(
            total, [*batched.atom_positions, *batched.strains], create_graph=False, retain_graph=False
        )
    k = len(graphs)
    if not host:
        per_atom = n_atoms if model.is_intensive else torch.ones_like(n_atoms)
        stress = torch.stack(d_e_d_r[k:]) / batched.volumes.reshape(-1, 1, 1) * _EV_PER_A3_TO_GPA
        return ((energy.detach() + comp_energy).double() * per_atom.double(),
                (-torch.cat(d_e_d_r[:k])).detach().double(), stress.detach().double())
    # one device-to-host copy per quantity for the whole batch
    e = (energy.detach() + comp_energy).cpu().numpy()
    forces = -torch.cat(d_e_d_r[:k]).detach().cpu().numpy().astype(np.float64)
    stress_gpa = (torch.stack(d_e_d_r[k:]) / batched.volumes.reshape(-1, 1, 1) * _EV_PER_A3_TO_GPA).detach()
    stress_gpa = stress_gpa.cpu().numpy().astype(np.float64)
    counts = n_atoms.cpu().numpy()
    per_atom = counts if model.is_intensive else np.ones(k, dtype=int)
    return [(float(e[i]) * int(per_atom[i]), f, stress_gpa[i])
            for i, f in enumerate(np.split(forces, np.cumsum(counts)[:-1]))]


def make_calculator(
    kind: Literal["fast", "stock"] = "fast",
    device: str | None = None,
    model: CHGNet | None = None,
) -> FastCHGNetCalculator | CHGNetCalculator:
    """Build the CHGNet ASE calculator the MD uses.

    Parameters
    ----------
    kind : {"fast", "stock"}
        "fast": :class:`FastCHGNetCalculator` (one backward pass, inference
        only). "stock": ``chgnet.model.dynamics.CHGNetCalculator`` as shipped
        (two ``create_graph=True`` backward passes, also returns magmoms).
    device : str or None
        Torch device; ``None`` or "auto" picks "cuda" when available, else "cpu".
    model : chgnet.model.model.CHGNet or None
        Model to use; ``None`` uses the pretrained model, loaded once per
        process and device and shared by every calculator made here.

    Returns
    -------
    ase.calculators.calculator.Calculator
        Energies in eV, forces in eV/Angstrom, stress in eV/Angstrom^3.

    Raises
    ------
    ValueError
        If ``kind`` is not "fast" or "stock".
    RuntimeError
        If CUDA is requested but not available.
    """
    dev = resolve_device(device)
    if kind not in ("fast", "stock"):
        raise ValueError(f"unknown calculator kind {kind!r}; expected 'fast' or 'stock'")
    if model is None:
        model = load_model(dev)
    if kind == "fast":
        return FastCHGNetCalculator(model=model, use_device=dev)
    from chgnet.model.dynamics import CHGNetCalculator

    return CHGNetCalculator(model=model, use_device=dev)
