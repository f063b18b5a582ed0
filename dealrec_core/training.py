"""The one early-stopping loop: train an epoch, validate, keep the best weights, stop on patience, an
epoch cap, a time budget or the trainer's own reason; end holding the best weights.

The loop owns the schedule and nothing else. What an epoch does (batches, optimizer, randomness),
how a validation scores, and how weights are copied stay with each model (``surrogates/train.py``,
``finetune/tiger_train.py``, ``finetune/bigrec.py``), passed in as functions and called in a fixed
order, so a model trained through the loop draws its random numbers and validates at the same points
as it would in a loop of its own:

    for epoch in 1 .. max_epochs:
        stop = train_epoch(epoch)                  # None, or a reason to stop after this epoch
        spent = out_of_time()                      # the budget, read once the epoch's training ends
        validate when epoch % validate_every == 0, at max_epochs, when spent, or when stop
        score = validate(epoch); improved -> snapshot(); report(epoch, score, improved)
        stop: stop > "patience" (patience validations in a row without a better score) >
              "time_budget" (spent, or read again after the validation with budget_counts_validation)
    restore(best snapshot); reason "max_epochs" when the cap ended it

With ``keep`` > 1 the loop also snapshots every validated epoch, and hands back (``EarlyStop.kept``) the
snapshots of the ``keep - 1`` validated epochs just before the best one, oldest first: the end of the
trajectory that led to the best weights (the surrogate's influence is averaged over them,
docs/selection.md). At most ``2 keep - 1`` snapshots are held at any time.

A score is better when strictly higher (``higher_is_better``) or strictly lower; a NaN score is never
better. A time budget makes the result depend on the machine's speed: callers say so where they
report it.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

MAX_EPOCHS, PATIENCE, TIME_BUDGET = "max_epochs", "patience", "time_budget"


@dataclass
class EarlyStop:
    """How a loop ended."""

    epochs: int        # epochs trained (the last epoch's number)
    best_epoch: int    # the epoch whose weights the model ends with (0: no validation scored better than none)
    best_score: float  # its validation score (-inf or inf when there is none)
    reason: str        # MAX_EPOCHS, PATIENCE, TIME_BUDGET, or the reason train_epoch returned
    validations: int   # validations run
    kept: list = field(default_factory=list)   # [(epoch, snapshot)] of the validated epochs before the best


def train_with_early_stopping(train_epoch: Callable[[int], str | None], validate: Callable[[int], float], *,
                              max_epochs: int, patience: int, snapshot: Callable[[], Any],
                              restore: Callable[[Any], None], higher_is_better: bool = True,
                              validate_every: int = 1, out_of_time: Callable[[], bool] | None = None,
                              budget_counts_validation: bool = False,
                              report: Callable[[int, float, bool], None] | None = None,
                              keep: int = 1) -> EarlyStop:
    """Run the loop of this module's docstring; the model ends with the best validation's weights.

    ``train_epoch(epoch)`` trains one epoch (numbered from 1) and returns ``None`` or a reason to stop
    after this epoch's validation (a step cap). ``validate(epoch)`` returns the score early stopping
    watches. ``snapshot()`` copies the weights to keep, ``restore(copy)`` puts them back.
    ``out_of_time()`` says whether the time budget is spent: it is read once after each epoch's
    training (a spent budget forces a validation, then stops); with ``budget_counts_validation`` it
    is read again after the validation, so the validation's time counts too. ``report(epoch, score,
    improved)`` is called after each validation, for the caller's history and progress lines.
    ``keep``: see the module's docstring (1: only the best snapshot, as before).
    """
    if keep < 1:
        raise ValueError(f"keep must be at least 1 (got {keep})")
    best_score = -math.inf if higher_is_better else math.inf
    best_state, best_epoch, stale, validations = None, 0, 0, 0
    epoch, reason = 0, MAX_EPOCHS
    recent: deque = deque(maxlen=keep - 1)   # (epoch, snapshot) of the validated epochs before this one
    kept: list = []
    for epoch in range(1, max_epochs + 1):
        stop = train_epoch(epoch)
        spent = out_of_time is not None and out_of_time()
        if epoch % validate_every and epoch != max_epochs and not spent and stop is None:
            continue
        score = validate(epoch)
        validations += 1
        improved = score > best_score if higher_is_better else score < best_score
        state = snapshot() if improved or keep > 1 else None
        if improved:
            best_score, best_epoch, stale = score, epoch, 0
            best_state = state
            kept = list(recent)
        else:
            stale += 1
        if keep > 1:
            recent.append((epoch, state))
        if report is not None:
            report(epoch, score, improved)
        if stop is not None:
            reason = stop
            break
        if stale >= patience:
            reason = PATIENCE
            break
        if budget_counts_validation and out_of_time is not None:
            spent = out_of_time()
        if spent:
            reason = TIME_BUDGET
            break
    if best_state is not None:
        restore(best_state)
    return EarlyStop(epochs=epoch, best_epoch=best_epoch, best_score=best_score, reason=reason,
                     validations=validations, kept=kept)
