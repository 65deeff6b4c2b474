"""Atomistic cells built by md_reference.md.structures agree with the lattice model."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("ase", reason="the md extra (ASE) is not installed")

from lattice import HalideSublattice, build_heterojunction, build_nanodomain, build_pure, place_defects  # noqa: E402
from lattice.species import BRIDGE, VACANCY  # noqa: E402
from md_reference.md.structures import (  # noqa: E402
    build_atoms,
    build_cell,
    occupancy_from_atoms,
    vegard_lattice_constant,
)


def _minimum_image(d, L):
    return d - L * np.round(d / L)


def test_pure_cell_sites_and_stoichiometry():
    lat = HalideSublattice((3, 4, 5))
    atoms = build_atoms(build_pure(lat, "I"), None, 6.3)
    sym = np.array(atoms.get_chemical_symbols())
    n_cells = 60
    assert (sym == "Cs").sum() == n_cells and (sym == "Pb").sum() == n_cells and (sym == "I").sum() == 3 * n_cells
    site = atoms.arrays["halide_site"]
    hal = site >= 0
    # Every halide sits exactly on its lattice site (same numbering as lattice/).
    np.testing.assert_allclose(atoms.positions[hal], lat.positions_A(6.3)[site[hal]], atol=1e-12)
    np.testing.assert_allclose(np.diag(atoms.cell[:]), np.array([3, 4, 5]) * 6.3)


def test_halide_pb_distance_is_half_lattice_constant():
    atoms = build_atoms(build_pure(HalideSublattice((3, 3, 3)), "Br"), None, 5.9)
    sym = np.array(atoms.get_chemical_symbols())
    L = np.diag(atoms.cell[:])
    pb = atoms.positions[sym == "Pb"]
    x = atoms.positions[sym == "Br"]
    d = np.linalg.norm(_minimum_image(x[:, None, :] - pb[None, :, :], L), axis=2)
    nearest = np.sort(d, axis=1)[:, :2]
    # Each X bridges two Pb at a/2 (linear Pb-X-Pb).
    np.testing.assert_allclose(nearest, 5.9 / 2, atol=1e-9)


def test_vacancy_and_interstitial_stoichiometry_and_occupancy():
    for defect, n_x in (("vacancy", 80), ("interstitial", 82)):
        atoms, config, defects = build_cell("pure", (3, 3, 3), species="I", defect=defect, where=17)
        sym = np.array(atoms.get_chemical_symbols())
        assert (sym == "I").sum() == n_x
        occ = occupancy_from_atoms(atoms, config.lattice)
        expected = config.occ.copy()
        expected[17] = VACANCY if defect == "vacancy" else BRIDGE
        np.testing.assert_array_equal(occ, expected)


def test_split_interstitial_geometry():
    lat = HalideSublattice((3, 3, 3))
    config = build_pure(lat, "I")
    site = 3 * 13 + 1  # a type-1 site (bond along y)
    defects = place_defects(config, 0, 1, where=[site], added_species="Br")
    atoms = build_atoms(config, defects, 6.3)
    idx = np.flatnonzero(atoms.arrays["halide_site"] == site)
    assert idx.size == 2
    sym = np.array(atoms.get_chemical_symbols())[idx]
    assert list(sym) == ["I", "Br"]  # site atom first, then the added one
    d = atoms.positions[idx[0]] - atoms.positions[idx[1]]
    # Dumbbell perpendicular to the Pb-X-Pb bond (y), along z, 0.5 a long.
    assert abs(d[1]) < 1e-12 and abs(d[0]) < 1e-12
    assert abs(abs(d[2]) - 0.5 * 6.3) < 1e-12
    mid = atoms.positions[idx].mean(axis=0)
    np.testing.assert_allclose(mid, lat.positions_A(6.3)[site], atol=1e-12)


@pytest.mark.parametrize("interface,majority", [("I-rich", "I"), ("Br-rich", "Br")])
def test_heterojunction_interface_coordination_from_atoms(interface, majority):
    """16x6x6 superlattice: interface Pb see 5 X of the interface species + 1 of the other."""
    lat = HalideSublattice((16, 6, 6))
    config = build_heterojunction(lat, 8, 8, interface=interface)
    atoms = build_atoms(config, None, 6.1)
    sym = np.array(atoms.get_chemical_symbols())
    L = np.diag(atoms.cell[:])
    pb_idx = np.flatnonzero(sym == "Pb")
    x_idx = np.flatnonzero(np.isin(sym, ("I", "Br")))
    d = np.linalg.norm(_minimum_image(atoms.positions[pb_idx][:, None] - atoms.positions[x_idx][None], L), axis=2)
    six = np.argsort(d, axis=1)[:, :6]
    n_major = (sym[x_idx][six] == majority).sum(axis=1)
    plane = np.round(atoms.positions[pb_idx, 0] / (6.1 / 2)).astype(int) % lat.n_planes(0)
    at_interface = np.isin(plane, config.interface_planes)
    assert at_interface.sum() == 2 * 36  # two interface Pb planes of 6x6
    assert np.all(n_major[at_interface] == 5)
    # Elsewhere a Pb sees 6 of one kind.
    other = n_major[~at_interface]
    assert np.all((other == 6) | (other == 0))
    assert (sym == "I").sum() + (sym == "Br").sum() == 3 * 16 * 36


def test_nanodomain_counts():
    lat = HalideSublattice((8, 8, 8))
    config = build_nanodomain(lat, "I", 4)
    atoms = build_atoms(config, None, "vegard")
    sym = np.array(atoms.get_chemical_symbols())
    # Every site of the closed domain box holds the domain halide, no other does.
    assert (sym == "I").sum() == int(config.domain_mask().sum())
    assert atoms.info["lattice_constant_A"] == pytest.approx(vegard_lattice_constant(config.x_I))


def test_bad_inputs():
    with pytest.raises(ValueError, match="x_I"):
        vegard_lattice_constant(1.5)
    with pytest.raises(ValueError, match="lattice_constant"):
        build_atoms(build_pure(HalideSublattice((2, 2, 2)), "I"), None, "huge")
    with pytest.raises(ValueError, match="unknown defect"):
        build_cell("pure", (2, 2, 2), species="I", defect="antisite")
    with pytest.raises(ValueError, match="unknown halide"):
        build_cell("pure", (2, 2, 2), species="Cl")
