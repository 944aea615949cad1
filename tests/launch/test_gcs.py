"""gs:// paths against a GCS emulator the tests start on 127.0.0.1 (tests/helpers/gcs_emulator.py).

Both stages write their run folder through the same code, so stage 2 (train-score) stands for
both: a run into a bucket, kill -9 mid-run and a resume from the bucket that ends with the
uninterrupted run's params; export to the bucket; Reranker.from_pretrained("gs://...") scoring
as the local copy of the same folder does; evaluate --data gs://...; a folder upload killed
midway that no reader accepts; and a clear, quick error for a missing bucket or a refused
credential. One emulator serves the module; the runs are tiny (4 steps of score_tiny).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.gcs_emulator import client_env, gcs_emulator, refusing_server

ROOT = Path(__file__).resolve().parents[2]
BUCKET = "prorank-test"
STEPS = 4
OVERRIDES = [f"loop.steps={STEPS}", "loop.save_every=2", "loop.log_every=1", "loop.eval_every=0",
             "loop.progress_bar=false", "loop.async_checkpointing=false", "eval_data=null", "model.path=null",
             "data.batch_size=2"]
PAIRS = [("what is a reranker", "A reranker orders candidate documents by relevance to a query."),
         ("boiling point of water", "Water boils at 100 degrees Celsius at sea level."),
         ("boiling point of water", "The capital of France is Paris.")]


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    """The emulator's URL; this process's GCS clients point at it for the module's duration."""
    with gcs_emulator(BUCKET, tmp_path_factory.mktemp("gcs")) as url:
        saved = {k: os.environ.get(k) for k in client_env(url)}
        os.environ.update(client_env(url))
        try:
            yield url
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def env(url: str) -> dict:
    return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1", **client_env(url))


def command(out_dir: str) -> list[str]:
    return [sys.executable, "-m", "launch.cli", "train-score", "--config", "score_tiny", f"out_dir={out_dir}",
            *OVERRIDES]


def read_object(url: str, name: str) -> str | None:
    """An object's text (bytes as latin-1) straight from the emulator's JSON API (no client cache), None if absent."""
    quoted = urllib.parse.quote(name, safe="")
    try:
        with urllib.request.urlopen(f"{url}/storage/v1/b/{BUCKET}/o/{quoted}?alt=media", timeout=10) as r:
            return r.read().decode("latin-1")
    except urllib.error.HTTPError as err:
        if err.code == 404:
            return None
        raise


def logged_steps(url: str, run: str) -> list[int]:
    text = read_object(url, f"{run}/metrics.jsonl") or ""
    return [json.loads(line)["step"] for line in text.splitlines() if line.strip()]


def run_to_end(url: str, out_dir: str) -> str:
    done = subprocess.run(command(out_dir), cwd=ROOT, env=env(url), capture_output=True, text=True, timeout=900)
    errors = [line for line in done.stderr.splitlines() if "Error" in line][:5]
    assert done.returncode == 0, done.stdout[-2000:] + "\n".join(errors) + done.stderr[-2000:]
    return done.stdout


def params_of(path: str, step: int | None = None) -> list[np.ndarray]:
    import jax

    from prorank_jax.pretrained import load_pretrained

    _, params, _ = load_pretrained(path, step=step)
    return jax.tree_util.tree_leaves(jax.device_get(params))


def download(url_path: str, local: Path) -> Path:
    from prorank_jax import paths

    return Path(paths.local_folder(url_path)).rename(local)


@pytest.fixture(scope="module")
def full_run(emulator) -> str:
    """An uninterrupted stage-2 run into gs://BUCKET/full."""
    out = f"gs://{BUCKET}/full"
    output = run_to_end(emulator, out)
    assert "[prorank] resuming" not in output
    return out


def test_a_run_in_a_bucket_killed_with_9_resumes_from_the_bucket_to_the_uninterrupted_params(emulator, full_run):
    from prorank_jax.checkpoint import scan_steps

    assert logged_steps(emulator, "full") == list(range(1, STEPS + 1))
    for name in ("run_config.json", "model_config.json", "tokenizer/tokenizer.json", "hf/config.json",
                 "hf/model.safetensors", "checkpoints/4/commit_success.txt"):
        assert read_object(emulator, f"full/{name}") is not None, name
    assert read_object(emulator, "full/hf/.prorank-writing") is None

    out = f"gs://{BUCKET}/killed"
    proc = subprocess.Popen(command(out), cwd=ROOT, env=env(emulator), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 600
    while not any(s >= 3 for s in logged_steps(emulator, "killed")):
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.time() < deadline, "the run did not reach step 3"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    proc.stdout.close()
    complete, _ = scan_steps(f"{out}/checkpoints")
    assert complete == [2]  # cut short after the step-2 checkpoint, before step 4's
    assert read_object(emulator, "killed/hf/config.json") is None
    lines_before = len(logged_steps(emulator, "killed"))

    output = run_to_end(emulator, out)
    assert f"[prorank] resuming {out} from step 2" in output, output[-3000:]
    assert logged_steps(emulator, "killed")[lines_before:] == [3, 4]
    for a, b in zip(params_of(out, STEPS), params_of(full_run, STEPS), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_step_cut_before_its_commit_is_set_aside_and_saved_again_by_the_resumed_run(emulator, full_run):
    """The state kill -9 leaves when it lands inside a save (step 4's objects, no commit file),
    made deterministic: the resumed run sets that folder aside and ends with step 4 saved again."""
    from prorank_jax import paths
    from prorank_jax.checkpoint import COMMIT_FILE, scan_steps

    fs, out = paths._fs(), f"gs://{BUCKET}/cut"
    for name in paths.files_under(full_run):
        if name.startswith("hf/") or name == f"checkpoints/4/{COMMIT_FILE}":
            continue
        fs.cp_file(f"{BUCKET}/full/{name}", f"{BUCKET}/cut/{name}")
    assert scan_steps(f"{out}/checkpoints")[0] == [2]

    output = run_to_end(emulator, out)
    assert f"[prorank] resuming {out} from step 2" in output, output[-3000:]
    assert scan_steps(f"{out}/checkpoints")[0] == [2, 4]
    for a, b in zip(params_of(out, STEPS), params_of(full_run, STEPS), strict=True):
        np.testing.assert_array_equal(a, b)


STALE_LISTING = """
import sys
from etils import epath
from google.cloud import storage
from prorank_jax import paths
bucket = sys.argv[1]
blobs = storage.Client.create_anonymous_client().bucket(bucket)
blobs.blob("late/0/x").upload_from_string("x")
assert [p.name for p in epath.Path(f"gs://{bucket}/late").iterdir()] == ["0"]  # epath first: its filesystem is made now
blobs.blob("late/1/x").upload_from_string("x")
print(sorted(p.name for p in paths.as_path(f"gs://{bucket}/late").iterdir()))
"""


def test_listings_are_fresh_even_when_epath_was_used_before_the_path_layer(emulator):
    """epath caches its gs filesystem for the process; one made before the path layer turned
    gcsfs's listing cache off kept serving the listing it first saw (CI: a resumed run's step 4
    invisible to the test process, which had listed the folder before the resume)."""
    done = subprocess.run([sys.executable, "-c", STALE_LISTING, BUCKET], cwd=ROOT, env=env(emulator),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "['0', '1']"


def test_export_to_the_bucket_and_from_pretrained_of_bucket_folders_score_as_their_local_copies(
        emulator, full_run, tmp_path):
    from prorank_jax.export import export_hf
    from scoring.reranker import Reranker

    exported = f"gs://{BUCKET}/exported"
    result = export_hf(full_run, exported)
    assert result.step == STEPS and result.check.pairs > 0 and result.check.max_abs_diff <= result.check.atol
    assert read_object(emulator, "exported/README.md") and read_object(emulator, "exported/.prorank-writing") is None
    local = download(exported, tmp_path / "exported")
    assert (local / "model.safetensors").is_file() and (local / "prorank.json").is_file()

    queries, docs = [q for q, _ in PAIRS], [d for _, d in PAIRS]
    from_bucket = Reranker.from_pretrained(exported).predict(queries, docs)
    from_local = Reranker.from_pretrained(local).predict(queries, docs)
    np.testing.assert_array_equal(from_bucket, from_local)
    # the run folder itself, read from the bucket (orbax restores from gs://, the tokenizer is downloaded)
    run_scores = Reranker.from_pretrained(full_run).predict(queries, docs)
    np.testing.assert_allclose(run_scores, from_local, atol=1e-5)


def test_evaluate_reads_its_data_from_the_bucket_and_writes_its_report_there(emulator, tmp_path, capsys):
    from launch.cli import main
    from prorank_jax import paths
    from prorank_jax.bundled import bundled_data_dir
    from prorank_jax.data import load_beir

    paths.upload_folder(bundled_data_dir(), f"gs://{BUCKET}/beir")
    assert load_beir(f"gs://{BUCKET}/beir", "test") == load_beir(bundled_data_dir(), "test")

    args = ["evaluate", "--model", "bundled", "--split", "test", "--top-k", "3"]
    assert main([*args, "--data", f"gs://{BUCKET}/beir", "--out", f"gs://{BUCKET}/eval"]) == 0
    assert main([*args, "--data", str(bundled_data_dir()), "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    assert json.loads(read_object(emulator, "eval/metrics.json")) == json.loads((tmp_path / "metrics.json").read_text())
    assert read_object(emulator, "eval/reranked.run") == (tmp_path / "reranked.run").read_text()


KILLED_UPLOAD = """
import os, signal, sys
from pathlib import Path
import gcsfs
from prorank_jax import paths
put = gcsfs.GCSFileSystem.put_file
count = 0
def put_then_die(self, *args, **kwargs):
    global count
    count += 1
    if count == 3:  # two objects are up, the writer dies before the third
        os.kill(os.getpid(), signal.SIGKILL)
    return put(self, *args, **kwargs)
gcsfs.GCSFileSystem.put_file = put_then_die
paths.upload_folder(Path(sys.argv[1]), sys.argv[2])
"""


def test_a_folder_upload_killed_midway_is_refused_by_every_reader(emulator, tmp_path):
    """A complete folder is overwritten by an upload killed (-9) after two objects: the bucket then
    holds a mix of nothing old and part of the new, and the readers refuse it by the marker."""
    from prorank_jax import paths
    from prorank_jax.pretrained import bundled_warm_start_dir, load_pretrained
    from scoring.reranker import Reranker

    folder = f"gs://{BUCKET}/torn"
    paths.upload_folder(bundled_warm_start_dir(), folder)
    assert params_of(folder)  # complete: it loads
    done = subprocess.run([sys.executable, "-c", KILLED_UPLOAD, str(bundled_warm_start_dir()), folder], cwd=ROOT,
                          env=env(emulator), capture_output=True, text=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]
    assert read_object(emulator, f"torn/{paths.WRITING_MARKER}") is not None
    assert len(paths.files_under(folder)) == 3  # the marker and two objects
    for load in (load_pretrained, Reranker.from_pretrained):
        with pytest.raises(paths.RemotePathError, match=f"{folder}: incomplete folder"):
            load(folder)


def test_a_missing_bucket_or_a_refused_credential_fails_at_once_naming_the_bucket(emulator, capsys):
    from launch.cli import main

    assert main(["evaluate", "--model", "bundled", "--data", "gs://no-such-bucket/beir"]) == 2
    assert "error: gs://no-such-bucket/beir: bucket gs://no-such-bucket does not exist" in capsys.readouterr().err
    missing = subprocess.run(command("gs://no-such-bucket/run"), cwd=ROOT, env=env(emulator), capture_output=True,
                             text=True, timeout=300)
    assert missing.returncode != 0
    assert "gs://no-such-bucket/run: bucket gs://no-such-bucket does not exist" in missing.stderr, missing.stderr[-2000:]
    with refusing_server() as refusing:
        refused = subprocess.run(command(f"gs://{BUCKET}/run"), cwd=ROOT, env=env(refusing), capture_output=True,
                                 text=True, timeout=300)
    assert refused.returncode != 0
    assert f"gs://{BUCKET}/run: cannot write to bucket gs://{BUCKET} (Forbidden: 403" in refused.stderr, \
        refused.stderr[-2000:]


def test_a_gs_path_without_the_client_packages_says_what_to_install(monkeypatch):
    import importlib.util

    from prorank_jax import paths

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gcsfs" else real(name, *a))
    with pytest.raises(paths.RemotePathError, match=r"gs://b/run: .*pip install gcsfs==2026\.10\.1"):
        paths.as_path("gs://b/run")


def test_training_data_files_in_the_bucket_read_as_the_local_ones(emulator):
    """data.source jsonl and hf (a JSON Lines data file through `datasets`) with a gs:// data.path."""
    from prorank_jax.data.sources import bundled_group_examples, load_examples, write_group_jsonl

    groups = bundled_group_examples("train", num_negatives=3, seed=0)
    path = f"gs://{BUCKET}/data/train_groups.jsonl"
    assert write_group_jsonl(path, groups) == len(groups)
    assert load_examples("jsonl", 2, path=path) == list(groups)
    from_hf = load_examples("hf", 2, path=path)
    assert [(g.query, g.documents, g.labels) for g in from_hf] == [(g.query, g.documents, g.labels) for g in groups]
