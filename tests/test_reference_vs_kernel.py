"""The numba kernel against the brute-force NumPy reference (kmc.reference).

Both engines get the same uniform buffer; they must execute the same events
(defect, from, to, class) at the same times and end in the same state. The
reference computes every rate from the global energy and tracks atoms by
identity, so agreement checks the kernel's local energy formulas, its
incremental rate updates, its sum-tree selection and its displacement
bookkeeping.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest

from kmc import _kernels as K
from kmc import reference as R
from kmc.reference import ReferenceKMC
from kmc.state import RateParams, fill_rates, make_state, rate_drift
from lattice import HalideSublattice, build_heterojunction, build_nanodomain, build_random_mix, place_defects
from lattice.defects import DefectSet
from lattice.species import BR, BRIDGE, I, KIND_INTERSTITIAL, KIND_VACANCY, STATE_NAMES, VACANCY

TEMPERATURE_K = 400.0
TIME_RTOL = 1e-12


def _mixed_defects(config, n_vac, n_int, seed):
    """Vacancies and interstitials with every bridge composition (II, IBr, BrI, BrBr)."""
    rng = np.random.default_rng(seed)
    base = place_defects(config, n_vac, n_int, seed=seed)
    bridge = base.bridge.copy()
    for d in range(n_vac, n_vac + n_int):
        bridge[d, 1] = rng.integers(0, 2)  # added atom I or Br, whatever the site holds
    return DefectSet(kinds=base.kinds, sites=base.sites, bridge=bridge)


def _chain_sites(lattice, n, seed):
    """``n`` distinct sites, each a nearest neighbour of the previous one (a self-avoiding walk)."""
    rng = np.random.default_rng(seed)
    nbr = lattice.neighbour_table
    while True:
        sites = [int(rng.integers(lattice.n_sites))]
        while len(sites) < n:
            options = [int(s) for s in nbr[sites[-1]] if int(s) not in sites]
            if not options:
                break
            sites.append(options[rng.integers(len(options))])
        if len(sites) == n:
            return sites


def _n_defect_bonds(lattice, sites):
    nbr = lattice.neighbour_table
    s = set(sites)
    return sum(int(b) in s for a in sites for b in nbr[a]) // 2


def _modified_catalog(catalog):
    """Copy of ``catalog`` with several nonzero (and one negative) pair energies."""
    cat = copy.deepcopy(catalog)
    J = cat.pair_eV.copy()
    idx = {name: n for n, name in enumerate(STATE_NAMES)}
    for (a, b), v in {("I", "Br"): 0.01, ("V", "Br"): 0.02, ("B", "I"): -0.01,
                      ("V", "I"): 0.03, ("B", "Br"): 0.015, ("V", "B"): 0.05}.items():
        J[idx[a], idx[b]] = J[idx[b], idx[a]] = v
    cat.pair_eV = J
    cat.bridge_eV = np.array([0.12, 0.05, 0.0])
    cat.name = "modified-pairs"
    return cat


def _both(config, defects, catalog, n_events, seed, run_kernel, t_stop=math.inf):
    """Run kernel and reference on the same buffer; return both and their results."""
    ubuf = np.random.default_rng(seed).random(2 * n_events)
    state = make_state(config, defects, catalog)
    params = RateParams.from_catalog(catalog, TEMPERATURE_K)
    fill_rates(state, params)
    k_status, k_t, k_upos, k_log = run_kernel(state, params, ubuf, t_stop=t_stop, max_events=n_events,
                                              log_capacity=n_events)
    ref = ReferenceKMC(config, defects, catalog, TEMPERATURE_K)
    r_status, r_upos = ref.run(ubuf, t_stop=t_stop, max_events=n_events)
    return (state, params, k_status, k_t, k_upos, k_log), (ref, r_status, r_upos)


def _assert_same_run(kern, refres):
    state, params, k_status, k_t, k_upos, k_log = kern
    ref, r_status, r_upos = refres
    r_log = ref.event_log()
    n = r_log["defect"].size
    assert n > 0
    assert k_log["defect"].size == n, f"kernel executed {k_log['defect'].size} events, reference {n}"
    for key in ("defect", "from_site", "to_site", "cls"):
        same = k_log[key] == r_log[key]
        if not same.all():
            first = int(np.flatnonzero(~same)[0])
            pytest.fail(f"event {first}: kernel {key}={k_log[key][first]} but reference {r_log[key][first]}")
    np.testing.assert_allclose(k_log["time_s"], r_log["time_s"], rtol=TIME_RTOL, atol=0)
    assert k_status == r_status
    assert k_upos == r_upos
    assert math.isclose(k_t, ref.time_s, rel_tol=TIME_RTOL)
    # final state
    np.testing.assert_array_equal(state.occ, ref.occ)
    np.testing.assert_array_equal(state.def_site, ref.def_site)
    np.testing.assert_array_equal(state.def_disp, ref.def_disp)
    np.testing.assert_array_equal(state.def_sp.astype(np.int64), ref.bridge_species())
    msd = ref.squared_displacements()
    np.testing.assert_array_equal(state.msd, msd)
    np.testing.assert_array_equal(state.squared_displacements(), msd)
    single = state.occ < VACANCY
    np.testing.assert_array_equal(state.disp[single].astype(np.int64), ref.site_displacements()[single])
    inter = state.def_kind == KIND_INTERSTITIAL
    np.testing.assert_array_equal(state.def_adisp[inter].astype(np.int64), ref.bridge_displacements()[inter])
    np.testing.assert_array_equal(state.species_totals(), ref.species_totals())
    # plane-resolved observables kept by the kernel
    np.testing.assert_array_equal(state.plane_count, ref.plane_counts(state.axis))
    np.testing.assert_allclose(state.occ_time, ref.residence_time(state.axis), rtol=1e-9, atol=1e-300)
    if state.use_box:
        inside = np.all((ref.lattice.coords()[ref.atom_site] >= state.box[:, 0])
                        & (ref.lattice.coords()[ref.atom_site] <= state.box[:, 1]), axis=1)
        want = [np.count_nonzero(inside & (ref.atom_species == sp)) for sp in (I, BR)]
        np.testing.assert_array_equal(state.in_box, want)
    np.testing.assert_array_equal(np.bincount(ref.event_log()["cls"], minlength=state.hop_count.size),
                                  state.hop_count)
    # rates after the run: kernel's incremental rates vs the reference's brute-force ones
    r_rates, r_classes = ref.channel_rates()
    np.testing.assert_array_equal(state.classes, r_classes)
    np.testing.assert_allclose(state.rates, r_rates, rtol=1e-9, atol=0)
    assert rate_drift(state, params) < 1e-12
    ref.check_consistency()


def test_stop_codes_match_kernel():
    assert (R.STOP_TIME, R.STOP_EVENTS, R.STOP_BUFFER, R.STOP_FROZEN) == (
        K.STOP_TIME, K.STOP_EVENTS, K.STOP_BUFFER, K.STOP_FROZEN)
    assert R.N_CHANNELS == K.N_CHANNELS


def test_reference_initial_rates_match_kernel(default_catalog):
    lat = HalideSublattice((4, 4, 4))
    config = build_random_mix(lat, 0.5, seed=11)
    defects = _mixed_defects(config, 5, 5, seed=12)
    state = make_state(config, defects, default_catalog)
    params = RateParams.from_catalog(default_catalog, TEMPERATURE_K)
    fill_rates(state, params)
    ref = ReferenceKMC(config, defects, default_catalog, TEMPERATURE_K)
    rates, classes = ref.channel_rates()
    np.testing.assert_array_equal(state.classes, classes)
    np.testing.assert_allclose(state.rates, rates, rtol=1e-12, atol=0)
    # vacancies have no slot-1 channels; every open channel has a positive rate
    vac = state.def_kind == KIND_VACANCY
    assert np.all(classes[vac, 8:] == -1)
    assert np.all((classes >= 0) == (rates > 0))


def test_random_mix_same_events(default_catalog, run_kernel):
    lat = HalideSublattice((4, 4, 4))
    config = build_random_mix(lat, 0.5, seed=3)
    defects = _mixed_defects(config, 4, 4, seed=4)
    kern, refres = _both(config, defects, default_catalog, 700, seed=5, run_kernel=run_kernel)
    assert kern[2] == K.STOP_EVENTS
    _assert_same_run(kern, refres)
    # the run must have exercised both defect kinds and both movers
    cls = refres[0].event_log()["cls"]
    assert np.any(cls < 26) and np.any(cls >= 26)
    d = refres[0].event_log()["defect"]
    assert len(set(d.tolist())) >= 6


def test_heterojunction_same_events(default_catalog, run_kernel):
    lat = HalideSublattice((4, 4, 4))
    config = build_heterojunction(lat, 2, 2, interface="Br-rich", axis="x")
    defects = _mixed_defects(config, 3, 3, seed=8)
    kern, refres = _both(config, defects, default_catalog, 400, seed=9, run_kernel=run_kernel)
    _assert_same_run(kern, refres)


def test_nanodomain_same_events(default_catalog, run_kernel):
    lat = HalideSublattice((5, 5, 4))
    config = build_nanodomain(lat, "I", 2, axis="z")
    defects = _mixed_defects(config, 3, 3, seed=14)
    kern, refres = _both(config, defects, default_catalog, 300, seed=15, run_kernel=run_kernel)
    assert kern[0].use_box
    _assert_same_run(kern, refres)


def test_nonzero_pair_energies_same_events(default_catalog, run_kernel):
    """Local dE formulas of the kernel vs the global energy, with many nonzero pair terms."""
    cat = _modified_catalog(default_catalog)
    lat = HalideSublattice((5, 4, 4))
    config = build_random_mix(lat, 0.5, seed=21)
    # a chain of neighbouring defects so that V-V, V-B and B-B bonds occur
    sites = _chain_sites(lat, 8, seed=22)
    base = place_defects(config, 4, 4, where=sites)
    bridge = base.bridge.copy()
    bridge[4:, 1] = [I, BR, BR, I]
    defects = DefectSet(kinds=base.kinds, sites=base.sites, bridge=bridge)
    assert _n_defect_bonds(lat, sites) >= 7
    kern, refres = _both(config, defects, cat, 400, seed=23, run_kernel=run_kernel)
    _assert_same_run(kern, refres)


def test_time_stop_consumes_buffer_like_reference(default_catalog, run_kernel):
    lat = HalideSublattice((4, 4, 4))
    config = build_random_mix(lat, 0.5, seed=31)
    defects = _mixed_defects(config, 3, 3, seed=32)
    # first find the time of a middle event, then stop between two events
    ubuf = np.random.default_rng(33).random(2 * 200)
    probe = ReferenceKMC(config, defects, default_catalog, TEMPERATURE_K)
    probe.run(ubuf, max_events=120)
    times = probe.event_log()["time_s"]
    t_stop = 0.5 * (times[99] + times[100])
    kern, refres = _both(config, defects, default_catalog, 200, seed=33, run_kernel=run_kernel, t_stop=t_stop)
    state, params, k_status, k_t, k_upos, k_log = kern
    ref, r_status, r_upos = refres
    assert k_status == K.STOP_TIME and r_status == R.STOP_TIME
    assert k_t == t_stop and ref.time_s == t_stop
    assert k_log["defect"].size == 100
    # 100 events use 2 uniforms each, the rejected step one more
    assert k_upos == r_upos == 2 * 100 + 1
    _assert_same_run(kern, refres)
    # continuing from the same position gives the same next events in both engines
    k2 = run_kernel(state, params, ubuf, upos=k_upos, t=k_t, max_events=20, log_capacity=20)
    r2 = ref.run(ubuf, upos=r_upos, max_events=20)
    np.testing.assert_array_equal(k2[3]["defect"], ref.event_log()["defect"][100:])
    np.testing.assert_array_equal(k2[3]["to_site"], ref.event_log()["to_site"][100:])
    np.testing.assert_allclose(k2[3]["time_s"], ref.event_log()["time_s"][100:], rtol=TIME_RTOL, atol=0)
    assert k2[2] == r2[1]


def test_buffer_exhaustion_and_chunking(default_catalog, run_kernel):
    """Chunked kernel runs equal one reference run; both stop when the buffer runs out."""
    lat = HalideSublattice((4, 4, 4))
    config = build_random_mix(lat, 0.3, seed=41)
    defects = _mixed_defects(config, 2, 2, seed=42)
    ubuf = np.random.default_rng(43).random(2 * 60 + 1)  # odd length: the last uniform is never used
    state = make_state(config, defects, default_catalog)
    params = RateParams.from_catalog(default_catalog, TEMPERATURE_K)
    fill_rates(state, params)
    upos, t, rows = 0, 0.0, []
    for _ in range(4):
        status, t, upos, log = run_kernel(state, params, ubuf, upos=upos, t=t, max_events=17, log_capacity=17)
        rows.append(log)
    assert status == K.STOP_BUFFER and upos == 120
    ref = ReferenceKMC(config, defects, default_catalog, TEMPERATURE_K)
    r_status, r_upos = ref.run(ubuf)
    assert r_status == R.STOP_BUFFER and r_upos == 120
    r_log = ref.event_log()
    for key in ("defect", "from_site", "to_site", "cls"):
        np.testing.assert_array_equal(np.concatenate([r[key] for r in rows]), r_log[key])
    np.testing.assert_allclose(np.concatenate([r["time_s"] for r in rows]), r_log["time_s"], rtol=TIME_RTOL)
    np.testing.assert_array_equal(state.occ, ref.occ)
    np.testing.assert_array_equal(state.msd, ref.squared_displacements())


def test_reference_hop_bookkeeping():
    """Hand-checked single hops of the reference: atom identities and displacements."""
    from lattice import build_pure
    from lattice.sublattice import NEIGHBOUR_OFFSETS
    from rates import load_catalog

    lat = HalideSublattice((3, 3, 3))
    config = build_pure(lat, "I")
    config.occ[lat.neighbours(0)[2]] = BR
    defects = DefectSet(kinds=np.array([KIND_VACANCY, KIND_INTERSTITIAL], np.int8),
                        sites=np.array([0, 40], np.int64), bridge=np.array([[-1, -1], [I, BR]], np.int8))
    ref = ReferenceKMC(config, defects, load_catalog(), 300.0)
    # vacancy hop through slot 2: the Br on B comes to site 0
    b = int(lat.neighbours(0)[2])
    atom = int(ref.site_atom[b])
    assert ref.apply_hop(0, 2) == (0, b)
    assert ref.occ[0] == BR and ref.occ[b] == VACANCY and ref.site_atom[0] == atom
    np.testing.assert_array_equal(ref.atom_disp[atom], -NEIGHBOUR_OFFSETS[0, 2])
    np.testing.assert_array_equal(ref.def_disp[0], NEIGHBOUR_OFFSETS[0, 2])
    # kick-out of the bridge's Br (slot 1) through slot 5
    stay, mover = (int(a) for a in ref.def_atoms[1])
    assert ref.atom_species[stay] == I and ref.atom_species[mover] == BR
    b2 = int(lat.neighbours(40)[5])
    target = int(ref.site_atom[b2])
    assert ref.apply_hop(1, 8 + 5) == (40, b2)
    assert ref.occ[40] == I and ref.site_atom[40] == stay
    assert ref.occ[b2] == BRIDGE and ref.site_atom[b2] == -1
    assert tuple(ref.def_atoms[1]) == (mover, target)  # mover first, then the kicked-out target
    np.testing.assert_array_equal(ref.atom_disp[mover], NEIGHBOUR_OFFSETS[40 % 3, 5])
    np.testing.assert_array_equal(ref.def_disp[1], NEIGHBOUR_OFFSETS[40 % 3, 5])
    ref.check_consistency()
    # only the two Br atoms moved, each by one nearest-neighbour hop: |(1, 1, 0)|^2 = 2
    assert ref.squared_displacements().tolist() == [0, 4]


def _oriented_catalog(catalog, e_rot90=(0.20, 0.22, 0.25), e_flip=(0.16, 0.18, 0.20)):
    """``catalog`` in the oriented interstitial model with rotation barriers per bridge (II, IBr, BrBr)."""
    cat = copy.deepcopy(catalog)
    cat.interstitial_model = "oriented"
    cat.rotation_E_eV = np.array(list(e_rot90) + list(e_flip), dtype=float)
    cat.rotation_prefactor_Hz = np.full(6, 2e12)
    cat.name = "oriented-test"
    return cat


def _assert_same_orientation(kern, refres):
    state = kern[0]
    ref = refres[0]
    np.testing.assert_array_equal(state.def_or.astype(np.int64), [ref.orientation(d) for d in range(ref.n_defects)])
    np.testing.assert_array_equal(state.rot_count, ref.rot_count)


@pytest.mark.parametrize("modified", [False, True])
def test_oriented_random_mix_same_events(default_catalog, run_kernel, modified):
    """Oriented bridges: aligned kick-outs, landing orientations and rotations event for event."""
    cat = _oriented_catalog(_modified_catalog(default_catalog) if modified else default_catalog)
    lat = HalideSublattice((4, 4, 4))
    config = build_random_mix(lat, 0.5, seed=31)
    defects = _mixed_defects(config, 3, 5, seed=32)
    kern, refres = _both(config, defects, cat, 900, seed=33, run_kernel=run_kernel)
    assert kern[2] == K.STOP_EVENTS
    _assert_same_run(kern, refres)
    _assert_same_orientation(kern, refres)
    ref = refres[0]
    assert ref.rot_count[:3].sum() > 0 and ref.rot_count[3:].sum() > 0  # both rotation kinds happened
    assert ref.event_log()["cls"].size + ref.rot_count.sum() == 900
    # every open kick-out channel of an oriented bridge is aligned: 4 at most, 2 per atom
    inter = kern[0].def_kind == KIND_INTERSTITIAL
    assert np.all(np.count_nonzero(kern[0].rates[inter, :16], axis=1) <= 4)


def test_oriented_missing_rotation_class_named(default_catalog):
    """A rotation class that occurs but is missing stops the start with its label."""
    from rates.catalog import MissingRateError

    cat = _oriented_catalog(default_catalog)
    cat.rotation_E_eV[3 + 1] = np.nan  # flip of IBr missing
    cat.rotation_prefactor_Hz[3 + 1] = np.nan
    lat = HalideSublattice((3, 3, 3))
    config = build_random_mix(lat, 0.5, seed=1)
    base = place_defects(config, 0, 1, seed=2)
    bridge = base.bridge.copy()
    bridge[0] = (I, BR)
    defects = DefectSet(kinds=base.kinds, sites=base.sites, bridge=bridge)
    state = make_state(config, defects, cat)
    with pytest.raises(MissingRateError, match="Xi-rot:flip:IBr"):
        fill_rates(state, RateParams.from_catalog(cat, TEMPERATURE_K))
