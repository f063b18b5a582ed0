"""Run folders and inputs on S3 (an endpoint served in the test by moto): the same bytes as a local run, a
resume from the storage alone, and a three-node Ray cluster that shares no disk and loses a node mid-job."""
from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from dealrec_core import storage
from dealrec_core.errors import DealrecError

moto_server = pytest.importorskip("moto.server")

N_ITEMS = 30


@pytest.fixture(scope="module")
def s3():
    """An S3 endpoint on localhost; returns ``uri(key)`` -> ``s3://bucket/key?endpoint...``."""
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_EC2_METADATA_DISABLED": "true"}
    before = {k: os.environ.get(k) for k in env}
    os.environ.update(env)   # read by pyarrow here and in every Ray worker started from this process
    logging.getLogger("werkzeug").setLevel(logging.ERROR)   # one line per request otherwise
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    query = f"endpoint_override={host}:{port}&scheme=http&region=us-east-1"
    fs, _ = pafs.FileSystem.from_uri(f"s3://dealrec?{query}&allow_bucket_creation=true")
    fs.create_dir("dealrec")

    def uri(key: str) -> str:
        return f"s3://dealrec/{key}?{query}"
    uri.fs = fs
    yield uri
    server.stop()
    for k, v in before.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def mirrors(tmp_path, monkeypatch):
    """Each test's mirrors in its own folder (the default is the system's temporary folder)."""
    monkeypatch.setenv(storage.MIRROR_ENV, str(tmp_path / "mirrors"))
    return tmp_path / "mirrors"


def upload(uri, local: Path, key: str) -> str:
    pafs.copy_files(str(local), f"dealrec/{key}", destination_filesystem=uri.fs)
    return uri(key)


def read_object(uri, key: str) -> bytes:
    with uri.fs.open_input_stream(f"dealrec/{key}") as f:
        return f.read()


def test_uri_or_path():
    assert storage.is_uri("s3://b/k") and storage.is_uri("gs://b/k") and storage.is_uri("hdfs://h/p")
    assert not storage.is_uri("/data/run") and not storage.is_uri("run") and not storage.is_uri("file:///tmp/x")
    assert storage.display("s3://b/run?endpoint_override=h:1&scheme=http") == "s3://b/run"
    assert storage.join("s3://b/run?scheme=http", "coreset.parquet") == "s3://b/run/coreset.parquet"


def test_mirror_pull_push_skip_and_delete(s3, tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "big.bin").write_bytes(os.urandom(storage.ALWAYS_COPY_BELOW + 10))
    (src / "sub" / "small.json").write_text('{"a": 1}')
    (src / "sub" / ".small.json.tmp-123@abcdef01").write_text("half")   # a temporary: never leaves the node
    uri = s3("mirror-test/folder")

    writer = storage.Mirror(uri, root=tmp_path / "node-a")
    shutil.copytree(src, writer.local)
    assert writer.changed() == ["big.bin", "sub/small.json"]
    assert writer.sync_up() == 2 and writer.changed() == []
    assert read_object(s3, "mirror-test/folder/sub/small.json") == b'{"a": 1}'
    assert not s3.fs.get_file_info("dealrec/mirror-test/folder/sub/.small.json.tmp-123@abcdef01").is_file

    reader = storage.Mirror(uri, root=tmp_path / "node-b")
    assert reader.pull() == 2
    assert (reader.local / "big.bin").read_bytes() == (src / "big.bin").read_bytes()
    assert not (reader.local / "sub" / ".small.json.tmp-123@abcdef01").exists()
    # a second pull copies only what is small (always) or changed; a changed big file is copied again
    assert reader.pull() == 1
    time.sleep(1.1)   # the storage's times have one-second resolution (Mirror.pull's docstring)
    (writer.local / "big.bin").write_bytes(b"x" * (storage.ALWAYS_COPY_BELOW + 10))
    assert writer.changed() == ["big.bin"] and writer.sync_up() == 1
    assert reader.pull("big.bin") == 1 and (reader.local / "big.bin").read_bytes()[:3] == b"xxx"
    # a file deleted on the storage goes from the mirror too; a file never synced stays (to be pushed)
    (reader.local / "unsent.txt").write_text("mine")
    s3.fs.delete_file("dealrec/mirror-test/folder/sub/small.json")
    reader.pull()
    assert not (reader.local / "sub" / "small.json").exists() and (reader.local / "unsent.txt").exists()


def test_missing_input_uri_is_one_line(s3, mirrors):
    with pytest.raises(DealrecError, match=r"^s3://dealrec/nothing-here: no such file or folder$"):
        with storage.open_location(s3("nothing-here")):
            pass


def test_translate_task_rewrites_paths_inside_a_mirror(s3, tmp_path):
    uri = s3("t/run")
    maps = [["/driver/mirror/abc/run", uri]]
    task, found = storage.translate_task({"a": "/driver/mirror/abc/run/data/samples", "b": "/elsewhere",
                                          "c": ["/driver/mirror/abc/run"], "d": 3}, maps)
    local = storage.Mirror(uri).local
    assert task == {"a": str(local / "data/samples"), "b": "/elsewhere", "c": [str(local)], "d": 3}
    assert [rel for _, rel in found] == ["data/samples", ""]


# ----------------------------------------------------------------------------- end to end

def _prune_args(raw, out, tiger, *extra):
    return ["prune", str(raw), "--n", "12", "--out", str(out), "--target-init", str(tiger),
            "--surrogate-epochs", "2", "--hvp", "cg", "--damping", "0.05", "--lissa-scale", "10",
            "--hessian-samples", "32", "--hvp-batch", "16", "--batch-size", "16", "--effort-batch-size", "16",
            "--shard-size", "32", "--k", "4", "--quiet", *extra]


def _invoke(args):
    from click.testing import CliRunner

    from dealrec.cli import main

    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    from test_prune import raw_release_and_tiny_tiger

    return raw_release_and_tiny_tiger(tmp_path_factory.mktemp("storage"))


def test_prune_with_data_and_run_on_s3_gives_the_local_bytes_and_resumes_from_the_storage(
        s3, release, tmp_path, monkeypatch):
    raw, tiger = release
    local = tmp_path / "local"
    _invoke(_prune_args(raw, local, tiger, "--workers", "0"))

    raw_uri = upload(s3, raw, "inputs/raw")
    tiger_uri = upload(s3, tiger, "inputs/tiger")
    out_uri = s3("runs/e2e")
    monkeypatch.setenv(storage.MIRROR_ENV, str(tmp_path / "machine-1"))
    output = _invoke(_prune_args(raw_uri, out_uri, tiger_uri, "--workers", "0"))
    assert "s3://dealrec/runs/e2e/coreset.parquet" in output and "endpoint_override" not in output
    for name in ("coreset.parquet", "scores.parquet", "surrogate/model.safetensors"):
        assert read_object(s3, f"runs/e2e/{name}") == (local / name).read_bytes(), name
    manifest = json.loads(read_object(s3, "runs/e2e/manifest.json"))
    assert manifest["prune"]["data"] == "s3://dealrec/inputs/raw"

    # inputs on the storage, the run folder local: the same bytes (the tasks carry the inputs' mapping only)
    _invoke(_prune_args(raw_uri, tmp_path / "local-out", tiger_uri, "--workers", "0"))
    assert (tmp_path / "local-out" / "coreset.parquet").read_bytes() == (local / "coreset.parquet").read_bytes()

    # another machine (a fresh mirror) resumes the run from what the storage holds: nothing is redone
    monkeypatch.setenv(storage.MIRROR_ENV, str(tmp_path / "machine-2"))
    _invoke(_prune_args(raw_uri, out_uri, tiger_uri, "--workers", "0"))
    again = json.loads(read_object(s3, "runs/e2e/manifest.json"))["prune"]["phases"]
    assert again["train_surrogate"].get("resumed") and again["score"]["capture"]["ran"] == 0
    assert again["score"]["effort"]["ran"] == 0
    assert read_object(s3, "runs/e2e/coreset.parquet") == (local / "coreset.parquet").read_bytes()

    # the Python API on the same URIs: resumes too, and its paths are this machine's copy of the run
    from dealrec import prune

    result = prune(raw_uri, out_uri, n=12, target_init=tiger_uri, surrogate_epochs=2, hvp="cg", damping=0.05,
                   lissa_scale=10, hessian_samples=32, hvp_batch=16, batch_size=16, effort_batch_size=16,
                   shard_size=32, k=4, workers=0, quiet=True)
    assert result.coreset.read_bytes() == (local / "coreset.parquet").read_bytes()
    assert result.manifest.prune["phases"]["score"]["capture"]["ran"] == 0


def test_three_node_cluster_without_a_shared_disk_loses_a_node_and_gives_the_same_coreset(s3, tmp_path, monkeypatch):
    """Three Ray nodes on this machine, each with its own mirror folder (DEALREC_NODE), so nothing passes
    between them but through S3. One worker node is removed while it scores: its shards run again on
    another node, and the coreset is the single-process run's, byte for byte."""
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    from dealrec.prune import run_prune
    from dealrec.hvp import HvpConfig
    from dealrec.score import ScoreConfig
    from surrogates.base import save_surrogate
    from surrogates.registry import build_surrogate
    from tiny_surrogate import tiny_samples, write_tiny_prepared

    if ray.is_initialized():
        ray.shutdown()
    data = write_tiny_prepared(tmp_path / "data", tiny_samples(480, N_ITEMS, seed=9), N_ITEMS, shard_size=160)
    model = build_surrogate("sasrec", n_items=N_ITEMS, hidden=8, n_blocks=1, n_heads=2, ffn_hidden=16,
                            max_len=10, dropout=0.0, init_std=0.3, seed=3)
    (tmp_path / "sur").mkdir()
    save_surrogate(model, tmp_path / "sur")

    def config(workers, address=None):
        return ScoreConfig(hvp=HvpConfig(solver="cg", damping=0.1, scale=10.0, hessian_samples=48, hvp_batch=16),
                           target="none", batch_size=16, effort_batch_size=16, shard_size=16, workers=workers, ray_address=address)

    run_prune(data, tmp_path / "single", 24, str(tmp_path / "sur"), config(0), k=4, progress=False)
    expected = (tmp_path / "single" / "coreset.parquet").read_bytes()

    data_uri = upload(s3, data, "cluster/data")
    sur_uri = upload(s3, tmp_path / "sur", "cluster/sur")
    out_uri = s3("cluster/run")
    monkeypatch.setenv(storage.MIRROR_ENV, str(tmp_path / "mirrors"))
    monkeypatch.setenv(storage.NODE_ENV, "head")
    monkeypatch.setenv("RAY_worker_niceness", "0")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    workers = [cluster.add_node(num_cpus=1, env_vars={storage.NODE_ENV: name}) for name in ("node-b", "node-c")]
    cluster.wait_for_nodes()
    result: dict = {}

    def job():
        try:
            result["manifest"] = run_prune(data_uri, out_uri, 24, sur_uri, config(2, cluster.address), k=4,
                                           progress=False)
        except BaseException as e:   # shown by the assertion below
            result["error"] = e

    thread = threading.Thread(target=job)
    removed = None
    try:
        thread.start()
        deadline = time.time() + 240
        while time.time() < deadline and removed is None and thread.is_alive():
            done = [f for f in s3.fs.get_file_info(
                pafs.FileSelector("dealrec/cluster/run/work/capture", allow_not_found=True))
                if f.path.endswith(".json")]
            if len(done) >= 3 and ray.is_initialized():
                from ray._private.state import available_resources_per_node

                free = available_resources_per_node()
                for node in workers:
                    if free.get(node.node_id, {}).get("CPU", 0.0) < 0.5:   # an actor runs there (no CPU left)
                        cluster.remove_node(node, allow_graceful=False)
                        removed = node
                        break
            time.sleep(0.05)
        thread.join(timeout=600)
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()
    assert "error" not in result, repr(result.get("error"))
    assert removed is not None, "no worker node held an actor during the capture phase"
    assert result["manifest"]["executor"]["workers"] == 2
    assert result["manifest"]["executor"]["retried"] >= 1   # the lost node's task ran again elsewhere
    captured = [f for f in s3.fs.get_file_info(
        pafs.FileSelector("dealrec/cluster/run/work/capture")) if f.path.endswith(".json")]
    assert len(captured) == 30
    assert read_object(s3, "cluster/run/coreset.parquet") == expected
    # the nodes shared nothing but the storage: each scoring node kept its own copy of the inputs
    kept = {p.name for p in (tmp_path / "mirrors").iterdir()}
    assert {"head", "node-c", "node-b"} >= kept and len(kept) >= 2
