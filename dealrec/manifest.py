"""``RUN/manifest.json``, the record of a run folder: read, written and asked here only.

The manifest is one JSON object. Each command that works in a run folder owns some of its
top-level keys and leaves every other key as it found it:

- ``dealrec score``: ``command``, ``inputs``, ``parameters``, ``seed``, ``hvp``, ``target``,
  ``executor``, ``counts``, ``package_versions``, ``float_platform``, ``phases`` (merged into the phases already
  recorded), ``score_seconds``, ``outputs``;
- ``dealrec select``: ``selection``;
- ``dealrec export``: ``exports`` (merged into the exports already recorded);
- ``dealrec prune``: ``prune``;
- every command that takes ``--config`` (score, select, prune, compare; ``dealrec.runconfig``):
  ``options``, ``{command: {flag: value}}``, merged (each command sets its own entry).

One reader, ``RunManifest.read``: a missing file is an empty manifest (every command may start a
fresh run folder); a file that cannot be read, is not valid JSON or is not a JSON object is one
``InputError`` line naming it, the same for every command. One writer, ``update_manifest``: it
re-reads the file, sets the caller's keys and writes the whole object atomically. One answer to
"which data / surrogate folder does this run name", ``RunManifest.named_folder``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Mapping, TypedDict

from dealrec_core.errors import InputError

MANIFEST_FILE = "manifest.json"


# ----------------------------------------------------------------------------- the sections

class ScoreInputs(TypedDict, total=False):
    """``inputs`` (score): what was scored, by path and by content."""
    data: str
    surrogate: str
    samples_sha256: list[str]
    surrogate_sha256: dict[str, str]        # file name -> sha256


class BaselineRecord(TypedDict, total=False):
    """``selection.inputs.baseline_columns[column]``: where a baseline column of the scores came from."""
    surrogate_sha256: str
    samples_sha256: list[str]
    values_sha256: str


class SelectionInputs(TypedDict, total=False):
    data: str
    samples_sha256: list[str]
    scores_sha256: str
    surrogate: str                          # baseline methods only
    surrogate_sha256: str
    baseline_reused: str
    baseline_seconds: float
    baseline_columns: dict[str, BaselineRecord]


# ``selection`` (select): the selection's summary (method, n, k, hard_prune, seed, lambda, counts,
# strata; see dealrec.select.select_coreset), then ``inputs``, ``outputs`` and ``seconds``.
SelectionSection = TypedDict("SelectionSection", {
    "method": str, "n": int, "k": int, "hard_prune": float, "seed": int, "lambda": float,
    "n_samples": int, "n_selected": int, "n_hard_pruned": int,
    # stratified methods: the allocation asked for (equal, sqrt, auto), the one used, and under auto the
    # check's figure of each coreset it computed (dealrec.coreset); "check": composition.popularity_check's
    "allocation": str, "allocation_used": str, "allocation_checks": dict[str, float], "check": dict,
    "inputs": SelectionInputs, "outputs": dict[str, str], "seconds": float}, total=False)


class ExportsSection(TypedDict, total=False):
    """``exports`` (export): the files written, relative to RUN, and what they were made from."""
    bigrec: str
    llamafactory: list[str]
    trl: str
    template: str                           # the prompt wording of the text exports
    tiger: list[str]
    n_samples: int
    coreset_sha256: str


class PruneSection(TypedDict, total=False):
    """``prune`` (prune): its parameters, the timing of each phase and the coreset size."""
    command: str
    data: str
    n: int
    seed: int
    surrogate_minutes: float | None
    surrogate_epochs: int
    threads: int | None
    surrogate_model: str                    # the surrogate's model (trained, or read from --surrogate's config)
    phases: dict[str, dict]
    seconds: float
    n_selected: int


# ----------------------------------------------------------------------------- the manifest

class RunManifest:
    """The manifest of the run folder ``folder`` (``data``: the JSON object, as read)."""

    def __init__(self, folder: str | Path, data: Mapping[str, Any] | None = None):
        self.folder = Path(folder)
        self.data: dict[str, Any] = dict(data or {})

    @property
    def path(self) -> Path:
        return self.folder / MANIFEST_FILE

    @classmethod
    def read(cls, folder: str | Path) -> "RunManifest":
        """The one reader: ``folder/manifest.json``, or an empty manifest where there is none."""
        path = Path(folder) / MANIFEST_FILE
        if not path.exists():
            return cls(folder)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as e:
            raise InputError(path, f"not valid JSON ({e})") from None
        except OSError as e:
            raise InputError(path, f"cannot be read ({e.strerror or e})") from None
        if not isinstance(data, dict):
            raise InputError(path, "not a JSON object")
        return cls(folder, data)

    def write(self, folder: str | Path | None = None) -> None:
        """Write the whole manifest into ``folder`` (default: the one it was read from), atomically."""
        from dealrec_core.data import write_json_atomic

        write_json_atomic(Path(folder if folder is not None else self.folder) / MANIFEST_FILE, self.data)

    # ---- typed views of the sections (an absent or malformed section reads as empty)

    def section(self, key: str) -> dict:
        value = self.data.get(key)
        return value if isinstance(value, dict) else {}

    @property
    def inputs(self) -> ScoreInputs:
        return self.section("inputs")  # type: ignore[return-value]

    @property
    def phases(self) -> dict[str, dict]:
        return self.section("phases")

    @property
    def selection(self) -> SelectionSection:
        return self.section("selection")  # type: ignore[return-value]

    @property
    def exports(self) -> ExportsSection:
        return self.section("exports")  # type: ignore[return-value]

    @property
    def prune(self) -> PruneSection:
        return self.section("prune")  # type: ignore[return-value]

    def scored_template(self) -> str | None:
        """The prompt wording the run's effort was scored with (``target.template`` of a ``bigrec`` target), or
        None where the effort read no prompt (a TIGER target, influence only, a run scored before the option)."""
        target = self.section("target")
        name = target.get("template") if target.get("target") == "bigrec" else None
        return name if isinstance(name, str) else None

    def run_template(self) -> str | None:
        """``parameters.template``: the ``--template`` that ``dealrec score`` was given, whatever its target."""
        name = self.section("parameters").get("template")
        return name if isinstance(name, str) else None

    def baseline_columns(self) -> dict[str, BaselineRecord]:
        """``selection.inputs.baseline_columns``: the baseline columns of the scores and their origin."""
        inputs = self.selection.get("inputs")
        columns = inputs.get("baseline_columns") if isinstance(inputs, dict) else None
        return columns if isinstance(columns, dict) else {}

    def named_folder(self, key: str) -> str | None:
        """The folder this run names under ``key`` (``data``, ``surrogate``), or None.

        Every shape a run folder may hold is read: ``{key: "DIR"}`` and ``{key: {"path"|"dir"|"root"|"out":
        "DIR", ...}}``, at the top level (a hand-made run), under ``inputs`` (``dealrec score``) or under
        ``selection.inputs`` (a run that ``select`` started), first found wins. A relative path is taken
        from the working folder, else from the run folder.
        """
        def lookup(section):
            v = section.get(key) if isinstance(section, dict) else None
            if isinstance(v, str):
                return v
            if isinstance(v, dict):
                for k in ("path", "dir", "root", "out"):
                    if isinstance(v.get(k), str):
                        return v[k]
            return None

        value = lookup(self.data) or lookup(self.data.get("inputs")) or lookup(self.selection.get("inputs"))
        if value is None:
            return None
        p = Path(value)
        if not p.is_absolute() and not p.exists() and (self.folder / p).exists():
            p = self.folder / p
        return str(p)

    def data_folder(self) -> str | None:
        return self.named_folder("data")

    def surrogate_folder(self) -> str | None:
        return self.named_folder("surrogate")


def update_manifest(folder: str | Path, sections: Mapping[str, Any], *, merge: Iterable[str] = (),
                    start_from: str | Path | None = None) -> RunManifest:
    """The one writer: set ``sections`` (top-level keys) in ``folder/manifest.json`` and keep every other key.

    The file is re-read first (a key already there keeps its place); a key named in ``merge`` is
    merged one level deep into what is recorded (``phases``, ``exports``). Where ``folder`` has no
    manifest yet, ``start_from``'s is the starting point (a fresh ``select --out`` keeps RUN's record).
    Written atomically; returns what was written.
    """
    folder = Path(folder)
    source = start_from if start_from is not None and not (folder / MANIFEST_FILE).exists() else folder
    manifest = RunManifest.read(source)
    merge = set(merge)
    for key, value in sections.items():
        manifest.data[key] = {**manifest.section(key), **value} if key in merge else value
    manifest.folder = folder
    manifest.write()
    return manifest
