"""RECS: incremental training of MLP recommendation models on CPU clusters.

The data path, in the order a batch travels it:
:mod:`recs_core.data` (sharded streaming reader, compiled TSV parser, synthetic
generator) → :mod:`recs_core.features` (feature spec, JIT operators, operator graph).

Typical library use::

    import recs_core
    spec = recs_core.load_spec("configs/criteo_dlrm.toml")
    graph = recs_core.FeatureGraph(spec)
    for raw in recs_core.ShardReader(["day1.txt"], spec.schema, batch_rows=spec.batch_size):
        batch = graph.process(raw)  # labels, dense matrix, sparse ids per pipeline
"""

from recs_core.data.bad_rows import BadRowPolicy
from recs_core.data.reader import ShardReader
from recs_core.errors import ConfigError, DataError, RecsError
from recs_core.features.graph import FeatureBatch, FeatureGraph
from recs_core.features.hashing import HASH_VERSION, hash_str
from recs_core.features.job import run_features
from recs_core.features.spec import Spec, load_spec

__version__ = "0.1.0"

__all__ = [
    "HASH_VERSION",
    "BadRowPolicy",
    "ConfigError",
    "DataError",
    "FeatureBatch",
    "FeatureGraph",
    "RecsError",
    "ShardReader",
    "Spec",
    "__version__",
    "hash_str",
    "load_spec",
    "run_features",
]
