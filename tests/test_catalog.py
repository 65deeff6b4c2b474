"""Rate catalogs: loading, round trips, validation errors, and the DFT-derived default barriers."""

from __future__ import annotations

import copy
import json
import shlex
from pathlib import Path

import numpy as np
import pytest

from lattice.environment import N_CLASSES, class_label, encode_class
from rates import CatalogError, MissingRateError, RateCatalog, load_catalog

KCAL_MOL_TO_EV = 0.0433641
SHARED = Path(__file__).resolve().parents[2] / "shared"
DFT_DIR = SHARED / "reference" / "dft_migration_paths"

# file stem -> (published barrier eV, defect kind, mover, pair_nI, shell_nI of the pure-compound class)
DFT_PATHS = {
    "udmb_CsPbI3_C_DMB_VI": (0.208, "vacancy", "I", None, 12),
    "udmb_CsPbI3_C_DMB_II": (0.170, "interstitial", "I", 2, 12),
    "udmb_CsPbBr3_C_DMB_VBr": (0.195, "vacancy", "Br", None, 0),
    "udmb_CsPbBr3_C_DMB_IBr": (0.200, "interstitial", "Br", 0, 0),
}


def _arrays_equal(a: RateCatalog, b: RateCatalog) -> None:
    for name in ("E_KRA_eV", "E_KRA_err_eV", "prefactor_Hz", "prefactor_err_Hz", "pair_eV", "pair_err_eV",
                 "bridge_eV", "bridge_err_eV"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


def test_default_catalog_loads(default_catalog):
    cat = default_catalog
    assert cat.name
    assert cat.present.all(), "the default catalog covers every class"
    assert np.all(cat.E_KRA_eV >= 0) and np.all(cat.prefactor_Hz > 0)
    np.testing.assert_array_equal(cat.pair_eV, cat.pair_eV.T)
    assert cat.bridge_eV.shape == (3,)
    lo, hi = cat.temperature_range_K
    assert 0 < lo <= 300 and hi >= 600
    assert cat.check_temperature(400.0) == []
    assert cat.check_temperature(5000.0)
    a_i, a_br = cat.lattice_constant(1.0), cat.lattice_constant(0.0)
    assert cat.lattice_constant(0.5) == pytest.approx(0.5 * (a_i + a_br))


def test_round_trip(tmp_path, default_catalog):
    path = default_catalog.save(tmp_path / "cat.json")
    again = load_catalog(path)
    assert again.sha256() == default_catalog.sha256()
    _arrays_equal(again, default_catalog)
    assert again.to_dict() == default_catalog.to_dict()
    # a second round trip of a modified catalog changes the hash
    changed = copy.deepcopy(default_catalog)
    changed.E_KRA_eV = changed.E_KRA_eV.copy()
    changed.E_KRA_eV[5] += 0.001
    assert changed.sha256() != default_catalog.sha256()
    back = load_catalog(changed.save(tmp_path / "changed.json"))
    assert back.sha256() == changed.sha256()
    _arrays_equal(back, changed)


def test_partial_catalog_round_trip(tmp_path, default_catalog):
    data = default_catalog.to_dict()
    data["classes"] = [c for c in data["classes"] if c["id"] % 3 == 0]
    cat = RateCatalog.from_dict(data)
    assert cat.present.sum() == len(data["classes"])
    again = load_catalog(cat.save(tmp_path / "partial.json"))
    assert again.sha256() == cat.sha256()
    np.testing.assert_array_equal(np.isnan(again.E_KRA_eV), ~cat.present)


def _class_entry(data, cid):
    return next(c for c in data["classes"] if c["id"] == cid)


def _mutations():
    def fmt(d):
        d["format"] = "some-other-format"

    def schema(d):
        d["schema_version"] = 99

    def v2_without_model(d):
        d["schema_version"] = 2

    def negative(d):
        d["classes"][3]["E_KRA_eV"] = -0.1

    def prefactor_zero(d):
        d["classes"][4]["prefactor_Hz"] = 0.0

    def prefactor_negative(d):
        d["classes"][4]["prefactor_Hz"] = -1e12

    def pair_cl(d):
        d["energy_model"]["pair_eV"].append({"states": ["Cl", "I"], "value": 0.01})

    def mover_cl(d):
        d["classes"][0]["mover"] = "Cl"

    def id_range(d):
        d["classes"][0]["id"] = N_CLASSES

    def id_negative(d):
        d["classes"][0]["id"] = -1

    def duplicate(d):
        d["classes"].append(copy.deepcopy(d["classes"][10]))

    def descriptor(d):
        d["descriptor"]["version"] = 99

    def missing_bridge(d):
        d["energy_model"]["bridge_eV"] = d["energy_model"]["bridge_eV"][:2]

    def not_a_number(d):
        d["classes"][2]["E_KRA_eV"] = "0.2"

    def contradicting_field(d):
        d["classes"][1]["shell_nI"] = 7

    return [
        (fmt, "format"),
        (schema, "schema_version"),
        (v2_without_model, "interstitial_model"),
        (negative, "negative barrier"),
        (prefactor_zero, r"prefactor_Hz must lie in \(0, "),
        (prefactor_negative, r"prefactor_Hz must lie in \(0, "),
        (pair_cl, "unknown site state 'Cl'"),
        (mover_cl, "unknown species 'Cl'"),
        (id_range, f"id {N_CLASSES} is not a class"),
        (id_negative, "id -1 is not a class"),
        (duplicate, "listed twice"),
        (descriptor, "descriptor"),
        (missing_bridge, "lacks bridge"),
        (not_a_number, r"classes\[2\]\.E_KRA_eV.*not of type 'number'"),
        (contradicting_field, "contradicts class id"),
    ]


@pytest.mark.parametrize("mutate, message", _mutations(), ids=lambda v: getattr(v, "__name__", None))
def test_malformed_catalogs_raise(tmp_path, default_catalog, mutate, message):
    data = default_catalog.to_dict()
    mutate(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(CatalogError, match=message):
        load_catalog(path)
    with pytest.raises(CatalogError, match=message):
        RateCatalog.from_dict(data)


def test_unreadable_catalogs_raise(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{ this is not json")
    with pytest.raises(CatalogError, match="not valid JSON"):
        load_catalog(bad)
    with pytest.raises(CatalogError, match="does not exist"):
        load_catalog(tmp_path / "nowhere.json")
    lst = tmp_path / "list.json"
    lst.write_text("[1, 2]")
    with pytest.raises(CatalogError, match="JSON object"):
        load_catalog(lst)


def test_require_classes_names_the_missing_class(default_catalog):
    cat = copy.deepcopy(default_catalog)
    missing = encode_class("interstitial", "Br", 5, 1)
    cat.E_KRA_eV = cat.E_KRA_eV.copy()
    cat.E_KRA_eV[missing] = np.nan
    cat.require_classes([0, 1, 30])  # present: no error
    with pytest.raises(MissingRateError, match=class_label(missing).replace("|", r"\|")) as info:
        cat.require_classes([0, missing, 30, missing])
    assert info.value.classes == [missing]
    assert isinstance(info.value, CatalogError)


def _read_ref_kcal(path: Path) -> float:
    """``ref_kcal`` from the comment line of an extended-XYZ file."""
    with path.open() as fh:
        fh.readline()
        comment = fh.readline()
    info = dict(tok.split("=", 1) for tok in shlex.split(comment) if "=" in tok)
    return float(info["ref_kcal"])


def test_default_barriers_equal_dft_paths(default_catalog):
    if not DFT_DIR.is_dir():
        pytest.skip(f"shared DFT reference data not found at {DFT_DIR}")
    for stem, (published, defect, mover, pair, shell) in DFT_PATHS.items():
        files = sorted(DFT_DIR.glob(f"{stem}_[0-9][0-9].xyz"))
        assert len(files) == 7, f"{stem}: expected 7 images, found {len(files)}"
        energies = np.array([_read_ref_kcal(f) for f in files])
        assert energies.min() == 0.0, f"{stem}: ref_kcal is relative to the lowest image"
        barrier = energies.max() * KCAL_MOL_TO_EV
        assert abs(barrier - published) <= 0.0015, (stem, barrier, published)
        cls = encode_class(defect, mover, shell, pair)
        e_kra = default_catalog.E_KRA_eV[cls]
        assert e_kra == pytest.approx(published, abs=1e-9), class_label(cls)
        assert abs(e_kra - barrier) <= 0.0015, (class_label(cls), e_kra, barrier)


@pytest.mark.parametrize("path,value,field", [
    (("units",), [], "units"),
    (("units",), None, "units"),
    (("energy_model", "pair_eV"), 5, "energy_model.pair_eV"),
    (("energy_model", "bridge_eV"), 3, "energy_model.bridge_eV"),
    (("energy_model", "bridge_eV", 0, "bridge"), ["II"], r"energy_model.bridge_eV\[0\].bridge"),
    (("sources",), "paper", "sources"),
    (("assumptions",), {"a": 1}, "assumptions"),
    (("provenance",), ["x"], "provenance"),
    (("classes",), {"0": 1}, "classes"),
    (("classes", 0), 7, r"classes\[0\]"),
    (("lattice_constant_A",), [6.3, 5.9], "lattice_constant_A"),
    (("temperature_range_K",), "300-700", "temperature_range_K"),
])
def test_container_types_are_validated_with_the_path_named(tmp_path, default_catalog, path, value, field, capsys):
    """Every structural error is a one-line CatalogError naming the field, in the API and in the CLI."""
    from kmc.cli import main

    data = default_catalog.to_dict()
    node = data
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(CatalogError, match=field):
        load_catalog(bad)
    assert main(["rates", "show", str(bad)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err and "bad.json" in err


@pytest.mark.parametrize("field,value,match", [("prefactor_Hz", 1e308, "prefactor_Hz must lie in"),
                                               ("E_KRA_eV", 1e6, "beyond 20.0 eV")])
def test_absurd_catalog_values_are_refused(tmp_path, default_catalog, field, value, match):
    data = default_catalog.to_dict()
    for c in data["classes"]:
        c[field] = value
    p = tmp_path / "absurd.json"
    p.write_text(json.dumps(data))
    with pytest.raises(CatalogError, match=match):
        load_catalog(p)
