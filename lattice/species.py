"""Site-state codes of the halide sublattice.

Every halide (X) site holds exactly one of four states, stored as ``int8``:

====  ==========  ==========================================================
code  name        meaning
====  ==========  ==========================================================
0     ``I``       one iodide on the site
1     ``Br``      one bromide on the site
2     ``V``       halide vacancy (empty site)
3     ``B``       split interstitial: a Pb-XX-Pb bridge holding two halides
====  ==========  ==========================================================

The composition of a bridge (II, IBr or BrBr) is carried by the defect
record, not by the site code (see :mod:`kmc.state`).
"""

from __future__ import annotations

I = 0  # noqa: E741 - chemical symbol
BR = 1
VACANCY = 2
BRIDGE = 3

HALIDES = ("I", "Br")
STATE_NAMES = ("I", "Br", "V", "B")
N_STATES = 4

# Defect kinds.
KIND_VACANCY = 0
KIND_INTERSTITIAL = 1
DEFECT_KINDS = ("vacancy", "interstitial")

# Bridge compositions, indexed by the number of Br atoms in the bridge.
BRIDGE_NAMES = ("II", "IBr", "BrBr")

_SPECIES_CODE = {"I": I, "Br": BR}


def species_code(name: str) -> int:
    """Return the integer code of halide ``name`` ("I" or "Br").

    Raises
    ------
    ValueError
        If ``name`` is not a halide this package models.
    """
    try:
        return _SPECIES_CODE[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown halide species {name!r}; valid species are {sorted(_SPECIES_CODE)}"
        ) from None


def defect_kind_code(name: str) -> int:
    """Return the integer code of defect kind ``name`` ("vacancy" or "interstitial")."""
    if name not in DEFECT_KINDS:
        raise ValueError(f"unknown defect kind {name!r}; valid kinds are {list(DEFECT_KINDS)}")
    return DEFECT_KINDS.index(name)


def bridge_name(n_br: int) -> str:
    """Name of a bridge with ``n_br`` bromide atoms (0, 1 or 2)."""
    return BRIDGE_NAMES[n_br]


def bridge_code(name: str) -> int:
    """Number of Br atoms in the bridge called ``name`` ("II", "IBr"/"BrI", "BrBr")."""
    aliases = {"II": 0, "IBr": 1, "BrI": 1, "BrBr": 2}
    if name not in aliases:
        raise ValueError(f"unknown bridge composition {name!r}; valid ones are {BRIDGE_NAMES}")
    return aliases[name]
