"""Running the rerank app under uvicorn with every wait bounded.

uvicorn bounds the idle time between requests (keep-alive) but not the time a client takes
to send its request line and headers, and its graceful shutdown waits for every open
connection, however stalled. Here:

* header timeout: a connection whose request head is not complete within --header-timeout
  seconds of connecting (or of its previous answer) is closed, so slowloris connections
  do not pile up (`HeaderTimeout`, mixed into uvicorn's HTTP protocol);
* body timeout: scoring/server_guard.py answers 408 to a body that stalls;
* shutdown: on SIGTERM / SIGINT the listening socket closes, idle connections close, a
  connection still sending its request body is closed at once (its request was never
  received), requests fully received are answered; after --shutdown-timeout seconds
  whatever is left is cancelled and the process exits 0. A second signal exits at once
  (status 128 + signal number), without waiting for anything.
"""

from __future__ import annotations

import logging
import os
import signal
import sys

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)


class HeaderTimeout:
    """Mixin for a uvicorn HTTP protocol class: close the connection when a request head is
    not complete within `header_timeout_s` (class attribute, set by `protocol_class`)."""

    header_timeout_s: float = 10.0

    def connection_made(self, transport):
        super().connection_made(transport)
        self._head_timer = None
        self._arm_head_timer()

    def on_response_complete(self):
        super().on_response_complete()
        self._arm_head_timer()

    def connection_lost(self, exc):
        self._cancel_head_timer()
        super().connection_lost(exc)

    def shutdown(self):
        # A request whose body is still arriving was never received: close now rather than
        # hold the shutdown until the client finishes (or never does).
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete and cycle.more_body and not self.transport.is_closing():
            log.info("closing a connection whose request body was still arriving at shutdown")
            self.transport.close()
            return
        super().shutdown()

    def _arm_head_timer(self):
        self._cancel_head_timer()
        if not self.transport.is_closing():
            self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_timed_out)

    def _cancel_head_timer(self):
        if getattr(self, "_head_timer", None) is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _waiting_for_head(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _head_timed_out(self):
        self._head_timer = None
        if self._waiting_for_head() and not self.transport.is_closing():
            log.debug("closing a connection that sent no complete request head in %.1f s", self.header_timeout_s)
            self.transport.close()


def protocol_class(header_timeout_s: float) -> type:
    """uvicorn's h11 protocol with the header timeout (h11 is what uvicorn picks without httptools)."""
    return type("GuardedH11Protocol", (HeaderTimeout, H11Protocol), {"header_timeout_s": header_timeout_s})


class BoundedServer(uvicorn.Server):
    """uvicorn.Server whose second SIGTERM / SIGINT exits at once."""

    def handle_exit(self, sig, frame):
        if self.should_exit:
            log.warning("second %s: exiting now, without waiting for requests in progress",
                        signal.Signals(sig).name)
            logging.shutdown()
            sys.stderr.flush()
            os._exit(128 + sig)
        log.info("%s: shutting down (at most %s s)", signal.Signals(sig).name, self.config.timeout_graceful_shutdown)
        super().handle_exit(sig, frame)


def serve(app, *, host: str, port: int, log_level: str, header_timeout_s: float, keep_alive_timeout_s: float,
          shutdown_timeout_s: float) -> bool:
    """Run `app` until a signal stops it; True if it started serving."""
    config = uvicorn.Config(
        app, host=host, port=port, log_level=log_level, lifespan="on",
        http=protocol_class(header_timeout_s),
        # uvicorn takes whole seconds for both; keep-alive 0 would close after every answer.
        timeout_keep_alive=max(1, round(keep_alive_timeout_s)),
        timeout_graceful_shutdown=max(1, round(shutdown_timeout_s)),
    )
    server = BoundedServer(config)
    # uvicorn re-raises the stopping signal to the handler that was installed before it
    # ran; a no-op one here makes the graceful stop exit 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    server.run()
    return server.started
