"""Runner of the ``training-dynamics`` job kind: one training run, baseline per-sample scores."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pandas as pd
import torch

from contracts.training_dynamics import KIND, SCORE_COLUMNS, TABLE_COLUMNS
from infoscore.models import build_model
from infoscore.scores import auroc, suspicion_scores, training_dynamics
from infoscore.training import as_tensor

from .base import JobContext, JobOutput, Runner


class TrainingDynamicsRunner(Runner):
    """Trains the job's model on the dataset and returns loss, margin, el2n, grand,
    forgetting_events and never_learned.

    summary: ``train_accuracy`` (final, on the trained-on labels), ``test_accuracy`` (None
    without a test set), ``epochs``, ``seconds``, ``settings``; and ``auroc_noisy`` (score ->
    AUROC for flagging the flipped labels, margin negated) when the dataset knows which
    labels were flipped and some were.
    """

    kind = KIND

    def run(self, ctx: JobContext) -> JobOutput:
        started = time.perf_counter()
        params = ctx.params
        ds = ctx.dataset
        model = build_model(ctx.model_spec, ds.input_shape, ds.n_classes, seed=ctx.seed).to(ctx.device)
        dtype = next(model.parameters()).dtype
        has_test = ds.n_test > 0
        result = training_dynamics(
            model,
            as_tensor(ds.x_train, ctx.device, dtype),
            as_tensor(ds.y_train, ctx.device, torch.int64),
            as_tensor(ds.x_test, ctx.device, dtype) if has_test else None,
            as_tensor(ds.y_test, ctx.device, torch.int64) if has_test else None,
            epochs=params.epochs,
            el2n_epoch=params.el2n_epoch,
            batch_size=params.batch_size,
            lr=params.lr,
            optimizer=params.optimizer,
            weight_decay=params.weight_decay,
            seed=ctx.seed,
            progress=ctx.progress,
            should_stop=ctx.should_stop,
        )
        scores = pd.DataFrame({name: result.scores[name] for name in SCORE_COLUMNS})
        # forgetting_events counts 0 for a row never learned; never_learned tells those rows
        # apart, and the ranking rule (never-learned first) is the summary's (see suspicion_scores).
        scores["never_learned"] = np.asarray(result.never_learned, dtype=bool)
        assert tuple(scores.columns) == TABLE_COLUMNS
        summary: dict[str, Any] = {
            "train_accuracy": result.train_accuracy,
            "test_accuracy": result.test_accuracy if has_test else None,
            "epochs": result.epochs,
            "seconds": time.perf_counter() - started,
            "settings": {
                **params.model_dump(),
                "seed": ctx.seed,
                "model": ctx.model_spec,
                "n_train": ds.n_train,
                "n_test": ds.n_test,
            },
        }
        mask = ds.noisy_mask
        if mask is not None and 0 < int(np.sum(mask)) < mask.shape[0]:
            oriented = suspicion_scores(result)
            summary["auroc_noisy"] = {name: auroc(oriented[name], mask) for name in SCORE_COLUMNS}
        return JobOutput(summary=summary, scores=scores)
