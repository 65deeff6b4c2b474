"""Orientation of a split interstitial (the Pb-X-X-Pb bridge) and the events it allows.

The one definition used by the KMC kernels, the NumPy reference engine, the
catalog and the MD analysis.

Geometry
--------
A bridge sits on an X site of type ``s``: the midpoint of a Pb-Pb edge along
axis ``s``. Its two halides are split perpendicular to that edge, along one of
the two other axes ``w`` (the *orientation axis*), one atom on the ``+w`` side
and one on the ``-w`` side. The state of a bridge is therefore (site,
orientation axis, which atom is on the ``+w`` side): 4 orientations per site.
Encoded as ``o = 2 w + b`` with ``b = 1`` when the bridge atom in slot 0 is on
the ``+w`` side (``o // 2 != s``; 0..5).

Kick-out channels
-----------------
A hop from the type-``s`` site A to neighbour ``B = A + offset[s, k]`` has a
component +-1 along ``s`` and one along another axis ``x`` (the type of B).
Relative to the orientation, the hop of the bridge atom on side ``sigma`` is

* **aligned**  when ``x == w`` and ``offset[x] == sigma``: the atom kicks out
  the neighbour on its own side (2 per atom, 4 per bridge);
* **crossing** when ``x == w`` and ``offset[x] == -sigma``: it would pass the
  other atom;
* **perpendicular** when ``x != w``.

In the *oriented* interstitial model only aligned kick-outs are events. After
a kick-out the new bridge on B is split along ``s`` (the other component of
the hop) with the mover on the side of A and the kicked-out atom on the far
side (the *landing* orientation, :data:`LANDING`). The reverse of an aligned
kick-out is an aligned kick-out that restores the initial orientation, so
every forward event has its backward partner (detailed balance holds with the
same class-symmetric barriers as the orientation-free model).

Rotations
---------
Three in-place events per bridge (:data:`ROTATED`): channel 0 and 1 turn the
pair by 90 degrees to the other perpendicular axis ``u`` (slot-0 atom on the
``+u`` or ``-u`` side), channel 2 flips it (the two atoms swap sides). All
orientations on a site have the same energy in this model, so the rate of a
rotation is ``nu exp(-E / k_B T)`` in both directions. Rotation classes are
numbered after the hop classes: ``N_CLASSES + kind * 3 + n_Br`` with kind 0 =
``rot90``, 1 = ``flip`` and ``n_Br`` the Br atoms of the bridge (II, IBr,
BrBr).

In the *orientation-free* model (schema-v1 catalogs) every bridge atom may
kick out any of its 8 neighbours and there are no rotations.

Successive hops in MD
---------------------
Without a tracked orientation, the hop that follows a kick-out of the same
defect is labelled by its relation to the *landing* orientation of the first
(:func:`successive_relation`): ``aligned`` (possible without a rotation),
``crossing`` (one flip needed) or ``perpendicular`` (one 90 degree rotation
needed). Their frequencies measure the rotation rates relative to the hop
rate (:mod:`rates.orientation_fit`).
"""

from __future__ import annotations

import numpy as np

from lattice.environment import N_CLASSES
from lattice.species import BRIDGE_NAMES
from lattice.sublattice import NEIGHBOUR_OFFSETS, NEIGHBOUR_TYPES

N_ORIENTATIONS = 6
"""Codes 0..5 (``2 w + b``); on a type-``s`` site the 4 with ``o // 2 != s`` are valid."""
NO_ORIENTATION = -1
ROTATION_KINDS = ("rot90", "flip")
N_ROTATION_CHANNELS = 3
N_ROTATION_CLASSES = 2 * 3
ROTATION_CLASS_BASE = N_CLASSES
N_EVENT_CLASSES = N_CLASSES + N_ROTATION_CLASSES
RELATIONS = ("aligned", "crossing", "perpendicular")
REL_ALIGNED, REL_CROSSING, REL_PERPENDICULAR = 0, 1, 2
INTERSTITIAL_MODELS = ("orientation-free", "oriented")


def valid_orientation(s: int, o: int) -> bool:
    return 0 <= o < N_ORIENTATIONS and o // 2 != s


def side_of_slot(o: int, slot: int) -> int:
    """+1 or -1: the side (along the orientation axis) of bridge atom ``slot``."""
    side0 = 1 if o % 2 else -1
    return side0 if slot == 0 else -side0


def _relation(s: int, o: int, slot: int, k: int) -> int:
    off = NEIGHBOUR_OFFSETS[s, k]
    x = int(NEIGHBOUR_TYPES[s, k])
    w = o // 2
    if x != w:
        return REL_PERPENDICULAR
    return REL_ALIGNED if int(off[x]) == side_of_slot(o, slot) else REL_CROSSING


def _tables():
    rel = np.full((3, N_ORIENTATIONS, 2, 8), -1, dtype=np.int8)
    land = np.zeros((3, 8), dtype=np.int8)
    rot = np.full((3, N_ORIENTATIONS, N_ROTATION_CHANNELS), -1, dtype=np.int8)
    for s in range(3):
        for k in range(8):
            b = 1 if -int(NEIGHBOUR_OFFSETS[s, k, s]) > 0 else 0
            land[s, k] = 2 * s + b
        for o in range(N_ORIENTATIONS):
            if not valid_orientation(s, o):
                continue
            w, b = divmod(o, 2)
            u = 3 - s - w
            rot[s, o] = (2 * u + 1, 2 * u, 2 * w + 1 - b)
            for slot in range(2):
                for k in range(8):
                    rel[s, o, slot, k] = _relation(s, o, slot, k)
    return rel, land, rot


RELATION, LANDING, ROTATED = _tables()
"""``RELATION[s, o, slot, k]``: relation of the kick-out of atom ``slot`` to neighbour slot ``k``;
``LANDING[s, k]``: orientation of the new bridge on B (mover = slot 0) after a kick-out from a type-s site;
``ROTATED[s, o, r]``: orientation after rotation channel ``r``."""
ALIGNED = np.ascontiguousarray((RELATION == REL_ALIGNED).astype(np.int8))


def initial_orientation(site: int, index: int) -> int:
    """Deterministic starting orientation of a bridge (one of the 4 valid ones, chosen by ``site + index``)."""
    s = int(site) % 3
    valid = [o for o in range(N_ORIENTATIONS) if valid_orientation(s, o)]
    return valid[(int(site) + int(index)) % 4]


def rotation_class(kind: int, n_br: int) -> int:
    return ROTATION_CLASS_BASE + int(kind) * 3 + int(n_br)


def is_rotation_class(cls: int) -> bool:
    return ROTATION_CLASS_BASE <= int(cls) < N_EVENT_CLASSES


def decode_rotation_class(cls: int) -> tuple[str, str]:
    """``(kind, bridge)`` of a rotation class, e.g. ``("rot90", "IBr")``."""
    if not is_rotation_class(cls):
        raise ValueError(f"class {cls} is not a rotation class ({ROTATION_CLASS_BASE}..{N_EVENT_CLASSES - 1})")
    kind, n_br = divmod(int(cls) - ROTATION_CLASS_BASE, 3)
    return ROTATION_KINDS[kind], BRIDGE_NAMES[n_br]


def rotation_label(cls: int) -> str:
    kind, bridge = decode_rotation_class(cls)
    return f"Xi-rot:{kind}:{bridge}"


def successive_relation(s_a: int, k1: int, same_atom: bool, k2: int) -> int:
    """Relation of the second of two successive kick-outs of one defect to the first one's landing orientation.

    Parameters
    ----------
    s_a : int
        Type of the site the first hop left.
    k1 : int
        Neighbour slot (of that site) of the first hop's destination B.
    same_atom : bool
        The second hop moves the first hop's mover (True) or the atom it kicked out (False).
    k2 : int
        Neighbour slot (of B) of the second hop's destination.
    """
    t = int(NEIGHBOUR_TYPES[s_a, k1])
    return int(RELATION[t, int(LANDING[s_a, k1]), 0 if same_atom else 1, int(k2)])


__all__ = [
    "ALIGNED", "INTERSTITIAL_MODELS", "LANDING", "NO_ORIENTATION", "N_EVENT_CLASSES", "N_ORIENTATIONS",
    "N_ROTATION_CHANNELS", "N_ROTATION_CLASSES", "RELATION", "RELATIONS", "REL_ALIGNED", "REL_CROSSING",
    "REL_PERPENDICULAR", "ROTATED", "ROTATION_CLASS_BASE", "ROTATION_KINDS", "decode_rotation_class",
    "initial_orientation", "is_rotation_class", "rotation_class", "rotation_label", "side_of_slot",
    "successive_relation", "valid_orientation",
]
