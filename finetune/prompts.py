"""BIGRec prompts: the alpaca template over item titles, and token-budgeted encoding.

A training example is one user's sequence: the instruction, the input (the titles of the
history, oldest first) and the output (the target's title). When the encoded example
exceeds the token budget (the paper: 512), whole titles are dropped from the OLD end of
the history until it fits: a title is never cut in half, and the target is never cut.

This module is a stable API: the scoring engine builds the same prompts for its effort
score, so that the effort it measures is the loss BIGRec is actually trained on.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

ALPACA_PREAMBLE = ("Below is an instruction that describes a task, paired with an input that provides "
                   "further context. Write a response that appropriately completes the request.")

LOSS_ON = ("response", "all")


@dataclass(frozen=True)
class PromptTemplate:
    """Per-domain wording of the BIGRec prompt; the defaults describe video games."""

    noun: str = "game"            # one item: "game", "book", "movie"
    plural: str = "games"
    verb: str = "played"          # what users did with items: "played", "read", "watched"
    instruction: str = ("Given the {plural} a user has {verb}, in order, recommend the next "
                        "{noun} the user will like.")
    history_intro: str = "The user has {verb} the following {plural} before: "
    empty_history: str = "The user has not {verb} any {plural} yet."
    preamble: str = ALPACA_PREAMBLE

    def _fill(self, text: str) -> str:
        return text.format(noun=self.noun, plural=self.plural, verb=self.verb)

    def render_instruction(self) -> str:
        return self._fill(self.instruction)

    def render_input(self, history_titles: Sequence[str]) -> str:
        if not history_titles:
            return self._fill(self.empty_history)
        return self._fill(self.history_intro) + ", ".join(quote_title(t) for t in history_titles)

    def render_output(self, target_title: str) -> str:
        """The response text; grounding embeds catalogue titles in this same form."""
        return quote_title(target_title)

    def render_prompt(self, history_titles: Sequence[str]) -> str:
        """Everything the model sees before its response (the generation prompt)."""
        return (f"{self.preamble}\n\n### Instruction:\n{self.render_instruction()}\n\n"
                f"### Input:\n{self.render_input(history_titles)}\n\n### Response:\n")


DOMAIN_TEMPLATES = {
    "games": PromptTemplate(),
    "books": PromptTemplate(noun="book", plural="books", verb="read"),
    "movies": PromptTemplate(noun="movie", plural="movies", verb="watched"),
}
DEFAULT_DOMAIN = "games"   # the wording PromptTemplate's defaults give; BIGRec's and export's default


def quote_title(title: str) -> str:
    return f'"{title}"'


def alpaca_record(history_titles: Sequence[str], target_title: str,
                  template: PromptTemplate = PromptTemplate()) -> dict[str, str]:
    """One alpaca JSON record (the format of BIGRec's training files)."""
    return {"instruction": template.render_instruction(),
            "input": template.render_input(history_titles),
            "output": template.render_output(target_title)}


def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _bos(tokenizer) -> list[int]:
    # Llama-style tokenizers expect a bos; Qwen2 has none. Added explicitly so that the result
    # does not depend on whether a tokenizer's post-processor would add it.
    return [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []


def _fit_history(tokenizer, history_titles: Sequence[str], template: PromptTemplate,
                 budget: int) -> tuple[int, list[int]]:
    """The most recent titles whose prompt fits in ``budget`` tokens: (first kept index, prompt ids).

    Prompt length grows with the number of kept titles, so a binary search over that number
    finds the longest suffix that fits; every candidate is tokenized exactly as it will be used.
    """
    n = len(history_titles)
    full = _ids(tokenizer, template.render_prompt(history_titles))
    if len(full) <= budget:
        return 0, full
    lo, hi = 0, n - 1  # keep lo titles fits (or lo == 0), keep hi + 1 does not
    best = _ids(tokenizer, template.render_prompt([]))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        ids = _ids(tokenizer, template.render_prompt(history_titles[n - mid:]))
        if len(ids) <= budget:
            lo, best = mid, ids
        else:
            hi = mid - 1
    return n - lo, best


def encode_prompt(tokenizer, history_titles: Sequence[str], template: PromptTemplate = PromptTemplate(),
                  max_tokens: int = 512) -> list[int]:
    """Token ids of the generation prompt (bos + prompt), oldest titles dropped to fit ``max_tokens``."""
    bos = _bos(tokenizer)
    _, prompt = _fit_history(tokenizer, list(history_titles), template, max_tokens - len(bos))
    return bos + prompt


def encode_example(tokenizer, history_titles: Sequence[str], target_title: str,
                   template: PromptTemplate = PromptTemplate(), max_tokens: int = 512,
                   loss_on: str = "response") -> dict[str, list[int]]:
    """Input ids and labels of one training example: bos + prompt + response + eos.

    ``loss_on="response"`` masks the prompt out of the loss (label -100); ``"all"`` trains on
    the whole sequence. Oldest history titles are dropped whole until the example fits in
    ``max_tokens``; if even the empty-history example is longer (a huge target title), it is
    kept whole rather than cutting the target.
    """
    if loss_on not in LOSS_ON:
        raise ValueError(f"loss_on must be one of {LOSS_ON}, got {loss_on!r}")
    bos = _bos(tokenizer)
    response = _ids(tokenizer, template.render_output(target_title))
    if tokenizer.eos_token_id is not None:
        response.append(tokenizer.eos_token_id)
    budget = max_tokens - len(bos) - len(response)
    _, prompt = _fit_history(tokenizer, list(history_titles), template, budget)
    input_ids = bos + prompt + response
    if loss_on == "all":
        labels = list(input_ids)
    else:
        labels = [-100] * (len(bos) + len(prompt)) + response
    return {"input_ids": input_ids, "labels": labels}


def kept_history(tokenizer, history_titles: Sequence[str], target_title: str | None,
                 template: PromptTemplate = PromptTemplate(), max_tokens: int = 512) -> list[str]:
    """The history titles that survive truncation (for inspection and tests)."""
    bos = _bos(tokenizer)
    budget = max_tokens - len(bos)
    if target_title is not None:
        budget -= len(_ids(tokenizer, template.render_output(target_title)))
        budget -= tokenizer.eos_token_id is not None
    first, _ = _fit_history(tokenizer, list(history_titles), template, budget)
    return list(history_titles[first:])
