"""A GCS emulator on 127.0.0.1 for the tests (gcp-storage-emulator, pinned in requirements-test.txt),
and a server that refuses every request as GCS refuses a credential without access.

The emulator is a real HTTP server speaking the GCS JSON API (buckets, objects, media,
multipart and resumable uploads, prefix listing, deletes). Clients find it through the
standard variables: gcsfs and google-cloud-storage read STORAGE_EMULATOR_HOST;
tensorstore (orbax's array store) reads TENSORSTORE_GCS_HTTP_URL, and
GOOGLE_AUTH_TOKEN_FOR_TESTING stops it looking for credentials.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path


def free_port() -> int:
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
        # The emulator serves one request at a time with socketserver's listen backlog of 5;
        # tensorstore's default of 32 concurrent requests overflowed it on a loaded machine
        # (timed-out requests, an OCDBT write failing with "Malformed StorageGeneration").
        "TENSORSTORE_GCS_REQUEST_CONCURRENCY": "2",
    }


def _emulator_command() -> list[str]:
    script = Path(sys.executable).parent / "gcp-storage-emulator"
    return [str(script)] if script.exists() else [shutil.which("gcp-storage-emulator") or "gcp-storage-emulator"]


@contextlib.contextmanager
def gcs_emulator(bucket: str, data_dir: Path) -> Iterator[str]:
    """Start the emulator (storing under data_dir/store, on a free port, with `bucket`), yield its URL, kill it.

    Not --in-memory: with it, tensorstore's OCDBT manifest writes failed ("Malformed
    StorageGeneration") on the second checkpoint of a run; the on-disk store served them.
    """
    port = free_port()
    # Its output goes to a file, not a pipe: the server is single-threaded and prints a traceback
    # for each client that hangs up mid-request (a kill -9); a full, unread pipe would stop it.
    log = open(data_dir / "emulator.log", "wb")
    proc = subprocess.Popen([*_emulator_command(), "--data-dir", str(data_dir / "store"), "start", "--host", "127.0.0.1",
                             "--port", str(port), "--default-bucket", bucket, "--quiet"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/storage/v1/b/{bucket}", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError(f"gcp-storage-emulator exited: {(data_dir / 'emulator.log').read_text()[-2000:]}")
                if time.time() > deadline:
                    raise RuntimeError("gcp-storage-emulator did not answer within 60 s")
                time.sleep(0.2)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
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
