"""The surrogate trainer's settings and their defaults, written once (``dealrec train-surrogate``'s
options, ``dealrec prune`` and ``dealrec compare`` read them from here).

Kept apart from ``surrogates/train.py`` so that a command can read a default without importing torch.
"""
from __future__ import annotations

from dataclasses import dataclass

from dealrec_core.errors import DealrecError

WEIGHTINGS = ("position", "sample")
# how an epoch's samples are cut into batches (surrogates/train.py, epoch_batches): "random", consecutive
# slices of a permutation; "bucketed", samples of similar length together, so a batch pads little
BATCHINGS = ("random", "bucketed")
BUCKET_POOL_BATCHES = 64   # bucketed: a permutation's slices of this many batches are sorted by length
DEFAULT_MODEL = "sasrec"   # the surrogate that train-surrogate, prune and compare train when none is named
# Kept weights of the validated epochs before the best: two, so that 'dealrec score' (default
# --influence-checkpoints 3 --checkpoint-mean weights) takes the influence at the mean weights of the last three
# validated epochs; prune and compare train their surrogate keeping as many as their scoring asks. Chosen on held-out
# validation over three surrogate draws (docs/selection.md, "The influence at the last epochs' mean weights").
DEFAULT_CHECKPOINTS = 3
# Early stopping's patience, when none is given, counts updates, not passes: an epoch of a small log holds few
# optimizer steps, and its validation split is small and noisy, so three epochs of it are little learning and a
# plateau there is often noise (PC, a 16,720-sample cut of Games, stopped at epoch 2 of a curve that went on
# rising to epoch 28). The default waits PATIENCE_UPDATES updates' worth of epochs, at least PATIENCE_FLOOR (the
# fixed default before, which every log of 42,625 samples or more at batch 128 keeps: Games does) and at most
# PATIENCE_CEILING (a tiny log's epochs are a handful of steps; max_epochs bounds the rest). More patience never
# keeps a surrogate with a lower validation NDCG@10: the best epoch so far is what is kept.
# docs/surrogates.md, "Patience in updates".
PATIENCE_FLOOR = 3
PATIENCE_CEILING = 10
PATIENCE_UPDATES = 1000


def auto_patience(n_samples: int, batch_size: int) -> int:
    """The default patience (epochs) for ``n_samples`` training samples in batches of ``batch_size``."""
    batches = max(1, -(-int(n_samples) // int(batch_size)))
    return max(PATIENCE_FLOOR, min(PATIENCE_CEILING, -(-PATIENCE_UPDATES // batches)))


def floor_patience_samples(batch_size: int) -> int:
    """The fewest samples whose default patience is PATIENCE_FLOOR (42,625 at batch 128)."""
    return (-(-PATIENCE_UPDATES // PATIENCE_FLOOR) - 1) * batch_size + 1


@dataclass
class TrainConfig:
    lr: float = 2e-3
    weight_decay: float = 0.0
    batch_size: int = 128
    max_epochs: int = 100
    patience: int | None = None       # epochs without a better validation NDCG@10 before stopping; None (auto):
    #                                   auto_patience of the log's size (3 on logs of 42,625 samples or more)
    seed: int = 0
    weighting: str = "position"       # "position": every predicted item weighs the same; "sample": every sample
    batching: str | None = None       # "random" or "bucketed" (BATCHINGS), the same risk either way; None: the
    #                                   model's default_batching (bucketed for SASRec)
    ce_chunk: int | None = None       # a full-softmax loss by blocks of this many items (surrogates/softmax.py); 0: one
    #                                   product; None (auto): default_ce_chunk, blocks on the CPU for SASRec
    max_minutes: float | None = None  # wall-clock budget; checked after each epoch
    threads: int | None = None        # torch intra-op threads; default DEFAULT_THREADS, whatever the machine
    eval_batch_size: int = 1024
    progress: bool = True
    device: str = "auto"              # auto: a CUDA GPU when torch sees one, else the CPU (the weights differ)
    checkpoints: int = DEFAULT_CHECKPOINTS   # validated epochs ending at the best whose weights are kept: the
    #                                   best's as the model, the ones before it in checkpoints/ (whose mean
    #                                   weights the stationary influence is taken at; 1: the best alone)

    def __post_init__(self):
        if self.weighting not in WEIGHTINGS:
            raise DealrecError(f"unknown weighting {self.weighting!r} (choose from {', '.join(WEIGHTINGS)})")
        if self.batching is not None and self.batching not in BATCHINGS:
            raise DealrecError(f"unknown batching {self.batching!r} (choose from {', '.join(BATCHINGS)})")
        if self.ce_chunk is not None and self.ce_chunk < 0:
            raise DealrecError(f"ce_chunk must be 0 (one product) or a number of items, got {self.ce_chunk}")
        if self.batch_size < 1 or self.max_epochs < 1 or self.checkpoints < 1 or \
                (self.patience is not None and self.patience < 1):
            raise DealrecError("batch_size, max_epochs, patience and checkpoints must be at least 1")
        if not self.lr > 0:
            raise DealrecError("lr must be positive")


# A fixed default, not the machine's core count: a float sum over another number of threads adds in
# another order, so the trained weights (and the coreset after them) would depend on the machine
# (measured: 1 and 2 threads give different SASRec bytes). 2 because every machine has two cores and
# the reference numbers in the docs were trained so; --threads trades this for speed, and metrics.json
# records the count.
DEFAULT_THREADS = 2
