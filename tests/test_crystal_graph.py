"""mdxrd.crystal_graph against CHGNet's own CrystalGraphConverter: the same tensors, to the bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk

pytest.importorskip("chgnet")
from pymatgen.core import Lattice, Structure  # noqa: E402

from mdxrd.calculator import _structure, load_model  # noqa: E402
from mdxrd.crystal_graph import crystal_graph, graph_indices  # noqa: E402

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
