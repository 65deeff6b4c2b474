"""Geometry of the halide sublattice and the configuration / defect builders."""

from __future__ import annotations

import numpy as np
import pytest

from lattice import (
    HalideSublattice,
    build_configuration,
    build_heterojunction,
    build_nanodomain,
    build_pure,
    build_random_mix,
    pb_coordination,
    place_defects,
)
from lattice.species import BR, I, KIND_INTERSTITIAL, KIND_VACANCY

A_LATTICE = 6.1  # angstrom, any positive value


def _min_image_distances(lat, a):
    """(n, n) minimum-image distance matrix (angstrom) of all halide sites."""
    pos = lat.positions_A(a)
    box = a * np.asarray(lat.shape, dtype=float)
    diff = pos[:, None, :] - pos[None, :, :]
    diff -= box * np.round(diff / box)
    return np.linalg.norm(diff, axis=-1)


@pytest.mark.parametrize("shape", [(3, 4, 5), (2, 3, 2), (4, 4, 4)])
def test_eight_neighbours_at_a_over_sqrt2(shape):
    lat = HalideSublattice(shape)
    dist = _min_image_distances(lat, A_LATTICE)
    nbr = lat.neighbour_table
    d_nn = A_LATTICE / np.sqrt(2.0)
    n = lat.n_sites
    assert nbr.shape == (n, 8)
    rows = np.arange(n)[:, None]
    np.testing.assert_allclose(dist[rows, nbr], d_nn, rtol=1e-12)
    for site in range(n):
        assert len(set(nbr[site].tolist())) == 8, "the 8 neighbours must be distinct"
        assert site not in nbr[site]
        # no other site at or below the nearest-neighbour distance
        close = set(np.flatnonzero((dist[site] < d_nn * (1 + 1e-9)) & (np.arange(n) != site)).tolist())
        assert close == set(nbr[site].tolist())
    # symmetric relation
    pairs = {(a, int(b)) for a in range(n) for b in nbr[a]}
    assert all((b, a) in pairs for a, b in pairs)
    # neighbours() agrees with the table
    for site in (0, n // 2, n - 1):
        np.testing.assert_array_equal(lat.neighbours(site), nbr[site])


def test_three_sites_per_cell_and_index_round_trip():
    lat = HalideSublattice((3, 4, 5))
    assert lat.n_sites == 3 * 3 * 4 * 5
    c = lat.coords()
    # each site has exactly one odd doubled coordinate, whose axis is the site type
    odd = c % 2
    assert np.all(odd.sum(axis=1) == 1)
    np.testing.assert_array_equal(np.argmax(odd, axis=1), np.arange(lat.n_sites) % 3)
    # three sites (one per type) in each cell
    cells = c // 2
    cell_id = (cells[:, 0] * 4 + cells[:, 1]) * 5 + cells[:, 2]
    assert np.all(np.bincount(cell_id) == 3)
    assert np.all(np.bincount(np.arange(lat.n_sites) % 3) == lat.n_sites // 3)
    # round trips, including periodic images
    np.testing.assert_array_equal(lat.site_index(c), np.arange(lat.n_sites))
    shift = 2 * lat.dims * np.random.default_rng(0).integers(-3, 4, size=(lat.n_sites, 3))
    np.testing.assert_array_equal(lat.site_index(c + shift), np.arange(lat.n_sites))
    assert lat.coords(7).tolist() == c[7].tolist()
    with pytest.raises(ValueError, match="not halide sites"):
        lat.site_index([0, 0, 0])
    with pytest.raises(ValueError, match="not halide sites"):
        lat.site_index([1, 1, 0])
    with pytest.raises(ValueError, match="out of range"):
        lat.coords(lat.n_sites)
    assert lat.sites_per_plane(0).sum() == lat.n_sites
    assert np.array_equal(np.bincount(lat.plane_index(0)), lat.sites_per_plane(0))


@pytest.mark.parametrize("shape", [(1, 4, 4), (4, 4), (0, 3, 3), (3, -2, 3), (2, 2, 2, 2)])
def test_impossible_shapes_raise(shape):
    with pytest.raises(ValueError, match="shape"):
        HalideSublattice(shape)


def _expected_hetero_counts(t_i, t_br, interface, area):
    """Independent plane count: each PbX2 plane holds 2 * area X, each CsX plane area X."""
    if interface == "I-rich":  # the I layer owns both interface PbX2 planes
        return (3 * t_i + 2) * area, (3 * t_br - 2) * area
    return (3 * t_i - 2) * area, (3 * t_br + 2) * area


@pytest.mark.parametrize("interface, axis, thick", [
    ("I-rich", 0, (2, 2)), ("Br-rich", 0, (2, 2)), ("I-rich", 2, (3, 1)), ("Br-rich", "y", (1, 3)),
])
def test_heterojunction_stoichiometry_and_interface_coordination(interface, axis, thick):
    t_i, t_br = thick
    shape = [3, 3, 3]
    ax = {"x": 0, "y": 1, "z": 2}.get(axis, axis)
    shape[ax] = 2 * (t_i + t_br)  # two periods
    lat = HalideSublattice(tuple(shape))
    cfg = build_heterojunction(lat, t_i, t_br, interface=interface, axis=axis)
    assert cfg.axis == ax
    area = lat.n_sites // (3 * shape[ax])
    n_i, n_br = _expected_hetero_counts(t_i, t_br, interface, area)
    assert np.count_nonzero(cfg.occ == I) == 2 * n_i
    assert np.count_nonzero(cfg.occ == BR) == 2 * n_br
    # 2 interfaces per period, at Pb (even) planes
    assert cfg.interface_planes.size == 4
    assert np.all(cfg.interface_planes % 2 == 0)
    coord = pb_coordination(cfg)
    nx, ny, nz = lat.shape
    ii, jj, kk = np.meshgrid(np.arange(nx), np.arange(ny), np.arange(nz), indexing="ij")
    pb_plane = 2 * np.stack([ii.ravel(), jj.ravel(), kk.ravel()], axis=1)[:, ax]
    at_interface = np.isin(pb_plane, cfg.interface_planes)
    want = [5, 1] if interface == "I-rich" else [1, 5]
    assert np.all(coord[at_interface] == want)
    bulk = coord[~at_interface]
    assert np.all((bulk == [6, 0]).all(axis=1) | (bulk == [0, 6]).all(axis=1))
    # exactly one interface Pb plane per interface
    assert np.unique(pb_plane[at_interface]).size == 4


def test_heterojunction_impossible_period_raises():
    lat = HalideSublattice((7, 3, 3))
    with pytest.raises(ValueError, match="not a multiple of the layer period"):
        build_heterojunction(lat, 2, 2)
    with pytest.raises(ValueError, match="interface"):
        build_heterojunction(HalideSublattice((4, 3, 3)), 2, 2, interface="mixed")
    with pytest.raises(ValueError, match="thickness"):
        build_heterojunction(HalideSublattice((4, 3, 3)), 0, 4)


@pytest.mark.parametrize("species", ["I", "Br"])
def test_nanodomain_geometry(species):
    lat = HalideSublattice((8, 8, 8))
    cfg = build_nanodomain(lat, species, 4)
    code = I if species == "I" else BR
    mask = cfg.domain_mask()
    # closed box of 4 cells: per axis 5 even and 4 odd doubled values -> 3 * 4 * 5 * 5 sites
    assert mask.sum() == 300
    assert np.all(cfg.occ[mask] == code) and np.all(cfg.occ[~mask] != code)
    # Pb on the box faces (one coordinate on the boundary, the others strictly inside)
    lo, hi = cfg.box[:, 0], cfg.box[:, 1]
    nx, ny, nz = lat.shape
    ii, jj, kk = np.meshgrid(np.arange(nx), np.arange(ny), np.arange(nz), indexing="ij")
    pb = 2 * np.stack([ii.ravel(), jj.ravel(), kk.ravel()], axis=1)
    on_bound = (pb == lo) | (pb == hi)
    inside = (pb > lo) & (pb < hi)
    face = (on_bound.sum(axis=1) == 1) & ((on_bound | inside).all(axis=1))
    assert face.sum() == 6 * 3 * 3
    coord = pb_coordination(cfg)
    want = [5, 1] if species == "I" else [1, 5]
    assert np.all(coord[face] == want)
    # Pb strictly inside the domain are fully coordinated by the domain halide
    core = inside.all(axis=1)
    assert np.all(coord[core, code] == 6)


def test_nanodomain_errors():
    lat = HalideSublattice((8, 8, 8))
    with pytest.raises(ValueError, match="impossible nanodomain"):
        build_nanodomain(lat, "I", 8)
    with pytest.raises(ValueError, match="does not fit"):
        build_nanodomain(lat, "I", 4, origin=(5, 0, 0))
    with pytest.raises(ValueError, match="unknown halide species"):
        build_nanodomain(lat, "Cl", 4)


def test_random_mix_composition_and_seed():
    lat = HalideSublattice((4, 5, 3))
    for x in (0.0, 0.25, 0.5, 0.77, 1.0):
        cfg = build_random_mix(lat, x, seed=1)
        assert np.count_nonzero(cfg.occ == I) == round(x * lat.n_sites)
        assert np.count_nonzero(cfg.occ == BR) == lat.n_sites - round(x * lat.n_sites)
    a = build_random_mix(lat, 0.5, seed=7).occ
    b = build_random_mix(lat, 0.5, seed=7).occ
    c = build_random_mix(lat, 0.5, seed=8).occ
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    with pytest.raises(ValueError, match="x_I"):
        build_random_mix(lat, 1.5, seed=0)


def test_build_configuration_dispatch():
    lat = HalideSublattice((2, 2, 2))
    assert np.all(build_configuration(lat, "pure", species="Br").occ == BR)
    with pytest.raises(ValueError, match="unknown configuration kind"):
        build_configuration(lat, "amorphous")
    with pytest.raises(ValueError, match="bad arguments"):
        build_configuration(lat, "pure", colour="red")


def test_defect_placement():
    lat = HalideSublattice((3, 3, 3))
    cfg = build_random_mix(lat, 0.5, seed=3)
    ds = place_defects(cfg, vacancies=4, interstitials=3, seed=5)
    assert ds.n_vacancies == 4 and ds.n_interstitials == 3
    assert np.unique(ds.sites).size == 7
    assert np.all(ds.kinds[:4] == KIND_VACANCY) and np.all(ds.kinds[4:] == KIND_INTERSTITIAL)
    assert np.all(ds.bridge[:4] == -1)
    np.testing.assert_array_equal(ds.bridge[4:, 0], cfg.occ[ds.sites[4:]])  # site atom first
    np.testing.assert_array_equal(ds.bridge[4:, 1], cfg.occ[ds.sites[4:]])  # "same" species added
    again = place_defects(cfg, vacancies=4, interstitials=3, seed=5)
    np.testing.assert_array_equal(ds.sites, again.sites)
    br = place_defects(cfg, interstitials=5, added_species="Br", seed=1)
    assert np.all(br.bridge[:, 1] == BR)
    region = place_defects(cfg, vacancies=6, where="region:I", seed=2)
    assert np.all(cfg.occ[region.sites] == I)


def test_defect_placement_errors():
    lat = HalideSublattice((2, 2, 2))
    cfg = build_pure(lat, "I")
    with pytest.raises(ValueError, match=r"cannot place 25 defects on the 24 sites"):
        place_defects(cfg, vacancies=20, interstitials=5)
    with pytest.raises(ValueError, match="unknown defect placement 'surface'"):
        place_defects(cfg, vacancies=1, where="surface")
    with pytest.raises(ValueError, match="needs a heterojunction"):
        place_defects(cfg, vacancies=1, where="interface")
    with pytest.raises(ValueError, match="has no nanodomain"):
        place_defects(cfg, vacancies=1, where="domain")
    with pytest.raises(ValueError, match=">= 0"):
        place_defects(cfg, vacancies=-1)
    with pytest.raises(ValueError, match="distinct"):
        place_defects(cfg, vacancies=2, where=[3, 3])
    with pytest.raises(ValueError, match="out of range"):
        place_defects(cfg, vacancies=1, where=[24])
    with pytest.raises(ValueError, match="explicit defect sites"):
        place_defects(cfg, vacancies=2, where=[1])
    with pytest.raises(ValueError, match="added_species"):
        place_defects(cfg, interstitials=1, added_species="Cl")


def test_broadcast_coordinates_equal_the_full_coordinate_array():
    """axis_coordinate and box_mask build per-site arrays without the 24 B/site coordinate array."""
    from lattice import HalideSublattice

    lat = HalideSublattice((5, 4, 6))
    c = lat.coords()
    for a in range(3):
        assert np.array_equal(lat.axis_coordinate(a), c[:, a])
        assert np.array_equal(lat.plane_index(a), c[:, a])
    box = np.array([[2, 6], [1, 5], [3, 9]])
    assert np.array_equal(lat.box_mask(box), np.all((c >= box[:, 0]) & (c <= box[:, 1]), axis=1))
