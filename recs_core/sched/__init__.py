"""The RECS scheduler: per-rank task loop, intra-pipeline prefetch, inter-pipeline priority."""

from recs_core.sched.policy import MODES  # noqa: F401  (`recs train --mode`)
