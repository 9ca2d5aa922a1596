"""RECS: incremental training of MLP recommendation models on CPU clusters.

One batch's journey, module by module: :mod:`recs_core.data` (files, directories and
globs expanded, sharded streaming reader, compiled TSV parser, synthetic generator) →
:mod:`recs_core.features` (feature spec, JIT operators, operator graph) →
:mod:`recs_core.embedding` (tables, lookups, sparse optimizers) → :mod:`recs_core.dense`
(MLP, interaction, DLRM / Wide&Deep, loss, dense optimizers) → :mod:`recs_core.train`
(the one-pass job, scoring) and :mod:`recs_core.metrics`.

Typical library use::

    import recs_core
    job = recs_core.Job.from_config("configs/criteo_dlrm.toml")
    figures = job.run(["day1.txt"], eval_fraction=0.1)   # test-then-train, one pass
    probs = job.score(["day2.txt"])
    job.save_step("models")                               # models/step-<N>, sharded
"""

# isort: split
import recs_core.threads  # noqa: F401  (first: thread counts set before NumPy loads)

# isort: split
from recs_core.data.bad_rows import BadRowPolicy
from recs_core.data.reader import ShardReader
from recs_core.data.sources import expand_sources, open_input
from recs_core.errors import ConfigError, DataError, RecsError
from recs_core.features.feature_pass import run_features
from recs_core.features.graph import FeatureBatch, FeatureGraph
from recs_core.features.hashing import HASH_VERSION, hash_str
from recs_core.features.spec import Spec, load_spec
from recs_core.train.config import TrainConfig, train_config
from recs_core.train.job import Job
from recs_core.train.model import Model

__version__ = "0.1.0"

__all__ = [
    "HASH_VERSION",
    "BadRowPolicy",
    "ConfigError",
    "DataError",
    "FeatureBatch",
    "FeatureGraph",
    "Job",
    "Model",
    "RecsError",
    "ShardReader",
    "Spec",
    "TrainConfig",
    "__version__",
    "expand_sources",
    "hash_str",
    "load_spec",
    "open_input",
    "run_features",
    "train_config",
]
