"""Where a path points: a local file or folder, or an object in a Google Cloud Storage bucket.

Every path a user gives (out_dir, data files and folders, model folders, export and
evaluate outputs) goes through `as_path`: a local path stays a `pathlib.Path`, so local
behaviour is exactly what it was; a `gs://bucket/prefix` becomes an etils `epath.Path`
(the path type orbax itself uses) whose methods (`open`, `read_text`, `is_dir`, `iterdir`,
`mkdir`, ...) reach the bucket through fsspec's gcsfs. Code that needs a real local folder
(transformers' tokenizer loader, safetensors' reader) asks `local_folder`, which downloads
a remote folder once per process.

Object stores have no rename, so the safe-write rules differ there (prorank_jax.files and
docs/architecture.md, "Writing to a bucket"): a file is one object uploaded whole; a folder
is uploaded object by object between a `WRITING_MARKER` object written first and deleted
last, and `local_folder` refuses a folder that still holds the marker.

Stdlib only at import: etils and gcsfs are imported when a gs:// path is first used.
"""

from __future__ import annotations

import atexit
import importlib.util
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Union

log = logging.getLogger(__name__)

GCS_SCHEME = "gs://"
# Written first and deleted last by upload_folder: a folder holding it is being written or
# its writer died; readers refuse it. A folder written by others (no marker) reads as before.
WRITING_MARKER = ".prorank-writing"
# The exact pins of requirements.txt, so the message installs what the tests ran with.
GCS_PACKAGES = "gcsfs==2026.10.1 google-cloud-storage==3.17.2"
_CHECK_TIMEOUT_S = 30
_PROBE = ".prorank-write-probe-"

_listing_cache_off = False
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
AnyPath = Union[Path, Any]  # a pathlib.Path or an etils epath.Path (typed loosely: etils is optional at import)


class RemotePathError(OSError):
    """A gs:// path cannot be used: no client package, no such bucket, or access refused."""


def is_remote(path: str | os.PathLike) -> bool:
    return os.fspath(path).startswith(GCS_SCHEME)


def as_path(path: str | os.PathLike) -> AnyPath:
    """pathlib.Path for a local path, epath.Path for gs://; other URL schemes are refused."""
    text = os.fspath(path)
    if text.startswith(GCS_SCHEME):
        if len(text) <= len(GCS_SCHEME) or text[len(GCS_SCHEME)] == "/":
            raise ValueError(f"{text}: a gs:// path needs a bucket name (gs://BUCKET/...)")
        _require_gcs_client(text)
        from etils import epath  # orbax's path type; its gs:// backend is fsspec's gcsfs here

        return epath.Path(text)
    if _URL.match(text) and not os.path.exists(text):
        raise ValueError(f"{text}: only local paths and gs:// bucket paths are supported")
    return Path(text)


def _require_gcs_client(text: str) -> None:
    if importlib.util.find_spec("gcsfs") is None or importlib.util.find_spec("google.cloud.storage") is None:
        raise RemotePathError(f"{text}: gs:// paths need the gcsfs and google-cloud-storage packages; "
                              f"pip install {GCS_PACKAGES}")
    _no_listing_cache()


def _no_listing_cache() -> None:
    """gcsfs caches folder listings for the life of a process by default; a bucket folder here is
    written by other clients meanwhile (orbax's tensorstore, other hosts, a resumed run), so a
    cached listing would hide their objects. Applies to the filesystem epath creates too."""
    global _listing_cache_off
    if _listing_cache_off:
        return
    import fsspec.config

    for protocol in ("gs", "gcs"):
        fsspec.config.conf.setdefault(protocol, {}).setdefault("use_listings_cache", False)
    # epath keeps the first filesystem it made per protocol for the life of the process; one made
    # before this setting (epath used directly) would go on serving stale listings.
    from etils.epath import backend

    backend.fsspec_backend._get_filesystem.cache_clear()
    _listing_cache_off = True


def absolute(path: str | os.PathLike) -> AnyPath:
    """The absolute form of a local path; a bucket path as it is."""
    p = as_path(path)
    return p if is_remote(p) else p.absolute()


def bucket_of(path: str | os.PathLike) -> str:
    return os.fspath(path)[len(GCS_SCHEME):].split("/", 1)[0]


def move(src: AnyPath, dst: AnyPath) -> None:
    """Move a file or folder. Locally an atomic rename; in a bucket a copy then a delete (not
    atomic: used only to set damaged checkpoint folders aside, which nothing reads)."""
    if not is_remote(src):
        os.replace(src, dst)
        return
    # Object by object: gcsfs's mv first tries GCS's moveTo call for each object, which
    # fake-gcs-server does not serve (a 400 logged with a traceback per object before gcsfs falls
    # back to copy and delete); a failed copy here raises before anything is deleted.
    fs = _fs()
    src_root, dst_root = _key(src).rstrip("/"), _key(dst).rstrip("/")
    if fs.isfile(src_root):
        fs.cp_file(src_root, dst_root)
        fs.rm_file(src_root)
        return
    names = files_under(src)
    for name in names:
        fs.cp_file(f"{src_root}/{name}", f"{dst_root}/{name}")
    if names:
        fs.rm([f"{src_root}/{name}" for name in names])


def rmtree(path: AnyPath) -> None:
    p = as_path(path)
    if is_remote(p):
        if p.exists():
            _fs().rm(_key(p), recursive=True)
    else:
        shutil.rmtree(p, ignore_errors=True)


def files_under(folder: AnyPath) -> list[str]:
    """Relative names of every file under folder (object names under the prefix in a bucket)."""
    p = as_path(folder)
    if not is_remote(p):
        return sorted(str(f.relative_to(p)) for f in p.rglob("*") if f.is_file())
    prefix = _key(p).rstrip("/") + "/"
    return sorted(k[len(prefix):] for k in _fs().find(prefix) if k.startswith(prefix) and not k.endswith("/"))


def _fs():
    import fsspec

    _no_listing_cache()
    return fsspec.filesystem("gs")


def _key(path: AnyPath) -> str:
    return os.fspath(path)[len(GCS_SCHEME):]


# ----------------------------------------------------------------------------- checks up front
def check_bucket(path: str | os.PathLike, *, write: bool) -> None:
    """Fail now, naming the bucket, if a gs:// path's bucket is missing or refuses us (to read,
    or to write when `write`); a local path passes. Runs before a model is loaded, so a typo in
    a bucket name costs seconds, not a model load and a first checkpoint."""
    if not is_remote(path):
        return
    _require_gcs_client(os.fspath(path))
    bucket = bucket_of(path)
    from google.api_core import exceptions as api_errors  # google-cloud-storage, a gcsfs dependency
    from google.auth import exceptions as auth_errors
    from google.cloud import storage

    # google-cloud-storage rather than gcsfs: gcsfs retries a 401 six times with backoff (~35 s),
    # here each call is one try with a timeout, so a refused credential is reported in seconds.
    # Only object calls: the object roles (storage.objectViewer / objectAdmin) that a run needs
    # do not grant storage.buckets.get, so asking for the bucket itself would refuse them.
    what = "write to" if write else "read"
    prefix = _key(path).partition("/")[2].strip("/")
    try:
        # An emulator takes no credentials (Client() would look for application-default ones).
        client = storage.Client.create_anonymous_client() if os.environ.get("STORAGE_EMULATOR_HOST") \
            else storage.Client()
        if write:
            probe = client.bucket(bucket).blob(f"{prefix}/{_PROBE}{os.getpid()}" if prefix else f"{_PROBE}{os.getpid()}")
            probe.upload_from_string(b"", retry=None, timeout=_CHECK_TIMEOUT_S)
            probe.delete(retry=None, timeout=_CHECK_TIMEOUT_S)
        else:
            list(client.list_blobs(bucket, prefix=prefix, max_results=1, retry=None, timeout=_CHECK_TIMEOUT_S))
    except api_errors.NotFound:
        raise RemotePathError(f"{os.fspath(path)}: bucket gs://{bucket} does not exist") from None
    except (api_errors.GoogleAPIError, auth_errors.GoogleAuthError, OSError) as err:
        raise RemotePathError(f"{os.fspath(path)}: cannot {what} bucket gs://{bucket} ({type(err).__name__}: {err}); "
                              "check the credentials (gcloud auth application-default login, or the VM's "
                              "service account and its storage scope)") from None


# ----------------------------------------------------------------------------- folders
def upload_folder(local: Path, dst: AnyPath) -> None:
    """Replace the bucket folder dst with the local folder's files, readers never taking a
    partial folder for a whole one: WRITING_MARKER goes up first, then the old objects are
    deleted and the new ones uploaded, and the marker is deleted last (the commit)."""
    dst = as_path(dst)
    fs = _fs()
    root = _key(dst).rstrip("/")
    marker = f"{root}/{WRITING_MARKER}"
    fs.pipe_file(marker, b"upload in progress; this folder is incomplete until this object is gone\n")
    old = [k for k in files_under(dst) if k != WRITING_MARKER]
    if old:
        fs.rm([f"{root}/{name}" for name in old])
    for name in files_under(local):
        fs.put_file(os.fspath(local / name), f"{root}/{name}")
    fs.rm_file(marker)


def check_complete(folder: AnyPath) -> None:
    """Raise if a bucket folder is still being written (or its writer was killed)."""
    if is_remote(folder) and (as_path(folder) / WRITING_MARKER).exists():
        raise RemotePathError(f"{os.fspath(folder)}: incomplete folder ({WRITING_MARKER} is present: "
                              "its upload is in progress or was interrupted)")


def local_folder(folder: str | os.PathLike) -> Path:
    """A local folder with folder's files: folder itself when local, else a fresh download of
    the bucket folder into a temporary folder removed at exit (refused while it holds the
    writing marker)."""
    p = as_path(folder)
    if not is_remote(p):
        return p
    return _download(os.fspath(p))


def local_file(path: str | os.PathLike) -> Path:
    """path itself when local, else a download of the object into a temporary folder removed at exit."""
    p = as_path(path)
    if not is_remote(p):
        return p
    if not p.is_file():
        raise FileNotFoundError(f"{os.fspath(p)}: no such object in the bucket")
    local = Path(tempfile.mkdtemp(prefix="prorank-gcs-"))
    atexit.register(shutil.rmtree, local, True)
    _fs().get_file(_key(p), os.fspath(local / p.name))
    return local / p.name


def _download(folder: str) -> Path:
    check_complete(folder)
    names = files_under(folder)
    if not names:
        raise FileNotFoundError(f"{folder}: no such folder in the bucket (no objects under it)")
    local = Path(tempfile.mkdtemp(prefix="prorank-gcs-"))
    atexit.register(shutil.rmtree, local, True)
    fs = _fs()
    root = _key(as_path(folder)).rstrip("/")
    for name in names:
        (local / name).parent.mkdir(parents=True, exist_ok=True)
        fs.get_file(f"{root}/{name}", os.fspath(local / name))
    check_complete(folder)  # a writer that started during the download
    log.info("downloaded %d files of %s to %s", len(names), folder, local)
    return local
