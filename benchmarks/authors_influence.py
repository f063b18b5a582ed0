"""The authors' own influence code (github.com/Linxyhaha/DEALRec, ``code/prune/influence_score.py``), timed.

Used by ``bench_influence.py --authors DIR``, where ``DIR`` is a checkout of that repository (it ships its
Games data under ``data/games``); nothing of it is copied here. What runs is theirs, called as their
``prune.py`` calls it:

1. ``v``: ``cal_grad_batch_z`` on every batch of their training loader (their batch size, 500), averaged;
2. ``H^-1 v``: ``estimate_hv``, LiSSA with their recursion depth (5,000 one-sample HVPs by default);
3. the influence of each sample: ``cal_grad_z(idx, trainer)`` (their ``FineTrainer.get_sample_loss``: the
   sample padded to 50 positions, BCE against one fresh random negative a position) dotted with ``H^-1 v``.

Steps 1 and 3 are timed on all samples and on a seeded subset (extrapolated linearly) respectively; step 2
with ``recursion_depth`` steps (extrapolated to their 5,000 when fewer are asked).

Two things are not as their repository has them, and the benchmark says so: the published ``FineTrainer``
never sets the ``train_dataset`` that ``get_sample_loss`` indexes (an ``AttributeError`` as published), so it
is set to their training ``SeqDataset``; and ``ipdb`` (imported by their modules, used only in a
``set_trace`` on a malformed sample) is replaced by an empty module when it is not installed.

Their model is their own ``SASRecModel`` at the paper's settings (hidden 64, 2 layers, 2 heads, 50
positions, a 64-wide Conv1d feed-forward), freshly initialised: dealrec's SASRec is not the same network
(its feed-forward is 256 wide, its layer norms sit elsewhere), so no dealrec checkpoint loads into it, and
their timings do not depend on the weights' values.
"""
from __future__ import annotations

import contextlib
import importlib.util
import random
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch

BLOCK = "item_encoder.layer.1.attention.dense.weight"   # the block their code hard-codes


@contextlib.contextmanager
def _their_code(root: Path, cuda: bool = False):
    code = root / "code" / "prune"
    if not (code / "influence_score.py").exists():
        raise SystemExit(f"{root}: not a checkout of github.com/Linxyhaha/DEALRec (no code/prune/influence_score.py)")
    added_ipdb = "ipdb" not in sys.modules and importlib.util.find_spec("ipdb") is None
    if added_ipdb:
        sys.modules["ipdb"] = types.ModuleType("ipdb")
    sys.path.insert(0, str(code))
    argv = sys.argv
    sys.argv = [str(code / "prune.py"), *(() if cuda else ("--no_cuda",)), "--data_dir", str(root / "data") + "/",
                "--data_name", "games"]
    try:
        yield
    finally:
        sys.argv = argv
        sys.path.remove(str(code))
        if added_ipdb:
            sys.modules.pop("ipdb", None)


def run(root: str | Path, loop_samples: int = 300, recursion_depth: int = 5000, seed: int = 0,
        cuda: bool = False) -> dict:
    """Their three steps' times (seconds) on their Games data; see the module docstring. ``cuda``: their code
    on the GPU, as it runs by default where one is (their ``FineTrainer`` moves the model and every batch)."""
    root = Path(root)

    def clock() -> float:
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    with _their_code(root, cuda):
        import influence_score as their
        from datasets_util import SeqDataset
        from models import SASRecModel
        from torch.utils.data import DataLoader, SequentialSampler
        from trainers import FineTrainer
        from utils import get_args, get_statistics, get_user_seqs_npy, set_seed

        args = get_args()
        set_seed(seed)
        args.cuda_condition = cuda
        data = f"{args.data_dir}{args.data_name}"
        max_item, _, _ = get_statistics(data)
        args.item_size = max_item + 1
        user_seq = get_user_seqs_npy(data + "/training_dict.npy")
        train = SeqDataset(args, user_seq, data_type="train")
        loader = DataLoader(train, sampler=SequentialSampler(train), batch_size=args.batch_size)
        trainer = FineTrainer(SASRecModel(args), loader, loader, loader, args)
        trainer.train_dataset = train   # their get_sample_loss reads it; their code never sets it
        n = len(train)

        t0 = clock()
        v = [torch.mean(torch.cat([their.cal_grad_batch_z(b, trainer)[0].unsqueeze(0) for b in loader]), dim=0)]
        t_v = clock() - t0

        args.recursion_depth = recursion_depth
        random.seed(seed)
        t0 = clock()
        h = their.estimate_hv(trainer, args, v.copy(), v)
        t_solve = (clock() - t0) * 5000 / recursion_depth

        subset = np.sort(np.random.default_rng(seed).choice(n, size=min(loop_samples, n), replace=False))
        t0 = clock()
        for idx in subset:
            grad = their.cal_grad_z(int(idx), trainer)
            torch.matmul(h[0], grad[0].view(-1))   # their line, less a .T that torch deprecates on 1-D
        per_sample = (clock() - t0) / len(subset)
    return {"samples": n, "v_seconds": t_v, "solve_seconds_5000": t_solve, "per_sample_seconds": per_sample,
            "loop_samples": len(subset), "recursion_depth": recursion_depth,
            "threads": torch.get_num_threads()}
