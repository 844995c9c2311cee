#!/usr/bin/env python3
"""A webhook receiver, as an integrator would write one, that records what
the gateway delivered.

    webhook_receiver.py --record FILE [--secret whsec_...]... [--port N] [--status CODE]

Binds 127.0.0.1:N (0, the default, picks a free port) and prints
`PORT <n>` on stdout once listening.

Every POST is verified with the `standardwebhooks` library (the reference
implementation receivers use) against each `--secret` on its own, then one
JSON line is appended to FILE -- written, flushed and fsync'd before the
answer, so a test that reads FILE sees every delivery that was answered:

    {"id": webhook-id, "timestamp": webhook-timestamp,
     "signature": webhook-signature, "verified_by": [indexes of the secrets
     that verified it], "answered": status, "path": path,
     "body": the JSON body, or null when it is not JSON}

A delivery is answered `--status` (default 204), or 401 when no secret
verifies it. `POST /_control` with `{"status": N}` changes the status for
later deliveries; it is answered 200 and not recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook

# A gateway message is a few KiB; refuse to buffer whatever a length claims.
MAX_BODY = 1 << 20


class State:
    def __init__(self, record: str, secrets: list[str], status: int) -> None:
        self.record = record
        self.webhooks = [Webhook(s) for s in secrets]
        self.status = status
        self.lock = threading.Lock()

    def append(self, entry: dict) -> None:
        line = json.dumps(entry, separators=(",", ":")) + "\n"
        with self.lock:
            with open(self.record, "a", encoding="utf-8") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())


def handler(state: State) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            sys.stderr.write("webhook_receiver: " + (format % args) + "\n")

        def answer(self, status: int, body: bytes = b"") -> None:
            self.send_response(status)
            if status != 204:  # a 204 has no body and says no length (RFC 9110 8.6)
                self.send_header("content-length", str(len(body)))
            if body:
                self.send_header("content-type", "application/json")
            self.end_headers()
            if body:
                self.wfile.write(body)

        def read_body(self) -> bytes | None:
            try:
                length = int(self.headers.get("content-length", "0"))
            except ValueError:
                return None
            if length < 0 or length > MAX_BODY:
                return None
            return self.rfile.read(length)

        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            raw = self.read_body()
            if raw is None:
                self.close_connection = True
                self.answer(413)
                return
            if self.path == "/_control":
                try:
                    status = int(json.loads(raw)["status"])
                except (ValueError, KeyError, TypeError):
                    self.answer(400)
                    return
                with state.lock:
                    state.status = status
                self.answer(200, b"{}")
                return

            headers = {k.lower(): v for k, v in self.headers.items()}
            verified_by, errors = [], []
            for i, webhook in enumerate(state.webhooks):
                try:
                    webhook.verify(raw, headers, json_parse=False)
                    verified_by.append(i)
                except Exception as err:  # a malformed header is a failure too
                    errors.append(f"{i}: {type(err).__name__}: {err}")
            try:
                body = json.loads(raw)
            except ValueError:
                body = None
            with state.lock:
                status = state.status if verified_by else 401
            state.append(
                {
                    "id": headers.get("webhook-id"),
                    "timestamp": headers.get("webhook-timestamp"),
                    "signature": headers.get("webhook-signature"),
                    "verified_by": verified_by,
                    "errors": errors,
                    "answered": status,
                    "path": self.path,
                    "body": body,
                }
            )
            self.answer(status)

    return Handler


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--record", required=True, help="the file each delivery is appended to")
    ap.add_argument("--secret", action="append", default=[], help="a whsec_ secret (repeatable)")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--status", type=int, default=204, help="what verified deliveries are answered")
    args = ap.parse_args()

    state = State(args.record, args.secret, args.status)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), handler(state))
    server.daemon_threads = True
    print(f"PORT {server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
