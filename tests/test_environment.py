"""The hop-environment definition (path shell, state counts, classes) against brute force."""

from __future__ import annotations

import numpy as np
import pytest

from lattice import HalideSublattice
from lattice.environment import (
    N_CLASSES,
    N_INTERSTITIAL_CLASSES,
    N_VACANCY_CLASSES,
    SHELL_SIZE,
    class_label,
    classify_hop,
    decode_class,
    encode_class,
    hop_counts,
)
from lattice.species import BR, BRIDGE, I, KIND_INTERSTITIAL, KIND_VACANCY, VACANCY
from lattice.sublattice import HOP_BACK


def _random_states(n, rng, p=(0.4, 0.4, 0.1, 0.1)):
    return rng.choice(4, size=n, p=p).astype(np.int8)


@pytest.mark.parametrize("shape", [(3, 4, 5), (2, 2, 3)])
def test_hop_counts_match_brute_force_shell(shape):
    lat = HalideSublattice(shape)
    nbr = lat.neighbour_table
    coords = lat.coords()
    rng = np.random.default_rng(1)
    occ = _random_states(lat.n_sites, rng)
    dims = lat.dims
    cA = np.zeros(4, np.int64)
    cB = np.zeros(4, np.int64)
    seen_types = set()
    for a in range(lat.n_sites):
        x, y, z = (int(v) for v in coords[a])
        s = a % 3
        seen_types.add(s)
        for k in range(8):
            b = int(nbr[a, k])
            shell = (set(nbr[a].tolist()) | set(nbr[b].tolist())) - {a, b}
            assert len(shell) == SHELL_SIZE
            n_i = sum(int(occ[q] == I) for q in shell)
            got = hop_counts(occ, dims, x, y, z, s, k, cA, cB)
            assert got == n_i
            want_a = np.bincount(occ[[q for q in nbr[a] if q != b]], minlength=4)
            want_b = np.bincount(occ[[q for q in nbr[b] if q != a]], minlength=4)
            np.testing.assert_array_equal(cA, want_a)
            np.testing.assert_array_equal(cB, want_b)
            assert cA.sum() == 7 and cB.sum() == 7
            # slot k of a and HOP_BACK of b point at each other
            assert nbr[b, HOP_BACK[s, k]] == a
    assert seen_types == {0, 1, 2}


def test_classify_hop_matches_brute_force_fields():
    lat = HalideSublattice((3, 3, 4))
    nbr = lat.neighbour_table
    rng = np.random.default_rng(2)
    occ = _random_states(lat.n_sites, rng, p=(0.5, 0.5, 0.0, 0.0))
    for a in rng.choice(lat.n_sites, size=40, replace=False):
        a = int(a)
        for k in range(8):
            b = int(nbr[a, k])
            shell = (set(nbr[a].tolist()) | set(nbr[b].tolist())) - {a, b}
            n_i = sum(int(occ[q] == I) for q in shell)
            mover = int(occ[b])
            cls = classify_hop(occ, lat.dims, a, k, KIND_VACANCY, mover)
            assert decode_class(cls) == {"defect": "vacancy", "mover": ("I", "Br")[mover],
                                         "pair_nI": None, "shell_nI": n_i}
            for m in (I, BR):
                for other in (I, BR):
                    cls = classify_hop(occ, lat.dims, a, k, KIND_INTERSTITIAL, m, other)
                    pair = int(other == I) + int(occ[b] == I)
                    assert decode_class(cls) == {"defect": "interstitial", "mover": ("I", "Br")[m],
                                                 "pair_nI": pair, "shell_nI": n_i}
    bad = occ.copy()
    bad[nbr[0, 3]] = VACANCY
    with pytest.raises(ValueError, match="target"):
        classify_hop(bad, lat.dims, 0, 3, KIND_INTERSTITIAL, I, I)
    with pytest.raises(ValueError, match="remaining"):
        classify_hop(occ, lat.dims, 0, 2, KIND_INTERSTITIAL, I)


def test_class_encode_decode_round_trip():
    assert N_CLASSES == 104 and N_VACANCY_CLASSES == 26 and N_INTERSTITIAL_CLASSES == 78
    labels = set()
    for c in range(N_CLASSES):
        d = decode_class(c)
        assert encode_class(d["defect"], d["mover"], d["shell_nI"], d["pair_nI"]) == c
        assert (d["defect"] == "vacancy") == (c < 26)
        labels.add(class_label(c))
    assert len(labels) == N_CLASSES
    # every field combination gives a distinct id in range
    ids = [encode_class("vacancy", m, n) for m in ("I", "Br") for n in range(13)]
    ids += [encode_class("interstitial", m, n, p) for m in ("I", "Br") for p in range(3) for n in range(13)]
    assert sorted(ids) == list(range(N_CLASSES))
    for bad in (-1, N_CLASSES):
        with pytest.raises(ValueError, match="out of range"):
            decode_class(bad)
    with pytest.raises(ValueError):
        encode_class("vacancy", "I", 13)
    with pytest.raises(ValueError):
        encode_class("vacancy", "I", 3, pair_nI=1)
    with pytest.raises(ValueError):
        encode_class("interstitial", "I", 3, pair_nI=3)
    with pytest.raises(ValueError):
        encode_class("interstitial", "Cl", 3, pair_nI=1)
    assert class_label(7) == "V:I:nI=7"
    assert class_label(encode_class("interstitial", "Br", 3, 1)) == "Xi:Br:pI=1:nI=3"


def test_reverse_hop_has_the_same_class():
    """Do each hop on the site states, then classify the reverse hop from the new state."""
    lat = HalideSublattice((3, 4, 3))
    nbr = lat.neighbour_table
    rng = np.random.default_rng(3)
    n_checked = {KIND_VACANCY: 0, KIND_INTERSTITIAL: 0}
    for trial in range(60):
        occ = _random_states(lat.n_sites, rng, p=(0.45, 0.45, 0.05, 0.05))
        a = int(rng.integers(lat.n_sites))
        k = int(rng.integers(8))
        b = int(nbr[a, k])
        if occ[b] > BR:
            occ[b] = rng.integers(2)
        back = int(HOP_BACK[a % 3, k])
        assert nbr[b, back] == a
        # vacancy hop: vacancy A -> B, mover B -> A
        o = occ.copy()
        o[a] = VACANCY
        mover = int(o[b])
        fwd = classify_hop(o, lat.dims, a, k, KIND_VACANCY, mover)
        o[a], o[b] = mover, VACANCY
        rev = classify_hop(o, lat.dims, b, back, KIND_VACANCY, mover)
        assert fwd == rev, (trial, class_label(fwd), class_label(rev))
        n_checked[KIND_VACANCY] += 1
        # kick-out: bridge (mover, remaining) on A -> bridge (mover, target) on B
        o = occ.copy()
        o[a] = BRIDGE
        mover, remaining, target = int(rng.integers(2)), int(rng.integers(2)), int(o[b])
        fwd = classify_hop(o, lat.dims, a, k, KIND_INTERSTITIAL, mover, remaining)
        o[a], o[b] = remaining, BRIDGE
        # reverse: the same mover goes back, the target stays on B
        rev = classify_hop(o, lat.dims, b, back, KIND_INTERSTITIAL, mover, target)
        assert fwd == rev, (trial, class_label(fwd), class_label(rev))
        n_checked[KIND_INTERSTITIAL] += 1
    assert min(n_checked.values()) == 60
