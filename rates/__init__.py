"""Environment-resolved hop-rate catalogs: format, validation, rate law and the embedded default."""

from rates.catalog import (
    DEFAULT_CATALOG,
    CatalogError,
    MissingRateError,
    RateCatalog,
    load_catalog,
)
from rates.ratelaw import K_B_EV

__all__ = ["DEFAULT_CATALOG", "CatalogError", "K_B_EV", "MissingRateError", "RateCatalog", "load_catalog"]
