"""Baseline per-sample scores from one training run: loss, margin, EL2N, GraNd, forgetting events.

Glossary: **n** training samples, **k** classes, **p** parameters, **E** epochs. Every score
is taken against the label the model was trained on (the possibly noisy one).

Scores
------
``loss``
    Final cross-entropy ``-log softmax(f(x_i))[y_i]`` after the last epoch (eval mode).
``margin``
    Final ``f(x_i)[y_i] - max_{j != y_i} f(x_i)[j]`` on the logits (eval mode). Negative
    means misclassified; low values are suspicious.
``el2n``
    ``|| softmax(f_t(x_i)) - e_{y_i} ||_2`` at epoch ``t = el2n_epoch`` (0 = at init), eval
    mode (Paul et al. 2021, "Deep Learning on a Data Diet"). The paper averages over several
    initialisations; this is one run, seeded.
``grand``
    ``|| d CE(f_t(x_i), y_i) / d theta ||_2`` over all trainable parameters at the same epoch
    (the GraNd score of Paul et al. 2021, one run). Per-sample gradients come from
    ``torch.func.vmap(grad(...))`` with ``functional_call``, batch-norm buffers in eval mode
    (running statistics, no update) and dropout off.
``forgetting_events``
    Toneva et al. 2019. Convention: after every epoch e = 1..E the whole training set is
    predicted in eval mode; a forgetting event is a transition correct (epoch e-1) ->
    incorrect (epoch e), for e = 2..E. The state at init (epoch 0) is not counted, so the
    random guesses of an untrained model do not count as learned. Samples never predicted
    correctly count 0 events here and are flagged by ``TrainingDynamicsResult.never_learned``
    (the ``never_learned`` column of the job's table). Ranking rule (Toneva et al. rank
    never-learned samples as infinitely forgettable): never-learned samples first, then by
    ``forgetting_events``; :func:`forgetting_rank` gives the score that ranks so. The paper evaluates each sample when its
    mini-batch is presented, in train mode; end-of-epoch evaluation is deterministic and
    independent of the batch order.

Larger ``loss``, ``el2n``, ``grand`` and ``forgetting_events`` and smaller ``margin`` point
to hard or mislabeled samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from .errors import invalid
from .progress import ProgressFn, StopFn, check_stop
from .training import OPTIMIZERS, accuracy, predict_logits, train_classifier

if TYPE_CHECKING:
    import pandas as pd

SCORE_NAMES: tuple[str, ...] = ("loss", "margin", "el2n", "grand", "forgetting_events")
# Per-sample gradients held at once: 256 MiB of them by default, whatever p.
DEFAULT_GRAD_BYTES = 256 * 2**20
MAX_GRAD_BATCH = 1024


@dataclass
class TrainingDynamicsResult:
    """Per-sample scores of one training run and the model's accuracies.

    scores: name (``SCORE_NAMES``) -> (n,) numpy array; float64 except
    ``forgetting_events`` (int64). never_learned: (n,) bool, never predicted correctly at
    the end of any epoch. train_accuracy / test_accuracy: final, eval mode, on the
    (noisy) training labels / the test set (NaN when there is no test set).
    train_loss_curve: (E,) mean training loss per epoch, as seen during training.

    The dataset-level call :func:`infoscore.training_dynamics` also fills ``settings`` (the
    config, ``model`` spec, ``n_train``, ``n_test``), ``seconds`` (wall time of model
    build, training and scoring) and ``noisy_mask`` (the dataset's record of flipped
    labels, None when unknown), which :meth:`summary` reports.
    """

    scores: dict[str, np.ndarray]
    never_learned: np.ndarray
    train_accuracy: float
    test_accuracy: float
    epochs: int
    train_loss_curve: list[float] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    seconds: float = math.nan
    noisy_mask: np.ndarray | None = None

    def table(self) -> pd.DataFrame:
        """The job's per-sample table: the ``SCORE_NAMES`` columns, then ``never_learned``.

        forgetting_events counts 0 for a row never learned; never_learned tells those rows
        apart (ranking rule: never-learned first, see :func:`forgetting_rank`)."""
        import pandas as pd

        table = pd.DataFrame({name: self.scores[name] for name in SCORE_NAMES})
        table["never_learned"] = np.asarray(self.never_learned, dtype=bool)
        return table

    def auroc_noisy(self) -> dict[str, float] | None:
        """score -> AUROC for flagging the flipped labels (each score oriented by
        :func:`suspicion_scores`), or None unless ``noisy_mask`` is known and has both
        flipped and clean rows."""
        mask = self.noisy_mask
        if mask is None or not 0 < int(np.sum(mask)) < mask.shape[0]:
            return None
        oriented = suspicion_scores(self)
        return {name: auroc(oriented[name], mask) for name in SCORE_NAMES}

    def summary(self) -> dict[str, Any]:
        """The job's summary: ``train_accuracy``, ``test_accuracy`` (None without a test
        set), ``epochs``, ``seconds``, ``settings`` and, when the labels' noise is known,
        ``auroc_noisy`` (docs/jobs/training-dynamics.md)."""
        summary: dict[str, Any] = {
            "train_accuracy": self.train_accuracy,
            "test_accuracy": None if math.isnan(self.test_accuracy) else self.test_accuracy,
            "epochs": self.epochs,
            "seconds": self.seconds,
            "settings": dict(self.settings),
        }
        aurocs = self.auroc_noisy()
        if aurocs is not None:
            summary["auroc_noisy"] = aurocs
        return summary

    def figures(self) -> dict[str, bytes]:
        """PNG files of the job: none (the job page draws its charts from the table)."""
        return {}


def loss_and_margin(logits: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """logits (n, k), y (n,) -> (cross-entropy (n,), margin (n,)).

    margin = logit of the label minus the largest other logit (needs k >= 2).
    """
    loss = nn.functional.cross_entropy(logits, y, reduction="none")
    label_logit = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.scatter(1, y[:, None], float("-inf"))
    return loss, label_logit - others.max(1).values


def el2n_scores(logits: Tensor, y: Tensor) -> Tensor:
    """logits (n, k), y (n,) -> (n,) ``|| softmax(logits) - onehot(y) ||_2``."""
    probs = torch.softmax(logits, dim=1)
    onehot = nn.functional.one_hot(y, probs.shape[1]).to(probs.dtype)
    return torch.linalg.vector_norm(probs - onehot, dim=1)


def count_forgetting_events(correct: Tensor | np.ndarray) -> np.ndarray:
    """correct (E, n) bool, one row per evaluation in time order -> (n,) int64.

    Counts transitions correct (row e-1) -> incorrect (row e).
    """
    c = np.asarray(correct.cpu() if isinstance(correct, Tensor) else correct, dtype=bool)
    if c.ndim != 2:
        raise invalid("correct", "count_forgetting_events", "a 2-d (E, n) boolean array", c.shape)
    if c.shape[0] < 2:
        return np.zeros(c.shape[1], dtype=np.int64)
    return (c[:-1] & ~c[1:]).sum(axis=0).astype(np.int64)


def _grad_batch_size(n_params: int, element_size: int, max_bytes: int) -> int:
    return max(1, min(MAX_GRAD_BATCH, max_bytes // max(1, n_params * element_size)))


def grand_scores(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    max_bytes: int = DEFAULT_GRAD_BYTES,
    should_stop: StopFn | None = None,
) -> Tensor:
    """x (n, ...), y (n,) -> (n,) norm of each sample's cross-entropy gradient.

    The gradient is taken w.r.t. every parameter with ``requires_grad``, in eval mode
    (batch-norm running statistics, dropout off); the model's mode is restored. Samples are
    processed in batches that keep about ``max_bytes`` of per-sample gradients at once.
    """
    params = {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}
    buffers = {name: b.detach() for name, b in model.named_buffers()}
    n_params = sum(p.numel() for p in params.values())
    n = x.shape[0]
    if n == 0 or n_params == 0:
        return torch.zeros(n, dtype=x.dtype, device=x.device)
    element_size = next(iter(params.values())).element_size()

    def sample_loss(p: dict[str, Tensor], xi: Tensor, yi: Tensor) -> Tensor:
        logits = functional_call(model, (p, buffers), (xi.unsqueeze(0),))
        return nn.functional.cross_entropy(logits, yi.unsqueeze(0))

    per_sample_grads = vmap(grad(sample_loss), in_dims=(None, 0, 0))
    batch = _grad_batch_size(n_params, element_size, max_bytes)
    was_training = model.training
    model.eval()
    try:
        norms = []
        for start in range(0, n, batch):
            check_stop(should_stop)
            grads = per_sample_grads(params, x[start : start + batch], y[start : start + batch])
            squared = sum(g.reshape(g.shape[0], -1).pow(2).sum(1) for g in grads.values())
            norms.append(torch.as_tensor(squared).sqrt())
    finally:
        model.train(was_training)
    return torch.cat(norms)


def _check_inputs(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    x_test: Tensor | None,
    y_test: Tensor | None,
    epochs: int,
    el2n_epoch: int,
    optimizer: str,
) -> None:
    caller = "training_dynamics"
    if x.ndim < 2 or x.shape[0] < 1:
        raise invalid("x", caller, "a tensor of shape (n, ...) with n >= 1", tuple(x.shape))
    if y.shape != (x.shape[0],) or y.dtype != torch.int64:
        raise invalid("y", caller, f"an int64 tensor of shape ({x.shape[0]},)", f"{y.dtype} {tuple(y.shape)}")
    if (x_test is None) != (y_test is None):
        raise invalid("y_test", caller, "given together with x_test", "only one of them")
    if x_test is not None and y_test is not None and y_test.shape != (x_test.shape[0],):
        raise invalid("y_test", caller, f"a tensor of shape ({x_test.shape[0]},)", tuple(y_test.shape))
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise invalid("epochs", caller, "an integer >= 1", epochs)
    if isinstance(el2n_epoch, bool) or not isinstance(el2n_epoch, int) or not 0 <= el2n_epoch <= epochs:
        raise invalid("el2n_epoch", caller, f"an integer in [0, epochs={epochs}]", el2n_epoch)
    if optimizer not in OPTIMIZERS:
        raise invalid("optimizer", caller, f"one of {list(OPTIMIZERS)}", optimizer)
    k = predict_logits(model, x[:1]).shape[1]
    if k < 2:
        raise invalid("model", caller, "a classifier with at least 2 outputs", f"{k} output")
    if int(y.min()) < 0 or int(y.max()) >= k:
        raise invalid("y", caller, f"labels in 0..{k - 1}", f"range {int(y.min())}..{int(y.max())}")


def training_dynamics(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    x_test: Tensor | None = None,
    y_test: Tensor | None = None,
    *,
    epochs: int,
    el2n_epoch: int,
    batch_size: int = 64,
    lr: float = 1e-3,
    optimizer: str = "adam",
    weight_decay: float = 0.0,
    seed: int = 0,
    max_grad_bytes: int = DEFAULT_GRAD_BYTES,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> TrainingDynamicsResult:
    """Train ``model`` in place with cross-entropy and score every training sample.

    x (n, ...), y (n,) int64 and the optional clean test set x_test (m, ...), y_test (m,)
    live on the model's device, in its dtype. ``seed`` draws the mini-batch order (the
    initialisation is the model's). ``el2n`` and ``grand`` are taken after epoch
    ``el2n_epoch`` (0 = before training), ``loss`` and ``margin`` after the last one.
    ``progress(epoch, epochs)`` runs after each epoch; ``should_stop()`` is checked before
    each epoch and each gradient batch and raises ``Cancelled``.
    """
    _check_inputs(model, x, y, x_test, y_test, epochs, el2n_epoch, optimizer)
    correct_per_epoch: list[Tensor] = []
    at_el2n_epoch: dict[str, Tensor] = {}

    def on_epoch(epoch: int, trained: nn.Module) -> None:
        logits = predict_logits(trained, x)
        if epoch >= 1:
            correct_per_epoch.append(logits.argmax(1) == y)  # stays on the device until the end
        if epoch == el2n_epoch:
            at_el2n_epoch["el2n"] = el2n_scores(logits, y)
            at_el2n_epoch["grand"] = grand_scores(
                trained, x, y, max_bytes=max_grad_bytes, should_stop=should_stop
            )

    run = train_classifier(
        model,
        x,
        y,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        optimizer=optimizer,
        weight_decay=weight_decay,
        seed=seed,
        on_epoch=on_epoch,
        progress=progress,
        should_stop=should_stop,
    )
    final_logits = predict_logits(model, x)
    loss, margin = loss_and_margin(final_logits, y)
    correct = torch.stack(correct_per_epoch).cpu()  # (E, n): one transfer, after training

    def to_numpy(t: Tensor) -> np.ndarray:
        return t.detach().cpu().to(torch.float64).numpy()

    scores = {
        "loss": to_numpy(loss),
        "margin": to_numpy(margin),
        "el2n": to_numpy(at_el2n_epoch["el2n"]),
        "grand": to_numpy(at_el2n_epoch["grand"]),
        "forgetting_events": count_forgetting_events(correct),
    }
    test_accuracy = math.nan
    if x_test is not None and y_test is not None and y_test.numel() > 0:
        test_accuracy = accuracy(model, x_test, y_test)
    return TrainingDynamicsResult(
        scores=scores,
        never_learned=(~correct.any(0)).numpy(),
        train_accuracy=float(correct[-1].float().mean()),
        test_accuracy=test_accuracy,
        epochs=epochs,
        train_loss_curve=list(run.train_loss),
    )


def forgetting_rank(forgetting_events: np.ndarray, never_learned: np.ndarray, epochs: int) -> np.ndarray:
    """(n,) counts and (n,) bool -> (n,) float64: larger = more forgettable.

    A never-learned sample scores ``epochs``, more than any count can reach (an event needs a
    correct epoch before it, so at most epochs // 2 events). Use it to rank a job's table:
    the summary's ``auroc_noisy.forgetting_events`` is computed from it.
    """
    return np.where(
        np.asarray(never_learned, dtype=bool), float(epochs), np.asarray(forgetting_events, dtype=np.float64)
    )


def suspicion_scores(result: TrainingDynamicsResult) -> dict[str, np.ndarray]:
    """Each score oriented so that larger = more likely hard or mislabeled: name -> (n,) float64.

    ``margin`` is negated. ``forgetting_events`` ranks never-learned samples above every
    forgotten one, as Toneva et al. do (their count is set to ``epochs``, more than any
    sample can reach: a forgetting event needs a correct epoch before it).
    """
    s = result.scores
    forgetting = forgetting_rank(s["forgetting_events"], result.never_learned, result.epochs)
    return {
        "loss": s["loss"],
        "margin": -s["margin"],
        "el2n": s["el2n"],
        "grand": s["grand"],
        "forgetting_events": forgetting,
    }


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """values (n,) -> (n,) 1-based ranks, tied values get the mean of their ranks."""
    n = values.shape[0]
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    starts_group = np.r_[True, sorted_values[1:] != sorted_values[:-1]]
    group = np.cumsum(starts_group) - 1
    starts = np.flatnonzero(starts_group)
    ends = np.r_[starts[1:], n]  # exclusive: the group holds sorted positions starts..ends-1
    ranks = np.empty(n, dtype=np.float64)
    ranks[order] = ((starts + 1 + ends) / 2.0)[group]
    return ranks


def auroc(scores: np.ndarray, positives: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` (n,) for flagging ``positives`` (n,) bool.

    Rank-based (Mann-Whitney U), ties count one half: equals
    P(score of a random positive > score of a random negative) + P(equal) / 2.
    """
    caller = "auroc"
    s = np.asarray(scores, dtype=np.float64)
    pos = np.asarray(positives)
    if s.ndim != 1:
        raise invalid("scores", caller, "a 1-d array", s.shape)
    if pos.shape != s.shape:
        raise invalid("positives", caller, f"an array of shape {s.shape}", pos.shape)
    if pos.dtype != bool:
        if pos.size and not np.isin(pos, (0, 1)).all():
            raise invalid("positives", caller, "a boolean (or 0/1) array", "other values")
        pos = pos.astype(bool)
    if not np.all(np.isfinite(s)):
        raise invalid("scores", caller, "finite values (no NaN or inf)", "non-finite values")
    n_pos = int(pos.sum())
    n_neg = int(pos.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        raise invalid(
            "positives", caller, "at least one positive and one negative", f"{n_pos} positives of {pos.size}"
        )
    rank_sum = float(_average_ranks(s)[pos].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)
