"""mdxrd.crystal_graph against CHGNet's own CrystalGraphConverter: the same tensors, to the bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk

pytest.importorskip("chgnet")
from pymatgen.core import Lattice, Structure  # noqa: E402

from mdxrd.calculator import _structure, load_model  # noqa: E402
from mdxrd.crystal_graph import batch_graphs, crystal_graph, graph_indices  # noqa: E402

FIELDS = ("atomic_number", "atom_frac_coord", "atom_graph", "neighbor_image", "directed2undirected",
          "undirected2directed", "bond_graph", "lattice")


@pytest.fixture(scope="module")
def converter():
    return load_model("cpu").graph_converter


def _rattled(atoms, sigma, seed):
    atoms = atoms.copy()
    atoms.positions += np.random.default_rng(seed).normal(0.0, sigma, atoms.positions.shape)
    return _structure(atoms)


def _structures():
    rng = np.random.default_rng(4)
    yield "Si 2x2x2 rattled", _rattled(bulk("Si", "diamond", a=5.43, cubic=True).repeat(2), 0.08, 1)
    yield "Cu primitive, 1 atom (self-images)", _structure(bulk("Cu", "fcc", a=3.615))
    yield "NaCl rattled", _rattled(bulk("NaCl", "rocksalt", a=5.64, cubic=True), 0.1, 2)
    yield "MgO 2x2x2 rattled", _rattled(bulk("MgO", "rocksalt", a=4.21, cubic=True).repeat(2), 0.1, 3)
    yield "hcp Mg 3x3x2 (Mg-Mg 3.2 A: no angles)", _rattled(bulk("Mg", "hcp", a=3.21, c=5.21).repeat((3, 3, 2)), 0.05, 4)
    yield "triclinic, 4 atoms", Structure(Lattice.from_parameters(4.1, 5.3, 6.2, 81, 97, 105),
                                          ["Al", "O", "O", "Ti"], rng.random((4, 3)))
    yield "short bonds (compressed Si)", _rattled(bulk("Si", "diamond", a=4.4, cubic=True), 0.1, 5)


@pytest.mark.parametrize("name,structure", list(_structures()), ids=[n for n, _ in _structures()])
def test_graph_equals_chgnet_converter(converter, name, structure):
    expected, got = converter(structure), crystal_graph(converter, structure)
    for field in FIELDS:
        a, b = getattr(expected, field), getattr(got, field)
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), (name, field)
    assert got.atom_frac_coord.requires_grad and got.lattice.requires_grad
    assert got.composition == expected.composition


def test_graph_of_shared_structures(converter, shared_structures):
    from pymatgen.core import Structure as S

    for cif in sorted(shared_structures.glob("*.cif"))[:12]:
        structure = S.from_file(cif)
        if len(structure) > 100 or not structure.is_ordered:
            continue
        expected, got = converter(structure), crystal_graph(converter, structure)
        for field in FIELDS:
            assert torch.equal(getattr(expected, field), getattr(got, field)), (cif.name, field)


def test_isolated_atom_raises_like_the_converter(converter):
    lonely = Structure(Lattice.cubic(20.0), ["Cu", "Cu"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    response = converter.on_isolated_atoms
    converter.set_isolated_atom_response("error")
    try:
        with pytest.raises(ValueError, match="isolated atom"):
            converter(lonely)
        with pytest.raises(ValueError, match="isolated atom"):
            crystal_graph(converter, lonely)
    finally:
        converter.set_isolated_atom_response(response)


def test_indices_of_a_hand_made_chain():
    # Two atoms on a line, bonds 0->1 (image 0) and 1->0 (image 0) of 2 A, 0->1 (image -1) and
    # 1->0 (image +1) of 4 A: two undirected edges; with r_bond = 3 A only the first makes angles,
    # and it has no second short edge at either atom: no angles.
    idx = graph_indices(2, np.array([0, 0, 1, 1]), np.array([1, 1, 0, 0]),
                        np.array([[0, 0, 0], [-1, 0, 0], [0, 0, 0], [1, 0, 0]]), np.array([2.0, 4.0, 2.0, 4.0]), 3.0)
    assert idx["directed2undirected"].tolist() == [0, 1, 0, 1]
    assert idx["undirected2directed"].tolist() == [0, 1]
    assert idx["bond_graph"].shape == (0,)
    with pytest.raises(ValueError, match="two directions"):
        graph_indices(2, np.array([0]), np.array([1]), np.zeros((1, 3)), np.array([2.0]), 3.0)


def _batch(structures):
    """Flat batch arrays (positions, cells, numbers, n_atoms) of pymatgen structures."""
    return (np.concatenate([s.cart_coords for s in structures]), np.stack([s.lattice.matrix for s in structures]),
            np.concatenate([s.atomic_numbers for s in structures]), np.array([len(s) for s in structures]))


def _assert_batch_equals_converter(converter, positions, cells, numbers, n_atoms, names):
    graphs = batch_graphs(converter, positions, cells, numbers, n_atoms)
    assert len(graphs) == len(cells)
    start = np.concatenate([[0], np.cumsum(n_atoms)])
    for k, got in enumerate(graphs):
        sl = slice(start[k], start[k + 1])
        expected = converter(Structure(cells[k], numbers[sl], positions[sl], coords_are_cartesian=True))
        for field in FIELDS:
            a, b = getattr(expected, field), getattr(got, field)
            assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), (names[k], field)
        assert got.atom_frac_coord.requires_grad and got.lattice.requires_grad, names[k]
        assert got.atom_frac_coord.is_leaf and got.lattice.is_leaf, names[k]
        assert got.composition == expected.composition, names[k]
        assert (got.atom_graph_cutoff, got.bond_graph_cutoff) == (expected.atom_graph_cutoff,
                                                                 expected.bond_graph_cutoff)


def test_batch_graphs_equal_chgnet_converter(converter):
    # a mixed batch: Si 2x2x2 rattled, Cu fcc primitive (1 atom: its own images), NaCl, MgO, hcp Mg
    # (no angles), a triclinic cell, compressed Si; then the same in reverse order, Si twice
    named = list(_structures())
    names = [n for n, _ in named] + [n for n, _ in reversed(named)]
    structures = [s for _, s in named] + [s for _, s in reversed(named)]
    _assert_batch_equals_converter(converter, *_batch(structures), names)


def test_batch_graphs_of_unwrapped_and_tied_positions(converter):
    # atoms outside the cell (as MD leaves them), and a perfect simple-cubic cell whose nearest
    # neighbours sit exactly at the bond cutoff (3 A) and whose cell length equals the atom cutoff (6 A)
    rng = np.random.default_rng(7)
    lattice = Lattice.from_parameters(5.0, 6.1, 7.3, 75, 101, 112).matrix
    names = ["unwrapped triclinic", "sc a=3", "sc a=6", "thin cell (images 3 cells away)"]
    structures = [Structure(lattice, ["Si", "O", "O", "Na", "Cl"], rng.uniform(-1.5, 2.5, (5, 3))),
                  Structure(Lattice.cubic(3.0), ["Si"], [[0, 0, 0]]),
                  Structure(Lattice.cubic(6.0), ["Si", "Si"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
                  Structure(Lattice.orthorhombic(1.9, 4.7, 9.0), ["C", "C"], [[0, 0, 0], [0.5, 0.3, 0.2]])]
    _assert_batch_equals_converter(converter, *_batch(structures), names)


def test_batch_coordinates_are_pymatgens(converter):
    # the fractional and Cartesian coordinates a Structure stores, to the bit: the neighbour search
    # runs on the latter
    from mdxrd.crystal_graph import _neighbor_lists

    structures = [s for _, s in _structures()]
    positions, cells, numbers, n_atoms = _batch(structures)
    start = np.concatenate([[0], np.cumsum(n_atoms)])
    frac, cart = _neighbor_lists(positions, cells, start, converter.atom_graph_cutoff)[:2]
    for k in range(len(cells)):
        sl = slice(start[k], start[k + 1])
        structure = Structure(cells[k], numbers[sl], positions[sl], coords_are_cartesian=True)
        assert np.array_equal(frac[sl], structure.frac_coords) and np.array_equal(cart[sl], structure.cart_coords)


def test_batch_isolated_atoms_like_the_converter(converter):
    lonely = Structure(Lattice.cubic(20.0), ["Cu", "Cu"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    alone = Structure(Lattice.cubic(15.0), ["Si"], [[0.1, 0.2, 0.3]])  # no edge at all
    si = _rattled(bulk("Si", "diamond", a=5.43, cubic=True), 0.05, 9)
    response = converter.on_isolated_atoms
    try:
        converter.set_isolated_atom_response("error")
        with pytest.raises(ValueError, match="isolated atom"):
            batch_graphs(converter, *_batch([si, lonely]))
        converter.set_isolated_atom_response("ignore")
        _assert_batch_equals_converter(converter, *_batch([si, lonely, alone, si]), ["Si", "Cu2", "Si1", "Si"])
    finally:
        converter.set_isolated_atom_response(response)


def test_batch_graphs_rejects_inconsistent_input(converter):
    positions, cells, numbers, n_atoms = _batch([_structure(bulk("Cu", "fcc", a=3.615))] * 2)
    with pytest.raises(ValueError, match="n_atoms"):
        batch_graphs(converter, positions, cells, numbers, n_atoms + 1)
    with pytest.raises(ValueError, match="positions"):
        batch_graphs(converter, positions[:, :2], cells, numbers, n_atoms)
    with pytest.raises(ValueError, match="at least one atom"):
        batch_graphs(converter, positions, cells, numbers, np.array([2, 0]))
    assert batch_graphs(converter, np.zeros((0, 3)), np.zeros((0, 3, 3)), np.zeros(0, int), np.zeros(0, int)) == []


def _canonical(graph):
    """Directed edges (i, j, image) of ``graph`` sorted (n_dir, 5) int64, the sorting permutation, and
    the graph's undirected edges and angles in those sorted edge numbers, checking their columns."""
    edges = graph.atom_graph.cpu().reshape(-1, 2).long().numpy()
    image = graph.neighbor_image.cpu().double().numpy()
    assert np.array_equal(image, np.round(image))
    rows = np.column_stack([edges, image.astype(np.int64)])
    order = np.lexsort(rows.T[::-1])  # by i, then j, then the image
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    d2u = graph.directed2undirected.cpu().long().numpy()
    u2d = graph.undirected2directed.cpu().long().numpy()
    assert len(d2u) == len(edges) == 2 * len(u2d) and np.array_equal(d2u[u2d], np.arange(len(u2d)))
    # each undirected edge: exactly two directions, (i, j, n) and (j, i, -n)
    pairs = np.argsort(d2u, kind="stable").reshape(-1, 2)
    assert np.array_equal(d2u[pairs[:, 0]], d2u[pairs[:, 1]])
    assert np.array_equal(rows[pairs[:, 0], :2], rows[pairs[:, 1], 1::-1])
    assert np.array_equal(rows[pairs[:, 0], 2:], -rows[pairs[:, 1], 2:])
    undirected = {frozenset(p) for p in rank[pairs].tolist()}
    bond = graph.bond_graph.cpu().reshape(-1, 5).long().numpy()
    assert np.array_equal(bond[:, 0], edges[bond[:, 2], 0]) and np.array_equal(bond[:, 0], edges[bond[:, 4], 0])
    assert np.array_equal(bond[:, 1], d2u[bond[:, 2]]) and np.array_equal(bond[:, 3], d2u[bond[:, 4]])
    angles = [tuple(t) for t in rank[bond[:, [2, 4]]].tolist()]
    assert len(set(angles)) == len(angles)
    return rows[order], order, undirected, set(angles)


def _assert_torch_graphs_equal(converter, positions, cells, numbers, n_atoms, names, **kwargs):
    """batch_graphs_torch's graphs equal batch_graphs' as graphs: edge sets with images, lengths
    (against pymatgen's neighbour list, 1e-12 Angstrom), undirected pairs and angle sets."""
    from mdxrd.crystal_graph import _neighbor_lists, batch_graphs_torch

    expected = batch_graphs(converter, positions, cells, numbers, n_atoms)
    got = batch_graphs_torch(converter, torch.from_numpy(positions), torch.from_numpy(cells),
                             torch.from_numpy(numbers), n_atoms.tolist(), **kwargs)
    start = np.concatenate([[0], np.cumsum(n_atoms)])
    distance = _neighbor_lists(positions, cells, start, converter.atom_graph_cutoff)[5]
    dir_start = np.concatenate([[0], np.cumsum([len(g.directed2undirected) for g in expected])])
    assert len(got) == len(expected)
    for k, (e, g) in enumerate(zip(expected, got)):
        rows_e, order_e, undirected_e, angles_e = _canonical(e)
        rows_g, _, undirected_g, angles_g = _canonical(g)
        assert np.array_equal(rows_e, rows_g), names[k]
        assert undirected_e == undirected_g, names[k]
        assert angles_e == angles_g, names[k]
        assert len(angles_g) == len(g.bond_graph.reshape(-1, 5)), names[k]
        # the lengths of the torch graph's edges, from the float64 input, are pymatgen's
        sl = slice(start[k], start[k + 1])
        r = positions[sl]
        length = np.linalg.norm(r[rows_g[:, 1]] + rows_g[:, 2:] @ cells[k] - r[rows_g[:, 0]], axis=1)
        np.testing.assert_allclose(length, distance[dir_start[k]:dir_start[k + 1]][order_e], rtol=0, atol=1e-12,
                                   err_msg=names[k])
        assert torch.equal(e.atomic_number, g.atomic_number) and torch.equal(e.lattice, g.lattice), names[k]
        np.testing.assert_allclose(g.atom_frac_coord.detach().numpy(), e.atom_frac_coord.detach().numpy(), rtol=0,
                                   atol=1e-6, err_msg=names[k])
        assert g.atom_frac_coord.is_leaf and g.atom_frac_coord.requires_grad and g.lattice.requires_grad, names[k]
        assert g.composition == e.composition, names[k]
        for field in ("atom_graph", "directed2undirected", "undirected2directed", "bond_graph"):
            assert getattr(g, field).dtype == torch.int32, (names[k], field)
        assert g.neighbor_image.dtype == e.neighbor_image.dtype
    return expected, got


def _mixed_torch_batch():
    named = list(_structures())
    names = [n for n, _ in named] + [n for n, _ in reversed(named)]
    structures = [s for _, s in named] + [s for _, s in reversed(named)]
    return (*_batch(structures), names)


def test_batch_graphs_torch_equal_batch_graphs(converter):
    # mixed batch (Si 2x2x2 rattled, Cu primitive with self-images, NaCl, MgO, hcp Mg, triclinic,
    # compressed Si; then reversed): one chunk, and chunks of at most 5000 candidate pairs
    _assert_torch_graphs_equal(converter, *_mixed_torch_batch())
    _assert_torch_graphs_equal(converter, *_mixed_torch_batch(), chunk=5000)


def test_batch_graphs_torch_of_unwrapped_positions(converter):
    rng = np.random.default_rng(7)
    lattice = Lattice.from_parameters(5.0, 6.1, 7.3, 75, 101, 112).matrix
    structures = [Structure(lattice, ["Si", "O", "O", "Na", "Cl"], rng.uniform(-1.5, 2.5, (5, 3))),
                  Structure(Lattice.orthorhombic(1.9, 4.7, 9.0), ["C", "C"], [[0, 0, 0], [0.5, 0.3, 0.2]]),
                  _rattled(bulk("Si", "diamond", a=5.43, cubic=True), 0.05, 9)]
    _assert_torch_graphs_equal(converter, *_batch(structures), ["unwrapped triclinic", "thin cell", "Si8"])


def test_batch_graphs_torch_isolated_atoms(converter):
    from mdxrd.crystal_graph import batch_graphs_torch

    lonely = Structure(Lattice.cubic(20.0), ["Cu", "Cu"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    alone = Structure(Lattice.cubic(15.0), ["Si"], [[0.1, 0.2, 0.3]])
    si = _rattled(bulk("Si", "diamond", a=5.43, cubic=True), 0.05, 9)
    response = converter.on_isolated_atoms
    try:
        converter.set_isolated_atom_response("error")
        positions, cells, numbers, n_atoms = _batch([si, lonely])
        with pytest.raises(ValueError, match="isolated atom"):
            batch_graphs_torch(converter, torch.from_numpy(positions), torch.from_numpy(cells),
                               torch.from_numpy(numbers), n_atoms.tolist())
        converter.set_isolated_atom_response("ignore")
        _assert_torch_graphs_equal(converter, *_batch([si, lonely, alone, si]), ["Si", "Cu2", "Si1", "Si"])
    finally:
        converter.set_isolated_atom_response(response)


def test_batch_graphs_torch_energies_forces_stress(converter, monkeypatch):
    # CHGNet from the torch graphs equals CHGNet from batch_graphs' to the rounding of its float32
    # sums, which run in another order (the edges' order differs): up to 1.4e-4 eV/A on the random
    # triclinic cell (|F| up to 3 eV/A), 1.1e-5 on rattled Si. The same model in float64 (composition
    # model, a constant, left out) agrees to 1e-12: the graphs are the same.
    import copy

    import chgnet.model.model
    from chgnet.graph.crystalgraph import CrystalGraph
    from mdxrd.calculator import energy_forces_stress

    model = load_model("cpu")
    positions, cells, numbers, n_atoms, names = _mixed_torch_batch()
    expected, got = _assert_torch_graphs_equal(model.graph_converter, positions, cells, numbers, n_atoms, names)
    for k, ((e0, f0, s0), (e1, f1, s1)) in enumerate(zip(energy_forces_stress(model, expected),
                                                           energy_forces_stress(model, got))):
        assert abs(e0 - e1) / n_atoms[k] < 1e-6, names[k]
        np.testing.assert_allclose(f1, f0, rtol=0, atol=3e-4, err_msg=names[k])
        np.testing.assert_allclose(s1, s0, rtol=0, atol=1e-3, err_msg=names[k])  # GPa: 6e-6 eV/A^3

    def double(graph):
        fields = ("atomic_number", "atom_graph", "directed2undirected", "undirected2directed", "bond_graph",
                  "graph_id", "mp_id", "composition", "atom_graph_cutoff", "bond_graph_cutoff")
        return CrystalGraph(atom_frac_coord=graph.atom_frac_coord.detach().double().requires_grad_(),
                            lattice=graph.lattice.detach().double().requires_grad_(),
                            neighbor_image=graph.neighbor_image.double(),
                            **{field: getattr(graph, field) for field in fields})

    monkeypatch.setattr(chgnet.model.model, "TORCH_DTYPE", torch.float64)
    model64 = copy.deepcopy(model).double()
    model64.composition_model = None
    for k, ((e0, f0, s0), (e1, f1, s1)) in enumerate(zip(
            energy_forces_stress(model64, [double(g) for g in expected]),
            energy_forces_stress(model64, [double(g) for g in got]))):
        assert abs(e0 - e1) < 1e-10, names[k]
        np.testing.assert_allclose(f1, f0, rtol=0, atol=1e-10, err_msg=names[k])
        np.testing.assert_allclose(s1, s0, rtol=0, atol=1e-9, err_msg=names[k])
