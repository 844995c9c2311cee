#!/usr/bin/env python3
"""pynetdicom SCU used by the integration tests as a subprocess.

    pynet.py --host 127.0.0.1 --port P --aet PYSCU --called DICOMGW COMMAND ...

Commands (each prints exactly one JSON object on stdout):

  echo
      {"status": 0}
  store FILE...
      {"results": [{"file": F, "sop_instance": UID, "status": N}, ...]}
      One association; one presentation context per (SOP class, transfer
      syntax) of the files.  Files are streamed as stored on disk (no
      decoding or re-encoding), so encapsulated and deflated data go out
      byte for byte.  A file that could not be sent has "status": null and
      an "error".
  find
      {"statuses": [N, ...]} for a Study Root C-FIND at STUDY level;
      {"rejected_context": true} if the peer did not accept the C-FIND
      abstract syntax; {"error": "..."} if the association was refused or
      aborted.
  store-raw --sop-class UID --sop-instance UID --ts UID FILE
      {"status": N}: FILE's raw bytes, unparsed, are the C-STORE data set.

A peer that aborts after the association was established yields an "error"
key (exit 0).  Exit status is 2 for usage errors and 1 when no association
could be established (except for `find`, where that is an expected outcome);
the reason is written to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from io import BytesIO
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info
from pynetdicom import AE, _config
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind, Verification

# Send files from disk without decoding them (see `store`).
_config.STORE_SEND_CHUNKED_DATASET = True

DEFAULT_TRANSFER_SYNTAXES = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]


class NoAssociation(Exception):
    """The association could not be established."""


def emit(obj: dict) -> None:
    print(json.dumps(obj), flush=True)


def usage_error(message: str) -> None:
    print(f"pynet.py: {message}", file=sys.stderr)
    sys.exit(2)


def associate(args: argparse.Namespace, contexts: list[tuple[str, list[str]]]) -> Association:
    """Request an association with `contexts` ((abstract syntax, [ts...]) pairs).

    Returns the association even when the peer accepted the association but
    none of the contexts (pynetdicom then aborts it itself), so callers can
    inspect `rejected_contexts`.
    """
    ae = AE(ae_title=args.aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = args.timeout
    for abstract_syntax, transfer_syntaxes in contexts:
        ae.add_requested_context(abstract_syntax, transfer_syntaxes)
    assoc = ae.associate(args.host, args.port, ae_title=args.called)
    if assoc.is_established or assoc.rejected_contexts:
        return assoc
    if assoc.is_rejected:
        rsp = assoc.acceptor.primitive
        raise NoAssociation(f"association rejected: {rsp.result_str}, {rsp.source_str}, {rsp.reason_str}")
    if assoc.is_aborted:
        raise NoAssociation("association aborted or connection failed")
    raise NoAssociation("no response to association request")


def status_of(rsp: Dataset) -> int | None:
    """The Status of a DIMSE response; None when there was none (timeout,
    abort or invalid response, all of which pynetdicom reports as an empty
    dataset)."""
    return int(rsp.Status) if "Status" in rsp else None


def finish(assoc: Association) -> None:
    if assoc.is_established:
        assoc.release()


def cmd_echo(args: argparse.Namespace) -> None:
    assoc = associate(args, [(Verification, DEFAULT_TRANSFER_SYNTAXES)])
    if not assoc.is_established:
        emit({"error": "Verification presentation context rejected"})
        return
    status = status_of(assoc.send_c_echo())
    finish(assoc)
    emit({"status": status} if status is not None else {"error": "no C-ECHO response"})


def cmd_store(args: argparse.Namespace) -> None:
    files = []
    for name in args.files:
        meta = read_file_meta_info(name)
        keywords = ("MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID", "TransferSyntaxUID")
        if any(kw not in meta for kw in keywords):
            usage_error(f"store: {name} has no complete file meta information")
        files.append((name, *(str(meta[kw].value) for kw in keywords)))
    pairs = sorted({(sop_class, ts) for _, sop_class, _, ts in files})
    if len(pairs) > 128:
        usage_error("store: more than 128 (SOP class, transfer syntax) combinations")
    assoc = associate(args, [(sop_class, [ts]) for sop_class, ts in pairs])

    results = []
    for message_id, (name, _, sop_instance, _) in enumerate(files, start=1):
        result = {"file": name, "sop_instance": sop_instance, "status": None}
        if not assoc.is_established:
            result["error"] = "association not established (aborted, or no context accepted)"
        else:
            try:
                result["status"] = status_of(assoc.send_c_store(Path(name), msg_id=message_id & 0xFFFF))
            except ValueError as exc:  # no accepted context for this SOP class/TS
                result["error"] = str(exc)
            else:
                if result["status"] is None:
                    result["error"] = "no C-STORE response (association aborted or timed out)"
        results.append(result)
    finish(assoc)
    emit({"results": results})


def cmd_find(args: argparse.Namespace) -> None:
    find = StudyRootQueryRetrieveInformationModelFind
    # Verification too, so that refusing C-FIND alone still leaves an
    # association and shows up as a rejected context.
    try:
        assoc = associate(
            args, [(find, DEFAULT_TRANSFER_SYNTAXES), (Verification, DEFAULT_TRANSFER_SYNTAXES)]
        )
    except NoAssociation as exc:
        emit({"error": str(exc)})
        return
    if any(cx.abstract_syntax == find for cx in assoc.rejected_contexts):
        finish(assoc)
        emit({"rejected_context": True})
        return
    if not assoc.is_established:
        emit({"error": "association aborted"})
        return

    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = ""
    query.PatientID = ""
    statuses = []
    for rsp, _identifier in assoc.send_c_find(query, find):
        status = status_of(rsp)
        if status is None:
            finish(assoc)
            emit({"statuses": statuses, "error": "no C-FIND response (association aborted or timed out)"})
            return
        statuses.append(status)
    finish(assoc)
    emit({"statuses": statuses})


def send_raw_c_store(assoc: Association, context_id: int, req: C_STORE) -> int | None:
    """Send a prepared C-STORE request and return the response status.

    `Association.send_c_store` always runs the data set through an encoder
    or a Part-10 file parser, so this repeats its steps (pynetdicom 3.0.4)
    with the data set left as given: pause the association's reactor thread
    (otherwise it may take the response off the DIMSE queue first), send,
    wait for the response.
    """
    assoc._reactor_checkpoint.clear()
    while not assoc._is_paused:
        time.sleep(0.0001)
    try:
        assoc.dimse.send_msg(req, context_id)
        _, rsp = assoc.dimse.get_msg(block=True)
    finally:
        assoc._reactor_checkpoint.set()
    if rsp is None or not rsp.is_valid_response:
        assoc.abort()
        return None
    return int(rsp.Status)


def cmd_store_raw(args: argparse.Namespace) -> None:
    # Built before associating so that an invalid UID is a usage error.
    req = C_STORE()
    req.MessageID = 1
    req.Priority = 2
    req.AffectedSOPClassUID = args.sop_class
    req.AffectedSOPInstanceUID = args.sop_instance
    req.DataSet = BytesIO(Path(args.file).read_bytes())

    assoc = associate(args, [(args.sop_class, [args.ts])])
    contexts = [cx for cx in assoc.accepted_contexts if cx.abstract_syntax == args.sop_class]
    if not assoc.is_established or not contexts:
        finish(assoc)
        emit({"error": f"presentation context for {args.sop_class} with {args.ts} not accepted"})
        return
    status = send_raw_c_store(assoc, contexts[0].context_id, req)
    finish(assoc)
    emit(
        {"status": status}
        if status is not None
        else {"error": "no C-STORE response (association aborted or timed out)"}
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--aet", default="PYSCU", help="calling AE title")
    parser.add_argument("--called", default="DICOMGW", help="called AE title")
    parser.add_argument("--timeout", type=float, default=60, help="ACSE/DIMSE/network timeout in seconds")
    parser.add_argument("-v", "--verbose", action="store_true", help="pynetdicom debug log on stderr")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("echo").set_defaults(func=cmd_echo)
    store = sub.add_parser("store")
    store.add_argument("files", nargs="+", metavar="FILE")
    store.set_defaults(func=cmd_store)
    sub.add_parser("find").set_defaults(func=cmd_find)
    raw = sub.add_parser("store-raw")
    raw.add_argument("--sop-class", required=True)
    raw.add_argument("--sop-instance", required=True)
    raw.add_argument("--ts", required=True, help="transfer syntax UID of the presentation context")
    raw.add_argument("file", metavar="FILE")
    raw.set_defaults(func=cmd_store_raw)
    args = parser.parse_args()

    logging.basicConfig(stream=sys.stderr, format="%(name)s %(levelname)s: %(message)s")
    logging.getLogger("pynetdicom").setLevel(logging.DEBUG if args.verbose else logging.ERROR)
    try:
        args.func(args)
    except NoAssociation as exc:
        sys.exit(f"pynet.py: {exc}")
    except (OSError, ValueError, InvalidDicomError) as exc:  # unreadable file, invalid UID, ...
        usage_error(str(exc))


if __name__ == "__main__":
    main()
