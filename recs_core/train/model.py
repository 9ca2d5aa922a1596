"""A spec's full model: embedding tables + dense network + optimizers, on feature batches."""

from __future__ import annotations

from collections.abc import Generator

import numpy as np

from recs_core.checkpoint.store import RowPatch
from recs_core.comm.objects import dup
from recs_core.comm.pending import Pending, post_allreduce
from recs_core.comm.world import World
from recs_core.dense.layers import GradPart, grad_part
from recs_core.dense.loss import bce_with_logits, sigmoid
from recs_core.dense.optim import make_dense_optimizer
from recs_core.dense.presets import DLRM, EmbGrads, WideDeep
from recs_core.embedding.layer import Embeddings, LocalEmbeddings, ShardedEmbeddings, slots_of
from recs_core.embedding.sparse_optim import make_sparse_optimizer
from recs_core.embedding.storage import ChangedRows, ShardRead, assign, need
from recs_core.embedding.table import check_fits, size_text
from recs_core.errors import RecsError
from recs_core.features.graph import FeatureBatch
from recs_core.features.spec import Spec
from recs_core.stages import SetGrads, Stage, drive
from recs_core.train.compat import table_stems
from recs_core.train.config import TrainConfig


def _optimizer_kwargs(name: str, cfg: TrainConfig, sparse: bool) -> dict[str, float]:
    if name == "adagrad":
        acc = cfg.sparse_initial_accumulator if sparse else cfg.initial_accumulator
        return {"eps": cfg.eps, "initial_accumulator": acc}
    return {"eps": cfg.eps} if name == "adam" else {}


def _table_bytes(rows: list[int], dims: list[int], world: int) -> int:
    """A lower bound of the bytes one rank's fixed tables take: its share of the rows
    (float32 values) and, on several ranks, the whole largest table once (it is drawn
    whole, then the rank keeps its rows)."""
    share = sum(-(-r // world) * d * 4 for r in rows for d in dims)
    whole = max((r * d * 4 for r in rows for d in dims), default=0) if world > 1 else 0
    return share + whole


def _tables_text(fields: list, dims: list[int], world: int) -> str:
    big = max(fields, key=lambda f: f[1].fixed_rows, default=None)
    where = f" on each of {world} ranks" if world > 1 else ""
    if big is None:
        return "the embedding tables"
    return (f"{len(fields)} embedding tables (the largest {big[0]!r}: {big[1].fixed_rows} "
            f"rows x dim {max(dims)}){where}")


class Model:
    """Embeddings and the DLRM / Wide&Deep network of a spec, with their optimizers.

    ``train_step`` scores a batch with the current model, then updates on it
    (test-then-train) and returns those scores: :meth:`step` driven to the end. A
    scheduler composes the same stages itself (the embedding sets' ``lookup`` / ``push``,
    :meth:`forward_loss_stages`, :meth:`backward_stages`, :meth:`post_dense_allreduce`).
    """

    def __init__(self, spec: Spec, cfg: TrainConfig, world: World | None = None) -> None:
        self.spec, self.cfg = spec, cfg
        self.world = world or World()
        fields = spec.sparse_fields
        self.num_fields = len(fields)
        self.dim = fields[0][1].dim if fields else 1
        rows = [t.fixed_rows for _, t in fields]
        dynamic = {i: t.dynamic for i, (_, t) in enumerate(fields) if t.dynamic is not None}
        slots = slots_of(spec)
        skw = _optimizer_kwargs(cfg.sparse_optimizer, cfg, sparse=True)

        def embeddings(dim: int, seed: int, prefix: str) -> Embeddings:
            opt = make_sparse_optimizer(cfg.sparse_optimizer, cfg.sparse_lr, **skw)
            names = table_stems(spec, prefix)
            if self.world.size == 1:
                return LocalEmbeddings(rows, dim, seed, slots, opt, dynamic, names, prefix)
            return ShardedEmbeddings(rows, dim, seed, slots, opt, self.world.comm,
                                     cfg.placement, dynamic, names, prefix)

        dims = [self.dim] + ([1] if cfg.preset != "dlrm" else [])
        need, what = _table_bytes(rows, dims, self.world.size), _tables_text(fields, dims,
                                                                          self.world.size)
        self.world.everyone(lambda: check_fits(need, what))  # every rank stops
        try:
            self.emb = embeddings(self.dim, cfg.seed, "emb")
            self.wide = embeddings(1, cfg.seed + 1, "wide") if cfg.preset != "dlrm" else None
        except MemoryError:
            raise RecsError(f"{what} need {size_text(need)}: out of memory while "
                            f"allocating them") from None
        if cfg.preset == "dlrm":
            self.net = DLRM(spec.dense_width, self.num_fields, self.dim, list(cfg.bottom_mlp),
                            list(cfg.top_mlp), cfg.seed)
        else:
            self.net = WideDeep(spec.dense_width, self.num_fields, self.dim,
                                list(cfg.deep_mlp), cfg.seed)
        kw = _optimizer_kwargs(cfg.optimizer, cfg, sparse=False)
        self.dense_opt = make_dense_optimizer(cfg.optimizer, self.net.params, cfg.lr, **kw)
        self.sets: list[Embeddings] = [self.emb] + ([self.wide] if self.wide is not None
                                                      else [])
        self._dense_comm = (dup(self.world.comm, "communicator duplication")
                            if self.world.size > 1 else None)

    def forward(self, fb: FeatureBatch) -> np.ndarray:
        """Logits of a batch (a collective when the tables are sharded)."""
        return self.net.forward(fb.dense, *self._net_inputs([e.read(fb) for e in self.sets]))

    @staticmethod
    def _net_inputs(blocks: list[np.ndarray]) -> list[np.ndarray]:
        """The net's embedding arguments from the sets' blocks: the vectors, then
        (Wide&Deep) the 1-dim wide weights as [n, fields]."""
        return [blocks[0], *(b[:, :, 0] for b in blocks[1:])]

    def predict(self, fb: FeatureBatch) -> np.ndarray:
        """Click probabilities of a batch (no update; dynamic tables count nothing)."""
        for e in self.sets:
            e.dynamic.counting = False
        try:
            return sigmoid(self.forward(fb)).astype(np.float32)
        finally:
            for e in self.sets:
                e.dynamic.counting = True

    def post_dense_allreduce(self, which: list[GradPart]) -> Pending[None]:
        """Post the sum over the data-parallel replicas of the dense gradients ``which``
        (indices into ``net.grads``, or row ranges of one); finish it with
        :meth:`dense_update`. With one rank there is nothing to sum: it is complete."""
        if self._dense_comm is None:  # nothing to sum (and nothing to copy back)
            return Pending.ready(None, "dense gradient allreduce")
        grads = [grad_part(self.net.grads, part) for part in which]
        flat = np.concatenate([g.ravel() for g in grads])

        def finish(total: np.ndarray) -> None:
            start = 0
            for g in grads:
                g.ravel()[:] = total[start:start + g.size]
                start += g.size

        return post_allreduce(self._dense_comm, flat, "dense gradient allreduce",
                              finish=finish)

    def dense_update(self, summed: list[Pending[None]]) -> None:
        """Apply the dense optimizer once the replicas' gradients are summed (if any)."""
        for p in summed:
            p.result()
        self.dense_opt.step(self.net.grads)

    def start_dense_update(self) -> None:
        """Begin a dense update applied bucket by bucket (:meth:`dense_update_bucket` for
        every bucket): the same result as :meth:`dense_update`, which is elementwise."""
        self.dense_opt.start_step()

    def dense_update_bucket(self, summed: Pending[None], which: list[GradPart]) -> None:
        """Apply the dense optimizer to the parts ``which`` once ``summed`` (their
        allreduce, from :meth:`post_dense_allreduce`) completed."""
        summed.result()
        for part in which:
            self.dense_opt.update_part(self.net.grads, part)

    def forward_loss_stages(self, fb: FeatureBatch, blocks: list[np.ndarray],
                            global_rows: int | None) -> Generator[
                                None, None, tuple[np.ndarray, float, np.ndarray]]:
        """Scores, loss and d loss / d logits of a batch whose embedding sets looked up
        ``blocks`` (one per set, in :attr:`sets` order), yielding between layers (points
        to poll exchanges)."""
        logits = yield from self.net.forward_stages(fb.dense, *self._net_inputs(blocks))
        loss, dlogits = bce_with_logits(logits, fb.labels)
        if global_rows is not None:
            # a short global batch (a window's last) weighs as its share of a full one: a
            # full step on a few rows can wreck the model (a 3-row last batch of a 256-row
            # batch size raised the held-out logloss from 0.48 to 1.15)
            full = max(global_rows, self.spec.batch_size)
            if full != len(fb):
                dlogits *= np.float32(len(fb) / full)
        return sigmoid(logits).astype(np.float32), loss, dlogits

    def backward_stages(self, dlogits: np.ndarray) -> Generator[
            list[GradPart] | SetGrads | None, None, None]:
        """Backward of the dense network in stages: yields, once, the :class:`SetGrads`
        (one gradient per embedding set, shaped like its looked-up block), and the indices
        of the dense gradients final after each stage (a bucket for the allreduce; every
        mode uses the same buckets, so sums come out identical)."""
        for stage in self.net.backward_stages(dlogits):
            if isinstance(stage, EmbGrads):
                wide = [] if stage.d_wide is None else [stage.d_wide[:, :, None]]
                yield SetGrads([stage.d_emb, *wide])
            else:
                yield stage

    def train_step(self, fb: FeatureBatch, global_rows: int | None = None) -> tuple[
            np.ndarray, float]:
        """Score the batch, then train on it. Returns (probabilities before the update, loss).

        ``global_rows``: rows of the global batch this rank's batch is part of (the loss
        is the global batch's mean, a short global batch weighted as its share of
        ``batch_size`` rows); default: this batch alone, its plain mean.
        """
        return drive(self.step(fb, global_rows))

    def step(self, fb: FeatureBatch, global_rows: int | None = None) -> Stage[
            tuple[np.ndarray, float]]:
        """:meth:`train_step` as one stage: every lookup, the forward and backward, each
        dense bucket's allreduce, the pushes and the updates, one after another."""
        blocks, looked = [], {}
        for si, e in enumerate(self.sets):
            blocks.append(e.new_block(len(fb)))
            for p in e.pipelines:
                looked[si, p] = yield from e.lookup(fb, p, blocks[si])
        probs, loss, dlogits = yield from self.forward_loss_stages(fb, blocks, global_rows)
        summed, grads = [], []
        for stage in self.backward_stages(dlogits):
            if isinstance(stage, SetGrads):
                grads = stage.grads
            elif stage is not None:
                summed.append(self.post_dense_allreduce(stage))
                yield summed[-1]
        for si, (e, d) in enumerate(zip(self.sets, grads, strict=True)):
            for p in e.pipelines:
                yield from e.push(fb, p, looked[si, p], d)
        self.dense_update(summed)
        return probs, loss

    def state(self) -> dict[str, np.ndarray]:
        """Every parameter by name (for saving and for determinism checks)."""
        out = {f"dense/{i}": p for i, p in enumerate(self.net.params)}
        if isinstance(self.emb, LocalEmbeddings):
            names = [n for n, _ in self.spec.sparse_fields]
            out.update({f"emb/{n}": t for n, t in zip(names, self.emb.tables)})
            if self.wide is not None:
                out.update({f"wide/{n}": t for n, t in zip(names, self.wide.tables)})
        return out

    # ---- state (checkpoints, deltas, windows) ----------------------------------------------

    def sparse_state(self, increment: bool = False) -> dict[str, np.ndarray | RowPatch]:
        """This rank's arrays of every embedding set (``emb.<table>.values``, ...; see
        ``recs_core.embedding.storage``); ``increment``: over the last checkpoint."""
        return {k: a for e in self.sets for k, a in e.state_dict(increment).items()}

    def saved(self) -> None:
        """The state was checkpointed: the next increment is over this one."""
        for e in self.sets:
            e.saved()

    def dense_state(self) -> dict[str, np.ndarray]:
        """The network's parameters (``dense.<i>``) and the dense optimizer's state
        (``dense_opt.<key>``, ``/`` made ``.``): the same on every rank."""
        out = {f"dense.{i}": p for i, p in enumerate(self.net.params)}
        out.update({f"dense_opt.{k.replace('/', '.')}": a for k, a in self.dense_opt.state.items()})
        return out

    def load_sparse(self, arrays: dict[str, np.ndarray], touched: bool = False) -> None:
        """Restore every embedding set from this rank's :meth:`sparse_state` (same world
        size and placement); ``touched``: keep the window's touched marks."""
        for e in self.sets:
            e.load_state_dict(arrays, touched)

    def load_sparse_resharded(self, read: ShardRead, old_world: int, old_placement: str,
                              touched: bool = False) -> None:
        """Restore every embedding set from the :meth:`sparse_state` of each rank of another
        world size or placement (``read(old_rank, name)``)."""
        for e in self.sets:
            e.load_resharded(read, old_world, old_placement, touched)

    def load_dense(self, arrays: dict[str, np.ndarray]) -> None:
        """Restore the network and its optimizer from :meth:`dense_state`'s arrays."""
        for name, dst in self.dense_state().items():
            assign(dst, need(arrays, name, ""), name)

    def dense_parameters(self) -> list[np.ndarray]:
        """The network's parameters, in order (views)."""
        return list(self.net.params)

    def changed_rows(self) -> list[tuple[str, int, ChangedRows]]:
        """(table stem, table index, rows) of every delta entry of this rank: the rows this
        window updated, in every embedding set."""
        return [(e.names[t], t, c) for e in self.sets for t, c in e.changed_rows()]

    def apply_delta(self, tables: dict[str, tuple[np.ndarray, np.ndarray]],
                    dense: dict[str, np.ndarray]) -> None:
        """Apply a delta (``recs_core.checkpoint.delta``: table entries by stem, dense
        parameters by index) to this rank's part of the model."""
        known = {n for e in self.sets for n in e.names}
        for name in tables:
            if name.split(".dyn", 1)[0] not in known:
                raise RecsError(f"the delta's table {name!r} is not in the model")
        for e in self.sets:
            e.apply_delta(tables)
        params = self.dense_parameters()
        for k, a in dense.items():
            i = int(k) if k.isdigit() else -1
            if not 0 <= i < len(params):
                raise RecsError(f"the delta's dense parameter {k!r} is not in the model")
            assign(params[i], a, f"dense {k}")

    def finite(self) -> bool:
        """True when every dense parameter and every row this rank's tables changed in
        this window is finite (a NaN or inf can only enter through an update)."""
        return (all(np.isfinite(p).all() for p in self.net.params)
                and all(np.isfinite(c.values).all() for _, _, c in self.changed_rows()))

    def new_window(self) -> None:
        """A new window begins: no row touched in any embedding set."""
        for e in self.sets:
            e.new_window()

    def end_window(self) -> dict[str, list[int]]:
        """End the window of the dynamic tables (eviction); this rank's figures per
        ``<set>/<field>``: [live rows, admitted, evicted, bytes]."""
        names = [n for n, _ in self.spec.sparse_fields]
        return {f"{e.prefix}/{names[t]}": row for e in self.sets
                for t, row in sorted(e.end_window().items())}
