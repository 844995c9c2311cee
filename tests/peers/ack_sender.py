#!/usr/bin/env python3
"""pynetdicom C-STORE sender that keeps a durable record of what was acknowledged.

    ack_sender.py --host 127.0.0.1 --port P --out DIR --acks FILE \
        --study UID --uid-root ROOT [--seed N] [--count N] \
        [--min-kib K] [--max-kib K] [--stop-after-refusals N]

Used by the crash and disk-full tests and by bench/crash.py. One
association; it generates distinct CT instances one at a time (pydicom,
random pixel data drawn from `--seed`, sizes uniform in [min-kib, max-kib]),
writes each to DIR/<SOP Instance UID>.dcm *before* sending it (so whoever
checks the store has the exact bytes that were sent), and sends it as stored
on disk (no re-encoding: the data set bytes on the wire are the file's).

For every C-STORE response it appends one line to FILE and flushes it
before sending the next instance:

    ack <SOP Instance UID>              status 0x0000
    refused <SOP Instance UID> <status> any other status (hex, e.g. 0xa700)

and prints the same line on stdout (flushed), so a test can follow progress
from a pipe (the first stdout line, "associated", says the association is
established). It stops when `--count` instances were sent, when
`--stop-after-refusals` non-success statuses were received, or when the
association dies (no response, abort, connection reset: the gateway was
killed). A send in flight when the association died has no line: it was
never acknowledged. Last stdout line: a JSON summary
{"acked": N, "refused": N, "sent": N, "end": "count"|"refusals"|"association"}.
Exit status 0 in all these cases, 1 if no association could be established.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import socket
import sys
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, _config
from pynetdicom.transport import AssociationSocket

# Send files from disk without decoding them.
_config.STORE_SEND_CHUNKED_DATASET = True

_create_socket = AssociationSocket._create_socket


def _create_socket_nodelay(self, address):  # type: ignore[no-untyped-def]
    """pynetdicom leaves Nagle on: with delayed ACKs every small C-STORE then
    waits ~40 ms for its last segment, and the senders would mostly idle."""
    sock = _create_socket(self, address)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


AssociationSocket._create_socket = _create_socket_nodelay

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
COLUMNS = 512  # 16-bit pixels: one row is 1 KiB, so Rows = size in KiB


def make_instance(
    rng: random.Random, study: str, series: str, sop: str, number: int, kib: int
) -> Dataset:
    """A small but complete CT image whose pixel data is `kib` KiB of noise."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.SOPInstanceUID = sop
    ds.StudyDate = "20261130"
    ds.StudyTime = "052000"
    ds.AccessionNumber = "CRASH"
    ds.Modality = "CT"
    ds.Manufacturer = "dicom-gateway tests"
    ds.StudyDescription = "crash test"
    ds.PatientName = "Crash^Test"
    ds.PatientID = "CRASH-1"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = number
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = kib
    ds.Columns = COLUMNS
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "1"
    ds.PixelData = rng.randbytes(kib * 1024)
    ds["PixelData"].VR = "OW"
    return ds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--aet", default="ACKSCU")
    parser.add_argument("--called", default="DICOMGW")
    parser.add_argument("--timeout", type=float, default=30)
    parser.add_argument("--out", required=True, type=Path, help="where sent instances are kept")
    parser.add_argument("--acks", required=True, type=Path, help="the response record (appended)")
    parser.add_argument("--study", required=True, help="Study Instance UID of every instance")
    parser.add_argument("--uid-root", required=True, help="series UID; SOP UIDs are ROOT.<n>")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--min-kib", type=int, default=2)
    parser.add_argument("--max-kib", type=int, default=64)
    parser.add_argument("--stop-after-refusals", type=int, default=0, help="0: never")
    args = parser.parse_args()
    if not 0 < args.min_kib <= args.max_kib <= 65535:
        sys.exit("ack_sender.py: need 0 < --min-kib <= --max-kib <= 65535")

    logging.basicConfig(stream=sys.stderr, format="%(name)s %(levelname)s: %(message)s")
    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
    ae = AE(ae_title=args.aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = args.timeout
    ae.add_requested_context(CT_IMAGE_STORAGE, [ExplicitVRLittleEndian])
    assoc = ae.associate(args.host, args.port, ae_title=args.called)
    if not assoc.is_established:
        sys.exit("ack_sender.py: association not established")
    print("associated", flush=True)

    rng = random.Random(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    acked = refused = sent = 0
    end = "count"
    with args.acks.open("a") as record:
        for n in range(1, args.count + 1):
            sop = f"{args.uid_root}.{n}"
            kib = rng.randint(args.min_kib, args.max_kib)
            path = args.out / f"{sop}.dcm"
            dcmwrite(path, make_instance(rng, args.study, args.uid_root, sop, n, kib), enforce_file_format=True)
            try:
                rsp = assoc.send_c_store(path, msg_id=n & 0xFFFF)
            except (RuntimeError, OSError, ValueError):
                end = "association"
                break
            sent += 1
            if "Status" not in rsp:
                # No (valid) response: the association died with the request
                # in flight, so it was never acknowledged.
                end = "association"
                break
            status = int(rsp.Status)
            line = f"ack {sop}" if status == 0 else f"refused {sop} {status:#06x}"
            record.write(line + "\n")
            record.flush()
            print(line, flush=True)
            if status == 0:
                acked += 1
            else:
                refused += 1
                if args.stop_after_refusals and refused >= args.stop_after_refusals:
                    end = "refusals"
                    break
    if assoc.is_established:
        assoc.release()
    print(json.dumps({"acked": acked, "refused": refused, "sent": sent, "end": end}), flush=True)


if __name__ == "__main__":
    main()
