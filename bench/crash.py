#!/usr/bin/env python3
"""Crash benchmark: kill -9 the gateway while senders store; count what is lost.

    python3 bench/crash.py                      # 100 cycles, 3 senders
    python3 bench/crash.py --cycles 10 --seed 7 # a short run, replayable choices
    python3 bench/crash.py --gateway-arg=--journal --gateway-arg=true   # extra `serve` arguments
    python3 bench/crash.py --s3                 # the store in SeaweedFS (S3)

Python 3.11, standard library only; the senders are tests/peers/ack_sender.py
run with .venv/bin/python (pydicom, pynetdicom). Run `cargo build --release`
first: the gateway is a copy of target/release/dicom-gateway taken at start.

Method
------
* One data directory (WORK/data, fresh for each invocation, on the repo's
  filesystem, so the fsyncs are real ones) for every cycle.
* A cycle: start the gateway (ports 0, parsed from its log) on the data
  directory; check the store (below); start --senders ack_sender.py
  processes, one association each, all into the cycle's study, each
  generating distinct CT instances of 1-256 KiB of random pixel data and
  keeping every file it sends; once all are associated, wait for K more
  0x0000 responses (K uniform in 1..--max-acks, from the seeded RNG), then
  a delay uniform in 0..--max-delay-ms, then SIGKILL the gateway. The senders
  see their association die and exit; each has recorded, flushed line by line,
  every SOP Instance UID answered 0x0000.
* The check after every restart: every instance acknowledged in any cycle so
  far is listed by GET /api/studies/<study> (lost = acknowledged, not listed:
  must be 0); the sizes listed match the files; for this cycle's study every
  listed instance's stored data set is byte-for-byte the one sent (the
  gateway writes its own Part-10 meta group, so data sets are compared), and
  every object file of that study, listed or not, is a complete instance that
  was sent (an object placed by a commit the kill interrupted is allowed,
  complete, unlisted; a torn one is not); the spool holds no file with data.
  After the last cycle the gateway is started once more, every listed
  instance of every study is compared byte for byte, and it is stopped with
  SIGTERM (must exit 0).
* --s3: the gateway stores into s3://bench/crash on SeaweedFS 4.48 (`weed
  mini` from .venv, started once for the whole run on free loopback ports,
  its volumes under WORK/s3; bench/ingest.py's SeaweedFS class). The check
  then reads objects where they are: every listed instance of the cycle's
  study is downloaded the way the gateway serves it (GET
  /api/download/<key>, redirects followed: the gateway's /files or a
  presigned store URL) and compared, the bucket must come to hold every
  listed instance (polled for up to 60 s, so a gateway that acknowledges
  before the upload is measured too: "bucket wait"), and every object of the
  study in the bucket, listed or not, is fetched (SigV4, curl) and must be a
  complete instance that was sent. Nothing may be left under WORK/data/objects.
* --gateway-arg ARG (repeatable; `--gateway-arg=--flag` for one that starts
  with a dash) is appended to every `dicom-gateway serve`, and recorded in
  the results.
* What it proves and what not: see RELIABILITY.md. SIGKILL keeps the page
  cache, so this proves ordering and atomicity (acknowledged only after the
  rename into the store and the index commit), not the fsyncs.
* Figures (stdout and bench/results/crash-<date>[-s3]-seed<seed>.{md,json}): cycles,
  instances generated / acknowledged / listed / byte-checked, losses,
  mismatches, unlisted complete objects, acknowledgements lost in flight
  (listed, never acknowledged), spool files swept at restarts, restart time
  (spawn to both listeners up) median and max, wall time.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import queue
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest import WEED, SeaweedFS  # noqa: E402 (bench/ingest.py, next to this script)

REPO = Path(__file__).resolve().parent.parent
GATEWAY_BUILD = REPO / "target" / "release" / "dicom-gateway"
PYTHON = REPO / ".venv" / "bin" / "python"
SENDER = REPO / "tests" / "peers" / "ack_sender.py"
WAIT = 60.0  # seconds: a bound against hangs, never a synchronisation
LISTENING = re.compile(r'listening service="(\w+)" addr=(\S+)')
SWEPT = re.compile(r"removed unfinished spool files.* count=(\d+)")
S3_PREFIX = "crash"  # the gateway's objects: s3://<bucket>/crash/...


class Gateway:
    """dicom-gateway serve on `data`, its stderr kept in memory and in `log`."""

    def __init__(self, binary: Path, data: Path, log: Path, args: list[str],
                 env: dict[str, str]) -> None:  # fmt: skip
        self.started = time.monotonic()
        self.lines: list[str] = []
        self.cond = threading.Condition()
        self.log = log.open("a")
        env = dict(os.environ, RUST_LOG="info") | env
        env.pop("DICOM_GATEWAY_API_TOKEN", None)
        self.proc = subprocess.Popen(
            [binary, "serve", "--data-dir", data,
             "--dicom-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", *args],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True, env=env,
        )
        threading.Thread(target=self._drain, daemon=True).start()
        self.dicom_port = int(self.wait_for("dicom").rsplit(":", 1)[1])
        self.http = self.wait_for("http")
        self.startup_s = time.monotonic() - self.started

    def _drain(self) -> None:
        for line in self.proc.stderr:
            self.log.write(line)
            with self.cond:
                self.lines.append(line)
                self.cond.notify_all()
        with self.cond:
            self.lines.append("<closed>")
            self.cond.notify_all()

    def wait_for(self, service: str) -> str:
        deadline = time.monotonic() + WAIT
        with self.cond:
            while True:
                for line in self.lines:
                    m = LISTENING.search(line)
                    if m and m.group(1) == service:
                        return m.group(2)
                if self.lines and self.lines[-1] == "<closed>":
                    sys.exit("gateway exited at start-up:\n" + "".join(self.lines))
                left = deadline - time.monotonic()
                if left <= 0:
                    sys.exit(f"gateway not listening for {service} within {WAIT} s")
                self.cond.wait(left)

    def study(self, uid: str) -> dict:
        with urllib.request.urlopen(f"http://{self.http}/api/studies/{uid}", timeout=WAIT) as rsp:
            return json.load(rsp)

    def served(self, key: str) -> bytes:
        """The object as the gateway hands it out: its download link, with
        the redirects followed (its own /files, or a presigned store URL)."""
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"http://{self.http}/api/download/{key}", timeout=WAIT) as rsp:
            return rsp.read()

    def kill9(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.log.flush()

    def stop(self) -> int:
        self.proc.terminate()
        code = self.proc.wait(timeout=WAIT)
        self.log.flush()
        return code


def dataset_bytes(data: bytes) -> bytes:
    """What follows the File Meta group of a Part-10 object."""
    assert data[128:132] == b"DICM" and data[132:136] == b"\x02\x00\x00\x00", "not Part-10"
    group_len = int.from_bytes(data[140:144], "little")
    return data[144 + group_len:]


class Ledger:
    def __init__(self) -> None:
        self.sent: dict[str, Path] = {}  # SOP Instance UID -> file sent
        self.acked: set[str] = set()
        self.study_of: dict[str, str] = {}  # SOP Instance UID -> study
        self.studies: list[str] = []


def listed_instances(gw: Gateway, ledger: Ledger) -> dict[str, tuple[str, int, str]]:
    """SOP Instance UID -> (object key, size, study) for every study so far."""
    listed = {}
    for study in ledger.studies:
        try:
            body = gw.study(study)
        except urllib.error.HTTPError as e:
            if e.code == 404:
                continue  # nothing of it was ever committed
            raise
        for series in body["series"]:
            for inst in series["instances"]:
                listed[inst["sopInstanceUid"]] = (inst["objectKey"], inst["size"], study)
    return listed


def free_weed_ports() -> tuple[int, dict[str, int]]:
    """Free loopback ports for one `weed mini`: (S3 port, the others as
    SeaweedFS flags). The admin server's gRPC port must be its port + 10000
    (its worker dials that whatever -admin.port.grpc says)."""
    held: list[socket.socket] = []

    def take(port: int = 0) -> int:
        sock = socket.socket()
        sock.bind(("127.0.0.1", port))
        held.append(sock)
        return sock.getsockname()[1]

    try:
        s3 = take()
        ports = {name: take() for name in ("master.port", "master.port.grpc", "volume.port",
                                           "volume.port.grpc", "filer.port", "filer.port.grpc",
                                           "s3.port.grpc")}  # fmt: skip
        for _ in range(1000):
            admin = take()
            if admin + 10_000 > 65_535:
                continue
            try:
                take(admin + 10_000)
            except OSError:
                continue
            ports |= {"admin.port": admin, "admin.port.grpc": admin + 10_000}
            return s3, ports
        sys.exit("no free port p with p + 10000 free too")
    finally:
        for sock in held:
            sock.close()


def s3_keys(s3: SeaweedFS, prefix: str, page: int = 1000) -> set[str]:
    """Every key under `prefix` in the bucket (ListObjectsV2, all pages)."""
    keys: set[str] = set()
    token = None
    while True:
        query = {"list-type": "2", "max-keys": str(page), "prefix": prefix}
        query |= {"continuation-token": token} if token else {}
        # Sorted and fully percent-encoded: SigV4's canonical query string,
        # which curl signs as written.
        path = f"/{s3.bucket}?" + urllib.parse.urlencode(sorted(query.items()), quote_via=urllib.parse.quote, safe="")
        out = s3.curl("GET", path, output="-").stdout
        body, status = out[:-3], out[-3:]
        if status != b"200":
            sys.exit(f"listing the bucket: HTTP {status.decode()}: {body[:300]!r}")
        root = ET.fromstring(body)
        # Elements are in the S3 namespace: match on the local name.
        items = {el.tag.rsplit("}", 1)[-1]: el for el in root}
        keys |= {el.text for el in root.iter() if el.tag.endswith("}Key") or el.tag == "Key"}
        if items.get("IsTruncated") is None or items["IsTruncated"].text != "true":
            return keys
        token = items["NextContinuationToken"].text


def s3_get(s3: SeaweedFS, key: str, scratch: Path) -> bytes:
    out = s3.curl("GET", f"/{s3.bucket}/{key}", output=str(scratch)).stdout
    if out != b"200":
        sys.exit(f"GET {key} from the bucket: HTTP {out.decode()}")
    return scratch.read_bytes()


def check_bucket(s3: SeaweedFS, ledger: Ledger, listed: dict, byte_studies: set[str], work: Path,
                 figures: dict) -> None:  # fmt: skip
    """The bucket comes to hold every listed instance (at once when the
    gateway acknowledged after the upload); every object of `byte_studies`
    in it, listed or not, is a complete instance that was sent."""
    want = {f"{S3_PREFIX}/{key}" for key, _, _ in listed.values()}
    start = time.monotonic()
    while True:
        waited = time.monotonic() - start  # 0 when the first listing has them all
        keys = s3_keys(s3, f"{S3_PREFIX}/studies/")
        missing = want - keys
        if not missing:
            break
        if waited > WAIT:
            sys.exit(f"{len(missing)} listed instances not in the bucket after {WAIT} s: {sorted(missing)[:5]}")
        time.sleep(0.05)  # polling the store for a condition, with a bound
    figures["bucket_wait_s_max"] = max(figures["bucket_wait_s_max"], round(waited, 3))
    for study in byte_studies:
        for key in sorted(k for k in keys if k.startswith(f"{S3_PREFIX}/studies/{study}/")):
            sop = key.rsplit("/", 1)[1].removesuffix(".dcm")
            if sop not in ledger.sent:
                sys.exit(f"unexpected object {key}")
            data = s3_get(s3, key, work / "object.tmp")
            if dataset_bytes(data) != dataset_bytes(ledger.sent[sop].read_bytes()):
                sys.exit(f"{key} is not the instance that was sent (torn?)")
            if sop not in listed:
                figures["unlisted_complete_objects"] += 1
            elif len(data) != listed[sop][1]:
                sys.exit(f"{key} is {len(data)} bytes, the index says {listed[sop][1]}")


def check(gw: Gateway, ledger: Ledger, data: Path, byte_studies: set[str], figures: dict,
          s3: SeaweedFS | None, work: Path) -> None:  # fmt: skip
    """The checks after a restart (see the module doc); fails loudly."""
    objects = data / "objects"
    spool = [p for p in (data / "spool").iterdir() if p.is_file() and p.stat().st_size > 0]
    figures["spool_leftovers"] += len(spool)
    listed = listed_instances(gw, ledger)
    lost = sorted(ledger.acked - listed.keys())
    figures["lost"] = len(lost)
    if lost:
        sys.exit(f"LOST {len(lost)} acknowledged instances: {lost[:10]}")
    for sop, (key, size, study) in listed.items():
        if sop not in ledger.sent:
            sys.exit(f"listed {sop} was never sent")
        if s3 is None:
            stored = objects / key
            if stored.stat().st_size != size:
                sys.exit(f"{sop}: {stored} is {stored.stat().st_size} bytes, the index says {size}")
        if study in byte_studies:
            got = stored.read_bytes() if s3 is None else gw.served(key)
            if len(got) != size:
                sys.exit(f"{sop}: {len(got)} bytes served, the index says {size}")
            if dataset_bytes(got) != dataset_bytes(ledger.sent[sop].read_bytes()):
                figures["mismatched"] += 1
                sys.exit(f"{sop}: stored data set differs from the one sent")
            figures["byte_checked"] += 1
    if s3 is not None:
        check_bucket(s3, ledger, listed, byte_studies, work, figures)
        local = [p for p in objects.rglob("*") if p.is_file()] if objects.exists() else []
        if local:
            sys.exit(f"an S3 gateway left objects on local disk: {local[:5]}")
    for study in byte_studies if s3 is None else ():
        for obj in (objects / "studies" / study).rglob("*.dcm"):
            sop = obj.name.removesuffix(".dcm")
            if sop not in ledger.sent:
                sys.exit(f"unexpected object {obj}")
            if dataset_bytes(obj.read_bytes()) != dataset_bytes(ledger.sent[sop].read_bytes()):
                sys.exit(f"{obj} is not the instance that was sent (torn?)")
            if sop not in listed:
                figures["unlisted_complete_objects"] += 1
    if spool:
        sys.exit(f"spool files with data after the restart: {spool}")
    figures["listed"] = len(listed)
    figures["listed_not_acked"] = len(listed.keys() - ledger.acked)


def forward(proc: subprocess.Popen, events: queue.Queue) -> None:
    """A sender's stdout lines onto `events`, then None at its end."""
    for line in proc.stdout:
        events.put(line.strip())
    events.put(None)


def run_cycle(gw: Gateway, args: argparse.Namespace, rng: random.Random, work: Path,
              study: str, ledger: Ledger) -> dict:
    kill_after = rng.randint(1, args.max_acks)
    delay = rng.uniform(0, args.max_delay_ms / 1000)
    events: queue.Queue = queue.Queue()
    senders = []
    for i in range(args.senders):
        out, record = work / "sent" / f"{study}.{i + 1}", work / "acks" / f"{study}.{i + 1}"
        proc = subprocess.Popen(
            [PYTHON, SENDER, "--port", str(gw.dicom_port), "--out", out, "--acks", record,
             "--study", study, "--uid-root", f"{study}.{i + 1}", "--seed", str(rng.getrandbits(32)),
             "--min-kib", "1", "--max-kib", "256",
             # pynetdicom sometimes misses the connection's end while it sends
             # and waits for its DIMSE timeout (30 s by default): keep it short.
             "--timeout", "10"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        threading.Thread(target=forward, args=(proc, events), daemon=True).start()
        senders.append((proc, out, record))
    associated = acks = 0
    open_senders, killed = args.senders, False
    while open_senders:
        try:
            line = events.get(timeout=WAIT)
        except queue.Empty:
            sys.exit(f"senders silent for {WAIT} s")
        if line is None:
            open_senders -= 1
        elif line == "associated":
            associated += 1
        elif line.startswith("ack ") and associated == args.senders:
            acks += 1
        if not killed and associated == args.senders and acks >= kill_after:
            time.sleep(delay)  # picks the moment; nothing waits on it
            gw.kill9()
            killed = True
    if not killed:
        sys.exit("every sender ended before the kill")
    for proc, out, record in senders:
        if proc.wait() != 0:
            sys.exit(f"ack_sender.py failed: {proc.stderr.read()}")
        for f in out.iterdir():
            sop = f.name.removesuffix(".dcm")
            ledger.sent[sop] = f
            ledger.study_of[sop] = study
        for line in record.read_text().splitlines():
            word, sop, *rest = line.split()
            if word != "ack":
                sys.exit(f"refused: {line}")
            ledger.acked.add(sop)
    ledger.studies.append(study)
    return {"kill_after_acks": kill_after, "delay_ms": round(delay * 1000, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycles", type=int, default=100)
    parser.add_argument("--senders", type=int, default=3)
    parser.add_argument("--max-acks", type=int, default=80, help="kill after 1..N acks (default 80)")
    parser.add_argument("--max-delay-ms", type=float, default=20, help="plus 0..N ms (default 20)")
    parser.add_argument("--seed", type=int, default=None, help="default: from the clock (printed)")
    parser.add_argument("--gateway", type=Path, default=GATEWAY_BUILD, help="binary (copied)")
    parser.add_argument("--work-dir", type=Path, default=REPO / "bench" / "out" / "crash")
    parser.add_argument("--results-dir", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--s3", action="store_true", help="store into SeaweedFS (S3) instead of the local disk")
    parser.add_argument(
        "--gateway-arg", action="append", default=[], metavar="ARG",
        help="one more argument for `dicom-gateway serve`; repeatable, with = when it starts "
        "with a dash: --gateway-arg=--journal --gateway-arg=true",
    )  # fmt: skip
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else time.time_ns() & 0xFFFF_FFFF
    rng = random.Random(seed)
    for tool in (args.gateway, PYTHON, *([WEED, Path("/usr/bin/curl")] if args.s3 else [])):
        if not tool.exists():
            sys.exit(f"{tool} is missing (cargo build --release; scripts/test.sh makes .venv)")

    work = args.work_dir
    shutil.rmtree(work, ignore_errors=True)
    (work / "acks").mkdir(parents=True)
    binary = work / "dicom-gateway"
    shutil.copy2(args.gateway, binary)
    data, log = work / "data", work / "gateway.log"
    ledger = Ledger()
    figures = {"spool_leftovers": 0, "mismatched": 0, "byte_checked": 0,
               "unlisted_complete_objects": 0, "bucket_wait_s_max": 0.0}
    cycles, startups = [], []
    root = f"2.25.{seed}"
    s3 = None
    gateway_args, gateway_env = list(args.gateway_arg), {}
    if args.s3:
        s3_port, ports = free_weed_ports()
        s3 = SeaweedFS(work / "s3", work / "seaweedfs.log", s3_port=s3_port, ports=ports)
        s3.start()
        gateway_args = s3.gateway_args(S3_PREFIX) + gateway_args
        gateway_env = s3.gateway_env()
    where = f"S3 (SeaweedFS, {s3.endpoint})" if s3 else "local disk"
    print(f"crash bench: {args.cycles} cycles, {args.senders} senders, seed {seed}, {where}, "
          f"gateway arguments {args.gateway_arg}", flush=True)
    try:
        run_all(args, rng, seed, root, work, binary, data, log, ledger, figures, cycles, startups, s3,
                gateway_args, gateway_env)
    finally:
        if s3 is not None:
            s3.stop()
    shutil.rmtree(work / "s3", ignore_errors=True)  # the bucket, like data/: bulky


def run_all(args, rng, seed, root, work, binary, data, log, ledger, figures, cycles, startups, s3,
            gateway_args, gateway_env) -> None:  # fmt: skip
    """Every cycle, the final check and the report (see the module doc)."""
    begin = time.monotonic()
    gw = Gateway(binary, data, log, gateway_args, gateway_env)
    startups.append(gw.startup_s)
    for n in range(1, args.cycles + 1):
        study = f"{root}.{n}"
        cycle = run_cycle(gw, args, rng, work, study, ledger)
        gw = Gateway(binary, data, log, gateway_args, gateway_env)
        startups.append(gw.startup_s)
        check(gw, ledger, data, {study}, figures, s3, work)
        cycle.update(cycle=n, acked_total=len(ledger.acked), listed_total=figures["listed"])
        cycles.append(cycle)
        print(f"cycle {n}: kill after {cycle['kill_after_acks']} acks + {cycle['delay_ms']} ms; "
              f"{len(ledger.acked)} acknowledged, {figures['listed']} listed, lost 0", flush=True)
    # The final pass: every study byte for byte, then a clean stop.
    figures["byte_checked"] = figures["unlisted_complete_objects"] = 0
    check(gw, ledger, data, set(ledger.studies), figures, s3, work)
    stop_code = gw.stop()
    if stop_code != 0:
        sys.exit(f"gateway exited {stop_code} on SIGTERM")
    wall = time.monotonic() - begin

    with log.open() as f:
        swept = sum(int(m.group(1)) for line in f if (m := SWEPT.search(line)))
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git": subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True).stdout.strip(),
        "seed": seed, "cycles": args.cycles, "senders": args.senders,
        "store": "s3" if s3 else "local", "gateway_args": args.gateway_arg,
        "instances_generated": len(ledger.sent),
        "acknowledged": len(ledger.acked),
        "listed": figures["listed"],
        "byte_checked_final": figures["byte_checked"],
        "lost": figures["lost"],
        "mismatched": figures["mismatched"],
        "listed_not_acknowledged": figures["listed_not_acked"],
        "unlisted_complete_objects": figures["unlisted_complete_objects"],
        "spool_files_swept_at_restarts": swept,
        "bucket_wait_s_max": figures["bucket_wait_s_max"] if s3 else None,
        "restart_s_median": round(statistics.median(startups), 3),
        "restart_s_max": round(max(startups), 3),
        "wall_s": round(wall, 1),
        "per_cycle": cycles,
    }
    name = f"crash-{datetime.date.today().isoformat()}{'-s3' if s3 else ''}-seed{seed}"
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
    flags = (" --s3" if s3 else "") + "".join(f" --gateway-arg={a}" for a in args.gateway_arg)
    md = [
        f"# Crash benchmark, {result['date']} (git {result['git']})",
        "",
        f"`python3 bench/crash.py --cycles {args.cycles} --senders {args.senders} --seed {seed}{flags}` "
        f"(gateway: {args.gateway}; method in bench/crash.py, meaning in RELIABILITY.md)",
        "",
        f"Store: {'S3 (SeaweedFS on loopback)' if s3 else 'local disk'}; gateway arguments added: "
        f"{' '.join(args.gateway_arg) or 'none'}.",
        "",
        "| figure | value |",
        "|---|---|",
    ]
    for key in ("cycles", "senders", "instances_generated", "acknowledged", "listed",
                "byte_checked_final", "lost", "mismatched", "listed_not_acknowledged",
                "unlisted_complete_objects",
                "spool_files_swept_at_restarts", "restart_s_median", "restart_s_max", "wall_s",
                *(["bucket_wait_s_max"] if s3 else [])):
        md.append(f"| {key.replace('_', ' ')} | {result[key]} |")
    kills = [c["kill_after_acks"] for c in cycles]
    md += ["", f"Kill points: after {min(kills)}-{max(kills)} acknowledgements "
           f"(median {statistics.median(kills)}) plus 0-{args.max_delay_ms:g} ms.", ""]
    (args.results_dir / f"{name}.md").write_text("\n".join(md))
    print("\n".join(md))
    # ~8 MB per cycle of sent files and as much in the store: keep only the
    # log and the ack records.
    for bulky in ("data", "sent"):
        shutil.rmtree(work / bulky, ignore_errors=True)
    binary.unlink()


if __name__ == "__main__":
    main()
