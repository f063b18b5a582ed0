"""BIGRec prompts: alpaca records, token budget, truncation of whole titles only."""
import inspect

import pytest

from finetune.prompts import (DEFAULT_DOMAIN, DOMAIN_TEMPLATES, PromptTemplate, alpaca_record, encode_example,
                              encode_prompt, kept_history)
from tiny_lm import train_title_tokenizer

TITLES = [f"Game {w} {i}: The {w.capitalize()} Edition" for i, w in
          enumerate(["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel",
                     "india", "juliet", "kilo", "lima", "mike", "november", "oscar", "papa"] * 3)]


@pytest.fixture(scope="module", params=["llama", "qwen2", "gpt2"])
def tokenizer(request):
    return train_title_tokenizer(request.param, TITLES, vocab_size=400)


def test_alpaca_record_fields_and_domain_wording():
    rec = alpaca_record(["A", "B"], "C")
    assert set(rec) == {"instruction", "input", "output"}
    assert rec["input"].endswith('"A", "B"') and rec["output"] == '"C"'
    assert "game" in rec["instruction"]
    books = alpaca_record([], "C", DOMAIN_TEMPLATES["books"])
    assert "book" in books["instruction"] and "game" not in books["instruction"]
    assert books["input"] == "The user has not read any books yet."
    custom = PromptTemplate(noun="song", plural="songs", verb="heard", instruction="Pick a {noun}.")
    assert alpaca_record(["x"], "y", custom)["instruction"] == "Pick a song."


def test_the_default_domain_is_the_default_wording():
    """One default domain (BIGRec's --domain, score's --template, export's --template when the run records
    none): the one PromptTemplate's defaults word."""
    from dealrec.export import export_template, run_export
    from dealrec.manifest import RunManifest
    from dealrec.score import ScoreConfig
    from finetune.bigrec import BigrecConfig

    assert DOMAIN_TEMPLATES[DEFAULT_DOMAIN] == PromptTemplate()
    assert BigrecConfig().domain == DEFAULT_DOMAIN == ScoreConfig().template
    assert inspect.signature(run_export).parameters["template"].default is None   # None: the recorded one
    assert export_template(None, RunManifest("."), None) == DEFAULT_DOMAIN


def test_untruncated_example_is_prompt_plus_response(tokenizer):
    tpl = PromptTemplate()
    ex = encode_example(tokenizer, TITLES[:3], TITLES[3], tpl, max_tokens=10_000, loss_on="response")
    n_prompt = sum(1 for lab in ex["labels"] if lab == -100)
    assert ex["input_ids"][:n_prompt] == encode_prompt(tokenizer, TITLES[:3], tpl, 10_000)
    response = ex["input_ids"][n_prompt:]
    assert ex["labels"][n_prompt:] == response
    assert response[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(response[:-1]) == '"' + TITLES[3] + '"'
    all_ex = encode_example(tokenizer, TITLES[:3], TITLES[3], tpl, max_tokens=10_000, loss_on="all")
    assert all_ex["input_ids"] == ex["input_ids"] == all_ex["labels"]


@pytest.mark.parametrize("slack", [0, 7, 30, 81, 200])
def test_truncation_drops_oldest_whole_titles_and_fits(tokenizer, slack):
    tpl = PromptTemplate()
    history, target = TITLES[:40], TITLES[40]
    # budgets from "no room for any title" upwards (the tiny tokenizer spends many tokens on the preamble)
    max_tokens = len(encode_example(tokenizer, [], target, tpl, max_tokens=10_000)["input_ids"]) + slack
    ex = encode_example(tokenizer, history, target, tpl, max_tokens=max_tokens)
    assert len(ex["input_ids"]) <= max_tokens
    kept = kept_history(tokenizer, history, target, tpl, max_tokens)
    assert kept == history[len(history) - len(kept):]  # a suffix: only the oldest go
    # the encoded prompt is exactly the prompt of the kept titles: no title is cut in half
    n_prompt = sum(1 for lab in ex["labels"] if lab == -100)
    bos = 1 if tokenizer.bos_token_id is not None else 0
    assert tokenizer.decode(ex["input_ids"][bos:n_prompt]) == tpl.render_prompt(kept)
    # and as many titles as possible were kept: one more would not fit
    if len(kept) < len(history):
        longer = history[len(history) - len(kept) - 1:]
        bigger = encode_example(tokenizer, longer, target, tpl, max_tokens=10_000)
        assert len(bigger["input_ids"]) > max_tokens


def test_empty_history_and_oversized_target_are_kept_whole(tokenizer):
    tpl = PromptTemplate()
    ex = encode_example(tokenizer, [], TITLES[0], tpl, max_tokens=512)
    assert tpl.empty_history.format(verb="played", plural="games") in tokenizer.decode(ex["input_ids"])
    huge = " ".join(TITLES)
    ex = encode_example(tokenizer, TITLES[:5], huge, tpl, max_tokens=64, loss_on="response")
    response = [i for i, lab in zip(ex["input_ids"], ex["labels"]) if lab != -100]
    assert tokenizer.decode(response[:-1]) == f'"{huge}"'
    assert kept_history(tokenizer, TITLES[:5], huge, tpl, 64) == []


def test_generation_prompt_respects_budget(tokenizer):
    budget = len(encode_prompt(tokenizer, [], PromptTemplate(), max_tokens=10_000)) + 40
    ids = encode_prompt(tokenizer, TITLES, PromptTemplate(), max_tokens=budget)
    assert budget - 15 < len(ids) <= budget
    assert ids[-1] == encode_prompt(tokenizer, [], PromptTemplate())[-1]


def test_bad_loss_on_rejected(tokenizer):
    with pytest.raises(ValueError, match="loss_on"):
        encode_example(tokenizer, [], "x", loss_on="prompt")
