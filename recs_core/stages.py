"""Stages: work written once as generators that yield what they wait on.

A stage yields a :class:`~recs_core.comm.pending.Pending` exchange it needs completed, a
marker (:class:`NeedRows`, ``dense.layers.NeedBucket``) just before it reads state that a
scheduler may still be updating, or ``None`` (a point where other work may run), and
returns its value. A backward stage also hands out what is final early (:class:`SetGrads`,
dense gradient buckets). The task loop interleaves stages; :func:`drive` runs one to the
end.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from recs_core.comm.pending import Pending

T = TypeVar("T")

Stage = Generator[object, None, T]


class NeedRows:
    """Yielded by an embedding lookup just before it reads table rows: a scheduler that
    lets lookups start early makes sure the previous step's update of the pipeline is
    applied first. Plain drivers ignore it."""

    __slots__ = ("pipeline",)

    def __init__(self, pipeline: str) -> None:
        self.pipeline = pipeline

    def __repr__(self) -> str:
        return f"NeedRows({self.pipeline!r})"


@dataclass(frozen=True)
class SetGrads:
    """Yielded once by a model's backward stage: d loss / d each embedding set's looked-up
    block (in the model's set order, shaped like the block), before the weight gradients."""

    grads: list[np.ndarray]


def relay(stage: Stage[T], handle: Callable[[object], Iterator[object]]) -> Stage[T]:
    """``stage`` with each thing it yields replaced by what ``handle(thing)`` yields (a
    scheduler's waits for a marker, say); its return value."""
    while True:
        try:
            need = next(stage)
        except StopIteration as done:
            return done.value
        yield from handle(need)


def _wait(need: object) -> Iterator[object]:
    if isinstance(need, Pending):
        need.wait()
    return iter(())


def drive(stage: Stage[T]) -> T:
    """Run a stage to the end, waiting on each exchange it yields (with its deadline);
    its return value."""
    try:
        next(relay(stage, _wait))
    except StopIteration as done:
        return done.value
    raise AssertionError("a driven stage yields nothing")  # _wait yields nothing
