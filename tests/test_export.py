"""Exports: BIGRec alpaca JSON and TIGER's sequence files round-trip, Unicode intact."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from dealrec.cli import main
from dealrec_core.data import Samples, load_samples, samples_table, write_samples
from dealrec_core.errors import DealrecError
from dealrec.export import bigrec_records, write_bigrec, write_tiger
from finetune.prompts import DOMAIN_TEMPLATES, PromptTemplate, alpaca_record

TITLES = ["", "塞尔达传说 旷野之息", "Pokémon Sword 🎮", 'The "Quoted" Game', "title_4", "Ωmega \\ back"]


def _coreset():
    return Samples(np.array([3, 8, 12], dtype=np.int64), np.array([30, 80, 120], dtype=np.int64),
                   [np.array([1, 2], np.int32), np.array([], np.int32), np.array([5, 4, 3, 1], np.int32)],
                   np.array([2, 1, 5], dtype=np.int32))


def test_bigrec_json_round_trips_with_unicode(tmp_path):
    path = tmp_path / "bigrec.json"
    assert write_bigrec(_coreset(), TITLES, path) == 3
    raw = path.read_bytes().decode("utf-8")
    assert "塞尔达传说" in raw and "🎮" in raw and "\\u" not in raw  # written as UTF-8, not escaped
    records = json.loads(raw)
    assert records == [alpaca_record([TITLES[1], TITLES[2]], TITLES[2], PromptTemplate()),
                       alpaca_record([], TITLES[1], PromptTemplate()),
                       alpaca_record([TITLES[5], TITLES[4], TITLES[3], TITLES[1]], TITLES[5], PromptTemplate())]
    assert all(set(r) == {"instruction", "input", "output"} for r in records)
    assert "塞尔达传说 旷野之息" in records[0]["input"] and "Pokémon Sword 🎮" in records[0]["output"]
    assert not list(tmp_path.glob(".*tmp*"))  # nothing half-written left behind


def test_bigrec_rejects_items_outside_the_catalogue():
    bad = _coreset()
    bad.target[1] = 9
    with pytest.raises(DealrecError, match=r"coreset, row 2, field 'target': item 9 is not in the item catalogue"):
        bigrec_records(bad, TITLES)


def test_tiger_files_round_trip(tmp_path):
    coreset = _coreset()
    assert write_tiger(coreset, tmp_path / "tiger") == 3
    back = load_samples(tmp_path / "tiger" / "train.parquet")
    np.testing.assert_array_equal(back.sample_id, coreset.sample_id)
    np.testing.assert_array_equal(back.target, coreset.target)
    assert [h.tolist() for h in back.history] == [h.tolist() for h in coreset.history]
    lines = (tmp_path / "tiger" / "sequential_train.txt").read_text().splitlines()
    assert lines == ["30 1 2 2", "80 1", "120 5 4 3 1 5"]


def make_run(tmp_path, manifest: dict | None = None):
    """TMP/run as select leaves it (coreset.parquet of ``_coreset()``), its manifest naming TMP/data (``TITLES``)
    plus ``manifest``'s keys."""
    data = tmp_path / "data"
    c = _coreset()
    write_samples(samples_table(c.sample_id, c.user, c.history, c.target), data / "samples")
    pq.write_table(pa.table({"item": np.arange(1, len(TITLES), dtype=np.int32), "title": TITLES[1:]}),
                   data / "items.parquet")
    run = tmp_path / "run"
    run.mkdir()
    # a coreset as `dealrec select` writes it: samples columns plus scores
    table = samples_table(c.sample_id, c.user, c.history, c.target).append_column("score", pa.array([0.1, 0.2, 0.3]))
    pq.write_table(table, run / "coreset.parquet")
    (run / "manifest.json").write_text(json.dumps({"data": str(data), **(manifest or {})}))
    return run


def test_export_command(tmp_path):
    c = _coreset()
    run = make_run(tmp_path)
    res = CliRunner().invoke(main, ["export", str(run)])
    assert res.exit_code == 0, res.output
    assert json.loads((run / "bigrec.json").read_text(encoding="utf-8")) == bigrec_records(c, TITLES)
    assert (run / "tiger" / "train.parquet").exists() and (run / "tiger" / "sequential_train.txt").exists()
    exports = json.loads((run / "manifest.json").read_text())["exports"]
    assert exports["bigrec"] == "bigrec.json" and exports["n_samples"] == 3
    # books wording, tiger only, and errors
    res = CliRunner().invoke(main, ["export", str(run), "--format", "bigrec", "--template", "books"])
    assert res.exit_code == 0, res.output
    rec = json.loads((run / "bigrec.json").read_text(encoding="utf-8"))[0]
    assert rec == alpaca_record([TITLES[1], TITLES[2]], TITLES[2], DOMAIN_TEMPLATES["books"])
    res = CliRunner().invoke(main, ["export", str(tmp_path / "nothing")])
    assert res.exit_code == 2 and "coreset.parquet: no such file" in res.output
    res = CliRunner().invoke(main, ["export", str(run), "--template", "cars"])
    assert res.exit_code == 2 and "unknown prompt template 'cars'" in res.output
