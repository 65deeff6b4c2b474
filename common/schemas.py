"""JSON Schemas of the documents passed between stages, and one validator that names the bad field.

Structure (containers, types, required fields) is checked here with jsonschema
before any code reads a document; value rules that need the package's
knowledge (class ids, detailed balance, ...) stay with the readers.
"""

from __future__ import annotations

_NUM = {"type": "number"}
_NUM_OR_NULL = {"type": ["number", "null"]}
_MEAN_SEM = {"type": "object", "properties": {"mean": _NUM_OR_NULL, "sem": _NUM_OR_NULL,
                                              "n": {"type": "integer", "minimum": 0}}}

MD_ANALYSIS = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "halide-kmc/md-analysis v1 (the fields other stages read)",
    "type": "object",
    "required": ["schema", "per_temperature", "runs"],
    "properties": {
        "schema": {"const": "halide-kmc/md-analysis"},
        "schema_version": {"type": "integer"},
        "per_temperature": {"type": "array", "minItems": 1, "items": {
            "type": "object", "required": ["temperature_K"],
            "properties": {
                "temperature_K": {"type": "number", "exclusiveMinimum": 0},
                "n_hops": {"type": "integer", "minimum": 0},
                "classes": {"type": "array", "items": {
                    "type": "object", "required": ["cls", "n_hops", "exposure_ps"],
                    "properties": {"cls": {"type": "integer", "minimum": 0},
                                   "n_hops": {"type": "integer", "minimum": 0},
                                   "exposure_ps": {"type": "number", "minimum": 0},
                                   "label": {"type": ["string", "null"]}}}},
                "D_eq1_cm2_s": {"type": "object", "required": ["X", "I", "Br"], "additionalProperties": _MEAN_SEM},
                "D_defect_cm2_s": _MEAN_SEM,
            }}},
        "runs": {"type": "array", "minItems": 1, "items": {"type": "object"}},
    },
}

MD_ANALYSIS_FOR_COMPARE = {
    **MD_ANALYSIS,
    "properties": {
        **MD_ANALYSIS["properties"],
        "per_temperature": {"type": "array", "minItems": 1, "items": {
            **MD_ANALYSIS["properties"]["per_temperature"]["items"],
            "required": ["temperature_K", "D_eq1_cm2_s"]}},
        "runs": {"type": "array", "minItems": 1, "items": {
            "type": "object", "required": ["lattice_constant_A", "configuration", "tracking"],
            "properties": {
                "lattice_constant_A": {"type": "number", "exclusiveMinimum": 0},
                "configuration": {"type": "object", "required": ["kind", "shape"],
                                  "properties": {"kind": {"type": "string"},
                                                 "shape": {"type": "array", "minItems": 3, "maxItems": 3,
                                                           "items": {"type": "integer", "minimum": 1}}}},
                "tracking": {"type": "object", "required": ["defect_kinds"],
                             "properties": {"defect_kinds": {"type": "array", "items": {"type": "string"}}}},
            }}},
    },
}


def check(doc, schema: dict, origin: str, error=ValueError) -> None:
    """Raise ``error`` naming the path of the first structural problem of ``doc`` (best match)."""
    import jsonschema  # noqa: PLC0415

    err = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(doc))
    if err is not None:
        path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err.absolute_path).lstrip(".")
        raise error(f"{origin}: {'field ' + repr(path) if path else 'the document'}: {err.message}")
