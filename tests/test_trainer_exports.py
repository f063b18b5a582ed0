"""Exports that trainers load as they are: LLaMA-Factory, TRL, alpaca; one prompt wording end to end.

- the wording is the one the run's effort was scored with (``score --target bigrec --template``, recorded
  in the manifest); an explicit export ``--template`` that disagrees is refused in one line naming both;
- HF ``datasets.load_dataset("json", ...)`` reads the TRL and alpaca files; TRL's ``SFTTrainer`` runs two
  steps on the TRL file with a tiny local Llama, on exactly the text dealrec renders;
- LLaMA-Factory's ``dataset_info.json`` passes a check written from its documented format
  (hiyouga/LLaMA-Factory, data/README.md), and the prompt LLaMA-Factory builds from its columns is ours.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from dealrec.cli import main
from dealrec.export import prompt_records
from finetune.prompts import DOMAIN_TEMPLATES
from surrogates.base import save_surrogate
from surrogates.registry import build_surrogate
from test_export import TITLES, _coreset, make_run
from tiny_lm import make_tiny_causal_lm
from tiny_surrogate import tiny_samples, write_tiny_prepared

N_ITEMS = 20


def _cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _expected(template: str) -> list[tuple[str, str]]:
    return prompt_records(_coreset(), TITLES, DOMAIN_TEMPLATES[template])


def _jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# ----------------------------------------------------------------------------- the wording comes from the run

def test_exports_render_the_template_the_effort_was_scored_with(tmp_path):
    run = make_run(tmp_path, {"target": {"target": "bigrec", "template": "books"}})
    res = _cli("export", run)
    assert res.exit_code == 0, res.output
    want = _expected("books")
    assert "read" in want[0][0] and "played" not in want[0][0]      # the books wording, not the default
    trl = _jsonl(run / "trl" / "train.jsonl")
    assert [(r["prompt"], r["completion"]) for r in trl] == want
    assert "塞尔达传说 旷野之息" in trl[0]["prompt"] and trl[0]["completion"] == '"Pokémon Sword 🎮"'
    factory = json.loads((run / "llamafactory" / "dealrec_coreset.json").read_text(encoding="utf-8"))
    assert [(r["instruction"], r["output"]) for r in factory] == want and {r["input"] for r in factory} == {""}
    alpaca = json.loads((run / "bigrec.json").read_text(encoding="utf-8"))
    assert all("read" in r["instruction"] for r in alpaca)
    exports = json.loads((run / "manifest.json").read_text())["exports"]
    assert exports["template"] == "books" and exports["trl"] == "trl/train.jsonl"
    assert exports["llamafactory"] == ["llamafactory/dataset_info.json", "llamafactory/dealrec_coreset.json"]

    # the same wording named explicitly is accepted; another one is refused in one line naming both
    assert _cli("export", run, "--format", "trl", "--template", "books").exit_code == 0
    before = (run / "trl" / "train.jsonl").read_bytes()
    res = _cli("export", run, "--format", "trl", "--template", "movies")
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1
    assert "--template movies" in res.output and "--template books" in res.output and "manifest.json" in res.output
    assert (run / "trl" / "train.jsonl").read_bytes() == before      # nothing written


def test_without_a_scored_prompt_the_option_or_the_run_default_applies(tmp_path):
    # a TIGER-target run records the --template it was given, but its effort read no prompt: an explicit one wins
    run = make_run(tmp_path, {"target": {"target": "tiger"}, "parameters": {"template": "movies"}})
    assert _cli("export", run, "--format", "trl").exit_code == 0
    assert [(r["prompt"], r["completion"]) for r in _jsonl(run / "trl" / "train.jsonl")] == _expected("movies")
    assert _cli("export", run, "--format", "llamafactory", "--template", "books").exit_code == 0
    rows = json.loads((run / "llamafactory" / "dealrec_coreset.json").read_text(encoding="utf-8"))
    assert [r["instruction"] for r in rows] == [p for p, _ in _expected("books")]
    assert not (run / "bigrec.json").exists() and not (run / "tiger").exists()   # only what was asked for


def test_alpaca_is_the_bigrec_file_and_a_file_where_a_folder_goes_is_refused(tmp_path):
    run = make_run(tmp_path, {})
    assert _cli("export", run, "--format", "alpaca").exit_code == 0
    assert json.loads((run / "bigrec.json").read_text(encoding="utf-8"))[1]["output"] == '"塞尔达传说 旷野之息"'
    (run / "trl").write_text("not a folder")
    res = _cli("export", run, "--format", "trl")
    assert res.exit_code == 2 and "trl: is a file, not a folder" in res.output


# ----------------------------------------------------------------------------- score records the wording

def test_score_records_its_template_and_export_follows_it(tmp_path):
    data = write_tiny_prepared(tmp_path / "data", tiny_samples(24, N_ITEMS, seed=4), N_ITEMS, shard_size=8)
    sur = tmp_path / "sur"
    sur.mkdir()
    save_surrogate(build_surrogate("sasrec", n_items=N_ITEMS, hidden=8, n_blocks=1, n_heads=2, ffn_hidden=16,
                                   max_len=10, dropout=0.0, seed=1), sur)
    llm = make_tiny_causal_lm("llama", [f"Item number {i}" for i in range(1, N_ITEMS + 1)], tmp_path / "llm",
                              hidden=16, layers=1)
    run = tmp_path / "run"
    res = _cli("score", data, "--surrogate", sur, "--out", run, "--target", "bigrec", "--llm", llm, "--workers", 0,
               "--template", "movies", "--device", "cpu", "--dtype", "fp32", "--hessian-samples", 16,
               "--batch-size", 8, "--effort-batch-size", 8, "--shard-size", 8, "--quiet")
    assert res.exit_code == 0, res.output
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["parameters"]["template"] == "movies" and manifest["target"]["template"] == "movies"
    assert manifest["target"]["device"] == "cpu" and manifest["target"]["dtype"] == "float32"
    assert manifest["executor"]["device"] == "cpu" and manifest["target"]["quantization"] is None
    assert _cli("select", run, "--method", "random", "--n", 5, "--no-plot").exit_code == 0
    assert _cli("export", run, "--format", "trl").exit_code == 0
    assert all("watched" in r["prompt"] for r in _jsonl(run / "trl" / "train.jsonl"))
    res = _cli("export", run, "--template", "games")
    assert res.exit_code == 2 and "--template games" in res.output and "--template movies" in res.output


# ----------------------------------------------------------------------------- the real libraries read them

@pytest.fixture
def exported(tmp_path):
    run = make_run(tmp_path, {"target": {"target": "bigrec", "template": "games"}})
    assert _cli("export", run).exit_code == 0
    return run


def test_hf_datasets_reads_the_trl_and_alpaca_exports(exported, tmp_path):
    datasets = pytest.importorskip("datasets", reason="HF datasets is not installed (pip install -e .[test])")
    cache = tmp_path / "hf-cache"
    trl = datasets.load_dataset("json", data_files=str(exported / "trl" / "train.jsonl"), split="train",
                                cache_dir=str(cache))
    assert trl.column_names == ["prompt", "completion"] and trl.num_rows == 3
    assert list(zip(trl["prompt"], trl["completion"])) == _expected("games")
    alpaca = datasets.load_dataset("json", data_files=str(exported / "bigrec.json"), split="train",
                                   cache_dir=str(cache))
    assert sorted(alpaca.column_names) == ["input", "instruction", "output"] and alpaca.num_rows == 3
    assert alpaca[2]["output"] == '"Ωmega \\ back"' and "Pokémon Sword 🎮" in alpaca[0]["input"]


def test_trl_sft_trainer_runs_two_steps_on_the_trl_export(exported, tmp_path):
    datasets = pytest.importorskip("datasets", reason="HF datasets is not installed (pip install -e .[test])")
    trl = pytest.importorskip("trl", reason="TRL is not installed (pip install -e .[test])")
    from transformers import AutoModelForCausalLM

    from finetune.llm import load_tokenizer

    llm = make_tiny_causal_lm("llama", TITLES[1:], tmp_path / "llm", hidden=16, layers=1)
    tokenizer = load_tokenizer(llm)          # the pad token dealrec's own loaders give it
    dataset = datasets.load_dataset("json", data_files=str(exported / "trl" / "train.jsonl"), split="train",
                                    cache_dir=str(tmp_path / "hf-cache"))
    args = trl.SFTConfig(output_dir=str(tmp_path / "sft"), max_steps=2, per_device_train_batch_size=2,
                         learning_rate=1e-3, report_to=[], save_strategy="no", use_cpu=True, logging_steps=1,
                         dataloader_num_workers=0, seed=0)
    trainer = trl.SFTTrainer(model=AutoModelForCausalLM.from_pretrained(llm), args=args, train_dataset=dataset,
                             processing_class=tokenizer)
    # TRL tokenizes the text dealrec renders: prompt then completion (then its eos), nothing else around it
    first = trainer.train_dataset[0]
    prompt, completion = _expected("games")[0]
    assert tokenizer.decode(first["input_ids"], skip_special_tokens=True) == prompt + completion
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert trainer.state.global_step == 2 and len(losses) == 2 and all(np.isfinite(losses))


# LLaMA-Factory's dataset_info.json, as its data/README.md documents it: an entry names its data by one of
# these sources; "formatting" is alpaca (default) or sharegpt; the alpaca format's columns are these.
LF_SOURCES = ("hf_hub_url", "ms_hub_url", "script_url", "cloud_file_name", "file_name")
LF_KEYS = {*LF_SOURCES, "formatting", "ranking", "subset", "split", "folder", "num_samples", "columns", "tags",
           "file_sha1", "revision"}
LF_ALPACA_COLUMNS = {"prompt", "query", "response", "history", "system", "tools", "images", "videos", "audios",
                     "chosen", "rejected", "kto_tag"}


def check_llamafactory_dataset(folder) -> list[tuple[str, str]]:
    """Validate ``folder/dataset_info.json`` and the alpaca files it names; return (human prompt, response) of
    every record the way LLaMA-Factory builds them (``instruction`` + ``\\n`` + ``input`` when there is one)."""
    info = json.loads((folder / "dataset_info.json").read_text(encoding="utf-8"))
    assert isinstance(info, dict) and info, "dataset_info.json is a JSON object of named datasets"
    turns = []
    for name, entry in info.items():
        assert isinstance(name, str) and isinstance(entry, dict)
        assert not set(entry) - LF_KEYS, f"{name}: unknown keys {set(entry) - LF_KEYS}"
        assert any(k in entry for k in LF_SOURCES), f"{name}: no data source"
        assert entry.get("formatting", "alpaca") == "alpaca"
        assert isinstance(entry.get("ranking", False), bool)
        columns = {"prompt": "instruction", "query": "input", "response": "output", **entry.get("columns", {})}
        assert not set(columns) - LF_ALPACA_COLUMNS, f"{name}: unknown columns {set(columns) - LF_ALPACA_COLUMNS}"
        records = json.loads((folder / entry["file_name"]).read_text(encoding="utf-8"))
        assert isinstance(records, list) and records
        for r in records:
            assert isinstance(r, dict)
            for role in ("prompt", "query", "response"):
                assert isinstance(r[columns[role]], str), f"{name}: column {columns[role]!r} of a record"
            assert r[columns["prompt"]] and r[columns["response"]], "instruction and output are required"
            query = r[columns["query"]]
            turns.append((r[columns["prompt"]] + ("\n" + query if query else ""), r[columns["response"]]))
    return turns


def test_llamafactory_export_passes_the_documented_schema(exported):
    folder = exported / "llamafactory"
    info = json.loads((folder / "dataset_info.json").read_text())
    assert info == {"dealrec_coreset": {"file_name": "dealrec_coreset.json", "formatting": "alpaca",
                                        "columns": {"prompt": "instruction", "query": "input", "response": "output"}}}
    # the prompt LLaMA-Factory assembles from the columns is the whole prompt the effort was scored on
    assert check_llamafactory_dataset(folder) == _expected("games")


def test_the_schema_check_catches_a_broken_dataset_info(exported):
    folder = exported / "llamafactory"
    info = json.loads((folder / "dataset_info.json").read_text())
    info["dealrec_coreset"]["columns"]["answer"] = "output"
    (folder / "dataset_info.json").write_text(json.dumps(info))
    with pytest.raises(AssertionError, match="unknown columns"):
        check_llamafactory_dataset(folder)
    del info["dealrec_coreset"]["columns"]["answer"]
    del info["dealrec_coreset"]["file_name"]
    (folder / "dataset_info.json").write_text(json.dumps(info))
    with pytest.raises(AssertionError, match="no data source"):
        check_llamafactory_dataset(folder)
