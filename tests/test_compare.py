"""``dealrec compare`` end to end on a tiny release folder: scores once, runs per (method, seed),
the report, resuming, refusals, and the same results on Ray as in this process."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from dealrec.cli import main
from dealrec.compare import METRICS, SPLITS
from dealrec.composition import global_ranking_recall
from dealrec.methods import REGISTRY
from test_prune import raw_release_and_tiny_tiger

N = 12
METHODS = ["dealrec", "random", "el2n", "ccs"]
SEEDS = [0, 1]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, tiny_encoder):
    """A raw release folder and a tiny TIGER for its items (the effort target's starting point)."""
    root = tmp_path_factory.mktemp("compare")
    raw, _ = raw_release_and_tiny_tiger(root, encoder_dir=tiny_encoder)
    return {"root": root, "raw": raw, "tiger": root / "tiger", "encoder": tiny_encoder}


def _args(w, out, methods=METHODS, seeds=SEEDS, *extra, workers="0"):
    score = (f"--target-init {w['tiger']} --hvp cg --damping 0.05 --lissa-scale 10 --hessian-samples 32 "
             f"--hvp-batch 16 --batch-size 16 --effort-batch-size 16 --shard-size 32")
    tiny = f"--encoder {w['encoder']} --d-model 16 --layers 1 --rqvae-epochs 2 --max-epochs 2"
    return ["compare", str(w["raw"]), "--n", str(N), "--methods", ",".join(methods),
            "--seeds", ",".join(map(str, seeds)), "--out", str(out), "--workers", workers, "--surrogate-epochs", "2",
            "--k", "4", "--score-args", score, "--finetune-args", tiny, *extra]


def _compare(w, out, *args, **kwargs):
    result = CliRunner().invoke(main, _args(w, out, *args, **kwargs))
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result, json.loads((Path(out) / "report.json").read_text())


@pytest.fixture(scope="module")
def compared(workdir, tmp_path_factory):
    """One finished comparison (four methods, two seeds, --full), run in this process."""
    mp = pytest.MonkeyPatch()
    mp.setenv("DEALREC_CACHE", str(workdir["root"] / "cache"))
    out = tmp_path_factory.mktemp("report") / "rep"
    result, report = _compare(workdir, out, METHODS, SEEDS, "--full")
    yield {"out": out, "report": report, "stderr": result.stderr}
    mp.undo()


def _copy_of(compared, workdir, tmp_path, monkeypatch) -> Path:
    """A copy of the finished comparison to run again (with the same item-embedding cache)."""
    monkeypatch.setenv("DEALREC_CACHE", str(workdir["root"] / "cache"))
    out = tmp_path / "rep"
    shutil.copytree(compared["out"], out)
    return out


def _results(out: Path) -> dict:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted((out / "runs").glob("*/result.json"))}


def test_report_has_every_method_seed_and_reference(compared):
    out, report = compared["out"], compared["report"]
    names = [r["name"] for r in report["rows"]]
    assert names == METHODS + ["all data", "most popular"]
    results = _results(out)
    assert set(results) == {f"{m}-seed{s}" for m in METHODS + ["all"] for s in SEEDS}
    for row in report["rows"][:-1]:
        for split in SPLITS:
            for m in METRICS:
                values = [results[f"{row['method']}-seed{s}"][split][m] for s in SEEDS]
                assert row["per_seed"][split][m] == {str(s): v for s, v in zip(SEEDS, values)}
                assert row["mean"][split][m] == pytest.approx(np.mean(values))
                assert row["sd"][split][m] == pytest.approx(np.std(values, ddof=1))
    # paired differences to random, seed by seed, and the ratio of the means
    random_row = report["rows"][1]
    for row in report["rows"][:-1]:
        if row is random_row:
            assert "vs_random" not in row
            continue
        vs = row["vs_random"]
        for s in SEEDS:
            assert vs["diff"]["test"]["recall@10"][str(s)] == pytest.approx(
                results[f"{row['method']}-seed{s}"]["test"]["recall@10"] - results[f"random-seed{s}"]["test"]["recall@10"])
        assert vs["ratio_of_means"]["test"]["ndcg@20"] == pytest.approx(
            row["mean"]["test"]["ndcg@20"] / random_row["mean"]["test"]["ndcg@20"])
    # most popular is the project's popularity reference, counted over all samples' sequences
    from dealrec_core.data import PreparedData
    from dealrec_core.evaluate import evaluate_scorer, popularity_scorer

    data = PreparedData(report["prepared"])
    expected = evaluate_scorer(popularity_scorer(data.samples().sequences(), data.n_items), data.eval_split("test"),
                               data.n_items)
    assert report["rows"][-1]["mean"]["test"] == {m: pytest.approx(expected[m]) for m in METRICS}
    # ... and on validation over the users the runs report on (those that did not early-stop them)
    from dealrec_core.evaluate import stopping_split

    report_users = stopping_split(data.eval_split("valid"), report["finetune_options"]["valid_users"])[1]
    expected = evaluate_scorer(popularity_scorer(data.samples().sequences(), data.n_items), report_users,
                               data.n_items)
    assert report["rows"][-1]["mean"]["valid"] == {m: pytest.approx(expected[m]) for m in METRICS}
    assert report["rows"][-1]["vs_random"]["ratio_of_means"]["test"]["recall@10"] > 0

    # every coreset run selected N samples and trained on them; "all" trained on every sample
    for name, r in results.items():
        if name.startswith("all-"):
            assert r["train_samples"] == 60
            continue
        assert pq.read_table(out / "runs" / name / "coreset.parquet").num_rows == N == r["train_samples"]
        assert (out / "runs" / name / "tiger" / "metrics.json").exists()
    # the seeds draw different coresets; the methods differ from random
    ids = {name: pq.read_table(out / "runs" / name / "coreset.parquet").column("sample_id").to_pylist()
           for name in results if not name.startswith("all-")}
    assert ids["random-seed0"] != ids["random-seed1"] and ids["dealrec-seed0"] != ids["random-seed0"]

    comp = report["composition"]
    assert comp["all_samples"]["samples"] == 60
    for method in METHODS:
        for s in SEEDS:
            c = comp["coresets"][method]["per_seed"][str(s)]
            assert c["samples"] == N and 0 <= c["empty_history_share"] <= 1 and 1 <= c["distinct_targets"] <= N
    # the targets' popularity: ranking items by how often they are a target of the coreset, on the reported users
    # (ties at the tenth place in expectation: dealrec.composition.global_ranking_recall, tested against the
    # evaluator and against every tie-break in tests/test_composition.py)
    targets = pq.read_table(out / "runs" / "dealrec-seed1" / "coreset.parquet").column("target").to_numpy()
    counts = np.bincount(targets.astype(np.int64), minlength=data.n_items + 1)
    c = comp["coresets"]["dealrec"]["per_seed"]["1"]
    assert c["target_popularity_recall@10_valid"] == pytest.approx(global_ranking_recall(counts, report_users))
    assert c["target_popularity_recall@10_test"] == pytest.approx(
        global_ranking_recall(counts, data.eval_split("test")))
    assert "targets' popularity R@10" in (out / "report.md").read_text()
    assert report["machine"]["cpu_count"] >= 1 and report["machine"]["torch_threads_per_run"] == [1]
    assert report["seconds"] > 0 and all(r["seconds"] > 0 for r in report["runs"].values())
    assert not report["missing"] and not report["failed"]

    md = (out / "report.md").read_text()
    used = report["phases"]["score"]["checkpoints"]["used"]   # the default: the mean weights of what it kept
    said = "influence stationary." if used < 2 else \
        f"influence stationary, at the mean weights of the surrogate's last {used} epochs."
    for heading in ("## Test", "## Valid", "Paired against random", "## Composition", "## Runs", "## Machine",
                    "did not early-stop the runs", said):
        assert heading in md
    for label in METHODS + ["all data (reference)", "most popular (reference)"]:
        assert f"| {label} |" in md
    # the users each split's figures are counted on, and the tiny log's warning
    from dealrec_core.evaluate import users_with_truth

    assert report["users"] == {"valid_stop": len(users_with_truth(data.eval_split("valid"))) - len(report_users),
                               "valid": len(report_users), "test": len(users_with_truth(data.eval_split("test")))}
    assert f"({report['users']['valid']} users; {report['users']['valid_stop']} others stop every run;" in md
    assert "**Few users to count on** (valid " in md
    for png in ("metrics.png", "composition.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # one progress line per finished run on stderr
    assert sum("compare: [" in line for line in compared["stderr"].splitlines()) == len(results)


def test_the_report_pairs_every_method_with_random_and_the_default_user_by_user(compared):
    """The decided-or-not section: each method (and all data) against random, each other method against dealrec,
    from the runs' per-user files; the same figures as dealrec.paired on those files."""
    from dealrec.paired import paired_difference
    from dealrec_core.evaluate import read_per_user

    out, report = compared["out"], compared["report"]
    paired = report["paired"]
    assert set(paired["against_random"]) == {"dealrec", "el2n", "ccs", "all"}
    assert set(paired["dealrec_against"]) == {"random", "el2n", "ccs"} and not paired["without_per_user"]

    def runs(method):
        return {s: read_per_user(out / "runs" / f"{method}-seed{s}" / "tiger" / "per_user.parquet") for s in SEEDS}

    for split in SPLITS:
        for m in METRICS:
            expected = paired_difference({s: r[split] for s, r in runs("ccs").items()},
                                         {s: r[split] for s, r in runs("random").items()}, m)
            assert paired["against_random"]["ccs"][split][m] == expected
            # the point difference is the difference of the rows' means
            row = {r["method"]: r for r in report["rows"] if "method" in r}
            assert expected["diff"] == pytest.approx(row["ccs"]["mean"][split][m] - row["random"]["mean"][split][m],
                                                     abs=1e-12)
            assert expected["users"] == report["users"][split]
    md = (out / "report.md").read_text()
    assert "## Decided or not: paired over users and seeds" in md
    for label in ("dealrec - random", "all data - random", "dealrec - el2n", "dealrec - ccs"):
        assert f"| {label} | " in md
    assert (out / "paired.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_runs_made_before_per_user_results_are_ranked_again_from_their_checkpoints(compared, workdir, tmp_path,
                                                                                 monkeypatch):
    out = _copy_of(compared, workdir, tmp_path, monkeypatch)
    for path in (out / "runs").glob("*/tiger/per_user.parquet"):
        path.unlink()
    result, report = _compare(workdir, out, METHODS, SEEDS, "--full")
    assert report["phases"]["runs"]["ran"] == 0
    assert "has no per-user results (made by an older dealrec)" in result.stderr
    assert report["paired"] == compared["report"]["paired"]
    assert len(list((out / "runs").glob("*/tiger/per_user.parquet"))) == len(_results(out))
    # a damaged file is one line naming it, and the report on disk is left as it was
    before = (out / "report.json").read_bytes()
    (out / "runs" / "ccs-seed1" / "tiger" / "per_user.parquet").write_bytes(b"damaged")
    result = CliRunner().invoke(main, _args(workdir, out, METHODS, SEEDS, "--full"))
    assert result.exit_code == 2 and "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "ccs-seed1/tiger/per_user.parquet: not a readable per-user results file" in errors[0]
    assert (out / "report.json").read_bytes() == before


def test_scores_and_baseline_columns_are_computed_once(compared):
    out, report = compared["out"], compared["report"]
    el2n = report["phases"]["baselines"]["el2n"]
    assert not el2n["reused"] and el2n["seconds"] is not None   # computed here, once
    results = _results(out)
    for method in ("el2n", "ccs"):   # every seed selected from the column computed once
        for s in SEEDS:
            assert results[f"{method}-seed{s}"]["baseline_reused"] == "el2n"
    assert pq.read_table(out / "scores" / "with-baselines" / "scores.parquet").column_names[:4] == \
        ["sample_id", "influence", "effort", "el2n"]


def test_rerun_skips_finished_runs_and_redoes_the_rest(compared, workdir, tmp_path, monkeypatch):
    out = _copy_of(compared, workdir, tmp_path, monkeypatch)
    before = _results(out)
    stamps = {p.parent.name: p.stat().st_mtime_ns for p in (out / "runs").glob("*/result.json")}
    shutil.rmtree(out / "runs" / "random-seed1")                 # a run whose folder was deleted
    (out / "runs" / "dealrec-seed0" / "result.json").unlink()    # a run killed before its result
    result, report = _compare(workdir, out, METHODS, SEEDS, "--full")
    assert "8 of 10 runs already done" in result.stderr
    after = {p.parent.name: p.stat().st_mtime_ns for p in (out / "runs").glob("*/result.json")}
    redone = {name for name in after if after[name] != stamps.get(name)}
    assert redone == {"random-seed1", "dealrec-seed0"}
    assert report["phases"]["runs"] == {"seconds": pytest.approx(report["phases"]["runs"]["seconds"]), "ran": 2,
                                        "reused": 8, "shared_training": 0, "failed": 0}
    assert report["phases"]["baselines"]["el2n"]["reused"]       # not recomputed either
    assert report["phases"]["score"]["capture"]["ran"] == 0 and report["phases"]["score"]["effort"]["ran"] == 0
    now = _results(out)
    for name in redone:                                           # the same run gives the same numbers
        assert now[name]["test"] == before[name]["test"] and now[name]["valid"] == before[name]["valid"]
    assert {r["name"]: r["mean"] for r in report["rows"]} == {r["name"]: r["mean"] for r in compared["report"]["rows"]}

    # another lambda changes what dealrec selects, not what random, el2n or ccs select
    _, report = _compare(workdir, out, METHODS, [0], "--lambda", "0.7")
    assert {n for n, r in report["runs"].items() if not r["reused"]} == {"dealrec-seed0"}


def test_runs_with_the_same_samples_share_one_training(compared, workdir, tmp_path, monkeypatch):
    from dealrec.compare import training_set_digest

    out = _copy_of(compared, workdir, tmp_path, monkeypatch)
    run = out / "runs" / "dealrec-seed0"
    before = json.loads((run / "result.json").read_text())
    model_stamp = (run / "tiger" / "model.safetensors").stat().st_mtime_ns
    older = {k: v for k, v in before.items() if k not in ("training_key", "training_from")}
    (run / "result.json").write_text(json.dumps(older))   # as results were written before training keys
    # influence selects what dealrec selects at lambda 0 (the default): trained once, not twice
    result, report = _compare(workdir, out, ["dealrec", "influence"], [0])
    assert "1 more trained already on the same samples; 0 to train" in result.stderr
    assert report["phases"]["runs"]["shared_training"] == 1 and report["phases"]["runs"]["ran"] == 0
    shared = json.loads((out / "runs" / "influence-seed0" / "result.json").read_text())
    assert training_set_digest(out / "runs" / "influence-seed0" / "coreset.parquet") == \
        training_set_digest(run / "coreset.parquet")
    assert shared["training_from"] == "dealrec-seed0" and shared["training_key"] == before["training_key"]
    assert shared["test"] == before["test"] and shared["valid"] == before["valid"]
    assert shared["inputs"]["method"] == "influence" and not (out / "runs" / "influence-seed0" / "tiger").exists()
    assert "the same samples as dealrec-seed0" in (out / "report.md").read_text()
    # another lambda so small that the selection does not change: selected again, not trained again
    _, report = _compare(workdir, out, ["dealrec"], [0], "--lambda", "1e-15")
    again = json.loads((run / "result.json").read_text())
    assert again["inputs"]["lambda"] == 1e-15 and again["training_key"] == before["training_key"]
    assert again["training_from"] == "dealrec-seed0" and again["test"] == before["test"]
    assert again["train_seconds"] == before["train_seconds"]   # its own training: its time stays with it
    assert shared["train_seconds"] == 0.0                      # another's: counted once, there
    assert (run / "tiger" / "model.safetensors").stat().st_mtime_ns == model_stamp
    assert report["phases"]["runs"]["ran"] == 0 and report["phases"]["runs"]["shared_training"] == 1


def test_a_folder_that_selects_again_its_own_samples_shares_its_training_with_the_runs_before_it(
        compared, workdir, tmp_path, monkeypatch):
    """dealrec-seed0 comes first in the plan and influence-seed0 holds the training for the same samples in its
    own folder: nothing is trained, however the runs are ordered."""
    out = _copy_of(compared, workdir, tmp_path, monkeypatch)
    _compare(workdir, out, ["dealrec", "influence"], [0], "--lambda", "0.7")   # dealrec-seed0: other samples
    runs = out / "runs"
    held = json.loads((runs / "influence-seed0" / "result.json").read_text())
    assert held["training_from"] == "influence-seed0"
    (runs / "influence-seed0" / "result.json").write_text(json.dumps({**held, "inputs": {**held["inputs"],
                                                                      "scores": "an older digest"}}))
    _, report = _compare(workdir, out, ["dealrec", "influence"], [0])
    assert report["phases"]["runs"]["ran"] == 0 and report["phases"]["runs"]["shared_training"] == 2
    results = _results(out)
    assert results["influence-seed0"]["training_from"] == "influence-seed0"
    assert results["dealrec-seed0"]["training_from"] == "influence-seed0"
    assert results["dealrec-seed0"]["test"] == held["test"]
    assert not (runs / "dealrec-seed0" / "tiger").exists()   # the lambda-0.7 model would not match the result


def test_another_allocation_selects_again_the_stratified_methods_only(compared, workdir, tmp_path, monkeypatch):
    out = _copy_of(compared, workdir, tmp_path, monkeypatch)
    stamps = {p.parent.name: p.stat().st_mtime_ns for p in (out / "runs").glob("*-seed0/result.json")}
    _, report = _compare(workdir, out, ["dealrec", "random", "el2n"], [0], "--allocation", "sqrt")
    after = {p.parent.name: p.stat().st_mtime_ns for p in (out / "runs").glob("*-seed0/result.json")}
    assert {name for name in stamps if after[name] != stamps[name]} == {"dealrec-seed0"}
    run = json.loads((out / "runs" / "dealrec-seed0" / "result.json").read_text())
    assert run["inputs"]["allocation"] == "sqrt" and run["selection"]["allocation_used"] == "sqrt"
    selection = json.loads((out / "runs" / "dealrec-seed0" / "manifest.json").read_text())["selection"]
    assert selection["allocation"] == "sqrt" and sum(selection["strata_budgets"]) == N
    assert report["selection"]["allocation"] == {"dealrec": "sqrt"}
    assert "allocation sqrt;" in (out / "report.md").read_text()


def test_runs_recorded_with_auto_select_again_when_auto_s_fallback_changes(compared, workdir, tmp_path, monkeypatch):
    """A finished "auto" run is reused only while "auto" means what it meant when the run was recorded."""
    import dealrec.compare as compare_module
    import dealrec.coreset as coreset_module

    out = _copy_of(compared, workdir, tmp_path, monkeypatch)
    run = out / "runs" / "dealrec-seed0"
    before = json.loads((run / "result.json").read_text())
    assert "auto_fallback" not in before["inputs"]          # sqrt, the fallback "auto" came with
    stamp = (run / "result.json").stat().st_mtime_ns
    _compare(workdir, out, ["dealrec"], [0])
    assert (run / "result.json").stat().st_mtime_ns == stamp   # the same "auto": reused as it is
    for module in (compare_module, coreset_module):
        monkeypatch.setattr(module, "AUTO_FALLBACK", "proportional")
    _compare(workdir, out, ["dealrec"], [0])
    again = json.loads((run / "result.json").read_text())
    assert again["inputs"] == {**before["inputs"], "auto_fallback": "proportional"}
    assert again["selection"]["allocation_used"] in ("equal", "proportional")


def test_a_dealrec_run_from_before_the_allocation_option_selects_again_and_keeps_its_training(
        compared, workdir, tmp_path, monkeypatch):
    out = _copy_of(compared, workdir, tmp_path, monkeypatch)
    run = out / "runs" / "dealrec-seed0"
    before = json.loads((run / "result.json").read_text())
    assert before["inputs"]["allocation"] == REGISTRY["dealrec"].allocation == "auto"
    older = {**before, "inputs": {k: v for k, v in before["inputs"].items() if k != "allocation"}}
    (run / "result.json").write_text(json.dumps(older))   # as a run recorded before --allocation existed
    model_stamp = (run / "tiger" / "model.safetensors").stat().st_mtime_ns
    _, report = _compare(workdir, out, ["dealrec"], [0])
    again = json.loads((run / "result.json").read_text())
    assert again["inputs"] == before["inputs"] and again["test"] == before["test"]
    assert report["phases"]["runs"]["ran"] == 0 and report["phases"]["runs"]["shared_training"] == 1
    assert (run / "tiger" / "model.safetensors").stat().st_mtime_ns == model_stamp


def test_bad_requests_are_refused_up_front(workdir, tmp_path):
    cases = [
        (["--methods", "dealrec,bogus"], "unknown method 'bogus'", "choose from dealrec, influence"),
        (["--seeds", "0,x"], "--seeds", "non-negative integers"),
        (["--seeds", "1,1"], "--seeds", "repeated"),
        (["--target", "bigrec"], "--target bigrec needs --llm", ""),
        (["--finetune-args", "--seed 3"], "--seed is set by dealrec compare", ""),
        (["--finetune-args", "--max-epoch 3"], "--finetune-args", "No such option"),
        (["--finetune-args", "--metric bogus"], "--metric bogus", "choose loss"),
        (["--score-args", "--hvp nope"], "--score-args", "nope"),
    ]
    for extra, *expected in cases:
        out = tmp_path / "never"
        result = CliRunner().invoke(main, ["compare", str(workdir["raw"]), "--out", str(out), *extra])
        assert result.exit_code == 2, (extra, result.output)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), result.output
        assert all(e in lines[0] for e in expected), lines[0]
        assert not out.exists()


def test_failed_runs_are_reported_and_random_alone_needs_no_surrogate(workdir, tmp_path):
    out = tmp_path / "rep"
    args = ["compare", str(workdir["raw"]), "--n", str(N), "--methods", "random", "--seeds", "0,1", "--out", str(out),
            "--workers", "0", "--quiet", "--finetune-args", f"--init {workdir['encoder']}"]   # not a TIGER
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1].startswith("error: 2 of 2 runs failed (random-seed0: ")
    assert "not a TIGER checkpoint" in result.output
    assert "Traceback" in (out / "runs" / "random-seed0" / "error.txt").read_text()
    assert not (out / "runs" / "random-seed0" / "result.json").exists()
    report = json.loads((out / "report.json").read_text())
    assert set(report["failed"]) == {"random-seed0", "random-seed1"} and report["missing"] == report["planned"]
    assert not (out / "scores" / "surrogate").exists() and not (out / "scores" / "scores.parquet").exists()


def test_ray_gives_the_same_results_as_in_process(compared, workdir, tmp_path, monkeypatch):
    monkeypatch.setenv("DEALREC_CACHE", str(workdir["root"] / "cache"))
    out = tmp_path / "rep"
    shutil.copytree(compared["out"] / "scores", out / "scores")   # the scores are done: only the runs go to Ray
    _, report = _compare(workdir, out, ["dealrec", "random"], [0], workers="1")
    assert report["machine"]["executor"]["executor"] == "ray"
    ray, local = _results(out), _results(compared["out"])
    for name in ("dealrec-seed0", "random-seed0"):
        assert ray[name]["test"] == local[name]["test"] and ray[name]["valid"] == local[name]["valid"]
        assert ray[name]["inputs"] == local[name]["inputs"]


def test_bigrec_target_scores_effort_with_the_llm_and_trains_with_run_bigrec(workdir, tmp_path):
    from tiny_lm import make_tiny_causal_lm

    titles = [json.loads(line)["title"] for line in (workdir["raw"] / "items.jsonl").read_text().splitlines()]
    llm = make_tiny_causal_lm("llama", titles, tmp_path / "llm")
    out = tmp_path / "rep"
    score = ("--hvp cg --damping 0.05 --lissa-scale 10 --hessian-samples 32 --hvp-batch 16 --batch-size 16 "
             "--effort-batch-size 16 --shard-size 32")
    quick = ("--batch-size 8 --micro-batch-size 4 --epochs 1 --max-new-tokens 8 --eval-batch-size 8 "
             "--max-tokens 400 --max-users 10")
    result = CliRunner().invoke(main, ["compare", str(workdir["raw"]), "--n", str(N), "--methods", "effort,random",
                                       "--seeds", "0", "--target", "bigrec", "--llm", str(llm), "--out", str(out),
                                       "--workers", "0", "--surrogate-epochs", "2", "--k", "4", "--quiet",
                                       "--score-args", score, "--finetune-args", quick])
    assert result.exit_code == 0, result.output + repr(result.exception)
    report = json.loads((out / "report.json").read_text())
    assert report["score_options"]["target"] == "bigrec"
    assert json.loads((out / "scores" / "manifest.json").read_text())["target"]["target"] == "bigrec"
    assert [r["name"] for r in report["rows"]] == ["effort", "random", "most popular"]
    for name in ("effort-seed0", "random-seed0"):
        metrics = json.loads((out / "runs" / name / "bigrec" / "metrics.json").read_text())
        assert metrics["eval_users"] == {"valid": 10, "test": 10}
        assert json.loads((out / "runs" / name / "result.json").read_text())["test"] == metrics["test"]


def test_the_report_warns_of_splits_too_small_to_tell_methods_apart():
    from dealrec.compare import FEW_USERS, few_users_warning

    assert few_users_warning(None) == [] and few_users_warning({"valid": FEW_USERS, "test": 500}) == []
    (line, blank) = few_users_warning({"valid": 16, "test": FEW_USERS + 1})
    assert line.startswith("**Few users to count on** (valid 16):") and "by up to 0.062," in line and blank == ""
    (line, _) = few_users_warning({"valid": 40, "test": 25})
    assert "(valid 40, test 25)" in line and "by up to 0.040," in line


def test_the_report_says_where_the_influence_was_taken():
    from dealrec.compare import _influence_v

    assert _influence_v({}) == "measured"   # a report from before the option: the paper's influence
    stationary = {"score_options": {"influence_v": "stationary"}}
    assert _influence_v(stationary) == "stationary"   # before the kept epochs: the best epoch
    for used, mean, said in ((1, "weights", "stationary"),
                             (3, "weights", "stationary, at the mean weights of the surrogate's last 3 epochs"),
                             (2, "influence", "stationary, at the mean influence of the surrogate's last 2 epochs")):
        report = {**stationary, "phases": {"score": {"checkpoints": {"used": used, "mean": mean}}}}
        assert _influence_v(report) == said


def test_the_report_says_each_method_s_hard_prune():
    """Left out, --hard-prune is each method's own share (0 for dealrec, the paper's 0.1 for CCS): the report says
    which method dropped what; one share for all is said once; a report from before says its single number."""
    from dealrec.compare import _hard_prune_text

    assert _hard_prune_text({"dealrec": 0.0, "ccs": 0.1}) == "0 (dealrec), 0.1 (ccs)"
    assert _hard_prune_text({"dealrec": 0.2, "ccs": 0.2}) == "0.2"
    assert _hard_prune_text({}) == "none (no stratified method)"
    assert _hard_prune_text(0.1) == "0.1"


def test_each_stratified_method_ran_with_its_own_hard_prune(compared):
    out, report = compared["out"], compared["report"]
    assert report["selection"]["hard_prune"] == {"dealrec": 0.0, "ccs": 0.1}
    results = _results(out)
    for s in SEEDS:
        assert results[f"dealrec-seed{s}"]["inputs"]["hard_prune"] == 0.0
        assert results[f"ccs-seed{s}"]["inputs"]["hard_prune"] == 0.1
        assert "hard_prune" not in results[f"el2n-seed{s}"]["inputs"]
        selection = json.loads((out / "runs" / f"ccs-seed{s}" / "manifest.json").read_text())["selection"]
        assert selection["hard_prune"] == 0.1 and selection["n_hard_pruned"] > 0
    allocation = REGISTRY["dealrec"].allocation
    assert report["selection"]["allocation"] == {"dealrec": allocation, "ccs": "equal"}
    for s in SEEDS:   # the paper's budgets leave a run's inputs as they were before --allocation existed
        assert "allocation" not in results[f"ccs-seed{s}"]["inputs"]
        assert results[f"ccs-seed{s}"]["selection"]["allocation_used"] == "equal"
    text = "allocation equal" if allocation == "equal" else f"allocation {allocation} (dealrec), equal (ccs)"
    assert f"hard prune 0 (dealrec), 0.1 (ccs), {text}" in (out / "report.md").read_text()
