"""Shared fixtures: the default catalog and a thin driver of the numba kernel."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rates import load_catalog


@pytest.fixture(scope="session")
def default_catalog():
    """The embedded default rate catalog."""
    return load_catalog()


def _run_kernel(state, params, ubuf, upos=0, t=0.0, t_stop=math.inf, max_events=2**62, log_capacity=None):
    """Call :func:`kmc._kernels.run_events` on ``state`` with a fresh event log.

    Returns ``(status, t, upos, log)`` with ``log`` a dict of the used log rows:
    ``time_s``, ``defect``, ``from_site``, ``to_site``, ``cls``, ``slot``.
    """
    from kmc import _kernels as K

    ubuf = np.ascontiguousarray(ubuf, dtype=np.float64)
    cap = int(log_capacity if log_capacity is not None else max(1, ubuf.size // 2 + 1))
    log_time = np.zeros(cap, dtype=np.float64)
    log_def = np.zeros(cap, dtype=np.int64)
    log_from = np.zeros(cap, dtype=np.int64)
    log_to = np.zeros(cap, dtype=np.int64)
    log_cls = np.zeros(cap, dtype=np.int64)
    log_slot = np.zeros(cap, dtype=np.int8)
    state.counters[K.C_LOG] = 0
    status, t_out, upos_out = K.run_events(
        state.occ, state.disp, state.dims,
        state.def_kind, state.def_site, state.def_xyz, state.def_s, state.def_sp, state.def_adisp,
        state.def_disp, state.def_tenter, state.def_or, state.rates, state.classes, state.tree, state.n_leaves,
        state.stamp, params.e_kra, params.prefactor, params.J, params.e_bridge, state.kernel_ce(params), params.rot_rate,
        params.beta,
        state.axis, state.msd, state.plane_count, state.occ_time, state.use_box, state.box, state.in_box,
        state.hop_count, state.rot_count,
        log_time, log_def, log_from, log_to, log_cls, log_slot,
        float(t), float(t_stop), int(max_events), ubuf, int(upos), state.counters, state.err,
    )
    n = int(state.counters[K.C_LOG])
    log = {
        "time_s": log_time[:n].copy(),
        "defect": log_def[:n].copy(),
        "from_site": log_from[:n].copy(),
        "to_site": log_to[:n].copy(),
        "cls": log_cls[:n].copy(),
        "slot": log_slot[:n].copy(),
    }
    return int(status), float(t_out), int(upos_out), log


@pytest.fixture(scope="session")
def run_kernel():
    """Function ``run_kernel(state, params, ubuf, upos=0, t=0.0, t_stop=inf, max_events=..., log_capacity=None)``
    that runs the numba kernel and returns ``(status, t, upos, log)``."""
    return _run_kernel
