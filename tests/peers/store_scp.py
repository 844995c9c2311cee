#!/usr/bin/env python3
"""A C-STORE SCP (pynetdicom) with scripted answers, for the forwarding
tests: it listens on 127.0.0.1 (port 0: it prints the port it got on its
first line), accepts every storage SOP class in every transfer syntax, and
appends one line per C-STORE to LOG: `<association number> <SOP Instance
UID> <status, hex>`.

    store_scp.py --log LOG [--busy N] [--refuse SOP ...]

--busy N: the first N C-STOREs are answered 0xA700 (out of resources);
--refuse SOP: that instance is answered 0xC000 (cannot understand) always.
"""
import argparse
import itertools
import sys
import threading
import time

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--log", required=True)
    p.add_argument("--busy", type=int, default=0)
    p.add_argument("--refuse", action="append", default=[])
    p.add_argument("--aet", default="SCRIPTED")
    args = p.parse_args()

    lock = threading.Lock()
    busy = [args.busy]
    numbers = {}
    counter = itertools.count(1)
    log = open(args.log, "a", buffering=1)

    def on_store(event):
        sop = str(event.request.AffectedSOPInstanceUID)
        with lock:
            key = id(event.assoc)
            if key not in numbers:
                numbers[key] = next(counter)
            if sop in args.refuse:
                status = 0xC000
            elif busy[0] > 0:
                busy[0] -= 1
                status = 0xA700
            else:
                status = 0x0000
            log.write(f"{numbers[key]} {sop} {status:04X}\n")
        return status

    ae = AE(ae_title=args.aet)
    for cx in AllStoragePresentationContexts:
        ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    server = ae.start_server(
        ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    print(server.server_address[1], flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    sys.exit(main())
