#!/usr/bin/env python3
"""Outbound webhook benchmark: how fast the gateway delivers events to a
local receiver, and how late `study.stable` arrives after it is due.

    python3 bench/outbound.py                    # 500 studies, 3 runs (~2 min)
    python3 bench/outbound.py --studies 2000 --runs 1

Must run as root (a private network namespace, as bench/ingest.py), from
the repository, after `cargo build --release`.  Python 3.11, standard
library only; the studies are made with pydicom from .venv.

Method
------
* Data: --studies studies of one ~9 KiB CT instance each (the small9
  template of testdata/generate.py, with a fresh study, series and SOP
  instance UID per file), made once into bench/out/sets/outbound<N>/all.
* Receiver: a separate Python process (this script with --serve), a
  ThreadingHTTPServer speaking HTTP/1.1 (keep-alive) that answers every
  POST with 204 and records its arrival time (time.time() after reading
  the body), webhook-id and body.  A separate process, so its GIL is not
  shared with this script.
* Gateway: a copy of target/release/dicom-gateway, fresh data directory
  per run, `--stable-after 1`, default webhook_concurrency (8: at most 4
  deliveries in flight for one subscription).  One subscription, created
  through POST /api/webhooks, to study.received and study.stable at the
  receiver.
* Baseline, same run: the same burst to a gateway without subscriptions
  (fresh data directory; before the subscribed one in odd runs, after it in
  even ones): the ingest rate without events, and the gateway's CPU time
  for the burst and until it has told every study stable (its log's
  "study stable" lines: stable timers run without subscriptions too).  The
  subscribed gateway's CPU is taken from the burst to the last delivery, so
  the difference is what the events and their deliveries cost.
* Burst: one DCMTK storescu (TCP_NODELAY=1) sends every study in one
  association.  The run then waits until the receiver has one
  study.received and one study.stable (version 1) for every study.
* (a) Delivery throughput: study.received arrivals per second from the
  first to the last arrival; the same for study.stable.  Beside it: the
  ingest rate (studies / storescu wall time), since study.received cannot
  be delivered faster than studies arrive, and the lag from storescu's exit
  to the last study.received arrival.
* Backlog drain, same run, a second gateway on a fresh data directory:
  the receiver holds the first requests (the gateway's 4 in flight) until
  every study.received and study.stable of the burst is queued in the
  outbox (polled through GET /api/webhooks/{id}/messages), then answers
  everything: messages delivered per second from that moment to the last
  arrival.  This is the delivery rate with work waiting, which the live
  burst cannot show (its events are due no faster than the studies arrive).
  The burst of this phase is timed too ("receiver holds"): ingest while
  events are queued but no delivery finishes.
* Receiver ceiling, same run, after the deliveries: --ceiling-threads
  Python threads in this script, each with its own keep-alive connection,
  POST the recorded study.received bodies (with headers of the gateway's
  size) to the receiver for --ceiling-seconds; requests per second.  It is
  the receiver's limit on this machine with a Python client on the same 2
  cores, not a property of the gateway.
* (b) Latency of study.stable: arrival at the receiver minus the time it
  was due, data.lastReceived + stable_after (lastReceived is the study's
  instance's receive time, taken before its index commit, which is what
  starts the gateway's timer: the commit adds about a millisecond).  Also
  study.received: arrival minus data.receivedAt.  p50/p95/p99/max.
* Interference: CPU seconds of the gateway, of the receiver process, and of
  everything else on the machine (busy time from /proc/stat minus ours) as
  a percentage of all cores, from the start of the burst to the last
  arrival; hypervisor steal likewise.
* Correctness: storescu must exit 0; every study exactly one study.received
  and one study.stable with version 1, no unknown webhook-id twice; no WARN
  or ERROR line in the gateway's log.
Results go to stdout and bench/results/outbound-<date>[-<N>studies].{md,json}.
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ingest  # noqa: E402  (helpers shared with the ingest benchmark)

REPO = ingest.REPO
GW_DICOM, GW_HTTP, HOOK_PORT = 11112, 18080, 18097
STABLE_AFTER = 1  # seconds
DONE_TIMEOUT = 300.0  # seconds for every event to arrive
UID_ROOT = 2250000000000000000000000000000000000  # 2.25.<integer>, one per study
NETNS_MARKER = "OUTBOUND_BENCH_IN_NETNS"


# --------------------------------------------------------------------------
# the receiver (a separate process: this script with --serve PORT)


class Recorder(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int):
        self.lock = threading.Lock()
        self.records: list[dict] = []
        self.types: dict[str, int] = {}
        self.ceiling = 0
        self.gate = threading.Event()  # closed: /hook requests wait (the drain phase)
        self.gate.set()
        self.opened = 0.0
        super().__init__(("127.0.0.1", port), RecorderHandler)


class RecorderHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        arrived = time.time()
        server: Recorder = self.server
        if self.path == "/hook":
            if not server.gate.is_set():
                server.gate.wait(12)  # under the gateway's 15 s delivery time-out
                arrived = time.time()
            kind = json.loads(body).get("type", "?")
            record = {"t": arrived, "id": self.headers.get("webhook-id"), "body": body.decode()}
            with server.lock:
                server.records.append(record)
                server.types[kind] = server.types.get(kind, 0) + 1
        else:
            with server.lock:
                server.ceiling += 1
        self.send_response(204)
        self.end_headers()

    def do_GET(self) -> None:  # noqa: N802
        server: Recorder = self.server
        with server.lock:
            if self.path == "/records":
                payload = json.dumps(server.records)
            elif self.path == "/reset":
                server.records, server.types, server.ceiling = [], {}, 0
                payload = "{}"
            elif self.path == "/close":
                server.gate.clear()
                payload = "{}"
            elif self.path == "/open":
                server.opened = time.time()
                server.gate.set()
                payload = json.dumps({"opened": server.opened})
            else:
                payload = json.dumps({"types": server.types, "ceiling": server.ceiling})
        data = payload.encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


def serve(port: int) -> None:
    server = Recorder(port)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    server.serve_forever()


# --------------------------------------------------------------------------
# helpers


def get_json(url: str, method: str = "GET", body: dict | None = None):
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with opener.open(request, timeout=30) as response:
        return json.load(response)


def hook(path: str):
    return get_json(f"http://127.0.0.1:{HOOK_PORT}{path}")


def rfc3339(text: str) -> float:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]

    return {"p50": at(0.50), "p95": at(0.95), "p99": at(0.99), "max": ordered[-1]}


def make_studies(count: int, work: Path) -> Path:
    """`count` one-instance studies from the small9 template; cached."""
    set_dir = work / "sets" / f"outbound{count}"
    all_dir = set_dir / "all"
    if (set_dir / "set.json").exists() and ingest.count_files(all_dir) == count:
        return all_dir
    ingest.log(f"generating {count} one-instance studies into {all_dir}")
    shutil.rmtree(set_dir, ignore_errors=True)
    python = ingest.generator_python()
    template = set_dir / "template"
    subprocess.run(
        [python, str(REPO / "testdata" / "generate.py"), "bench", str(template), "--set", "small9", "--count", "1"],
        check=True,
    )
    script = """
import sys
from pathlib import Path
from pydicom import dcmread
template, out, count, root = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
out.mkdir(parents=True)
ds = dcmread(next(template.iterdir()))
for i in range(1, count + 1):
    study = f"2.25.{root + i}"
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = study + ".1"
    ds.SOPInstanceUID = study + ".1.1"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.AccessionNumber = f"OB{i}"
    ds.StudyID = str(i)
    ds.save_as(out / f"outbound_{i:05d}.dcm", enforce_file_format=True)
"""
    subprocess.run([python, "-c", script, str(template), str(all_dir), str(count), str(UID_ROOT)], check=True)
    shutil.rmtree(template)
    (set_dir / "set.json").write_text(json.dumps({"count": count}))
    return all_dir


def process_cpu(pid: int) -> float:
    return ingest.process_cpu_seconds(pid)


def ceiling(bodies: list[bytes], threads: int, seconds: float) -> float:
    """Requests/s the receiver answers to `threads` keep-alive clients."""
    headers = {
        "Content-Type": "application/json",
        "webhook-id": "msg_" + "0" * 32,
        "webhook-timestamp": str(int(time.time())),
        "webhook-signature": "v1," + "A" * 44,
        "User-Agent": "dicom-gateway/0.1.0",
    }
    done = [0] * threads
    stop = time.perf_counter() + seconds

    def client(n: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", HOOK_PORT, timeout=10)
        i = n
        while time.perf_counter() < stop:
            conn.request("POST", "/ceiling", body=bodies[i % len(bodies)], headers=headers)
            response = conn.getresponse()
            response.read()
            if response.status != 204:
                raise RuntimeError(f"receiver answered {response.status}")
            done[n] += 1
            i += threads
        conn.close()

    start = time.perf_counter()
    workers = [threading.Thread(target=client, args=(n,)) for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return sum(done) / (time.perf_counter() - start)


# --------------------------------------------------------------------------
# one run


class Gateway:
    """The release gateway on a fresh data directory, with one subscription
    to study.received and study.stable at the receiver."""

    def __init__(self, binary: Path, work: Path, tag: str, subscribe: bool = True):
        self.data_dir = Path(tempfile.mkdtemp(prefix=f"rx-outbound-{tag}-", dir=work))
        self.log_path = work / "logs" / f"outbound-{tag}-gateway.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log_file:
            self.process = subprocess.Popen(
                [str(binary), "serve", "--data-dir", str(self.data_dir),
                 "--dicom-listen", f"127.0.0.1:{GW_DICOM}", "--http-listen", f"127.0.0.1:{GW_HTTP}",
                 "--ae-title", ingest.GATEWAY_AE, "--stable-after", str(STABLE_AFTER)],
                stdout=log_file, stderr=subprocess.STDOUT, env=ingest.gateway_env(),
            )  # fmt: skip
        ingest.wait_for(lambda: ingest.listening(GW_DICOM) and ingest.listening(GW_HTTP), 15, "gateway")
        if not subscribe:
            return
        self.subscription = get_json(
            f"http://127.0.0.1:{GW_HTTP}/api/webhooks", "POST",
            {"name": "bench", "url": f"http://127.0.0.1:{HOOK_PORT}/hook",
             "events": ["study.received", "study.stable"]},
        )["id"]  # fmt: skip

    def messages(self) -> list[dict]:
        url = f"http://127.0.0.1:{GW_HTTP}/api/webhooks/{self.subscription}/messages?limit=1000"
        return get_json(url)["messages"]

    def stop(self) -> list[str]:
        """Stops the gateway; its WARN/ERROR lines."""
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=30)
        text = self.log_path.read_text(errors="replace")
        shutil.rmtree(self.data_dir, ignore_errors=True)
        return [line for line in text.splitlines() if " WARN " in line or " ERROR " in line][:10]


def storescu(studies_dir: Path, log: Path) -> int:
    with open(log, "wb") as out:
        return subprocess.run(
            [ingest.STORESCU, "-aec", ingest.GATEWAY_AE, "+sd", "127.0.0.1", str(GW_DICOM), str(studies_dir)],
            stdout=out, stderr=subprocess.STDOUT, env=ingest.dcmtk_env(),
        ).returncode  # fmt: skip


def wait_complete(n: int) -> None:
    def complete() -> bool:
        types = hook("/count")["types"]
        return types.get("study.received", 0) >= n and types.get("study.stable", 0) >= n

    ingest.wait_for(complete, DONE_TIMEOUT, "every study.received and study.stable")


def check_records(records: list[dict], n: int, problems: list[str]) -> tuple[dict, dict]:
    """study -> (arrival, reference time) for study.received (receivedAt)
    and study.stable (due); complaints about duplicates into `problems`."""
    received, stable, seen_ids = {}, {}, set()
    for r in records:
        body = json.loads(r["body"])
        study = body["data"]["studyInstanceUid"]
        if r["id"] in seen_ids:
            problems.append(f"webhook-id {r['id']} delivered twice")
        seen_ids.add(r["id"])
        if body["type"] == "study.received":
            if study in received:
                problems.append(f"{study}: study.received twice")
            received[study] = (r["t"], rfc3339(body["data"]["receivedAt"]))
        elif body["type"] == "study.stable":
            if study in stable or body["data"]["version"] != 1:
                problems.append(f"{study}: study.stable again or version {body['data']['version']}")
            stable[study] = (r["t"], rfc3339(body["data"]["lastReceived"]) + STABLE_AFTER)
    if len(received) != n or len(stable) != n:
        problems.append(f"{len(received)} study.received and {len(stable)} study.stable for {n} studies")
    return received, stable


def rate(times: list[float]) -> float:
    times = sorted(times)
    return (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else 0.0


def run_once(run: int, args, studies_dir: Path, binary: Path, work: Path) -> dict:
    n = args.studies
    result: dict = {"run": run, "problems": []}
    ingest.warm_page_cache(ingest.BenchSet("outbound", n, 0, studies_dir, []))

    def baseline() -> None:
        """The same burst to a gateway without subscriptions."""
        gw = Gateway(binary, work, f"{run}-nosub", subscribe=False)
        try:
            cpu = process_cpu(gw.process.pid)
            start = time.perf_counter()
            code = storescu(studies_dir, work / "logs" / f"outbound-{run}-nosub-storescu.log")
            result["nosub_storescu_s"] = time.perf_counter() - start
            result["nosub_gateway_cpu_s"] = process_cpu(gw.process.pid) - cpu
            if code != 0:
                result["problems"].append(f"storescu (no subscription) exited with {code}")

            def all_stable() -> bool:  # the gateway logs each study.stable it tells
                return gw.log_path.read_text(errors="replace").count(" study stable ") >= n

            ingest.wait_for(all_stable, DONE_TIMEOUT, "every study told stable (no subscription)")
            result["nosub_gateway_cpu_total_s"] = process_cpu(gw.process.pid) - cpu
        finally:
            result["problems"] += gw.stop()

    if run % 2:
        baseline()

    # Phase 1, live: deliveries while the studies arrive.
    hook("/reset")
    gw = Gateway(binary, work, f"{run}-live")
    try:
        cpu0 = (ingest.system_cpu_seconds(), process_cpu(gw.process.pid), process_cpu(args.hook_pid), os.times())
        start = time.perf_counter()
        t_start = time.time()
        code = storescu(studies_dir, work / "logs" / f"outbound-{run}-live-storescu.log")
        t_sent = time.time()
        result["storescu_s"] = time.perf_counter() - start
        if code != 0:
            result["problems"].append(f"storescu exited with {code}")
        wait_complete(n)
        wall = time.perf_counter() - start
        cpu1 = (ingest.system_cpu_seconds(), process_cpu(gw.process.pid), process_cpu(args.hook_pid), os.times())
        records = hook("/records")
        before = hook("/count")["ceiling"]
        result["ceiling_rps"] = ceiling(
            [r["body"].encode() for r in records[:200]], args.ceiling_threads, args.ceiling_seconds
        )
        result["ceiling_counted_by_receiver"] = hook("/count")["ceiling"] - before
        result["gateway_peak_rss_mib"] = ingest.mib(ingest.proc_status_field(gw.process.pid, "VmHWM"))
        messages = gw.messages()
        result["messages_not_delivered"] = sum(1 for m in messages if m["state"] != "delivered")
        result["attempts_max"] = max((m["attempts"] for m in messages), default=0)
    finally:
        result["problems"] += gw.stop()
    received, stable = check_records(records, n, result["problems"])
    rt = sorted(t for t, _ in received.values())
    st = sorted(t for t, _ in stable.values())
    result |= {
        "ingest_studies_per_s": n / result["storescu_s"],
        "received_per_s": rate(rt),
        "received_lag_after_storescu_s": rt[-1] - t_sent,
        "first_received_after_start_s": rt[0] - t_start,
        "stable_per_s": rate(st),
        "received_latency_ms": {k: v * 1000 for k, v in percentiles([t - at for t, at in received.values()]).items()},
        "stable_latency_ms": {k: v * 1000 for k, v in percentiles([t - due for t, due in stable.values()]).items()},
        "window_s": wall,
    }
    capacity = wall * os.cpu_count() / 100
    gw_cpu, hook_cpu = cpu1[1] - cpu0[1], cpu1[2] - cpu0[2]
    mine = sum(cpu1[3][:4]) - sum(cpu0[3][:4])  # this script + storescu (reaped)
    busy = cpu1[0][0] - cpu0[0][0]
    result |= {
        "gateway_cpu_s": gw_cpu,
        "receiver_cpu_s": hook_cpu,
        "other_cpu_pct": max(0.0, (busy - gw_cpu - hook_cpu - mine) / capacity),
        "steal_pct": (cpu1[0][1] - cpu0[0][1]) / capacity,
    }

    if not run % 2:
        baseline()
    result["nosub_ingest_studies_per_s"] = n / result["nosub_storescu_s"]
    os.sync()

    # Phase 2, backlog: the receiver holds its first requests until every
    # study.received and study.stable is queued, then the gateway drains.
    hook("/reset")
    hook("/close")
    gw = Gateway(binary, work, f"{run}-drain")
    try:
        cpu_held = process_cpu(gw.process.pid)
        start = time.perf_counter()
        code = storescu(studies_dir, work / "logs" / f"outbound-{run}-drain-storescu.log")
        result["held_storescu_s"] = time.perf_counter() - start
        result["held_gateway_cpu_s"] = process_cpu(gw.process.pid) - cpu_held
        if code != 0:
            result["problems"].append(f"storescu (drain phase) exited with {code}")

        def all_stable_queued() -> bool:
            return sum(m["type"] == "study.stable" for m in gw.messages()) >= n

        ingest.wait_for(all_stable_queued, 10 * STABLE_AFTER + 10, "every study.stable queued")
        queued = len(gw.messages())
        cpu0 = (process_cpu(gw.process.pid), process_cpu(args.hook_pid))
        perf = None
        if args.profile_drain:
            perf = subprocess.Popen(
                ["perf", "record", "-F", "999", "--call-graph", "dwarf,16384", "-p", str(gw.process.pid),
                 "-o", f"{args.profile_drain}.{run}"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            time.sleep(0.5)  # let perf attach; untimed (the gate is still closed)
        opened = hook("/open")["opened"]
        wait_complete(n)
        cpu1 = (process_cpu(gw.process.pid), process_cpu(args.hook_pid))
        if perf is not None:
            perf.send_signal(signal.SIGINT)
            perf.wait()
        records = hook("/records")
    finally:
        result["problems"] += gw.stop()
    check_records(records, n, result["problems"])
    last = max(r["t"] for r in records)
    result |= {
        "drain_messages": len(records),
        "drain_queued_at_open": queued,
        "drain_s": last - opened,
        "drain_per_s": len(records) / (last - opened),
        "drain_gateway_cpu_s": cpu1[0] - cpu0[0],
        "drain_receiver_cpu_s": cpu1[1] - cpu0[1],
    }
    return result


# --------------------------------------------------------------------------
# report


def report(results: list[dict], args, info: dict, command: str) -> str:
    def med(key: str, sub: str | None = None) -> float:
        return statistics.median(r[key][sub] if sub else r[key] for r in results)

    def runs(key: str, fmt: str = "{:.0f}", sub: str | None = None) -> str:
        return ", ".join(fmt.format(r[key][sub] if sub else r[key]) for r in results)

    drain_cpu = ", ".join(f"{r['drain_gateway_cpu_s']:.2f} / {r['drain_receiver_cpu_s']:.2f}" for r in results)
    ratios = ", ".join(f"{r['ingest_studies_per_s'] / r['nosub_ingest_studies_per_s']:.2f}" for r in results)
    def cpu_ms(key: str) -> str:
        return f"{1000 * med(key) / args.studies:.2f}"

    def per_run(a: str, b: str) -> str:
        return ", ".join(f"{1000 * r[a] / args.studies:.2f} / {1000 * r[b] / args.studies:.2f}" for r in results)

    held = ", ".join(f"{args.studies / r['held_storescu_s']:.0f}" for r in results)
    lags = ", ".join(f"{1000 * r['received_lag_after_storescu_s']:.0f}" for r in results)
    lines = [
        f"# Outbound webhook benchmark ({datetime.date.today()})", "",
        f"Command: `{command}` (as root, from the repository)", "",
        f"{args.studies} studies of one ~9 KiB instance, one storescu association; one subscription "
        f"(study.received, study.stable) to a local Python receiver answering 204; `--stable-after {STABLE_AFTER}`, "
        f"default webhook_concurrency (8). {len(results)} run(s); medians, then every run.", "",
        "## Delivery throughput", "",
        "| | median | runs |", "|---|--:|---|",
        f"| ingest without a subscription, studies/s (storescu wall {med('nosub_storescu_s'):.2f} s) "
        f"| {med('nosub_ingest_studies_per_s'):.0f} | {runs('nosub_ingest_studies_per_s')} |",
        f"| ingest with the subscription, studies/s (storescu wall {med('storescu_s'):.2f} s) "
        f"| {med('ingest_studies_per_s'):.0f} | {runs('ingest_studies_per_s')} |",
        f"| ratio with / without | {med('ingest_studies_per_s') / med('nosub_ingest_studies_per_s'):.2f} "
        f"| {ratios} |",
        f"| ingest while the receiver holds (drain phase: no delivery ends, the outbox grows), studies/s "
        f"| {args.studies / med('held_storescu_s'):.0f} | {held} |",
        f"| gateway CPU ms per study during the burst: without subscription / receiver holding "
        f"| {cpu_ms('nosub_gateway_cpu_s')} / {cpu_ms('held_gateway_cpu_s')} "
        f"| {per_run('nosub_gateway_cpu_s', 'held_gateway_cpu_s')} |",
        f"| gateway CPU ms per study, burst to last study.stable told (no subscription) or delivered (live) "
        f"| {cpu_ms('nosub_gateway_cpu_total_s')} / {cpu_ms('gateway_cpu_s')} "
        f"| {per_run('nosub_gateway_cpu_total_s', 'gateway_cpu_s')} |",
        f"| study.received delivered, events/s (first to last arrival) | {med('received_per_s'):.0f} "
        f"| {runs('received_per_s')} |",
        f"| last study.received after storescu's exit, ms | {1000 * med('received_lag_after_storescu_s'):.0f} "
        f"| {lags} |",
        f"| study.stable delivered, events/s (first to last arrival) | {med('stable_per_s'):.0f} "
        f"| {runs('stable_per_s')} |",
        f"| backlog drain: {med('drain_messages'):.0f} queued study.received + study.stable, events/s "
        f"(receiver reopened to last arrival) | {med('drain_per_s'):.0f} | {runs('drain_per_s')} |",
        f"| backlog drain: gateway CPU s / receiver CPU s | {med('drain_gateway_cpu_s'):.2f} / "
        f"{med('drain_receiver_cpu_s'):.2f} | {drain_cpu} |",
        f"| receiver ceiling, req/s ({args.ceiling_threads} Python keep-alive clients, {args.ceiling_seconds:g} s) "
        f"| {med('ceiling_rps'):.0f} | {runs('ceiling_rps')} |",
        "", "## Latency", "",
        "| event | from | p50 ms | p95 ms | p99 ms | max ms |", "|---|---|--:|--:|--:|--:|",
    ]  # fmt: skip
    for key, event, origin in (
        ("stable_latency_ms", "study.stable", "due (lastReceived + stable_after)"),
        ("received_latency_ms", "study.received", "receivedAt"),
    ):
        cells = " | ".join(f"{med(key, q):.0f} ({runs(key, '{:.0f}', q)})" for q in ("p50", "p95", "p99", "max"))
        lines.append(f"| {event} | {origin} | {cells} |")
    lines += [
        "", "Latency cells: median of the runs (each run's value in parentheses).", "",
        "## CPU during the window (burst start to last arrival)", "",
        "| run | window s | gateway CPU s (without subscription: the burst alone) | receiver CPU s "
        "| other CPU, % of all cores | steal % "
        "| gateway peak RSS MiB | messages not delivered | max attempts |",
        "|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]  # fmt: skip
    for r in results:
        lines.append(
            f"| {r['run']} | {r['window_s']:.2f} | {r['gateway_cpu_s']:.2f} ({r['nosub_gateway_cpu_s']:.2f}) "
            f"| {r['receiver_cpu_s']:.2f} "
            f"| {r['other_cpu_pct']:.0f} | {r['steal_pct']:.0f} | {r['gateway_peak_rss_mib']:.1f} "
            f"| {r['messages_not_delivered']} | {r['attempts_max']} |"
        )
    problems = [f"- run {r['run']}: {p[:300]}" for r in results for p in r["problems"]]
    lines += ["", "## Problems", "", "\n".join(problems) or "None: storescu exited 0, every study told once "
              "received and once stable (version 1), no webhook-id twice, no gateway WARN/ERROR.", ""]
    lines += ["## Machine", ""] + [f"- {k}: {v}" for k, v in info.items()]
    lines += ["", "## Method", "", __doc__.split("Method\n------\n", 1)[1].strip(), ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--studies", type=int, default=500)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument(
        "--ceiling-threads", type=int, default=4, help="default 4: the gateway's in-flight cap per subscription"
    )
    ap.add_argument("--ceiling-seconds", type=float, default=5.0)
    ap.add_argument("--profile-drain", metavar="FILE", help="perf record the gateway during each drain into FILE.<run>")
    ap.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if not 2 <= args.studies <= 500:
        ap.error("--studies: 2 to 500 (the drain phase counts the 2 x studies messages in one listing of at most 1000)")
    if args.serve:
        return serve(args.serve)
    command = shlex.join([sys.executable, *sys.argv])
    if os.environ.get(NETNS_MARKER) != "1":
        if os.geteuid() != 0:
            sys.exit("bench/outbound.py must run as root (it uses unshare -n)")
        os.execvpe("unshare", ["unshare", "--net", "--", sys.executable, *sys.argv], {**os.environ, NETNS_MARKER: "1"})
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    work = REPO / "bench" / "out"
    work.mkdir(parents=True, exist_ok=True)
    ingest.check_tools(["gateway"])
    ingest.snapshot_gateway(work)
    binary = ingest.GatewayReceiver.binary
    info = ingest.machine_info()
    info["load average (1/5/15 min) at start"] = ingest.load_average()
    studies_dir = make_studies(args.studies, work)
    os.sync()
    receiver = subprocess.Popen([sys.executable, __file__, "--serve", str(HOOK_PORT)])
    args.hook_pid = receiver.pid
    results = []
    try:
        ingest.wait_for(lambda: ingest.listening(HOOK_PORT), 10, "receiver")
        for run in range(1, args.runs + 1):
            r = run_once(run, args, studies_dir, binary, work)
            ingest.log(
                f"run {run}: ingest {r['ingest_studies_per_s']:.0f}/s, received {r['received_per_s']:.0f}/s "
                f"(lag {1000 * r['received_lag_after_storescu_s']:.0f} ms), stable {r['stable_per_s']:.0f}/s, "
                f"stable latency p50 {r['stable_latency_ms']['p50']:.0f} p99 {r['stable_latency_ms']['p99']:.0f} "
                f"max {r['stable_latency_ms']['max']:.0f} ms, ceiling {r['ceiling_rps']:.0f}/s, "
                f"other CPU {r['other_cpu_pct']:.0f} %, problems {r['problems'][:3]}"
            )
            results.append(r)
            os.sync()
    finally:
        receiver.terminate()
        receiver.wait()
    info["load average (1/5/15 min) at end"] = ingest.load_average()
    text = report(results, args, info, command)
    print(text)
    suffix = "" if args.studies == 500 else f"-{args.studies}studies"
    out = REPO / "bench" / "results" / f"outbound-{datetime.date.today()}{suffix}"
    out.with_suffix(".md").write_text(text)
    data = {"command": command, "machine": info, "runs": results}
    out.with_suffix(".json").write_text(json.dumps(data, indent=2) + "\n")
    print(f"report: {out}.md (+ .json)")
    if any(r["problems"] for r in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
