"""Params of the ``label-issues`` job kind and of ``POST /v1/datasets:derive``
(docs/jobs/label-issues.md)."""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import Field

from .common import Strict

Kind = Literal["label-issues"]  # the kind's one spelling; contracts.jobs builds on it
KIND: str = get_args(Kind)[0]
# Mirror infoscore.label_issues.Method / Threshold (a test checks that they match).
Method = Literal["cross-entropy-cv", "limit", "limit-cv", "ensemble"]
ThresholdPolicy = Literal["prune-by-noise-rate", "confident-joint", "both", "argmax"]
QDist = Literal["laplace", "gaussian"]
Apply = Literal["drop", "relabel", "drop-and-relabel"]
Action = Literal["keep", "drop", "relabel"]

# Per-sample columns of the job's scores table after index/id (docs/jobs/label-issues.md).
SCORE_COLUMNS = (
    "given_label",
    "suggested_label",
    "suggested_label_confidence",
    "label_quality",
    "is_label_issue",
    "issue_rank",
)
DECISION_COLUMNS = ("index", "id", "action", "new_label")
DECISIONS_ARTIFACT = "decisions.csv"
# A built-in source is materialized here so a derived dataset can be stored from it.
SOURCE_ARTIFACT = "source.npz"


class LabelIssuesParams(Strict):
    method: Method = Field(
        default="limit",
        description="how out-of-sample-like class probabilities are obtained (default and why: "
        "docs/jobs/label-issues.md)",
    )
    folds: int = Field(default=5, ge=2, le=50, description="K of the cross-fitted methods")
    threshold: ThresholdPolicy = Field(
        default="prune-by-noise-rate", description="which rows are flagged (confident learning)"
    )
    epochs: int | None = Field(
        default=None, ge=1, le=5000, description="epochs of every model; null = the method's default"
    )
    lr: float = Field(default=1e-3, gt=0.0, le=10.0, description="Adam learning rate")
    batch_size: int = Field(default=128, ge=1, le=65_536)
    weight_decay: float = Field(default=0.0, ge=0.0, le=10.0)
    beta: float = Field(default=30.0, ge=0.0, le=1e6, description="LIMIT's beta (limit methods)")
    q_dist: QDist = Field(default="laplace", description="LIMIT's q law (limit methods)")
    relabel_confidence: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="a flagged row is relabelled when p(suggested) reaches this, else dropped; "
        "null = the suggested class's confident-learning threshold",
    )


class DeriveRequest(Strict):
    """``POST /v1/datasets:derive``: apply a succeeded label-issues job's decisions."""

    job: str = Field(pattern=r"^job_[0-9a-zA-Z_-]{1,60}$", description="a succeeded label-issues job")
    apply: Apply = Field(
        default="drop-and-relabel",
        description="drop: remove every flagged row; relabel: give every flagged row its suggested "
        "label; drop-and-relabel: follow decisions.csv (relabel rows relabelled, drop rows removed)",
    )
