"""``recs features``: read, parse and run every feature operator, without training."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from recs_core.comm.world import World, job_world
from recs_core.data.arrow import ArrowConverter, sample_batch
from recs_core.data.bad_rows import BadRowPolicy
from recs_core.data.parse import ChunkParser
from recs_core.data.reader import find_lf, rfind_lf
from recs_core.data.sources import DataInput, decompression_figures, open_input
from recs_core.features.graph import FeatureGraph
from recs_core.features.spec import Spec
from recs_core.progress_bar import ProgressBar


@dataclass
class FeatureRunStats:
    """Figures of one pass (global over ranks when run under MPI)."""

    rows: int
    lines: int
    seconds: float
    bad_rows: dict[str, int] = field(default_factory=dict)
    world_size: int = 1
    jit_seconds: float = 0.0  # kernel compile/cache load before the timed pass
    warnings: list[str] = field(default_factory=list)  # a file given twice, an empty file,
    # a file with a header and no rows
    decompression: dict[str, list[float]] | None = None  # per rank (sources.py)

    def as_json(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "lines": self.lines,
            "seconds": round(self.seconds, 4),
            "rows_per_sec": round(self.rows / self.seconds, 1) if self.seconds > 0 else 0.0,
            "bad_rows": self.bad_rows,
            "bad_rows_total": sum(self.bad_rows.values()),
            "world_size": self.world_size,
            "jit_seconds": round(self.jit_seconds, 3),
            "warnings": self.warnings,
        } | ({"decompression": self.decompression} if self.decompression else {})


def warm_up(spec: Spec) -> float:
    """Compile (or load from Numba's cache) every kernel the spec uses, on a throwaway
    copy of its operators (so fitted operators do not fit on this dummy input).
    Returns the seconds it took."""
    t0 = time.perf_counter()
    spec = copy.deepcopy(spec)
    graph = FeatureGraph(spec)
    schema = spec.schema
    if not schema.list_names:
        fields = ["0" if c.type == "label" else "1" if c.type in ("int", "float") else "a"
                  for c in spec.columns]
        text = ("\t".join(fields) + "\n").encode() * 2
        buf = np.frombuffer(text, dtype=np.uint8)
        find_lf(buf, 0, len(buf))
        rfind_lf(buf, 0, len(buf))
        graph.process(ChunkParser(schema).parse(buf, len(buf), True).batch)
    conv = ArrowConverter(schema)
    for dictionary in (False, True):
        rb = sample_batch(schema, dictionary)
        graph.process(conv.convert(rb, list(range(rb.num_columns))).batch)
    return time.perf_counter() - t0


def run_features(spec: Spec, paths: DataInput, world: World | None = None, *,
                 policy: BadRowPolicy | None = None, batch_rows: int | None = None,
                 quiet: bool = False) -> FeatureRunStats:
    """Process this rank's shard of ``paths`` (files, directories, globs: text or Parquet;
    or an Arrow source: record batches, tables, data frames; see
    :mod:`recs_core.data.sources`) through the spec's operator graph, over ``world``
    (default: the ranks this process was launched on, see
    :func:`~recs_core.comm.world.job_world`).

    Returns the global figures (every rank gets them).
    """
    world = job_world(world)
    jit_seconds = warm_up(spec)
    graph = FeatureGraph(spec)
    reader, warnings = open_input(paths, spec.schema, spec.format, rank=world.rank,
                                  world=world.size, batch_rows=batch_rows or spec.batch_size,
                                  policy=policy or spec.policy)
    progress = ProgressBar("features", quiet=quiet or world.rank != 0)
    world.barrier()
    t0 = time.perf_counter()
    rows = 0
    for raw in reader:
        graph.process(raw)
        rows += len(raw)
        progress.update(rows * world.size)
    seconds = time.perf_counter() - t0
    progress.close()
    return FeatureRunStats(
        rows=world.allreduce_sum(rows),
        lines=world.allreduce_sum(reader.counter.lines),
        seconds=world.allreduce_max(seconds),
        bad_rows=world.gather_dicts_sum(reader.counter.by_reason),
        world_size=world.size,
        jit_seconds=world.allreduce_max(jit_seconds),
        warnings=warnings,  # (every rank reads every header)
        decompression=decompression_figures(world.allgather(reader.decompressed)),
    )
