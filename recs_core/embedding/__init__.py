"""Embedding tables: deterministic init, compiled gathers and gradient helpers
(:mod:`~recs_core.embedding.table`) and sparse row-wise optimizers
(:mod:`~recs_core.embedding.sparse_optim`)."""
