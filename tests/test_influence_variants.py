"""benchmarks/influence_variants.py: the ablation columns are what they say, aligned by sample_id, and
``dealrec select`` reads their folders as it reads a score run."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from dealrec.cli import main
from dealrec.coreset import select_coreset
from dealrec.hvp import HvpConfig
from dealrec.score import ScoreConfig, run_score
from dealrec.strata import minmax, stratify
from dealrec_core.data import PreparedData
from dealrec_core.errors import DealrecError
from benchmark_module import load_benchmark
from tiny_surrogate import save_tiny_sasrec, tiny_samples, write_tiny_prepared

N_ITEMS, MAX_LEN = 30, 6


iv = load_benchmark("influence_variants")


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    root = tmp_path_factory.mktemp("variants")
    data = write_tiny_prepared(root / "data", tiny_samples(60, N_ITEMS, seed=3), N_ITEMS, shard_size=16)
    sur = save_tiny_sasrec(root / "sur", N_ITEMS, MAX_LEN, seed=1)
    config = ScoreConfig(hvp=HvpConfig(solver="cg", damping=0.1, scale=10.0, hessian_samples=32, hvp_batch=8),
                         target="none", batch_size=8, shard_size=16, workers=0)
    run = root / "run"
    run_score(data, sur, run, config, progress=False)
    # the rows of a scores file need not be in the samples' order: reverse them
    table = pq.read_table(run / "scores.parquet")
    pq.write_table(table.take(pa.array(np.arange(table.num_rows)[::-1])), run / "scores.parquet")
    return root, data, sur, run


def test_each_variant_is_its_transform_of_the_scored_column(scored):
    root, data, sur, run = scored
    folders = iv.write_variants(run, PreparedData(data).samples(), sur, root / "out")
    assert sorted(folders) == sorted(iv.VARIANTS)
    base = pq.read_table(run / "scores.parquet")
    sid, inf = base.column("sample_id").to_numpy(), base.column("influence").to_numpy()
    samples = PreparedData(data).samples()
    length = dict(zip(samples.sample_id.tolist(), [len(h) for h in samples.history]))
    n = np.array([length[i] for i in sid.tolist()])
    assert (n == 0).any() and (n == 1).any() and (n + 1 > MAX_LEN).any()   # every case is there
    cols = {}
    for name, folder in folders.items():
        t = pq.read_table(folder / "scores.parquet")
        assert t.column_names == base.column_names
        np.testing.assert_array_equal(t.column("sample_id").to_numpy(), sid)
        cols[name] = t.column("influence").to_numpy()
        note = json.loads((folder / "manifest.json").read_text())["influence_variant"]
        assert note["variant"] == name and note["from"] == str(run)
    # SASRec reads [BOS] + history: a sample predicts len(history) + 1 positions, at most max_len of them
    w = np.minimum(n + 1, MAX_LEN).astype(np.float64)
    np.testing.assert_array_equal(cols["position"], inf * w ** 2)
    short = n <= 1
    assert (cols["short-zero"][short] == 0).all()
    np.testing.assert_array_equal(cols["short-zero"][~short], inf[~short])
    # the rank: the same order (ties share a rank: this data has equal samples), 1..N on average, and equal-width
    # strata over it hold equal counts up to the largest tie
    rank = cols["rank"]
    np.testing.assert_array_equal(np.sign(rank[:, None] - rank[None, :]), np.sign(inf[:, None] - inf[None, :]))
    assert rank.sum() == len(inf) * (len(inf) + 1) / 2
    largest_tie = np.unique(inf, return_counts=True)[1].max()
    counts = stratify(sid, minmax(rank), k=6, hard_prune=0.0).counts
    assert counts.max() - counts.min() <= largest_tie and counts.sum() == len(inf)
    assert stratify(sid, minmax(inf), k=6, hard_prune=0.0).counts.tolist() != counts.tolist()


def test_dealrec_select_reads_a_variant_folder(scored):
    root, data, sur, run = scored
    folder = iv.write_variants(run, PreparedData(data).samples(), None, root / "cli", ("short-zero",))["short-zero"]
    out = root / "sel"
    r = CliRunner().invoke(main, ["select", str(folder), "--method", "influence", "--n", "12", "--k", "3",
                                  "--seed", "1", "--data", str(data), "--out", str(out), "--no-plot"])
    assert r.exit_code == 0, r.output
    expected = select_coreset(pq.read_table(folder / "scores.parquet"), PreparedData(data).samples(), "influence",
                              n=12, k=3, seed=1).coreset
    assert sorted(pq.read_table(out / "coreset.parquet").column("sample_id").to_pylist()) == \
        sorted(expected.column("sample_id").to_pylist())


def test_bad_requests_are_refused(scored):
    root, data, sur, run = scored
    with pytest.raises(DealrecError, match="unknown variant 'sqrt'"):
        iv.write_variants(run, PreparedData(data).samples(), sur, root / "bad", ("sqrt",))
    with pytest.raises(DealrecError, match="needs --surrogate"):
        iv.write_variants(run, PreparedData(data).samples(), None, root / "bad", ("position",))
    partial = root / "partial"
    partial.mkdir()
    (partial / "manifest.json").write_text((run / "manifest.json").read_text())
    pq.write_table(pq.read_table(run / "scores.parquet").slice(0, 10), partial / "scores.parquet")
    with pytest.raises(DealrecError, match=r"partial/scores.parquet.*50 samples of the samples table have no score"):
        iv.write_variants(partial, PreparedData(data).samples(), sur, root / "bad", ("rank",))
    assert not (root / "bad").exists()
