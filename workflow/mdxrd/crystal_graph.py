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

:func:`batch_graphs` builds the graphs of many systems given as flat arrays (an MD batch) without
pymatgen ``Structure`` objects: the coordinates pymatgen would store, pymatgen's own neighbour
search (``find_points_in_spheres``, the function behind ``Structure.get_neighbor_list``) per
system, then one pass of :func:`graph_indices` over the whole batch.

:func:`batch_graphs_torch` builds the same graphs, as graphs (the edges in another order), with torch
on the tensors' device (a GPU: no copy of the positions to the host per MD step): a brute-force
neighbour search over each cell's box of periodic images, then the undirected pairs and angles.
"""

from __future__ import annotations

import sys
from functools import lru_cache
from typing import Any

import numpy as np
import torch

__all__ = ["batch_graphs", "batch_graphs_torch", "crystal_graph", "graph_indices"]

# CHGNet's converter: structure.get_neighbor_list(r=atom_graph_cutoff, numerical_tol=1e-8)
NUMERICAL_TOL = 1e-8


def _stable_argsort(key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted copy and stable sorting permutation (int64) of the integer ``key`` (n,). Long int32
    keys are sorted by torch, about 2x faster than NumPy's stable sort on one thread."""
    if key.dtype == np.int32 and len(key) > 2**15:
        values, order = torch.sort(torch.from_numpy(key), stable=True)
        return values.numpy(), order.numpy()
    order = np.argsort(key, kind="stable")
    return key[order], order


def _image_codes(image: np.ndarray) -> tuple[np.ndarray, int]:
    """One int32 code per row of ``image`` (n, 3) (integers, as int or float), and the number of
    codes n_codes: the code of -n is n_codes - 1 minus the code of n.

    Raises
    ------
    ValueError
        Images more than 100 cells away in a direction (a cell thinner than 1/100 of the cutoff)."""
    shift = int(max(image.max(), -image.min())) if len(image) else 0
    if shift > 100:
        raise ValueError(f"periodic images up to {shift} cells away: a cell too thin for the cutoff")
    base = 2 * shift + 1
    weights = np.array([base * base, base, 1], dtype=image.dtype)
    code = np.dot(image, weights).astype(np.int32)  # exact in float32 too: |code| < 201**3 < 2**24
    code += shift * (base * base + base + 1)
    return code, base**3


def _indices(n_atoms: int, center: np.ndarray, neighbor: np.ndarray, code: np.ndarray, n_codes: int,
             distance: np.ndarray, bond_cutoff: float) -> dict[str, np.ndarray]:
    """The index arrays of :func:`graph_indices`, with the angles as their two directed edges.

    Parameters
    ----------
    n_atoms, distance, bond_cutoff
        As :func:`graph_indices`.
    center, neighbor : numpy.ndarray
        (n_dir,) int32 or int64.
    code, n_codes
        The edges' image codes (n_dir,) int32 and their number (:func:`_image_codes`).

    Returns
    -------
    dict
        ``directed2undirected`` (n_dir,) int32 or int64, ``undirected2directed`` (n_undir,) int64,
        ``angle_a``, ``angle_b`` (n_angles,) int64: bond_graph row k is (center[a],
        directed2undirected[a], a, directed2undirected[b], b) with a, b = angle_a[k], angle_b[k].

    Raises
    ------
    ValueError
        As :func:`graph_indices`.
    """
    n_dir = len(center)
    if n_dir == 0:
        empty = np.zeros(0, dtype=np.int64)
        return {"directed2undirected": empty, "undirected2directed": empty, "angle_a": empty, "angle_b": empty}
    if n_dir % 2:
        raise ValueError(f"{n_dir} directed edges, an odd number: some undirected edges do not have exactly two "
                         "directions")
    index = np.int32 if n_dir < 2**31 else np.int64
    # Undirected edges. (i, j, n) and its reverse (j, i, -n) share the key's upper bits: the lower
    # atom, the gap to the higher one, the image seen from the lower atom (for i == j the smaller
    # code of n and -n); the lowest bit is set on the direction that leaves the higher atom. One
    # stable sort puts the two directions side by side: the one leaving the lower atom first (for
    # i == j the earlier one). Edges that share the upper bits are reverses or duplicates.
    gap = neighbor - center
    leaves_higher = gap < 0
    code_lower = np.where(leaves_higher, n_codes - 1 - code, code)
    np.abs(gap, out=gap)
    loops = np.flatnonzero(gap == 0)  # i -> i (a periodic image of the atom itself)
    code_lower[loops] = np.minimum(code[loops], n_codes - 1 - code[loops])
    width = int(gap.max()) + 1
    bound = 2 * n_atoms * width * n_codes
    if bound >= 2**62 or n_atoms * n_dir >= 2**62:
        raise ValueError("neighbour list too large to index")
    key = np.minimum(center, neighbor).astype(np.int32 if bound < 2**31 else np.int64)
    key *= width
    key += gap
    key *= n_codes
    key += code_lower
    key *= 2
    key += leaves_higher
    sorted_key, order = _stable_argsort(key)
    up, down = order[0::2], order[1::2]  # the two directions of each undirected edge
    half_up, half_down = sorted_key[0::2] >> 1, sorted_key[1::2] >> 1
    paired = half_up == half_down
    paired[1:] &= half_up[1:] != half_down[:-1]  # no third edge with the same key
    same_bit = np.flatnonzero(sorted_key[0::2] & 1 == sorted_key[1::2] & 1)  # self-image pairs, or duplicates
    paired[same_bit] &= (gap[up[same_bit]] == 0) & (code[up[same_bit]] != code[down[same_bit]])
    if not paired.all():
        raise ValueError(f"{int(np.sum(~paired))} undirected edges do not have exactly two directions")
    # numbered by first appearance, as Graph.add_edge numbers them
    first, second = np.minimum(up, down), np.maximum(up, down)
    n_undir = len(first)
    is_first = np.zeros(n_dir, dtype=bool)
    is_first[first] = True
    undirected2directed = np.flatnonzero(is_first)
    undirected = np.cumsum(is_first, dtype=index)[first]
    undirected -= 1
    directed2undirected = np.empty(n_dir, dtype=index)
    directed2undirected[first] = undirected
    directed2undirected[second] = undirected
    second_direction = np.empty(n_undir, dtype=np.int64)
    second_direction[undirected] = second

    # Bond graph. Each atom's edges in the order Node.neighbors yields them: grouped by neighbour
    # atom (groups in order of first appearance at that atom), in list order within a group. The
    # sorted undirected edges come grouped by atom pair {lower, higher}; the first appearance of
    # lower -> higher and of higher -> lower is a minimum over the group.
    pair = half_up // n_codes
    new = np.empty(n_undir, dtype=bool)
    new[0] = True
    np.not_equal(pair[1:], pair[:-1], out=new[1:])
    group_start = np.flatnonzero(new)
    first_up = np.minimum.reduceat(up, group_start)
    first_down = np.minimum.reduceat(down, group_start)
    if len(loops):  # i == j: both directions leave the same atom
        loop = pair[group_start] % width == 0
        first_up[loop] = first_down[loop] = np.minimum(first_up[loop], first_down[loop])
    short = np.flatnonzero(distance < bond_cutoff)
    sorted_position = np.empty(n_undir, dtype=index)  # of each undirected edge among the sorted pairs
    sorted_position[undirected] = np.arange(n_undir, dtype=index)
    short_group = np.cumsum(new, dtype=index)[sorted_position[directed2undirected[short]]]
    short_group -= 1
    first_seen = np.where(leaves_higher[short], first_down[short_group], first_up[short_group])
    members = short[np.argsort(center[short] * np.int64(n_dir) + first_seen, kind="stable")]  # by atom, in order
    starts = np.searchsorted(center[members], np.arange(n_atoms + 1))
    # angles: for every undirected edge u no longer than r_bond (in order), its first then its
    # second direction a, paired with every other short edge b at a's centre
    u_short = np.flatnonzero(distance[undirected2directed] <= bond_cutoff)
    a = np.column_stack([undirected2directed[u_short], second_direction[u_short]]).reshape(-1)
    lo = starts[center[a]]
    n_b = starts[center[a] + 1] - lo
    row_a = np.repeat(a, n_b)
    b = members[np.repeat(lo - (np.cumsum(n_b) - n_b), n_b) + np.arange(len(row_a))]
    keep = b != row_a
    return {"directed2undirected": directed2undirected, "undirected2directed": undirected2directed,
            "angle_a": row_a[keep], "angle_b": b[keep]}


def graph_indices(n_atoms: int, center: np.ndarray, neighbor: np.ndarray, image: np.ndarray,
                  distance: np.ndarray, bond_cutoff: float) -> dict[str, np.ndarray]:
    """Index arrays of CHGNet's atom and bond graphs from a neighbour list.

    The edges may be those of several disjoint systems (global atom indices, each system's edges
    together and in its own order, as :func:`batch_graphs` passes them): each system's arrays then
    come out together, shifted by the atoms, directed and undirected edges of the systems before it.

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
        ``atom_graph`` (n_dir, 2) (shape (0,) without edges), ``directed2undirected`` (n_dir,),
        ``undirected2directed`` (n_undir,), ``bond_graph`` (n_angles, 5) with columns (atom,
        undirected bond 1, directed bond 1, undirected bond 2, directed bond 2; shape (0,) without
        angles); all int32, as ``chgnet.graph.graph.Graph.adjacency_list`` and
        ``line_graph_adjacency_list`` return them.

    Raises
    ------
    ValueError
        An edge without its reverse, a duplicate edge or an edge from an atom to itself in the same
        cell (the neighbour list is not symmetric); images more than 100 cells away; or more than
        2**62 keys to index.
    """
    center = np.asarray(center, dtype=np.int64).reshape(-1)
    neighbor = np.asarray(neighbor, dtype=np.int64).reshape(-1)
    code, n_codes = _image_codes(np.asarray(image, dtype=np.int64).reshape(-1, 3))
    idx = _indices(int(n_atoms), center, neighbor, code, n_codes, np.asarray(distance, dtype=np.float64).reshape(-1),
                   bond_cutoff)
    d2u, a, b = idx["directed2undirected"], idx["angle_a"], idx["angle_b"]
    bond_graph = np.column_stack([center[a], d2u[a], a, d2u[b], b]).astype(np.int32)
    return {
        # no edges: CHGNet's converter gives a 1-D empty tensor
        "atom_graph": np.column_stack([center, neighbor]).astype(np.int32) if len(center) else np.zeros(0, np.int32),
        "directed2undirected": d2u.astype(np.int32),
        "undirected2directed": idx["undirected2directed"].astype(np.int32),
        # no angles: CHGNet's converter gives a 1-D empty tensor
        "bond_graph": bond_graph if len(bond_graph) else np.zeros(0, dtype=np.int32),
    }


def _isolated_atoms(converter: Any, n_isolated: int) -> None:
    """CHGNet's converter's response to ``n_isolated`` atoms without a neighbour within the atom-graph cutoff:
    ValueError ("error"), a message on stderr ("warn") or nothing ("ignore"), in the converter's words."""
    if not n_isolated:
        return
    msg = (f"Structure graph_id=None has {n_isolated} isolated atom(s) with "
           f"atom_graph_cutoff={converter.atom_graph_cutoff}. CHGNet calculation will likely go wrong")
    if converter.on_isolated_atoms == "error":
        raise ValueError(msg)
    if converter.on_isolated_atoms == "warn":
        print(msg, file=sys.stderr)


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
    _isolated_atoms(converter, n_isolated)
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


@lru_cache(maxsize=1024)
def _formula(numbers: bytes) -> str:
    """``Structure.composition.formula`` of a structure with the int64 atomic numbers ``numbers``
    (as bytes), its elements in order of first appearance, as ``Structure.composition`` sums them."""
    from pymatgen.core import Composition, Element

    amounts: dict[Any, float] = {}
    for z in np.frombuffer(numbers, dtype=np.int64).tolist():
        element = Element.from_Z(z)
        amounts[element] = amounts.get(element, 0.0) + 1.0
    return Composition(amounts).formula


def _neighbor_lists(positions: np.ndarray, cells: np.ndarray, atom_start: np.ndarray, cutoff: float,
                    ) -> tuple[np.ndarray, ...]:
    """Coordinates and neighbour list of every system, as ``Structure(cell, numbers, positions,
    coords_are_cartesian=True).get_neighbor_list(r=cutoff, numerical_tol=1e-8)`` gives them.

    The structure keeps ``frac = positions @ inv(cell)`` and the sites' Cartesian coordinates
    ``frac @ cell`` (site by site, ``np.dot``), and searches neighbours from the latter; the same
    NumPy/BLAS products here, one (n, 3) @ (3, 3) per system, equal to the site-by-site products
    to the bit (tests/test_crystal_graph.py checks it with this NumPy and BLAS).

    Parameters
    ----------
    positions : numpy.ndarray
        (N, 3) float64 Cartesian positions, Angstrom, systems one after another.
    cells : numpy.ndarray
        (S, 3, 3) float64 lattice vectors as rows, Angstrom.
    atom_start : numpy.ndarray
        (S + 1,) int64, system k's atoms are ``atom_start[k]:atom_start[k + 1]``.
    cutoff : float
        Neighbour cutoff, Angstrom.

    Returns
    -------
    frac, cart : numpy.ndarray
        (N, 3) float64 fractional and Cartesian coordinates as pymatgen stores them.
    center, neighbor : numpy.ndarray
        (P,) int32 (int64 from 2**31 atoms) global atom indices, system after system, each in
        pymatgen's order.
    image : numpy.ndarray
        (P, 3) float32 neighbour image (integers).
    distance : numpy.ndarray
        (P,) float64, Angstrom.
    pair_start : numpy.ndarray
        (S + 1,) int64, system k's pairs are ``pair_start[k]:pair_start[k + 1]``.

    Raises
    ------
    numpy.linalg.LinAlgError
        A singular cell.
    """
    from pymatgen.optimization.neighbors import find_points_in_spheres

    inverse = np.linalg.inv(cells)  # as Lattice.inv_matrix: LAPACK per matrix
    frac = np.empty_like(positions)
    cart = np.empty_like(positions)
    pbc = np.ones(3, dtype=np.int64)
    found = []
    for k in range(len(cells)):
        s0, s1 = int(atom_start[k]), int(atom_start[k + 1])
        np.dot(positions[s0:s1], inverse[k], out=frac[s0:s1])
        np.dot(frac[s0:s1], cells[k], out=cart[s0:s1])
        sites = cart[s0:s1]
        center, neighbor, image, distance = find_points_in_spheres(sites, sites, r=cutoff, pbc=pbc, lattice=cells[k],
                                                                   tol=NUMERICAL_TOL)
        # get_neighbor_list's exclude_self: an atom is not its own neighbour at distance <= numerical_tol
        keep = np.flatnonzero((center != neighbor) | (distance > NUMERICAL_TOL))
        center, neighbor = np.take(center, keep), np.take(neighbor, keep)
        if s0:
            center += s0
            neighbor += s0
        found.append((center, neighbor, np.take(image, keep, axis=0), np.take(distance, keep)))
    pair_start = np.cumsum([0] + [len(f[0]) for f in found])
    index = np.int32 if len(positions) < 2**31 else np.int64
    center, neighbor, image, distance = (np.concatenate(column, dtype=dtype) for column, dtype in zip(
        zip(*found), (index, index, np.float32, np.float64)))
    return frac, cart, center, neighbor, image, distance, pair_start


def _crystal_graphs(converter: Any, graphs: Any, atomic_number: Any, atom_frac_coord: Any, lattice: torch.Tensor,
                    numbers_host: np.ndarray, atom_start: Any, empty: torch.Tensor) -> list[Any]:
    """One chgnet ``CrystalGraph`` per system from its split tensors (``graphs``: per system the atom graph,
    images, directed2undirected, undirected2directed, bond graph); ``atom_frac_coord`` and ``lattice`` as
    leaves that require grad, ``empty`` for a system without edges or angles (as the converter)."""
    from chgnet.graph.crystalgraph import CrystalGraph  # lazy: chgnet.graph +1.2 s over torch

    out = []
    for k, (edges, images, d2u, u2d, angles) in enumerate(graphs):
        out.append(CrystalGraph(
            atomic_number=atomic_number[k],
            atom_frac_coord=atom_frac_coord[k].detach().requires_grad_(),
            atom_graph=edges if len(edges) else empty,  # as graph_indices
            neighbor_image=images,
            directed2undirected=d2u,
            undirected2directed=u2d,
            bond_graph=angles if len(angles) else empty,
            lattice=lattice[k].detach().requires_grad_(),
            graph_id=None,
            mp_id=None,
            composition=_formula(numbers_host[atom_start[k]:atom_start[k + 1]].tobytes()),
            atom_graph_cutoff=converter.atom_graph_cutoff,
            bond_graph_cutoff=converter.bond_graph_cutoff,
        ))
    return out


def batch_graphs(converter: Any, positions: np.ndarray, cells: np.ndarray, numbers: np.ndarray,
                 n_atoms: np.ndarray) -> list[Any]:
    """CHGNet's ``CrystalGraph`` of every system of a batch, each equal to ``converter(structure)``.

    System k is the periodic structure ``Structure(cells[k], numbers[sl], positions[sl],
    coords_are_cartesian=True)``, ``sl`` its atoms; its graph has the same tensors (values, order,
    dtypes, ``requires_grad``) and composition as :func:`crystal_graph` and CHGNet's converter give
    for that structure. The neighbour lists come from pymatgen's ``find_points_in_spheres`` (what
    ``Structure.get_neighbor_list`` calls), system by system, on the coordinates pymatgen would
    store; the index arrays from one pass of :func:`graph_indices`' algorithm over the whole batch.
    A graph's index tensors and ``neighbor_image`` are views into tensors shared by the batch;
    ``atom_frac_coord`` and ``lattice`` are leaves that require grad.

    Parameters
    ----------
    converter : chgnet.graph.CrystalGraphConverter
        The model's converter: its cutoffs and isolated-atom response are used.
    positions : numpy.ndarray
        (N, 3) float Cartesian positions, Angstrom, systems one after another.
    cells : numpy.ndarray
        (S, 3, 3) float lattice vectors as rows, Angstrom.
    numbers : numpy.ndarray
        (N,) int atomic numbers.
    n_atoms : numpy.ndarray
        (S,) int atoms per system, each at least 1, summing to N.

    Returns
    -------
    list of chgnet.graph.CrystalGraph
        S graphs on the CPU, in system order.

    Raises
    ------
    ValueError
        Inconsistent shapes; a system has an atom without neighbour within the atom-graph cutoff
        and the converter's response is "error" (its message, for the first such system); or a cell
        thinner than 1/100 of the cutoff (neighbours more than 100 cells away).
    numpy.linalg.LinAlgError
        A singular cell.
    """
    from chgnet.model.model import TORCH_DTYPE  # lazy: chgnet.model +1.7 s over torch

    positions = np.ascontiguousarray(positions, dtype=np.float64)
    cells = np.ascontiguousarray(cells, dtype=np.float64)
    numbers = np.ascontiguousarray(numbers, dtype=np.int64)
    counts = np.asarray(n_atoms, dtype=np.int64)
    if positions.ndim != 2 or positions.shape[1] != 3 or cells.ndim != 3 or cells.shape[1:] != (3, 3):
        raise ValueError(f"positions {positions.shape} must be (N, 3) and cells {cells.shape} (S, 3, 3)")
    if counts.shape != (len(cells),) or numbers.shape != (len(positions),) or int(counts.sum()) != len(positions):
        raise ValueError(f"n_atoms {counts.shape} (sum {int(counts.sum())}) and numbers {numbers.shape} do not match "
                         f"{len(cells)} cells and {len(positions)} positions")
    if np.any(counts < 1):
        raise ValueError("every system needs at least one atom")
    n_sys = len(cells)
    if n_sys == 0:
        return []
    atom_start = np.concatenate([[0], np.cumsum(counts)])
    frac, _, center, neighbor, image, distance, dir_start = _neighbor_lists(
        positions, cells, atom_start, float(converter.atom_graph_cutoff))

    has_edge = np.zeros(len(positions), dtype=bool)
    has_edge[center] = True
    n_isolated = counts - np.diff(np.concatenate([[0], np.cumsum(has_edge)])[atom_start])
    for k in np.flatnonzero(n_isolated).tolist():
        _isolated_atoms(converter, int(n_isolated[k]))

    code, n_codes = _image_codes(image)
    idx = _indices(len(positions), center, neighbor, code, n_codes, distance, converter.bond_graph_cutoff)
    # each system's own numbering, int32
    u2d = idx["undirected2directed"]
    undir_start = np.searchsorted(u2d, dir_start)
    n_dir, n_undir = np.diff(dir_start), np.diff(undir_start)
    atom_offset = np.repeat(atom_start[:-1], n_dir)
    atom_graph = np.empty((len(center), 2), dtype=np.int32)
    np.subtract(center, atom_offset, out=atom_graph[:, 0], casting="unsafe")
    np.subtract(neighbor, atom_offset, out=atom_graph[:, 1], casting="unsafe")
    directed2undirected = np.empty(len(center), dtype=np.int32)
    np.subtract(idx["directed2undirected"], np.repeat(undir_start[:-1], n_dir), out=directed2undirected,
                casting="unsafe")
    directed = np.arange(len(center), dtype=np.int64)
    directed -= np.repeat(dir_start[:-1], n_dir)
    undirected2directed = directed[u2d].astype(np.int32)
    a, b = idx["angle_a"], idx["angle_b"]
    bond_graph = np.empty((len(a), 5), dtype=np.int32)
    bond_graph[:, 0] = atom_graph[a, 0]
    bond_graph[:, 1] = directed2undirected[a]
    bond_graph[:, 2] = directed[a]
    bond_graph[:, 3] = directed2undirected[b]
    bond_graph[:, 4] = directed[b]
    # angles come system by system (a < dir_start[k] exactly for the systems before k), so the binary
    # search finds the boundaries though a is not sorted within a system
    n_angle = np.diff(np.searchsorted(a, dir_start))

    def split(array: np.ndarray, sizes: np.ndarray) -> tuple[torch.Tensor, ...]:
        return torch.split(torch.from_numpy(array), sizes.tolist())

    atomic_number = split(numbers.astype(np.int32), counts)
    atom_frac_coord = torch.split(torch.from_numpy(frac).to(TORCH_DTYPE), counts.tolist())
    lattice = torch.from_numpy(cells).to(TORCH_DTYPE)
    image = torch.from_numpy(image).to(TORCH_DTYPE)  # integers: exact in any float type
    graphs = zip(split(atom_graph, n_dir), torch.split(image, n_dir.tolist()), split(directed2undirected, n_dir),
                 split(undirected2directed, n_undir), split(bond_graph, n_angle))
    return _crystal_graphs(converter, graphs, atomic_number, atom_frac_coord, lattice, numbers, atom_start,
                           torch.zeros(0, dtype=torch.int32))


def _shift_box(inverse: torch.Tensor, cutoff: float) -> torch.Tensor:
    """Half-widths (S, 3) int64 of the box of lattice translations m with |m_k| <= half-width_k that
    holds every image within ``cutoff`` of a pair of points of the cell [0, 1)^3: a Cartesian vector
    v has fractional component k equal to v . inverse[:, k], at most |v| |inverse[:, k]| = |v| / w_k
    (w_k the cell's width across the planes of lattice vectors other than k), and two points of the
    cell differ by less than 1 in each fractional component, hence |m_k| < cutoff / w_k + 1.

    Parameters
    ----------
    inverse : torch.Tensor
        (S, 3, 3) float64 inverses of the cells (lattice vectors as rows), 1/Angstrom.
    cutoff : float
        Angstrom.
    """
    return torch.floor(cutoff * torch.linalg.vector_norm(inverse, dim=1)).to(torch.int64) + 1


def _pairs_within(cart: torch.Tensor, cells: torch.Tensor, atom_start: list[int], counts: list[int],
                  box: list[tuple[int, int, int]], cutoff: float, chunk: int,
                  ) -> tuple[torch.Tensor, ...]:
    """All (i, j, m) with |cart_j + m @ cell - cart_i| < cutoff, not (i == j and distance <= 1e-8),
    by brute force over each system's box of translations m, systems of the same size and box together.

    Parameters
    ----------
    cart : torch.Tensor
        (N, 3) float64 Cartesian coordinates inside the cells (fractional coordinates in [0, 1)), Angstrom.
    cells : torch.Tensor
        (S, 3, 3) float64 lattice vectors as rows, Angstrom.
    atom_start, counts : list of int
        System k's atoms are ``atom_start[k]:atom_start[k] + counts[k]``.
    box : list of (int, int, int)
        Half-widths of system k's box of translations (:func:`_shift_box`).
    cutoff : float
        Angstrom.
    chunk : int
        At most this many candidates (i, j, m) at once (memory: about 40 bytes each).

    Returns
    -------
    center, neighbor : torch.Tensor
        (P,) int64 global atom indices, system after system, by centre atom within a system.
    shift : torch.Tensor
        (P, 3) int64 translations m.
    distance : torch.Tensor
        (P,) float64, Angstrom.
    """
    device = cart.device
    groups: dict[tuple[int, tuple[int, int, int]], list[int]] = {}
    for k, (n, half) in enumerate(zip(counts, box)):
        groups.setdefault((n, half), []).append(k)
    found = []
    for (n, half), members in groups.items():
        axes = [torch.arange(-h, h + 1, device=device) for h in half]
        shifts = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)  # (B, 3) int64
        m = shifts.to(cart.dtype)
        n_shift = len(shifts)
        per_system = max(1, chunk // (n * n * n_shift))
        local = torch.arange(n, device=device)
        systems = torch.tensor(members, device=device)
        starts = torch.tensor([atom_start[k] for k in members], device=device)
        for c0 in range(0, len(members), per_system):
            sys_c = systems[c0:c0 + per_system]
            atoms = starts[c0:c0 + per_system, None] + local  # (G, n)
            r = cart[atoms]  # (G, n, 3)
            h = cells[sys_c]  # (G, 3, 3)
            # m @ h term by term, in a fixed order: the translation of -m is exactly minus that of m,
            # and the difference r_j - r_i exactly minus r_i - r_j, so (i, j, m) and (j, i, -m) have the
            # same distance to the bit: the list is symmetric
            t = (m[None, :, 0, None] * h[:, None, 0] + m[None, :, 1, None] * h[:, None, 1]
                 + m[None, :, 2, None] * h[:, None, 2])  # (G, B, 3)
            d2 = None
            for x in range(3):  # (G, i, B, j): i, then m, then j
                d = (r[:, None, None, :, x] - r[:, :, None, None, x]) + t[:, None, :, None, x]
                d2 = d * d if d2 is None else d2.addcmul_(d, d)
            within = d2 < cutoff * cutoff  # strictly within the cutoff (the square: no sqrt per candidate)
            # not an atom itself: distance <= numerical_tol from itself (pymatgen's exclude_self)
            zero = n_shift // 2  # m = 0, the middle of the box
            within[:, local, zero, local] &= d2[:, local, zero, local] > NUMERICAL_TOL**2
            flat = torch.nonzero(within.view(-1))[:, 0]  # host waits: the number found
            distance = d2.view(-1)[flat].sqrt_()
            j = flat % n
            flat = flat // n
            s = flat % n_shift
            flat = flat // n_shift
            i = flat % n
            base = starts[c0:c0 + per_system][flat // n]
            found.append((base + i, base + j, shifts[s], distance))
    center, neighbor, shift, distance = (torch.cat(column) for column in zip(*found))
    if len(groups) > 1:  # system after system
        center, order = torch.sort(center, stable=True)
        neighbor, shift, distance = neighbor[order], shift[order], distance[order]
    return center, neighbor, shift, distance


def batch_graphs_torch(converter: Any, positions: torch.Tensor, cells: torch.Tensor, numbers: torch.Tensor,
                       n_atoms: list[int], numbers_host: np.ndarray | None = None, chunk: int | None = None,
                       ) -> list[Any]:
    """CHGNet's ``CrystalGraph`` of every system of a batch, built with torch on the tensors' device.

    The same graphs as :func:`batch_graphs` (and CHGNet's converter) gives, as graphs: the same
    directed edges (i, j, image) with the same lengths (to rounding, about 1e-15 Angstrom), each
    undirected edge joining (i, j, n) and (j, i, -n), the same angles (pairs of different directed
    edges a, b leaving one atom, a's undirected edge no longer than r_bond and b shorter than
    r_bond); in another order than pymatgen's neighbour list (edges by centre atom, then image,
    then neighbour). Energies, forces and stresses agree to float32 rounding (the sums run in
    another order).

    The neighbour search is brute force over each system's box of lattice translations covering the
    atom cutoff (``cutoff / width + 1`` cells each way, widths across the cell's faces), on the
    coordinates wrapped into the cell: for 64-atom cells and CHGNet's 6 Angstrom a 3x3x3 box.
    All array work runs on the device. Host copies (each a wait for the device), all small: the
    shift-box sizes (S x 3 integers); the sizes of arrays that depend on the data (one integer each:
    the pairs found, once per chunk of candidates; the edges shorter than r_bond; the edges opening
    angles; the candidate angles; the angles); the per-system counts of edges, angles and isolated
    atoms with the count of unpaired edges (3 S + 1 integers); and ``numbers`` (N integers) only when
    ``numbers_host`` is not given (for the compositions).

    Parameters
    ----------
    converter : chgnet.graph.CrystalGraphConverter
        The model's converter: its cutoffs and isolated-atom response are used.
    positions : torch.Tensor
        (N, 3) float Cartesian positions, Angstrom, systems one after another (any device; used in
        float64).
    cells : torch.Tensor
        (S, 3, 3) float lattice vectors as rows, Angstrom, on the same device.
    numbers : torch.Tensor
        (N,) int atomic numbers on the same device.
    n_atoms : list of int
        Atoms per system (host), each at least 1, summing to N.
    numbers_host : numpy.ndarray, optional
        (N,) int64 host copy of ``numbers`` (for the compositions), to spare the copy.
    chunk : int, optional
        Candidate pairs (i, j, image) examined at once, about 40 bytes each; default 2**22 on a GPU,
        2**20 on the CPU.

    Returns
    -------
    list of chgnet.graph.CrystalGraph
        S graphs on the device of ``positions``, in system order; ``atom_frac_coord`` (float32, the
        fractional coordinates ``positions @ inv(cell)``, not wrapped) and ``lattice`` are leaves that
        require grad; the index tensors int32, ``neighbor_image`` float32.

    Raises
    ------
    ValueError
        Inconsistent shapes; a system has an atom without neighbour within the atom-graph cutoff and
        the converter's response is "error" (its message, for the first such system); a cell thinner
        than 1/100 of the cutoff; a neighbour list not symmetric (not expected: a bug).
    torch.linalg.LinAlgError
        A singular cell.
    """
    from chgnet.model.model import TORCH_DTYPE  # lazy: chgnet.model +1.7 s over torch

    counts = [int(n) for n in n_atoms]
    if positions.ndim != 2 or positions.shape[1] != 3 or cells.ndim != 3 or tuple(cells.shape[1:]) != (3, 3):
        raise ValueError(f"positions {tuple(positions.shape)} must be (N, 3) and cells {tuple(cells.shape)} (S, 3, 3)")
    if len(counts) != len(cells) or tuple(numbers.shape) != (len(positions),) or sum(counts) != len(positions):
        raise ValueError(f"n_atoms ({len(counts)} systems, sum {sum(counts)}) and numbers {tuple(numbers.shape)} do "
                         f"not match {len(cells)} cells and {len(positions)} positions")
    if any(n < 1 for n in counts):
        raise ValueError("every system needs at least one atom")
    n_sys, n_total = len(counts), len(positions)
    if n_sys == 0:
        return []
    device = positions.device
    if chunk is None:
        chunk = 2**22 if device.type == "cuda" else 2**20
    cutoff, bond_cutoff = float(converter.atom_graph_cutoff), float(converter.bond_graph_cutoff)
    positions = positions.detach().to(torch.float64)
    cells = cells.detach().to(torch.float64)
    atom_start = np.concatenate([[0], np.cumsum(counts)]).tolist()
    sizes = torch.tensor(counts, device=device)
    atom_system = torch.repeat_interleave(torch.arange(n_sys, device=device), sizes, output_size=n_total)

    inverse = torch.linalg.inv(cells)
    frac = torch.bmm(positions[:, None, :], inverse[atom_system])[:, 0]  # (N, 3), as Structure.frac_coords
    offset = torch.floor(frac)
    cart = torch.bmm((frac - offset)[:, None, :], cells[atom_system])[:, 0]  # wrapped into the cell
    half = _shift_box(inverse, cutoff)
    box = [tuple(b) for b in half.tolist()]  # host copy: S x 3 integers
    if max(max(b) for b in box) > 101:
        raise ValueError(f"periodic images up to {max(max(b) for b in box)} cells away: a cell too thin for the cutoff")
    center, neighbor, shift, distance = _pairs_within(cart, cells, atom_start, counts, box, cutoff, chunk)
    n_dir = len(center)
    # unwrapped: r_j + n @ cell - r_i with n = m + floor(frac_i) - floor(frac_j)
    image = shift.to(torch.float64) + offset[center] - offset[neighbor]

    # Undirected edges: (i, j, m) and (j, i, -m) share the key's upper bits (lower atom, gap to the
    # higher one, translation seen from the lower atom; for i == j the smaller code of m and -m); the
    # lowest bit is set on the direction leaving the higher atom. Sorted, the two directions are
    # neighbours: pairs (2u, 2u + 1), numbered u by key, so by lower atom: system after system.
    width_m = 2 * max(max(b) for b in box) + 1
    n_codes = width_m**3
    code = ((shift[:, 0] + width_m // 2) * width_m + shift[:, 1] + width_m // 2) * width_m + shift[:, 2] + width_m // 2
    gap = neighbor - center
    leaves_higher = gap < 0
    code_lower = torch.where(leaves_higher, n_codes - 1 - code, code)
    code_lower = torch.where(gap == 0, torch.minimum(code, n_codes - 1 - code), code_lower)
    width = max(counts)
    if 2 * n_total * width * n_codes >= 2**62:
        raise ValueError("neighbour list too large to index")
    key = ((torch.minimum(center, neighbor) * width + gap.abs()) * n_codes + code_lower) * 2 + leaves_higher
    sorted_key, order = torch.sort(key)
    up, down = order[0::2], order[1::2]
    n_undir = n_dir // 2
    # by construction every edge has its reverse (same distance to the bit): counted, not expected
    n_unpaired = (n_dir % 2) + ((sorted_key[0:2 * n_undir:2] >> 1) != (sorted_key[1:2 * n_undir:2] >> 1)).sum()
    undirected = torch.arange(n_undir, device=device)
    directed2undirected = torch.empty(n_dir, dtype=torch.int64, device=device)
    directed2undirected[up[:n_undir]] = undirected
    directed2undirected[down[:n_undir]] = undirected
    undirected2directed = up[:n_undir]

    # Angles: every directed edge a whose undirected edge is no longer than r_bond, with every other
    # directed edge b shorter than r_bond leaving the same atom.
    short = torch.nonzero(distance < bond_cutoff, as_tuple=True)[0]  # ascending: by centre atom
    per_atom = torch.bincount(center[short], minlength=n_total)
    first_short = torch.cumsum(per_atom, 0) - per_atom
    a = torch.nonzero(distance[undirected2directed[directed2undirected]] <= bond_cutoff, as_tuple=True)[0]
    n_b = per_atom[center[a]]
    row_a = torch.repeat_interleave(a, n_b)  # host waits: the number of candidate angles
    first_row = torch.cumsum(n_b, 0) - n_b
    within_row = torch.arange(len(row_a), device=device)
    within_row -= torch.repeat_interleave(first_row, n_b, output_size=len(row_a))
    b = short[torch.repeat_interleave(first_short[center[a]], n_b, output_size=len(row_a)) + within_row]
    keep = b != row_a
    angle_a, angle_b = row_a[keep], b[keep]

    # per-system counts and numbering
    edge_system = atom_system[center]
    has_edge = torch.zeros(n_total, dtype=torch.int64, device=device).index_fill_(0, center, 1)
    per_system_dir = torch.bincount(edge_system, minlength=n_sys)
    per_system = torch.stack([
        per_system_dir,
        torch.bincount(edge_system[angle_a], minlength=n_sys),
        sizes - torch.zeros(n_sys, dtype=torch.int64, device=device).index_add_(0, atom_system, has_edge),
    ])
    per_system = torch.cat([per_system.reshape(-1), torch.as_tensor(n_unpaired, device=device).reshape(1)])
    per_system = per_system.tolist()  # host copy: 3 S + 1 integers
    if per_system[-1]:
        raise ValueError(f"{per_system[-1]} undirected edges do not have exactly two directions")
    dir_counts, angle_counts, n_isolated = (per_system[k * n_sys:(k + 1) * n_sys] for k in range(3))
    for isolated in n_isolated:
        _isolated_atoms(converter, isolated)
    dir_start = torch.cumsum(per_system_dir, 0) - per_system_dir
    atom_offset = torch.tensor(atom_start[:-1], device=device)[edge_system]
    edge_offset = dir_start[edge_system]
    atom_graph = torch.stack([center - atom_offset, neighbor - atom_offset], dim=1).to(torch.int32)
    d2u_local = (directed2undirected - edge_offset // 2).to(torch.int32)
    u2d_local = (undirected2directed - edge_offset[undirected2directed]).to(torch.int32)
    bond_graph = torch.stack([atom_graph[angle_a, 0], d2u_local[angle_a], angle_a - edge_offset[angle_a],
                              d2u_local[angle_b], angle_b - edge_offset[angle_b]], dim=1).to(torch.int32)

    if numbers_host is None:
        numbers_host = numbers.cpu().numpy()  # host copy (when not given): N integers
    numbers_host = np.ascontiguousarray(numbers_host, dtype=np.int64)
    atomic_number = torch.split(numbers.to(torch.int32), counts)
    atom_frac_coord = torch.split(frac.to(TORCH_DTYPE), counts)
    lattice = cells.to(TORCH_DTYPE)
    images = torch.split(image.to(TORCH_DTYPE), dir_counts)
    undir_counts = [n // 2 for n in dir_counts]
    graphs = zip(torch.split(atom_graph, dir_counts), images, torch.split(d2u_local, dir_counts),
                 torch.split(u2d_local, undir_counts), torch.split(bond_graph, angle_counts))
    return _crystal_graphs(converter, graphs, atomic_number, atom_frac_coord, lattice, numbers_host, atom_start,
                           torch.zeros(0, dtype=torch.int32, device=device))
