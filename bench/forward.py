#!/usr/bin/env python3
"""Forwarding benchmark: the gateway forwarding a stored set to DCMTK
storescp, next to DCMTK storescu sending the same files to it directly.

    python3 bench/forward.py                          # ct512 and small9, 3 runs (~10 min)
    python3 bench/forward.py --sets small9 --quick    # one set, one run
    python3 bench/forward.py --associations 4         # [forwarding] associations
    python3 bench/forward.py --sets small9 --count 40 --quick \\
        --gateway-binary target/debug/dicom-gateway --work-dir /tmp/fwd-smoke   # smoke run

Must run as root (it re-executes itself in a private network namespace, as
bench/ingest.py does, whose helpers, data sets and work directory it reuses:
WORK/sets/<set>/all).  Python 3.11, standard library only.

Method
------
* Sets: ct512 (1000 x ~512 KiB CT) and small9 (5000 x ~9 KiB), built by
  testdata/generate.py once into WORK/sets (shared with bench/ingest.py);
  --count N builds a smaller set instead (use another --work-dir then, so the
  ingest benchmark's sets are left alone).
* "storescu direct": DCMTK storescp (`--fork -od OUT`, its default options)
  receives the set from one `storescu +sd` (one association); wall time from
  starting storescu to its exit (every C-STORE answered).
* "gateway forward": a fresh gateway (release build, copied at start) with
  one `[[dicom_nodes]]` destination and one `[[forward]]` rule for it, the
  retry schedule ["100ms"].  The set is first stored into it with storescu
  while the destination is down (nothing listens there: every item is
  queued, pending, the destination marked down); then a fresh storescp (same
  options) is started on the destination port.  Timed: from the moment that
  storescp listens to the moment GET /api/forward reports nothing pending
  and nothing in flight (each item's C-STORE answered and the item removed
  from the durable queue), polled every 20 ms, with the destination's
  output holding N files.  The first attempt after storescp listens comes
  within the destination's back-off (100 ms at most), which the figure
  includes.  `[forwarding] associations` = --associations (default 2, the
  gateway's default).
* Checks: storescp's output holds N files (both receivers), the gateway's
  API reports sent == N and nothing failed.
* Peak RSS of the gateway (VmHWM) over the whole run, storing included.
* Each (set, receiver) runs --runs times (default 3, --quick = 1); medians
  are reported.  Results: stdout and bench/results/forward-<date>.{md,json}.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ingest  # noqa: E402 (bench/ingest.py: sets, namespace, helpers)

REPO = ingest.REPO
DEST_PORT = 11114
DEST_AE = "FWDDEST"
GW_DICOM = 11112
GW_HTTP = 18080
SETTLE_TIMEOUT = 1800.0


def api_forward() -> dict:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://127.0.0.1:{GW_HTTP}/api/forward", timeout=10) as r:
        return json.load(r)["destinations"][0]


def storescp(out: Path, log_path: Path) -> subprocess.Popen:
    out.mkdir(parents=True)
    proc = subprocess.Popen(
        [ingest.STORESCP, "--fork", "-aet", DEST_AE, "-od", str(out), str(DEST_PORT)],
        env=ingest.dcmtk_env(),
        stdout=open(log_path, "wb"),
        stderr=subprocess.STDOUT,
    )
    ingest.wait_for(lambda: ingest.listening(DEST_PORT), ingest.READY_TIMEOUT, "storescp")
    return proc


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def storescu(files_dir: Path, port: int, called: str, log_path: Path) -> float:
    start = time.monotonic()
    subprocess.run(
        [ingest.STORESCU, "-aet", "BENCHSCU", "-aec", called, "+sd", "127.0.0.1", str(port), str(files_dir)],
        env=ingest.dcmtk_env(),
        stdout=open(log_path, "wb"),
        stderr=subprocess.STDOUT,
        check=True,
    )
    return time.monotonic() - start


def run_direct(bench_set, run_dir: Path) -> dict:
    rx = storescp(run_dir / "rx-direct", run_dir / "storescp-direct.log")
    try:
        ingest.warm_page_cache(bench_set)
        wall = storescu(bench_set.all_dir, DEST_PORT, DEST_AE, run_dir / "storescu-direct.log")
    finally:
        stop(rx)
    got = ingest.count_files(run_dir / "rx-direct")
    problems = [] if got == bench_set.count else [f"storescp holds {got} files, expected {bench_set.count}"]
    return {"wall_s": wall, "problems": problems, "peak_rss_mib": None}


def run_forward(bench_set, run_dir: Path, binary: Path, associations: int) -> dict:
    data = run_dir / "gw-data"
    config = run_dir / "gateway.toml"
    config.write_text(
        f'[[dicom_nodes]]\nae_title = "{DEST_AE}"\nhost = "127.0.0.1"\nport = {DEST_PORT}\n\n'
        f'[[forward]]\ndestination = "{DEST_AE}"\n\n'
        f'[forwarding]\nassociations = {associations}\nretry_schedule = ["100ms"]\n'
    )
    gw = subprocess.Popen(
        [str(binary), "serve", "--config", str(config), "--data-dir", str(data),
         "--dicom-listen", f"127.0.0.1:{GW_DICOM}", "--http-listen", f"127.0.0.1:{GW_HTTP}",
         "--ae-title", ingest.GATEWAY_AE],
        env=ingest.gateway_env(),
        stdout=subprocess.DEVNULL,
        stderr=open(run_dir / "gateway.log", "wb"),
    )  # fmt: skip
    problems: list[str] = []
    rx = None
    try:
        ingest.wait_for(lambda: ingest.listening(GW_DICOM) and ingest.listening(GW_HTTP), 30, "gateway")
        ingest.warm_page_cache(bench_set)
        storescu(bench_set.all_dir, GW_DICOM, ingest.GATEWAY_AE, run_dir / "storescu-gateway.log")
        queued = api_forward()
        if queued["pending"] != bench_set.count:
            problems.append(f"{queued['pending']} queued after storing, expected {bench_set.count}")
        rx = storescp(run_dir / "rx-forward", run_dir / "storescp-forward.log")
        start = time.monotonic()

        def settled() -> bool:
            d = api_forward()
            return d["pending"] == 0 and d["inFlight"] == 0

        ingest.wait_for(settled, SETTLE_TIMEOUT, "the queue to drain")
        wall = time.monotonic() - start
        final = api_forward()
        if final["sent"] != bench_set.count or final["failedItems"]:
            problems.append(f"sent {final['sent']}, failed {final['failedItems']}: {final.get('lastError')}")
        rss = ingest.proc_status_field(gw.pid, "VmHWM") / 2**20
    finally:
        if rx:
            stop(rx)
        gw.terminate()
        gw.wait(timeout=60)
    got = ingest.count_files(run_dir / "rx-forward")
    if got != bench_set.count:
        problems.append(f"storescp holds {got} files, expected {bench_set.count}")
    return {"wall_s": wall, "problems": problems, "peak_rss_mib": rss}


def main() -> None:
    command = shlex.join([sys.executable, *sys.argv])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", default="ct512,small9")
    parser.add_argument("--count", type=int, help="instances per set instead of the set's own (multiple of 4)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--associations", type=int, default=2)
    parser.add_argument("--work-dir", type=Path, default=REPO / "bench" / "out")
    parser.add_argument("--gateway-binary", type=Path, default=ingest.GATEWAY_BUILD)
    parser.add_argument("--results-dir", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()
    runs = 1 if args.quick else args.runs
    sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    ingest.GATEWAY_BUILD = args.gateway_binary.resolve()
    ingest.enter_private_netns()
    work = args.work_dir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    binary = work / "dicom-gateway-forward"
    shutil.copy2(args.gateway_binary, binary)
    ingest.GatewayReceiver.binary = binary
    if args.count:
        for name in sets:
            ingest.SETS[name] = (args.count, ingest.SETS[name][1])
    rows = []
    for name in sets:
        bench_set = ingest.load_set(name, work)
        results: dict[str, list[dict]] = {"storescu direct": [], "gateway forward": []}
        for run in range(1, runs + 1):
            for receiver in list(results) if run % 2 else list(results)[::-1]:
                run_dir = work / f"fwd-{name}-{receiver.split()[0]}-{run}"
                shutil.rmtree(run_dir, ignore_errors=True)
                run_dir.mkdir(parents=True)
                if receiver == "storescu direct":
                    r = run_direct(bench_set, run_dir)
                else:
                    r = run_forward(bench_set, run_dir, binary, args.associations)
                ingest.log(
                    f"{name} {receiver} run {run}: {r['wall_s']:.2f} s, "
                    f"{bench_set.count / r['wall_s']:.1f} inst/s {'; '.join(r['problems']) or 'ok'}"
                )
                results[receiver].append(r)
                shutil.rmtree(run_dir, ignore_errors=True)
        for receiver, rs in results.items():
            wall = statistics.median(r["wall_s"] for r in rs)
            rss = [r["peak_rss_mib"] for r in rs if r["peak_rss_mib"] is not None]
            rows.append({
                "set": f"{bench_set.count} x {bench_set.total_bytes / bench_set.count / 1024:.0f} KiB",
                "sender": receiver,
                "median_s": wall,
                "inst_per_s": bench_set.count / wall,
                "mb_per_s": bench_set.total_bytes / wall / 1e6,
                "peak_rss_mib": statistics.median(rss) if rss else None,
                "runs_s": [r["wall_s"] for r in rs],
                "problems": [p for r in rs for p in r["problems"]],
            })  # fmt: skip
    table = [
        "| set | sender | inst/s | MB/s | median s | gateway peak RSS | runs (s) |",
        "|---|---|--:|--:|--:|--:|---|",
    ]
    for r in rows:
        rss = f"{r['peak_rss_mib']:.0f} MiB" if r["peak_rss_mib"] else "–"
        table.append(
            f"| {r['set']} | {r['sender']} | {r['inst_per_s']:,.0f} | {r['mb_per_s']:.1f} | "
            f"{r['median_s']:.2f} | {rss} | {', '.join(f'{s:.2f}' for s in r['runs_s'])} |"
        )
    info = ingest.machine_info()
    today = datetime.date.today().isoformat()
    args.results_dir.mkdir(parents=True, exist_ok=True)
    stem = args.results_dir / f"forward-{today}"
    problems = [p for r in rows for p in r["problems"]]
    md = [
        f"# Forwarding benchmark, {today}",
        "",
        f"`{command}`",
        "",
        f"DCMTK storescp (`--fork`) receives; the gateway forwards with {args.associations} "
        "association(s) per destination. Method: bench/forward.py's docstring.",
        "",
        *table,
        "",
        *(f"- {k}: {v}" for k, v in info.items()),
        "",
        "Problems: " + ("none" if not problems else "; ".join(problems)),
        "",
    ]
    stem.with_suffix(".md").write_text("\n".join(md))
    stem.with_suffix(".json").write_text(json.dumps({"command": command, "rows": rows, "info": info}, indent=1))
    print("\n".join(table))
    print(f"report: {stem}.md (+ .json)")
    if problems:
        sys.exit(1)


if __name__ == "__main__":
    main()
