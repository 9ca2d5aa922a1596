"""The RECS scheduler: per-rank task loop, intra-pipeline prefetch, inter-pipeline priority."""

MODES = ("sequential", "prefetch", "recs", "recs-intra", "recs-inter")  # `recs train --mode`
