"""prorank_jax.paths without a bucket: local paths stay pathlib paths (local behaviour is what it
was), other URL schemes and bucket-less gs:// paths are refused by name. What a gs:// path does
is tested against an emulator in tests/launch/test_gcs.py."""

from pathlib import Path

import pytest

from prorank_jax import paths
from prorank_jax.files import open_for_append


def test_a_local_path_stays_a_pathlib_path(tmp_path):
    for given in ("runs/score", tmp_path, str(tmp_path / "a b")):
        got = paths.as_path(given)
        assert type(got) is type(Path(given)) and got == Path(given)
        assert not paths.is_remote(given)
        assert paths.local_folder(given) == Path(given)
    paths.check_bucket(tmp_path, write=True)  # a local path needs no bucket


def test_a_gs_path_is_an_epath_that_keeps_its_scheme():
    from etils import epath

    got = paths.as_path("gs://bucket/runs/score")
    assert isinstance(got, epath.Path) and paths.is_remote(got)
    assert str(got / "hf") == "gs://bucket/runs/score/hf" and got.name == "score"
    assert paths.bucket_of(got) == "bucket"


@pytest.mark.parametrize("given, match", [
    ("s3://bucket/run", r"s3://bucket/run: only local paths and gs:// bucket paths are supported"),
    ("gs://", r"gs://: a gs:// path needs a bucket name"),
    ("gs:///run", r"gs:///run: a gs:// path needs a bucket name"),
])
def test_other_schemes_and_bucketless_paths_are_refused_by_name(given, match):
    with pytest.raises(ValueError, match=match):
        paths.as_path(given)


def test_open_for_append_locally_appends(tmp_path):
    path = tmp_path / "sub" / "metrics.jsonl"
    for line in ("a\n", "b\n"):
        f = open_for_append(path)
        f.write(line)
        f.close()
    assert path.read_text() == "a\nb\n"
