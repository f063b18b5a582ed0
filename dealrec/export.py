"""Exports of a coreset for the downstream trainers (docs/selection.md, "Exports").

- ``RUN/bigrec.json``: BIGRec's alpaca training file, a JSON list of
  ``{"instruction", "input", "output"}`` built by ``finetune.prompts.alpaca_record`` from the
  sample's history titles (oldest first) and target title; UTF-8, non-ASCII kept as is.
  Records follow the coreset's order (ascending sample_id). No truncation happens here:
  BIGRec's trainer fits the prompt to its token budget itself.
- ``RUN/tiger/train.parquet``: the coreset's samples (``sample_id``, ``user``, ``history``,
  ``target``), the samples-table schema that ``dealrec finetune tiger --train`` reads;
- ``RUN/tiger/sequential_train.txt``: the release's plain format, one line a sample:
  ``user item item ...`` (history then target).

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

FORMATS = ("bigrec", "tiger", "all")
DEFAULT_FORMAT = "all"
BIGREC_FILE = "bigrec.json"
TIGER_DIR = "tiger"
TIGER_PARQUET = "train.parquet"
TIGER_TEXT = "sequential_train.txt"


def _write_text_atomic(path: Path, text: str) -> None:
    write_text_atomic(path, text)


def bigrec_records(samples: Samples, titles: list[str], template=None, source="coreset") -> list[dict[str, str]]:
    """One alpaca record per sample, in the samples' order; ``source`` names the samples' file in errors."""
    template = template or PromptTemplate()
    n_items = len(titles) - 1

    def title(item: int, i: int, field: str) -> str:
        if not 1 <= item <= n_items:
            raise InputError(source, f"item {item} is not in the item catalogue (1..{n_items})",
                             row=i + 1, field=field)
        return titles[item]

    return [alpaca_record([title(int(h), i, "history") for h in hist], title(int(t), i, "target"), template)
            for i, (hist, t) in enumerate(zip(samples.history, samples.target))]


def write_bigrec(samples: Samples, titles: list[str], path: str | Path, template=None, source="coreset") -> int:
    records = bigrec_records(samples, titles, template, source)
    _write_text_atomic(Path(path), json.dumps(records, ensure_ascii=False, indent=1) + "\n")
    return len(records)


def write_tiger(samples: Samples, out_dir: str | Path) -> int:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_parquet_atomic(samples.to_table().cast(SAMPLES_SCHEMA), out_dir / TIGER_PARQUET)
    lines = [" ".join(str(int(x)) for x in [u, *h, t]) for u, h, t in zip(samples.user, samples.history,
                                                                          samples.target)]
    _write_text_atomic(out_dir / TIGER_TEXT, "".join(line + "\n" for line in lines))
    return len(lines)


def _check_targets(run: Path, fmt: str, data) -> None:
    """Before anything is written: RUN is written in place (bigrec.json, tiger/, manifest.json), so the data
    folder must not be RUN, hold it or be one of those; and no file may stand where a folder goes (or back)."""
    check_output(run, {"--data": data}, writes=(BIGREC_FILE, TIGER_DIR, MANIFEST_FILE), option="RUN")
    files = [MANIFEST_FILE]
    if fmt in ("bigrec", "all"):
        files.append(BIGREC_FILE)
    if fmt in ("tiger", "all"):
        tiger = run / TIGER_DIR
        if tiger.exists() and not tiger.is_dir():
            raise DealrecError(f"{tiger}: is a file, not a folder (the TIGER export goes there; move it away)")
        files += [f"{TIGER_DIR}/{TIGER_PARQUET}", f"{TIGER_DIR}/{TIGER_TEXT}"]
    for name in files:
        if (run / name).is_dir():
            raise DealrecError(f"{run / name}: is a folder, not a file (the export writes a file there; move it away)")


def run_export(run, fmt: str = DEFAULT_FORMAT, data=None, template: str = DEFAULT_DOMAIN) -> dict:
    """``dealrec export``: write the chosen exports of RUN/coreset.parquet into RUN."""
    if fmt not in FORMATS:
        raise DealrecError(f"unknown export format {fmt!r} (choose from {', '.join(FORMATS)})")
    run = Path(run)
    coreset_path = run / CORESET_FILE
    if not coreset_path.exists():
        raise DealrecError(f"{coreset_path}: no such file (run 'dealrec select {run}' first)")
    samples = load_samples(coreset_path)
    written = {}
    if fmt in ("bigrec", "all"):
        if template not in DOMAIN_TEMPLATES:
            raise DealrecError(f"unknown prompt template {template!r} (choose from {', '.join(DOMAIN_TEMPLATES)})")
        data = data or RunManifest.read(run).data_folder()
        if data is None:
            raise DealrecError(f"no data folder for item titles: {run}/manifest.json names none; pass --data DIR")
    _check_targets(run, fmt, data if fmt in ("bigrec", "all") else None)
    RunManifest.read(run)   # an unreadable manifest is refused before any file is written
    if fmt in ("bigrec", "all"):
        titles = PreparedData(data).titles()
        write_bigrec(samples, titles, run / BIGREC_FILE, DOMAIN_TEMPLATES[template], source=coreset_path)
        written["bigrec"] = BIGREC_FILE
    if fmt in ("tiger", "all"):
        write_tiger(samples, run / TIGER_DIR)
        written["tiger"] = [f"{TIGER_DIR}/{TIGER_PARQUET}", f"{TIGER_DIR}/{TIGER_TEXT}"]
    # only the exports section changes, merged into the exports already recorded
    update_manifest(run, {"exports": {**written, "n_samples": len(samples),
                                      "coreset_sha256": sha256_file(coreset_path)}}, merge=("exports",))
    return {"n_samples": len(samples), "files": written}


def _export_command():
    @click.command("export")
    @click.argument("run", type=click.Path(file_okay=False))
    @click.option("--format", "fmt", type=click.Choice(FORMATS), default=DEFAULT_FORMAT, show_default=True)
    @click.option("--data", type=click.Path(file_okay=False), default=None,
                  help="Prepared data folder for item titles (default: the one RUN/manifest.json names).")
    @click.option("--template", default=DEFAULT_DOMAIN, show_default=True,
                  help="BIGRec prompt wording (finetune.prompts.DOMAIN_TEMPLATES).")
    def export_cmd(run, fmt, data, template):
        """Export RUN/coreset.parquet for BIGRec (bigrec.json) and TIGER (tiger/)."""
        info = run_export(run, fmt, data, template)
        click.echo(f"exported {info['n_samples']} samples: {json.dumps(info['files'])}")

    return export_cmd


export_command = _export_command()
