"""Exports of a coreset for the downstream trainers (docs/selection.md, "Exports").

- ``RUN/bigrec.json``: BIGRec's alpaca training file, a JSON list of
  ``{"instruction", "input", "output"}`` built by ``finetune.prompts.alpaca_record`` from the
  sample's history titles (oldest first) and target title; UTF-8, non-ASCII kept as is.
  Records follow the coreset's order (ascending sample_id). No truncation happens here:
  BIGRec's trainer fits the prompt to its token budget itself.
- ``RUN/tiger/train.parquet``: the coreset's samples (``sample_id``, ``user``, ``history``,
  ``target``), the samples-table schema that ``dealrec finetune tiger --train`` reads;
- ``RUN/tiger/sequential_train.txt``: the release's plain format, one line a sample:
  ``user item item ...`` (history then target);
- ``RUN/llamafactory/``: LLaMA-Factory's ``dataset_info.json`` and the data file it names
  (``dealrec_coreset.json``, alpaca columns): each record's ``instruction`` is the whole rendered
  BIGRec prompt (``input`` empty) and its ``output`` the quoted target title, so that trained with
  LLaMA-Factory's ``template: empty`` the model reads the text the effort was scored on;
- ``RUN/trl/train.jsonl``: TRL's prompt/completion JSON lines (``{"prompt", "completion"}``), the
  same rendered prompt and response, for ``SFTTrainer`` through ``datasets.load_dataset("json")``.

The text exports use one prompt wording (``finetune.prompts.DOMAIN_TEMPLATES``): the one the run's
effort was scored with where ``RUN/manifest.json`` records a BIGRec effort (``target.template``); an
explicit ``--template`` that disagrees with it is refused. ``alpaca`` is the format's own name for
``bigrec`` (the same ``bigrec.json``).

Every file is written under a temporary name and renamed into place.
"""
from __future__ import annotations

import json
from pathlib import Path

import click

from dealrec_core.data import PreparedData, SAMPLES_SCHEMA, Samples, load_samples, sha256_file, \
    write_parquet_atomic, write_text_atomic
from dealrec_core.errors import DealrecError, InputError
from dealrec_core.paths import check_output
from dealrec.manifest import MANIFEST_FILE, RunManifest, update_manifest
from dealrec.select import CORESET_FILE
from finetune.prompts import DEFAULT_DOMAIN, DOMAIN_TEMPLATES, PromptTemplate, alpaca_record

FORMATS = ("bigrec", "alpaca", "llamafactory", "trl", "tiger", "all")
DEFAULT_FORMAT = "all"
TEXT_FORMATS = ("bigrec", "alpaca", "llamafactory", "trl")   # rendered from item titles in a prompt wording
BIGREC_FILE = "bigrec.json"
TIGER_DIR = "tiger"
TIGER_PARQUET = "train.parquet"
TIGER_TEXT = "sequential_train.txt"
LLAMAFACTORY_DIR = "llamafactory"
LLAMAFACTORY_INFO = "dataset_info.json"
LLAMAFACTORY_DATASET = "dealrec_coreset"   # the name a LLaMA-Factory config asks for (dataset: dealrec_coreset)
LLAMAFACTORY_FILE = f"{LLAMAFACTORY_DATASET}.json"
TRL_DIR = "trl"
TRL_FILE = "train.jsonl"
FOLDER_EXPORTS = {LLAMAFACTORY_DIR: "LLaMA-Factory", TRL_DIR: "TRL", TIGER_DIR: "TIGER"}   # folder -> whose


def _write_text_atomic(path: Path, text: str) -> None:
    write_text_atomic(path, text)


def sample_titles(samples: Samples, titles: list[str], source="coreset") -> list[tuple[list[str], str]]:
    """``(history titles, target title)`` of each sample, in the samples' order; an item outside the
    catalogue is an ``InputError`` naming ``source``, the row and the field."""
    n_items = len(titles) - 1

    def title(item: int, i: int, field: str) -> str:
        if not 1 <= item <= n_items:
            raise InputError(source, f"item {item} is not in the item catalogue (1..{n_items})",
                             row=i + 1, field=field)
        return titles[item]

    return [([title(int(h), i, "history") for h in hist], title(int(t), i, "target"))
            for i, (hist, t) in enumerate(zip(samples.history, samples.target))]


def bigrec_records(samples: Samples, titles: list[str], template=None, source="coreset") -> list[dict[str, str]]:
    """One alpaca record per sample, in the samples' order; ``source`` names the samples' file in errors."""
    template = template or PromptTemplate()
    return [alpaca_record(history, target, template) for history, target in sample_titles(samples, titles, source)]


def prompt_records(samples: Samples, titles: list[str], template: PromptTemplate,
                   source="coreset") -> list[tuple[str, str]]:
    """``(prompt, response)`` of each sample as text: the whole rendered prompt (``render_prompt``, which
    effort and ``finetune bigrec`` tokenize) and the response (``render_output``)."""
    return [(template.render_prompt(history), template.render_output(target))
            for history, target in sample_titles(samples, titles, source)]


def write_bigrec(samples: Samples, titles: list[str], path: str | Path, template=None, source="coreset") -> int:
    records = bigrec_records(samples, titles, template, source)
    _write_text_atomic(Path(path), json.dumps(records, ensure_ascii=False, indent=1) + "\n")
    return len(records)


def write_llamafactory(samples: Samples, titles: list[str], out_dir: str | Path, template: PromptTemplate,
                       source="coreset") -> int:
    """LLaMA-Factory's alpaca-format data file and the ``dataset_info.json`` that describes it (its
    data/README.md: ``file_name``, ``formatting``, ``columns`` naming prompt, query and response)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = [{"instruction": prompt, "input": "", "output": response}
               for prompt, response in prompt_records(samples, titles, template, source)]
    _write_text_atomic(out_dir / LLAMAFACTORY_FILE, json.dumps(records, ensure_ascii=False, indent=1) + "\n")
    info = {LLAMAFACTORY_DATASET: {"file_name": LLAMAFACTORY_FILE, "formatting": "alpaca",
                                   "columns": {"prompt": "instruction", "query": "input", "response": "output"}}}
    _write_text_atomic(out_dir / LLAMAFACTORY_INFO, json.dumps(info, ensure_ascii=False, indent=2) + "\n")
    return len(records)


def write_trl(samples: Samples, titles: list[str], path: str | Path, template: PromptTemplate,
              source="coreset") -> int:
    """TRL's prompt/completion JSON lines, one record a sample, UTF-8."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"prompt": prompt, "completion": response}, ensure_ascii=False)
             for prompt, response in prompt_records(samples, titles, template, source)]
    _write_text_atomic(path, "".join(line + "\n" for line in lines))
    return len(lines)


def export_template(run: Path, manifest: RunManifest, template: str | None) -> str:
    """The prompt wording of the text exports: the one RUN's BIGRec effort was scored with (an explicit
    ``template`` that disagrees is refused), else ``template``, else RUN's ``score --template``, else the default."""
    scored = manifest.scored_template()
    if scored is not None and template is not None and template != scored:
        raise DealrecError(f"--template {template}: {run / MANIFEST_FILE} records that the effort was scored "
                           f"with --template {scored}; export with {scored} (or leave --template out)")
    name = scored or template or manifest.run_template() or DEFAULT_DOMAIN
    if name not in DOMAIN_TEMPLATES:
        raise DealrecError(f"unknown prompt template {name!r} (choose from {', '.join(DOMAIN_TEMPLATES)})")
    return name


def _writes(fmt: str) -> tuple[list[str], list[str]]:
    """(folders, files) that ``fmt`` writes in RUN, relative to it."""
    def wanted(*names):
        return fmt == "all" or fmt in names
    folders, files = [], [MANIFEST_FILE]
    if wanted("bigrec", "alpaca"):
        files.append(BIGREC_FILE)
    if wanted("llamafactory"):
        folders.append(LLAMAFACTORY_DIR)
        files += [f"{LLAMAFACTORY_DIR}/{LLAMAFACTORY_INFO}", f"{LLAMAFACTORY_DIR}/{LLAMAFACTORY_FILE}"]
    if wanted("trl"):
        folders.append(TRL_DIR)
        files.append(f"{TRL_DIR}/{TRL_FILE}")
    if wanted("tiger"):
        folders.append(TIGER_DIR)
        files += [f"{TIGER_DIR}/{TIGER_PARQUET}", f"{TIGER_DIR}/{TIGER_TEXT}"]
    return folders, files


def write_tiger(samples: Samples, out_dir: str | Path) -> int:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_parquet_atomic(samples.to_table().cast(SAMPLES_SCHEMA), out_dir / TIGER_PARQUET)
    lines = [" ".join(str(int(x)) for x in [u, *h, t]) for u, h, t in zip(samples.user, samples.history,
                                                                          samples.target)]
    _write_text_atomic(out_dir / TIGER_TEXT, "".join(line + "\n" for line in lines))
    return len(lines)


RUN_WRITES = (BIGREC_FILE, LLAMAFACTORY_DIR, TRL_DIR, TIGER_DIR, MANIFEST_FILE)   # what export may write in RUN


def _check_targets(run: Path, fmt: str, data) -> None:
    """Before anything is written: RUN is written in place (bigrec.json, llamafactory/, trl/, tiger/,
    manifest.json), so the data folder must not be RUN, hold it or be one of those; and no file may stand
    where a folder goes (or back)."""
    check_output(run, {"--data": data}, writes=RUN_WRITES, option="RUN")
    folders, files = _writes(fmt)
    for name in folders:
        if (run / name).exists() and not (run / name).is_dir():
            raise DealrecError(f"{run / name}: is a file, not a folder (the {FOLDER_EXPORTS[name]} export goes there; "
                               f"move it away)")
    for name in files:
        if (run / name).is_dir():
            raise DealrecError(f"{run / name}: is a folder, not a file (the export writes a file there; move it away)")


def run_export(run, fmt: str = DEFAULT_FORMAT, data=None, template: str | None = None) -> dict:
    """``dealrec export``: write the chosen exports of RUN/coreset.parquet into RUN. ``template``: the prompt
    wording of the text exports (None: the one RUN's manifest records, else ``DEFAULT_DOMAIN``)."""
    if fmt not in FORMATS:
        raise DealrecError(f"unknown export format {fmt!r} (choose from {', '.join(FORMATS)})")
    run = Path(run)
    coreset_path = run / CORESET_FILE
    if not coreset_path.exists():
        raise DealrecError(f"{coreset_path}: no such file (run 'dealrec select {run}' first)")
    samples = load_samples(coreset_path)
    written = {}
    text = fmt == "all" or fmt in TEXT_FORMATS
    if text:
        manifest = RunManifest.read(run)
        template = export_template(run, manifest, template)
        data = data or manifest.data_folder()
        if data is None:
            raise DealrecError(f"no data folder for item titles: {run}/manifest.json names none; pass --data DIR")
    _check_targets(run, fmt, data if text else None)
    RunManifest.read(run)   # an unreadable manifest is refused before any file is written
    folders, files = _writes(fmt)
    if text:
        titles = PreparedData(data).titles()
        wording = DOMAIN_TEMPLATES[template]
        if BIGREC_FILE in files:
            write_bigrec(samples, titles, run / BIGREC_FILE, wording, source=coreset_path)
            written["bigrec"] = BIGREC_FILE
        if LLAMAFACTORY_DIR in folders:
            write_llamafactory(samples, titles, run / LLAMAFACTORY_DIR, wording, source=coreset_path)
            written["llamafactory"] = [f"{LLAMAFACTORY_DIR}/{LLAMAFACTORY_INFO}",
                                       f"{LLAMAFACTORY_DIR}/{LLAMAFACTORY_FILE}"]
        if TRL_DIR in folders:
            write_trl(samples, titles, run / TRL_DIR / TRL_FILE, wording, source=coreset_path)
            written["trl"] = f"{TRL_DIR}/{TRL_FILE}"
    if TIGER_DIR in folders:
        write_tiger(samples, run / TIGER_DIR)
        written["tiger"] = [f"{TIGER_DIR}/{TIGER_PARQUET}", f"{TIGER_DIR}/{TIGER_TEXT}"]
    # only the exports section changes, merged into the exports already recorded
    wording_record = {"template": template} if text else {}
    update_manifest(run, {"exports": {**written, **wording_record, "n_samples": len(samples),
                                      "coreset_sha256": sha256_file(coreset_path)}}, merge=("exports",))
    return {"n_samples": len(samples), "files": written, "template": template if text else None}


def _export_command():
    @click.command("export")
    @click.argument("run", type=click.Path(file_okay=False))
    @click.option("--format", "fmt", type=click.Choice(FORMATS), default=DEFAULT_FORMAT, show_default=True)
    @click.option("--data", type=click.Path(file_okay=False), default=None,
                  help="Prepared data folder for item titles (default: the one RUN/manifest.json names).")
    @click.option("--template", default=None,
                  help=f"Prompt wording of the text exports ({', '.join(DOMAIN_TEMPLATES)}) [{DEFAULT_DOMAIN}, or "
                       f"the one RUN/manifest.json records the effort was scored with: another is refused].")
    def export_cmd(run, fmt, data, template):
        """Export RUN/coreset.parquet for BIGRec/alpaca (bigrec.json), LLaMA-Factory (llamafactory/),
        TRL (trl/train.jsonl) and TIGER (tiger/)."""
        info = run_export(run, fmt, data, template)
        click.echo(f"exported {info['n_samples']} samples: {json.dumps(info['files'])}")

    return export_cmd


export_command = _export_command()
