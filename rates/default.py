"""The embedded default catalog, built from published numbers.

Run ``python -m rates.default`` to regenerate ``rates/data/default_catalog.json``.

What comes from where
---------------------
* **Pure-compound migration barriers** (DFT, neutral defects in cubic 3x3x3
  cells; maxima of the published CI-NEB paths, M. Pols et al., J. Phys. Chem.
  C 128, 4111 (2024), training set of the I/Br/Pb/Cs ReaxFF):
  V_I 0.208 eV, I_i 0.170 eV, V_Br 0.195 eV, Br_i 0.200 eV. They fix E_KRA of
  the vacancy / interstitial hop classes whose path shell is pure I (nI = 12,
  I mover) or pure Br (nI = 0, Br mover).
* **Composition dependence** (modelling assumption): E_KRA varies linearly
  with the iodide count of the path shell. The slopes are chosen so that at
  nI = 6 (x = 0.5) the barrier shifts match the differences between the
  species-resolved activation energies in the mixed compound and those of the
  pure compounds in Tyagi, Pols, Brocks, Tao (paper, Tables 2 and 3): an I
  moving into a vacancy gets 0.05 eV easier, a Br 0.01 eV harder; a Br
  interstitial 0.04 eV easier, an I interstitial 0.01 eV harder. The paper
  explains the sign by strain: mixed cells compress I and stretch Br.
* **Bridge energies** (paper, 600 K occupancies): E(IBr) - E(BrBr) = 34.5 meV,
  E(II) - E(BrBr) = 143.9 meV.
* **Vacancy-I pair energy** (paper, Figure 4 analysis: the vacancy energy in
  the CsPbI3 layer exceeds that in CsPbBr3 by more than 100 meV): 12.5 meV per
  I neighbour, i.e. 0.10 eV between the 8-I and the 8-Br surroundings.
* **Prefactor** (modelling assumption): 1 THz for every class, the scale of
  the soft optical phonons of lead-halide perovskites; with the DFT barriers
  it gives D(300 K) within a factor of about 2 of the paper's Table 2.
* **Lattice constants**: 6.30 A (CsPbI3) and 5.90 A (CsPbBr3), the cells of the
  DFT paths; Vegard's law in between.

Limits: the DFT barriers are for neutral defects, the paper's energetics for
its charged-defect Allegro model; the interface barrier of the Br-rich
interface (about 130 meV) is not built in: only the local-composition terms
above are. Catalogs fitted to MD/NEB of one potential replace this one.
"""

from __future__ import annotations

import datetime as _dt
import sys
from pathlib import Path

import numpy as np

from lattice.environment import N_CLASSES, SHELL_SIZE, decode_class
from lattice.species import BR, BRIDGE, I, N_STATES, STATE_NAMES, VACANCY
from rates.catalog import RateCatalog

KCAL_MOL_TO_EV = 0.0433641

#: DFT barriers (eV) of the four reference paths, maximum of ``ref_kcal``.
DFT_BARRIERS_EV = {"V_I": 0.208, "I_i": 0.170, "V_Br": 0.195, "Br_i": 0.200}

#: Barrier shift (eV) at nI = 6 relative to the pure compound of the mover.
MIXING_SHIFT_AT_HALF_EV = {
    ("vacancy", "I"): -0.05,
    ("vacancy", "Br"): +0.01,
    ("interstitial", "Br"): -0.04,
    ("interstitial", "I"): +0.01,
}

PREFACTOR_HZ = 1.0e12
BRIDGE_EV = {"II": 0.1439, "IBr": 0.0345, "BrBr": 0.0}
VACANCY_I_PAIR_EV = 0.0125
LATTICE_CONSTANT_A = {"I": 6.30, "Br": 5.90, "mixing_rule": "vegard"}

SOURCES = {
    "dft-paths": "M. Pols et al., J. Phys. Chem. C 128, 4111-4118 (2024), doi:10.1021/acs.jpcc.4c00563: "
                 "DFT (neutral defects, cubic 3x3x3 cells) energies along V_I, I_i, V_Br, Br_i migration paths "
                 "(training set of the 2024 I/Br/Pb/Cs ReaxFF)",
    "paper": "V. Tyagi, M. Pols, G. Brocks, S. Tao, 'Halide diffusion in mixed-halide perovskites and "
             "heterojunctions' (Allegro MD of charged halide defects in CsPb(I_x Br_1-x)_3)",
    "assumption": "modelling assumption of this catalog (see 'assumptions')",
}


def e_kra_model(defect: str, mover: str, shell_nI: int) -> float:
    """Default E_KRA (eV) of a class: pure-compound DFT barrier plus a linear composition shift."""
    if defect == "vacancy":
        e_pure = DFT_BARRIERS_EV["V_I" if mover == "I" else "V_Br"]
    else:
        e_pure = DFT_BARRIERS_EV["I_i" if mover == "I" else "Br_i"]
    # fraction of the shell that is *not* the mover's own species
    foreign = (SHELL_SIZE - shell_nI) / SHELL_SIZE if mover == "I" else shell_nI / SHELL_SIZE
    return e_pure + 2.0 * MIXING_SHIFT_AT_HALF_EV[(defect, mover)] * foreign


def build_default_catalog() -> RateCatalog:
    """The default catalog as a :class:`RateCatalog` (see the module docstring)."""
    e_kra = np.empty(N_CLASSES)
    e_err = np.empty(N_CLASSES)
    src = []
    for c in range(N_CLASSES):
        d = decode_class(c)
        e_kra[c] = round(e_kra_model(d["defect"], d["mover"], d["shell_nI"]), 6)
        pure = (d["mover"] == "I" and d["shell_nI"] == SHELL_SIZE) or (d["mover"] == "Br" and d["shell_nI"] == 0)
        e_err[c] = 0.03 if pure else 0.05
        src.append("dft-paths" if pure else "dft-paths + paper + assumption")
    pair = np.zeros((N_STATES, N_STATES))
    pair[VACANCY, I] = pair[I, VACANCY] = VACANCY_I_PAIR_EV
    pair_err = np.full((N_STATES, N_STATES), np.nan)
    pair_err[VACANCY, I] = pair_err[I, VACANCY] = 0.006
    pair_src = {("I", "V"): "paper"}
    for a, b in ((I, BR), (VACANCY, BR), (I, BRIDGE), (BR, BRIDGE)):
        key = tuple(sorted((STATE_NAMES[a], STATE_NAMES[b]), key=STATE_NAMES.index))
        pair_src[key] = "assumption"
    return RateCatalog(
        name="default-published-v1",
        description="Default catalog for CsPb(I_x Br_1-x)_3 halide defects from published DFT barriers and the "
                    "paper's energetics; a starting point, not a fit to one potential.",
        E_KRA_eV=e_kra,
        E_KRA_err_eV=e_err,
        prefactor_Hz=np.full(N_CLASSES, PREFACTOR_HZ),
        prefactor_err_Hz=np.full(N_CLASSES, PREFACTOR_HZ),
        class_source=src,
        pair_eV=pair,
        pair_err_eV=pair_err,
        pair_source=pair_src,
        bridge_eV=np.array([BRIDGE_EV["II"], BRIDGE_EV["IBr"], BRIDGE_EV["BrBr"]]),
        bridge_err_eV=np.array([0.02, 0.01, 0.0]),
        bridge_source=["paper", "paper", "paper (reference level)"],
        lattice_constant_A=dict(LATTICE_CONSTANT_A),
        temperature_range_K=(250.0, 900.0),
        sources=dict(SOURCES),
        assumptions=[
            "E_KRA depends linearly on the number of iodides in the 12-site path shell; slopes set so that the "
            "shift at nI = 6 equals the paper's mixed-vs-pure differences of species-resolved activation energies "
            "(Tables 2-3): vacancy/I -0.05 eV, vacancy/Br +0.01 eV, interstitial/Br -0.04 eV, interstitial/I +0.01 eV.",
            "E_KRA does not depend on pair_nI (the I count of the remaining and target atoms of a kick-out); the "
            "bridge energies carry that dependence.",
            "One prefactor of 1e12 Hz for every class (soft optical phonons); uncertainty a factor of 2.",
            "Vacancy-I pair energy 12.5 meV: 8 x 12.5 meV = 0.10 eV between pure-I and pure-Br surroundings (paper: > 100 meV).",
            "No I-Br mixing energy (the paper finds interface formation energies of 2.5 meV per Pb, below k_B T), "
            "no defect-defect interactions, no interface-specific barrier.",
            "Defects do not react: a vacancy and an interstitial never recombine and no Frenkel pairs form; hops onto "
            "a defect site are blocked.",
            "DFT barriers are for neutral defects; the paper's energetics are for charged defects (V_X+, I_X-).",
        ],
        provenance={
            "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "generator": "python -m rates.default",
            "inputs": {"dft_barriers_eV": DFT_BARRIERS_EV, "bridge_eV": BRIDGE_EV},
        },
    )


def main(argv: list[str] | None = None) -> int:
    out = Path(argv[0]) if argv else Path(__file__).parent / "data" / "default_catalog.json"
    build_default_catalog().save(out)
    print(out)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
