#!/usr/bin/env python3
"""A stand-in for the storage behind Avara's presigned report URLs.

    pdf_server.py --file REPORT [--fail N] [--hold FLAGFILE]

Listens on 127.0.0.1 (a free port, printed as the first line of stdout) and
answers GET with the file, except: the first N requests get 503, and while
--hold names a file that does not exist every request gets 503. Each request
is logged to stderr.
"""
import argparse
import http.server
import os
import sys
import threading


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--file", required=True)
    ap.add_argument("--fail", type=int, default=0)
    ap.add_argument("--hold")
    args = ap.parse_args()
    body = open(args.file, "rb").read()
    state = {"failures_left": args.fail}
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            with lock:
                failing = state["failures_left"] > 0 or (args.hold and not os.path.exists(args.hold))
                if state["failures_left"] > 0:
                    state["failures_left"] -= 1
            if failing:
                self.send_response(503)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/pdf")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, fmt: str, *a) -> None:
            sys.stderr.write("pdf_server: " + fmt % a + "\n")

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
