"""A spec's full model: embedding tables + dense network + optimizers, on feature batches."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recs_core.embedding.sparse_optim import make_sparse_optimizer
from recs_core.embedding.table import (
    EmbeddingSet,
    dedup_grads,
    gather_fields,
    gather_pooled,
    pooled_grads,
)
from recs_core.features.graph import FeatureBatch
from recs_core.features.spec import Spec
from recs_core.model.loss import bce_with_logits, sigmoid
from recs_core.model.optim import make_dense_optimizer
from recs_core.model.presets import DLRM, WideDeep
from recs_core.train.config import TrainConfig


@dataclass(frozen=True)
class _Slot:
    """Where one spec output's fields sit in the [n, F, dim] embedding block."""

    pipeline: str
    index: int  # position in FeatureBatch.sparse[pipeline]
    first: int  # first field index
    width: int  # number of fields (1 for a list field)
    pooled: str | None  # "sum" / "mean" for list fields


def _optimizer_kwargs(name: str, cfg: TrainConfig, sparse: bool) -> dict[str, float]:
    if name == "adagrad":
        acc = cfg.sparse_initial_accumulator if sparse else cfg.initial_accumulator
        return {"eps": cfg.eps, "initial_accumulator": acc}
    return {"eps": cfg.eps} if name == "adam" else {}


class Model:
    """Embeddings and the DLRM / Wide&Deep network of a spec, with their optimizers.

    ``train_step`` scores a batch with the current model, then updates on it
    (test-then-train) and returns those scores.
    """

    def __init__(self, spec: Spec, cfg: TrainConfig) -> None:
        self.spec, self.cfg = spec, cfg
        fields = spec.sparse_fields
        self.num_fields = len(fields)
        self.dim = fields[0][1].dim if fields else 1
        rows = [t.rows for _, t in fields]
        self.emb = EmbeddingSet(rows, [t.dim for _, t in fields], cfg.seed)
        self.slots: list[_Slot] = []
        first = 0
        for f in spec.features:
            if f.output != "sparse":
                continue
            pos = sum(1 for g in spec.features[:spec.features.index(f)]
                      if g.output == "sparse" and g.pipeline == f.pipeline)
            pooled = f.table.pooling if f.out_type.kind == "list_id" else None
            self.slots.append(_Slot(f.pipeline, pos, first, len(f.field_names), pooled))
            first += len(f.field_names)
        if cfg.preset == "dlrm":
            self.net = DLRM(spec.dense_width, self.num_fields, self.dim, list(cfg.bottom_mlp),
                            list(cfg.top_mlp), cfg.seed)
            self.wide = None
        else:
            self.net = WideDeep(spec.dense_width, self.num_fields, self.dim,
                                list(cfg.deep_mlp), cfg.seed)
            self.wide = EmbeddingSet(rows, [1] * self.num_fields, cfg.seed + 1)
        kw = _optimizer_kwargs(cfg.optimizer, cfg, sparse=False)
        self.dense_opt = make_dense_optimizer(cfg.optimizer, self.net.params, cfg.lr, **kw)
        skw = _optimizer_kwargs(cfg.sparse_optimizer, cfg, sparse=True)
        self.sparse_opt = make_sparse_optimizer(cfg.sparse_optimizer, cfg.sparse_lr, **skw)
        self.wide_opt = (make_sparse_optimizer(cfg.sparse_optimizer, cfg.sparse_lr, **skw)
                         if self.wide is not None else None)

    # -- lookup -------------------------------------------------------------------------
    def _lookup(self, emb: EmbeddingSet, fb: FeatureBatch, dim: int) -> np.ndarray:
        n = len(fb)
        out = np.empty((n, self.num_fields, dim), dtype=np.float32)
        for s in self.slots:
            o = fb.sparse[s.pipeline][s.index]
            if s.pooled is None:
                gather_fields(emb.tables, o.ids, out, s.first)
            else:
                out[:, s.first, :] = gather_pooled(emb.tables[s.first], o.ids, o.offsets,
                                                   s.pooled == "mean")
        return out

    def forward(self, fb: FeatureBatch) -> np.ndarray:
        """Logits of a batch."""
        z = self._lookup(self.emb, fb, self.dim)
        if self.wide is None:
            return self.net.forward(fb.dense, z)
        w = self._lookup(self.wide, fb, 1)[:, :, 0]
        return self.net.forward(fb.dense, z, w)

    def predict(self, fb: FeatureBatch) -> np.ndarray:
        """Click probabilities of a batch (no update)."""
        return sigmoid(self.forward(fb)).astype(np.float32)

    # -- update -------------------------------------------------------------------------
    def _sparse_update(self, emb: EmbeddingSet, opt, fb: FeatureBatch,  # noqa: ANN001
                       d: np.ndarray) -> None:
        for s in self.slots:
            o = fb.sparse[s.pipeline][s.index]
            if s.pooled is None:
                for j in range(s.width):
                    f = s.first + j
                    ids, g = dedup_grads(o.ids[:, j], np.ascontiguousarray(d[:, f, :]))
                    opt.update(f, emb.tables[f], ids, g)
            else:
                tok = pooled_grads(o.ids, o.offsets, np.ascontiguousarray(d[:, s.first, :]),
                                   s.pooled == "mean")
                ids, g = dedup_grads(o.ids, tok)
                opt.update(s.first, emb.tables[s.first], ids, g)

    def train_step(self, fb: FeatureBatch) -> tuple[np.ndarray, float]:
        """Score the batch, then train on it. Returns (probabilities before the update, loss)."""
        logits = self.forward(fb)
        loss, dlogits = bce_with_logits(logits, fb.labels)
        if self.wide is None:
            d_emb = self.net.backward(dlogits)
        else:
            d_emb, d_wide = self.net.backward(dlogits)
            self._sparse_update(self.wide, self.wide_opt, fb, d_wide[:, :, None])
        self.dense_opt.step(self.net.grads)
        self._sparse_update(self.emb, self.sparse_opt, fb, d_emb)
        return sigmoid(logits).astype(np.float32), loss

    def state(self) -> dict[str, np.ndarray]:
        """Every parameter by name (for saving and for determinism checks)."""
        out = {f"dense/{i}": p for i, p in enumerate(self.net.params)}
        out.update({f"emb/{n}": t for (n, _), t in zip(self.spec.sparse_fields, self.emb.tables)})
        if self.wide is not None:
            out.update({f"wide/{n}": t for (n, _), t in
                        zip(self.spec.sparse_fields, self.wide.tables)})
        return out
