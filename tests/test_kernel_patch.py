"""The fast patch-based rate computation equals the direct one built on lattice.environment.hop_counts.

Random shapes (including 2-cell periodic wrap-around), dense random vacancy/bridge states, random
energy models and catalogs with missing classes, orientation-free and oriented bridges (random
orientations, rotation rates with missing classes); compared bitwise.
"""

import numpy as np

from kmc import _kernels as K
from lattice.cluster_expansion import empty_tables
from lattice.sublattice import HalideSublattice

CE0 = empty_tables().as_tuple()


def test_patch_rates_equal_direct_definition():
    rng = np.random.default_rng(123)
    n_checked = 0
    n_oriented = 0
    for trial in range(80):
        shape = tuple(int(v) for v in rng.integers(2, 7, 3))
        lat = HalideSublattice(shape)
        n = lat.n_sites
        occ = rng.choice(4, size=n, p=rng.dirichlet([1, 1, 0.3, 0.3])).astype(np.int8)
        nd = int(rng.integers(1, min(40, n) + 1))
        sites = rng.choice(n, size=nd, replace=False)
        kind = rng.integers(0, 2, nd).astype(np.int8)
        sp = rng.integers(0, 2, (nd, 2)).astype(np.int8)
        sp[kind == 0] = -1
        xyz = lat.coords(sites).astype(np.int64)
        s = (sites % 3).astype(np.int64)
        J = rng.normal(0, 0.05, (4, 4))
        J = J + J.T
        if trial % 3 == 0:
            J[:] = 0.0
        eb = rng.normal(0, 0.1, 3)
        e_kra = rng.uniform(0.05, 0.6, 104)
        pref = rng.uniform(1e11, 1e13, 104)
        if trial % 7 == 0:
            e_kra[rng.integers(0, 104, 5)] = np.nan
        beta = 1 / (8.617e-5 * rng.uniform(200, 800))
        ori = np.full(nd, -1, np.int8)
        rot = rng.uniform(1e9, 1e12, 6)
        if trial % 2 == 1:  # oriented: a random valid orientation per bridge
            for d in range(nd):
                if kind[d] == 1:
                    ori[d] = rng.choice([o for o in range(6) if o // 2 != s[d]])
            if trial % 5 == 1:
                rot[rng.integers(0, 6)] = np.nan
        cA = np.zeros(4, np.int64)
        cB = np.zeros(4, np.int64)
        for d in range(nd):
            r1 = np.full((nd, K.N_CHANNELS), 7.0)
            c1 = np.full((nd, K.N_CHANNELS), 77, np.int64)
            e1 = np.zeros(1, np.int64)
            r2, c2, e2 = r1.copy(), c1.copy(), e1.copy()
            t1 = K.defect_rates(d, occ, lat.dims, kind, xyz, s, sp, ori, r1, c1, e_kra, pref, J, eb, CE0, rot, beta,
                                cA, cB, e1)
            t2 = K._defect_rates_reference(d, occ, lat.dims, kind, xyz, s, sp, ori, r2, c2, e_kra, pref, J, eb,
                                           CE0, rot, beta, cA, cB, e2)
            assert (t1 == t2) or (t1 != t1 and t2 != t2), (trial, shape, d)
            np.testing.assert_array_equal(r1, r2)
            np.testing.assert_array_equal(c1, c2)
            assert e1[0] == e2[0]
            if ori[d] >= 0 and t1 == t1:  # an oriented bridge: at most 4 open kick-outs, 3 rotations
                assert np.count_nonzero(r1[d, :16]) <= 4 and np.count_nonzero(r1[d, 16:]) == 3
                n_oriented += 1
            n_checked += 1
    assert n_checked > 500 and n_oriented > 50
