"""RECS: incremental training of MLP recommendation models on CPU clusters.

The data path lives in :mod:`recs_core.data` (readers, synthetic generator) and
:mod:`recs_core.features` (feature spec, JIT operators, operator graph).
"""

from recs_core.errors import ConfigError, DataError, RecsError

__version__ = "0.1.0"

__all__ = ["ConfigError", "DataError", "RecsError", "__version__", "load_spec"]


def load_spec(path):  # noqa: ANN001, ANN201 - thin lazy re-export
    """Load and validate a feature spec TOML file (:func:`recs_core.features.spec.load_spec`)."""
    from recs_core.features.spec import load_spec as _load

    return _load(path)
