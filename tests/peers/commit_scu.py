#!/usr/bin/env python3
"""pynetdicom as a modality asking for storage commitment (Push Model SCU),
used by the integration tests as a subprocess.

    commit_scu.py [--aet A] request --port P --tx UID --ref CLASS:INSTANCE... [--then wait|release]
        One association: N-ACTION-RQ (Action Type 1) with the references;
        `wait` (default) then waits on the same association for the
        N-EVENT-REPORT-RQ, answers it 0x0000 and releases; `release`
        releases at once after the N-ACTION-RSP, with no report handler
        bound (a report that still arrives is answered with a failure by
        pynetdicom's default handler).
        Prints {"action_status": N, "report": REPORT or null}.

    commit_scu.py [--aet A] raw --port P FILE... [--then-tx UID --then-ref CLASS:INSTANCE]
        One association: each FILE's raw bytes as the data set of an
        N-ACTION-RQ (unparsed: malformed on purpose; Implicit VR Little
        Endian is the only transfer syntax proposed), then a C-ECHO and
        (optionally) a well-formed request on the same association, with
        no report handler bound.
        Prints {"statuses": [N or null, ...], "then": N or null, "echo": N or null}.

    commit_scu.py [--aet A] [--timeout S] listen [--port P]
        Listens on 127.0.0.1 (port 0 unless given) for the gateway's
        association carrying the report, as the modality does. Prints
        {"port": N} once listening, then REPORT when the first report came
        (answered 0x0000), or {"error": "timeout"}.

With --tls-cert/--tls-key/--tls-ca, `request` and `raw` associate over
TLS (that certificate as the client's, the server checked against the CA
and 127.0.0.1) and `listen` serves TLS demanding a client certificate from
the CA; REPORT then has "peer_subject", the subject CN of the certificate
the gateway presented.

REPORT is {"event_type", "transaction_uid", "committed": [[class, instance]],
"failed": [[class, instance, reason]], "calling_ae", "requestor_roles":
{sop_class: [scu, scp]} (role selection the association requestor proposed)}.
"""

from __future__ import annotations

import argparse
import json
import ssl
import sys
import threading
import time
from io import BytesIO
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import AE, evt
from pynetdicom.dimse_primitives import N_ACTION
from pynetdicom.sop_class import StorageCommitmentPushModel, Verification

TRANSFER_SYNTAXES = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]
WELL_KNOWN = "1.2.840.10008.1.20.1.1"


def tls_context(args, purpose):
    """The ssl context of --tls-*, or None without them."""
    if not args.tls_ca:
        return None
    ctx = ssl.create_default_context(purpose, cafile=args.tls_ca)
    ctx.load_cert_chain(args.tls_cert, args.tls_key)
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def tls_args(args):
    ctx = tls_context(args, ssl.Purpose.SERVER_AUTH)
    return (ctx, args.host) if ctx else None


def peer_subject(event):
    """CN of the certificate the peer presented (TLS only)."""
    try:
        cert = event.assoc.dul.socket.socket.getpeercert()
    except Exception:  # plain TCP, or pynetdicom internals moved
        return None
    for rdn in (cert or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return value
    return None


def emit(obj: dict) -> None:
    print(json.dumps(obj), flush=True)


def describe(event) -> dict:
    """The report an N-EVENT-REPORT event carries."""
    ds = event.event_information
    roles = {
        str(uid): [item.scu_role, item.scp_role]
        for uid, item in event.assoc.requestor.role_selection.items()
    }
    return {
        "event_type": int(event.request.EventTypeID),
        "transaction_uid": str(ds.get("TransactionUID", "")),
        "committed": [
            [str(i.ReferencedSOPClassUID), str(i.ReferencedSOPInstanceUID)]
            for i in ds.get("ReferencedSOPSequence", [])
        ],
        "failed": [
            [str(i.ReferencedSOPClassUID), str(i.ReferencedSOPInstanceUID), int(i.FailureReason)]
            for i in ds.get("FailedSOPSequence", [])
        ],
        "calling_ae": event.assoc.requestor.ae_title,
        "requestor_roles": roles,
    }


def request_dataset(tx: str, refs: list[str]) -> Dataset:
    ds = Dataset()
    ds.TransactionUID = tx
    items = []
    for ref in refs:
        cls, inst = ref.split(":", 1)
        item = Dataset()
        item.ReferencedSOPClassUID = cls
        item.ReferencedSOPInstanceUID = inst
        items.append(item)
    ds.ReferencedSOPSequence = items
    return ds


def make_ae(args, transfer_syntaxes=TRANSFER_SYNTAXES) -> AE:
    ae = AE(ae_title=args.aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = args.timeout
    ae.add_requested_context(StorageCommitmentPushModel, transfer_syntaxes)
    ae.add_requested_context(Verification)
    return ae


def cmd_request(args) -> None:
    reports: list[dict] = []
    reported = threading.Event()
    got = threading.Event()

    def on_report(event):
        reports.append(describe(event))
        reported.set()
        return 0x0000, None

    def on_pdu_sent(event):
        # The N-EVENT-REPORT-RSP is sent after on_report returns: release
        # only once it is on the wire (the first P-DATA-TF after the
        # report), or the A-RELEASE-RQ may overtake it and the gateway,
        # rightly, counts the report as not delivered.
        if reported.is_set() and type(event.pdu).__name__ == "P_DATA_TF":
            got.set()

    handlers = (
        [(evt.EVT_N_EVENT_REPORT, on_report), (evt.EVT_PDU_SENT, on_pdu_sent)]
        if args.then == "wait"
        else []
    )
    ae = make_ae(args)
    assoc = ae.associate(
        args.host, args.port, ae_title=args.called, evt_handlers=handlers, tls_args=tls_args(args)
    )
    if not assoc.is_established:
        sys.exit("commit_scu.py: association refused")
    status, _ = assoc.send_n_action(
        request_dataset(args.tx, args.ref), 1, StorageCommitmentPushModel, WELL_KNOWN
    )
    action_status = int(status.Status) if "Status" in status else None
    if args.then == "wait" and action_status == 0:
        got.wait(args.timeout)
    assoc.release()
    emit({"action_status": action_status, "report": reports[0] if reports else None})


def send_raw(assoc, context_id: int, message_id: int, data: bytes) -> int | None:
    """An N-ACTION-RQ with `data` as its data set, bytes as given (see
    pynet.py's send_raw_c_store for why the reactor is paused)."""
    req = N_ACTION()
    req.MessageID = message_id
    req.RequestedSOPClassUID = StorageCommitmentPushModel
    req.RequestedSOPInstanceUID = WELL_KNOWN
    req.ActionTypeID = 1
    req.ActionInformation = BytesIO(data)
    assoc._reactor_checkpoint.clear()
    while not assoc._is_paused:
        time.sleep(0.0001)
    try:
        assoc.dimse.send_msg(req, context_id)
        _, rsp = assoc.dimse.get_msg(block=True)
    finally:
        assoc._reactor_checkpoint.set()
    if rsp is None or not rsp.is_valid_response:
        return None
    return int(rsp.Status)


def cmd_raw(args) -> None:
    # Implicit VR Little Endian only: the raw files are written in it.
    ae = make_ae(args, ["1.2.840.10008.1.2"])
    assoc = ae.associate(args.host, args.port, ae_title=args.called, tls_args=tls_args(args))
    if not assoc.is_established:
        sys.exit("commit_scu.py: association refused")
    cx = [c for c in assoc.accepted_contexts if c.abstract_syntax == StorageCommitmentPushModel]
    statuses = []
    for i, f in enumerate(args.files):
        statuses.append(send_raw(assoc, cx[0].context_id, i + 1, Path(f).read_bytes()))
    echo = None
    if assoc.is_established:
        status = assoc.send_c_echo()
        echo = int(status.Status) if "Status" in status else None
    # Last: its report may follow the N-ACTION-RSP on this association.
    then = None
    if args.then_tx and assoc.is_established:
        status, _ = assoc.send_n_action(
            request_dataset(args.then_tx, args.then_ref), 1, StorageCommitmentPushModel, WELL_KNOWN
        )
        then = int(status.Status) if "Status" in status else None
    if assoc.is_established:
        assoc.release()
    emit({"statuses": statuses, "then": then, "echo": echo, "ts": str(cx[0].transfer_syntax[0])})


def cmd_listen(args) -> None:
    reports: list[dict] = []
    got = threading.Event()

    def on_report(event):
        report = describe(event)
        report["peer_subject"] = peer_subject(event)
        reports.append(report)
        got.set()
        return 0x0000, None

    ae = AE(ae_title=args.aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    # The gateway is the association requestor and the SCP of the class:
    # accept the SCP role it proposes (PS3.4 J.3.3).
    ae.add_supported_context(
        StorageCommitmentPushModel, TRANSFER_SYNTAXES, scu_role=False, scp_role=True
    )
    server = ae.start_server(
        ("127.0.0.1", args.port),
        block=False,
        evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)],
        ssl_context=tls_context(args, ssl.Purpose.CLIENT_AUTH),
    )
    emit({"port": server.server_address[1]})
    if got.wait(args.timeout):
        # Let pynetdicom send the N-EVENT-REPORT-RSP before shutting down.
        deadline = time.monotonic() + 10
        while server.active_associations and time.monotonic() < deadline:
            time.sleep(0.01)
        server.shutdown()
        emit(reports[0])
    else:
        server.shutdown()
        emit({"error": "timeout"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--aet", default="MODALITY")
    parser.add_argument("--called", default="DICOMGW")
    parser.add_argument("--timeout", type=float, default=60)
    parser.add_argument("--tls-cert")
    parser.add_argument("--tls-key")
    parser.add_argument("--tls-ca")
    sub = parser.add_subparsers(dest="command", required=True)
    req = sub.add_parser("request")
    req.add_argument("--port", type=int, required=True)
    req.add_argument("--tx", required=True)
    req.add_argument("--ref", action="append", default=[])
    req.add_argument("--then", choices=["wait", "release"], default="wait")
    req.set_defaults(func=cmd_request)
    raw = sub.add_parser("raw")
    raw.add_argument("--port", type=int, required=True)
    raw.add_argument("--then-tx")
    raw.add_argument("--then-ref", action="append", default=[])
    raw.add_argument("files", nargs="*")
    raw.set_defaults(func=cmd_raw)
    listen = sub.add_parser("listen")
    listen.add_argument("--port", type=int, default=0)
    listen.set_defaults(func=cmd_listen)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
