"""CHGNet's crystal graph built with NumPy: the same tensors as CHGNet's converter, faster (benchmarks/bench_graph.py).

CHGNet (Deng et al., Nat. Mach. Intell. 5, 1031 (2023)) reads a crystal as two graphs:

* the atom graph: one directed edge per neighbour-list entry (i, j, image) with
  |r_j + image @ L - r_i| < r_atom (6 Angstrom for CHGNet 0.3.0), in the order of pymatgen's
  neighbour list; an undirected edge joins the two directions (i, j, n) and (j, i, -n);
* the bond graph (three-body): one entry per ordered pair of different directed edges a, b that
  leave the same atom and are both shorter than r_bond (3 Angstrom): an angle at that atom.

``chgnet.graph.CrystalGraphConverter`` builds Python objects for every node and edge (its "fast"
algorithm in C, then a Python loop over the line graph): about 10 ms of the 90 ms a CHGNet
step of 64 atoms takes on one CPU thread, and the part of a step that stays on the CPU when the
network runs on a GPU. :func:`crystal_graph` derives the same index arrays from the same
neighbour list with array operations, in CHGNet's order, so the graph, and with it every
energy, force and stress, is CHGNet's to the bit (tested against the converter on periodic
cells with self-images, triclinic cells and rattled structures).
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import torch

__all__ = ["crystal_graph"]


def _first_occurrence(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For integer ``keys`` (n,): each entry's group index, groups numbered by first appearance,
    and the index of each group's first appearance."""
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    order = np.argsort(first, kind="stable")  # groups in order of first appearance
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return rank[inverse], first[order]


def _encode(columns: list[np.ndarray]) -> np.ndarray:
    """One int64 per row of non-negative integer ``columns``, equal exactly when the rows are equal."""
    key = np.zeros(len(columns[0]), dtype=np.int64)
    for col in columns:
        key = key * (int(col.max()) + 1) + col
    return key


def graph_indices(n_atoms: int, center: np.ndarray, neighbor: np.ndarray, image: np.ndarray,
                  distance: np.ndarray, bond_cutoff: float) -> dict[str, np.ndarray]:
    """Index arrays of CHGNet's atom and bond graphs from a neighbour list.

    Parameters
    ----------
    n_atoms
        Number of atoms.
    center, neighbor : numpy.ndarray
        (n_dir,) int: directed edge e goes from atom ``center[e]`` to atom ``neighbor[e]``.
    image : numpy.ndarray
        (n_dir, 3) int, the periodic image of the neighbour (fractional lattice translation).
    distance : numpy.ndarray
        (n_dir,) float, edge length in Angstrom.
    bond_cutoff
        Bond-graph cutoff r_bond, Angstrom.

    Returns
    -------
    dict
        ``atom_graph`` (n_dir, 2), ``directed2undirected`` (n_dir,), ``undirected2directed``
        (n_undir,), ``bond_graph`` (n_angles, 5) with columns (atom, undirected bond 1, directed
        bond 1, undirected bond 2, directed bond 2; shape (0,) without angles); all int32, as
        ``chgnet.graph.graph.Graph.adjacency_list`` and ``line_graph_adjacency_list`` return them.

    Raises
    ------
    ValueError
        An edge without its reverse (the neighbour list is not symmetric).
    """
    center = np.asarray(center, dtype=np.int64)
    neighbor = np.asarray(neighbor, dtype=np.int64)
    image = np.asarray(image, dtype=np.int64).reshape(-1, 3)
    n_dir = len(center)
    if n_dir == 0:
        empty = np.zeros(0, dtype=np.int32)
        return {"atom_graph": empty.reshape(0, 2), "directed2undirected": empty, "undirected2directed": empty,
                "bond_graph": empty}
    # undirected edge of (i, j, n): the smaller of (i, j, n) and (j, i, -n); numbered by first
    # appearance, as Graph.add_edge numbers them
    shift = np.abs(image).max()
    forward = np.column_stack([center, neighbor, image + shift])
    backward = np.column_stack([neighbor, center, shift - image])
    use_backward = _lex_less(backward, forward)
    canonical = np.where(use_backward[:, None], backward, forward)
    if n_atoms**2 * (2 * int(shift) + 1) ** 3 >= 2**62:
        raise ValueError("neighbour list too large to index")
    directed2undirected, undirected2directed = _first_occurrence(_encode(list(canonical.T)))
    n_undir = len(undirected2directed)
    counts = np.bincount(directed2undirected, minlength=n_undir)
    if np.any(counts != 2):
        raise ValueError(f"{int(np.sum(counts != 2))} undirected edges do not have exactly two directions")
    # the second direction of every undirected edge
    second = np.full(n_undir, -1, dtype=np.int64)
    not_first = np.ones(n_dir, dtype=bool)
    not_first[undirected2directed] = False
    second[directed2undirected[not_first]] = np.flatnonzero(not_first)

    # Bond graph. Each atom's edges in the order Node.neighbors yields them: grouped by neighbour
    # atom (groups in order of first appearance at that atom), in list order within a group.
    group, first_index = _first_occurrence(center * n_atoms + neighbor)
    node_order = np.lexsort((np.arange(n_dir), first_index[group], center))
    short = distance < bond_cutoff
    members = node_order[short[node_order]]  # short edges, by atom, in neighbour order
    starts = np.searchsorted(center[members], np.arange(n_atoms + 1))
    # angles: for every undirected edge u no longer than r_bond (in order), its first then its
    # second direction a, paired with every other short edge b at a's centre
    u_short = np.flatnonzero(distance[undirected2directed] <= bond_cutoff)
    a = np.column_stack([undirected2directed[u_short], second[u_short]]).reshape(-1)
    c = center[a]
    lo, hi = starts[c], starts[c + 1]
    n_b = hi - lo
    row_a = np.repeat(a, n_b)
    offsets = np.arange(n_b.sum()) - np.repeat(np.cumsum(n_b) - n_b, n_b)
    b = members[np.repeat(lo, n_b) + offsets]
    keep = b != row_a
    row_a, b = row_a[keep], b[keep]
    bond_graph = np.column_stack([center[row_a], directed2undirected[row_a], row_a, directed2undirected[b], b])
    return {
        "atom_graph": np.column_stack([center, neighbor]).astype(np.int32),
        "directed2undirected": directed2undirected.astype(np.int32),
        "undirected2directed": undirected2directed.astype(np.int32),
        # no angles: CHGNet's converter gives a 1-D empty tensor
        "bond_graph": bond_graph.astype(np.int32) if len(bond_graph) else np.zeros(0, dtype=np.int32),
    }


def _lex_less(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Row-wise lexicographic x < y for integer arrays (n, k)."""
    diff = x != y
    first = np.argmax(diff, axis=1)
    rows = np.arange(len(x))
    return diff[rows, first] & (x[rows, first] < y[rows, first])


def crystal_graph(converter: Any, structure: Any) -> Any:
    """CHGNet's ``CrystalGraph`` of ``structure``, equal to ``converter(structure)``.

    Parameters
    ----------
    converter : chgnet.graph.CrystalGraphConverter
        The model's converter: its cutoffs and isolated-atom response are used.
    structure : pymatgen.core.Structure
        The periodic structure.

    Returns
    -------
    chgnet.graph.CrystalGraph
        With ``atom_frac_coord`` and ``lattice`` requiring grad, as the converter makes them.

    Raises
    ------
    ValueError
        An atom has no neighbour within the atom-graph cutoff and the converter's response is
        "error" (its message); or the neighbour list is not symmetric.
    """
    from chgnet.graph.crystalgraph import CrystalGraph  # lazy: chgnet.graph +1.2 s over torch; not for graph_indices
    from chgnet.model.model import TORCH_DTYPE  # lazy: chgnet.model +1.7 s over torch; not for graph_indices

    n_atoms = len(structure)
    center, neighbor, image, distance = structure.get_neighbor_list(
        r=converter.atom_graph_cutoff, sites=structure.sites, numerical_tol=1e-8)
    idx = graph_indices(n_atoms, center, neighbor, image, distance, converter.bond_graph_cutoff)
    n_isolated = n_atoms - len(np.unique(center))
    if n_isolated:
        msg = (f"Structure graph_id=None has {n_isolated} isolated atom(s) with "
               f"atom_graph_cutoff={converter.atom_graph_cutoff}. CHGNet calculation will likely go wrong")
        if converter.on_isolated_atoms == "error":
            raise ValueError(msg)
        if converter.on_isolated_atoms == "warn":
            print(msg, file=sys.stderr)
    return CrystalGraph(
        atomic_number=torch.tensor(structure.atomic_numbers, dtype=torch.int32),
        atom_frac_coord=torch.tensor(structure.frac_coords, dtype=TORCH_DTYPE, requires_grad=True),
        atom_graph=torch.from_numpy(idx["atom_graph"]),
        neighbor_image=torch.tensor(image, dtype=TORCH_DTYPE),
        directed2undirected=torch.from_numpy(idx["directed2undirected"]),
        undirected2directed=torch.from_numpy(idx["undirected2directed"]),
        bond_graph=torch.from_numpy(idx["bond_graph"]),
        lattice=torch.tensor(structure.lattice.matrix, dtype=TORCH_DTYPE, requires_grad=True),
        graph_id=None,
        mp_id=None,
        composition=structure.composition.formula,
        atom_graph_cutoff=converter.atom_graph_cutoff,
        bond_graph_cutoff=converter.bond_graph_cutoff,
    )
