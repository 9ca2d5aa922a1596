"""Resharding row-wise sharded embedding tables to another world size.

A rank's part of table ``t`` is a dict of per-row arrays: ``ids`` (global row numbers,
int64 [k]), ``values`` (float32 [k, dim]) and any per-row optimizer state (e.g. a
row-wise Adagrad accumulator [k]); every array's first axis is the row.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from recs_core.errors import RecsError


def reshard_rows(shards: Sequence[dict[str, np.ndarray]],
                 owner_fn: Callable[[np.ndarray], np.ndarray], rank: int,
                 ids_key: str = "ids") -> dict[str, np.ndarray]:
    """This rank's rows of one table under a new placement.

    ``shards`` are every old rank's per-row arrays for the table (same keys in each);
    ``owner_fn`` maps global row ids to their new owner rank (e.g.
    ``lambda ids: owners(t, ids, new_world, placement)``). Returns the rows ``rank``
    owns, all keys, ordered by ascending id. RecsError when the shards disagree on keys
    or row counts, or when one id is held by two shards."""
    if not shards:
        raise RecsError("reshard: no shards given")
    keys = list(shards[0])
    if ids_key not in keys:
        raise RecsError(f"reshard: shard 0 has no {ids_key!r} array (keys {keys})")
    for i, s in enumerate(shards):
        if sorted(s) != sorted(keys):
            raise RecsError(f"reshard: shard {i} has keys {sorted(s)}, shard 0 {sorted(keys)}")
        n = len(s[ids_key])
        bad = [k for k in keys if len(s[k]) != n]
        if bad:
            raise RecsError(f"reshard: shard {i}: {bad} do not have one row per id ({n})")
    ids = np.concatenate([np.asarray(s[ids_key], dtype=np.int64) for s in shards])
    mine = np.flatnonzero(np.asarray(owner_fn(ids)) == rank)
    order = mine[np.argsort(ids[mine], kind="stable")]
    picked = ids[order]
    if len(picked) > 1 and (dup := np.flatnonzero(picked[1:] == picked[:-1])).size:
        raise RecsError(f"reshard: row {picked[dup[0]]} is held by more than one shard")
    out = {ids_key: picked}
    for k in keys:
        if k != ids_key:
            out[k] = np.concatenate([s[k] for s in shards])[order]
    return out
