"""The repeated mechanics, each written once in the ground floor (docs/design.md, "One helper each"):
atomic writes, padding, the users the evaluator counts, the early-stopping loop."""
from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dealrec_core.data import atomic_file
from dealrec_core.paths import HOST, remove_stale_temps

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("dealrec_core", "surrogates", "finetune", "dealrec")
DEAD_PID = 2**22 + 7   # above Linux's largest pid_max: no process can have it


# ----------------------------------------------------------------------------- atomic writes

def _renames(path: Path) -> list[int]:
    """Lines of ``path`` that rename a file by hand: ``os.replace``/``os.rename``/``shutil.move``, or a
    ``.rename(x)``/``.replace(x)`` method call with one argument (``Path.rename``, ``Path.replace``;
    ``str.replace`` takes two)."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        f = node.func
        owner = f.value.id if isinstance(f.value, ast.Name) else None
        if (owner, f.attr) in {("os", "replace"), ("os", "rename"), ("shutil", "move")}:
            lines.append(node.lineno)
        elif owner not in ("os", "shutil") and f.attr in ("rename", "replace") and len(node.args) == 1 \
                and not node.keywords:
            lines.append(node.lineno)
    return lines


def test_files_are_renamed_into_place_only_by_the_ground_floor():
    """Every write-to-a-temporary-then-rename goes through ``dealrec_core.data`` (``atomic_file`` and
    its friends), so every temporary is named, cleaned and reported the same way."""
    bad = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if path == ROOT / "dealrec_core" / "data.py":
                continue
            bad += [f"{path.relative_to(ROOT)}:{line}" for line in _renames(path)]
    assert not bad, "rename by hand (use dealrec_core.data.atomic_file): " + ", ".join(bad)


def test_a_writer_that_adds_a_suffix_gets_a_temporary_that_is_cleaned_up(tmp_path):
    target = tmp_path / "emb.npy"
    with atomic_file(target, suffix=".npy") as tmp:
        assert tmp.name.endswith(".npy") and tmp.parent == tmp_path
        np.save(tmp, np.arange(3))
    assert np.array_equal(np.load(target), np.arange(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb.npy"]
    # a killed writer's temporary of the same file, with the suffix, is recognised and removed
    dead = tmp_path / f".emb.npy.tmp-{DEAD_PID}@{HOST}.npy"
    dead.write_bytes(b"half")
    assert remove_stale_temps(target) == [dead]


def test_a_failed_write_leaves_the_previous_file(tmp_path):
    target = tmp_path / "a.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_file(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("writer failed")
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]


def test_model_writers_clean_a_killed_runs_temporaries(tmp_path):
    """``save_surrogate`` and ``save_tiger`` write through ``atomic_file``: a temporary that a killed save
    left beside a weights file is removed by the next save, and none of theirs stays behind."""
    from surrogates.sasrec import SASRec, SASRecConfig
    from surrogates.base import save_surrogate
    from finetune.rqvae import semantic_ids_from_codes
    from finetune.tiger import TigerConfig, TigerModel, save_tiger

    dead = [tmp_path / f".model.safetensors.tmp-{DEAD_PID}@{HOST}", tmp_path / f".config.json.tmp-{DEAD_PID}"]
    for p in dead:
        p.write_bytes(b"half")
    save_surrogate(SASRec(SASRecConfig(n_items=10, hidden=8, n_heads=1, n_blocks=1, ffn_hidden=8, max_len=4)),
                   tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]

    folder = tmp_path / "tiger"
    codes = np.stack([np.arange(10) // 4, np.arange(10) % 4], 1)
    sem, _ = semantic_ids_from_codes(codes, 4)
    model = TigerModel(TigerConfig(d_model=8, d_ff=16, num_layers=1, num_decoder_layers=1, num_heads=1, d_kv=8),
                       sem, seed=0)
    folder.mkdir()
    (folder / f".semantic_ids.json.tmp-{DEAD_PID}@{HOST}").write_text("half")
    save_tiger(model, folder)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors",
                                                        "semantic_ids.json", "semantic_ids.safetensors"]


# ----------------------------------------------------------------------------- padding

def test_pad_rows_right_and_left():
    from dealrec_core.batching import pad_rows

    rows = [np.array([5, 6, 7]), [], [1]]
    assert pad_rows(rows, 0).tolist() == [[5, 6, 7], [0, 0, 0], [1, 0, 0]]
    assert pad_rows(rows, 9, "left").tolist() == [[5, 6, 7], [9, 9, 9], [9, 9, 1]]
    assert pad_rows(rows, 0).dtype == np.int64
    # no rows, or only empty ones: still one column (a model's batch is never zero wide) unless asked
    assert pad_rows([], 0).shape == (0, 1) and pad_rows([[]], 0).tolist() == [[0]]
    assert pad_rows([[]], 0, min_width=0).shape == (1, 0)
    with pytest.raises(ValueError):
        pad_rows(rows, 0, "middle")


def test_pad_batch_masks_labels_and_positions():
    from dealrec_core.batching import pad_batch

    seqs, labels = [[5, 6, 7], [1]], [[-100, 6, 7], [1]]
    right = pad_batch(seqs, 0, "right", labels)
    assert list(right) == ["input_ids", "attention_mask", "position_ids", "labels"]
    assert right["input_ids"].tolist() == [[5, 6, 7], [1, 0, 0]]
    assert right["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert right["position_ids"].tolist() == [[0, 1, 2], [0, 0, 0]]
    assert right["labels"].tolist() == [[-100, 6, 7], [1, -100, -100]]
    left = pad_batch(seqs, 0, "left")
    assert left["input_ids"].tolist() == [[5, 6, 7], [0, 0, 1]]
    assert left["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert left["position_ids"].tolist() == [[0, 1, 2], [0, 0, 0]]   # real tokens count from 0 either way
    assert "labels" not in left
    assert all(v.dtype == torch.long for v in right.values())
    assert list(pad_batch(seqs, 0, position_ids=False)) == ["input_ids", "attention_mask"]


# ----------------------------------------------------------------------------- users the evaluator counts

def test_users_with_a_ground_truth_are_found_in_one_place():
    from dealrec_core.data import EvalSplit
    from dealrec_core.evaluate import evaluate_scorer, ranking_metrics, truth_rows, users_with_truth
    from finetune.bigrec import nonempty_users

    targets = [[], [0], [3], [0, 2], [4, 4]]
    split = EvalSplit(np.arange(5) + 10, [np.array([1], np.int32)] * 5, [np.array(t, np.int32) for t in targets])
    assert truth_rows(split).tolist() == [2, 3, 4] and truth_rows(split).dtype == np.int64
    assert users_with_truth(split).user.tolist() == [12, 13, 14]
    full = users_with_truth(split)
    assert users_with_truth(full) is full
    assert nonempty_users(split, None, 0).user.tolist() == [12, 13, 14]
    assert set(nonempty_users(split, 2, 0).user.tolist()) < {12, 13, 14}
    # both evaluators average over those users only
    ranked = np.array([[3, 2, 4]] * 5)
    by_list = ranking_metrics(ranked, split, ks=(1,))
    by_score = evaluate_scorer(lambda h: torch.tensor([[0.0, 0.0, 2.0, 3.0, 1.0]] * len(h)), split, 4, ks=(1,))
    assert by_list == by_score == pytest.approx({"recall@1": 1 / 3, "ndcg@1": 1 / 3})
    # no user with a ground truth: zero, not an error
    none = EvalSplit(np.arange(2), [np.array([1], np.int32)] * 2, [np.array([], np.int32)] * 2)
    assert ranking_metrics(np.array([[2], [3]]), none, ks=(1,)) == {"recall@1": 0.0, "ndcg@1": 0.0}


# ----------------------------------------------------------------------------- library code does not print

def _echo_outside_commands(path: Path) -> list[int]:
    """Lines of ``path`` that call ``click.echo`` outside a function decorated as a click command."""
    tree = ast.parse(path.read_text(), filename=str(path))
    inside = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and any("command" in ast.unparse(d) for d in node.decorator_list):
            inside.update(id(n) for n in ast.walk(node))
    return [n.lineno for n in ast.walk(tree)
            if isinstance(n, ast.Call) and ast.unparse(n.func) == "click.echo" and id(n) not in inside]


def test_model_libraries_return_results_and_their_commands_print_them():
    """``run_bigrec``, ``run_tiger``, ``train_surrogate`` and the rest return what they did (or pass lines
    to a ``log`` callback); only the click commands print."""
    bad = []
    for package in ("dealrec_core", "surrogates", "finetune"):
        for path in sorted((ROOT / package).rglob("*.py")):
            bad += [f"{path.relative_to(ROOT)}:{line}" for line in _echo_outside_commands(path)]
    assert not bad, "click.echo in library code: " + ", ".join(bad)


def test_bigrec_command_prints_the_lines_run_bigrec_logs(tmp_path):
    """The lines ``finetune bigrec`` prints on stderr come from ``run_bigrec``'s ``log`` callback, and a
    caller with its own ``log`` gets the same lines."""
    from click.testing import CliRunner

    from dealrec.cli import main
    from finetune.bigrec import bigrec_config, run_bigrec
    from test_bigrec import TITLES, _write_prepared
    from tiny_lm import make_tiny_causal_lm

    data = _write_prepared(tmp_path / "data")
    llm = make_tiny_causal_lm("llama", TITLES[1:], tmp_path / "llama")
    quick = {"batch_size": 8, "epochs": 1, "max_new_tokens": 4, "max_users": 3, "max_tokens": 400}
    result = CliRunner().invoke(main, ["finetune", "bigrec", "--llm", str(llm), "--data", str(data), "--train",
                                       str(data / "samples"), "--out", str(tmp_path / "cli"),
                                       *(f"--{k.replace('_', '-')}={v}" for k, v in quick.items())])
    assert result.exit_code == 0, result.output
    assert set(json.loads(result.stdout)) == {"valid", "test", "steps", "epochs", "seconds"}
    printed = [ln for ln in result.stderr.splitlines() if ln.startswith(("fine-tuned ", "valid (", "test ("))]
    lines = []
    run_bigrec(llm, data, data / "samples", tmp_path / "lib", bigrec_config(**quick), log=lines.append)
    assert lines == printed and [ln.split(" ")[0] for ln in lines] == ["fine-tuned", "valid", "test"]


# ----------------------------------------------------------------------------- the early-stopping loop

def _scripted(scores, *, stops=None, spent_after=None, **kw):
    """Run the loop on a script: the score of each validation in turn; ``stops`` maps an epoch to the
    reason its training returns; the budget is spent from ``spent_after`` budget reads on."""
    from dealrec_core.training import train_with_early_stopping

    log, weights, reads = [], {"epoch": 0}, [0]

    def out_of_time():
        reads[0] += 1
        return spent_after is not None and reads[0] > spent_after

    def train_epoch(epoch):
        weights["epoch"] = epoch
        log.append(("train", epoch))
        return (stops or {}).get(epoch)

    def validate(epoch):
        log.append(("validate", epoch))
        return scores[len([e for e in log if e[0] == "validate"]) - 1]

    restored = []
    stop = train_with_early_stopping(train_epoch, validate, snapshot=lambda: dict(weights), restore=restored.append,
                                     report=lambda e, s, imp: log.append(("report", e, imp)),
                                     out_of_time=out_of_time if spent_after is not None else None, **kw)
    return stop, log, restored


def test_loop_stops_on_patience_and_restores_the_best():
    from dealrec_core.training import PATIENCE

    stop, log, restored = _scripted([0.1, 0.3, 0.3, 0.2, 0.9], max_epochs=10, patience=2)
    assert (stop.epochs, stop.best_epoch, stop.best_score, stop.reason, stop.validations) == (4, 2, 0.3, PATIENCE, 4)
    assert restored == [{"epoch": 2}]   # an equal score is no improvement
    assert [e for e in log if e[0] == "report"] == [("report", 1, True), ("report", 2, True), ("report", 3, False),
                                                     ("report", 4, False)]


def test_loop_keeps_the_validated_epochs_before_the_best():
    # best at epoch 5; the two validated epochs before it are 3 and 4 (a worse epoch still counts: it is on the
    # way to the best), not the epochs after it
    stop, _, restored = _scripted([0.1, 0.3, 0.2, 0.25, 0.4, 0.35, 0.3, 0.1], max_epochs=10, patience=3, keep=3)
    assert (stop.best_epoch, restored) == (5, [{"epoch": 5}])
    assert stop.kept == [(3, {"epoch": 3}), (4, {"epoch": 4})]
    # validated every 2 epochs: the kept ones are validated epochs (2, 4), best 6
    stop, _, _ = _scripted([0.1, 0.2, 0.3, 0.1, 0.1, 0.1], max_epochs=12, patience=3, keep=3, validate_every=2)
    assert stop.best_epoch == 6 and [e for e, _ in stop.kept] == [2, 4]
    # fewer validated epochs than asked before the best: what there is; keep=1 keeps nothing
    stop, _, _ = _scripted([0.5, 0.4, 0.3], max_epochs=5, patience=2, keep=3)
    assert stop.best_epoch == 1 and stop.kept == []
    stop, _, _ = _scripted([0.1, 0.2, 0.3, 0.1, 0.1], max_epochs=5, patience=2, keep=1)
    assert stop.best_epoch == 3 and stop.kept == []
    with pytest.raises(ValueError, match="keep"):
        _scripted([0.1], max_epochs=1, patience=1, keep=0)


def test_loop_validates_every_n_epochs_and_at_the_cap():
    from dealrec_core.training import MAX_EPOCHS

    stop, log, _ = _scripted([1, 2, 3], max_epochs=8, patience=5, validate_every=3)
    assert [e[1] for e in log if e[0] == "validate"] == [3, 6, 8]
    assert (stop.epochs, stop.best_epoch, stop.reason) == (8, 8, MAX_EPOCHS)
    # training and validation alternate in this order: the same random draws as a hand-written loop
    assert log[:5] == [("train", 1), ("train", 2), ("train", 3), ("validate", 3), ("report", 3, True)]


def test_loop_time_budget_forces_a_last_validation():
    from dealrec_core.training import TIME_BUDGET

    # budget read once per epoch, after training: spent from epoch 5's read on, a non-validation epoch
    stop, log, _ = _scripted([1, 2, 3], max_epochs=20, patience=5, validate_every=3, spent_after=4)
    assert [e[1] for e in log if e[0] == "validate"] == [3, 5]
    assert (stop.epochs, stop.reason) == (5, TIME_BUDGET)
    # budget_counts_validation reads it again after each validation (the validation's time counts)
    stop, log, _ = _scripted([1, 2, 3, 4], max_epochs=20, patience=5, spent_after=3, budget_counts_validation=True)
    assert (stop.epochs, stop.reason) == (2, TIME_BUDGET)   # reads: after train 1, after validation 1, ... 4th
    stop, log, _ = _scripted([1, 2, 3, 4], max_epochs=20, patience=5, spent_after=3)
    assert (stop.epochs, stop.reason) == (4, TIME_BUDGET)


def test_loop_trainer_stop_comes_first_lower_is_better_and_nan_never_improves():
    stop, log, restored = _scripted([5.0, float("nan"), 4.0], max_epochs=9, patience=1, higher_is_better=False,
                                    stops={3: "max_steps"})
    assert (stop.epochs, stop.best_epoch, stop.reason) == (2, 1, "patience")   # NaN at epoch 2: not better
    stop, log, restored = _scripted([5.0, 4.0, 6.0], max_epochs=9, patience=1, higher_is_better=False,
                                    stops={3: "max_steps"})
    assert (stop.epochs, stop.best_epoch, stop.best_score, stop.reason) == (3, 2, 4.0, "max_steps")
    assert restored == [{"epoch": 2}]
    stop, log, restored = _scripted([], max_epochs=0, patience=1)
    assert (stop.epochs, stop.best_epoch, stop.reason, restored) == (0, 0, "max_epochs", [])


def test_a_library_error_inside_an_atomic_write_keeps_its_own_message(tmp_path):
    """A library's OSError with no errno (transformers: "no file named model.safetensors ... found") is not
    a file-system error of the output: it must not be relabelled with the output's path ("[Errno None] None")."""
    import errno

    from dealrec_core.data import atomic_output_dir
    from dealrec_core.paths import describe_os_error

    for writer, out in ((atomic_file, tmp_path / "a.json"), (atomic_output_dir, tmp_path / "model")):
        with pytest.raises(OSError) as info:
            with writer(out):
                raise OSError("Error no file named model.safetensors found in directory /enc.")
        assert info.value.filename is None
        assert describe_os_error(info.value) == "Error no file named model.safetensors found in directory /enc."
        with pytest.raises(OSError) as info:          # a real file-system error is given the output's name
            with writer(out):
                raise OSError(errno.ENOSPC, "No space left on device")
        assert describe_os_error(info.value) == f"{out}: No space left on device"
