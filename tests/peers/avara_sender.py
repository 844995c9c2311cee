#!/usr/bin/env python3
"""Play Avara: sign an event the way Avara does and POST it to the gateway.

    avara_sender.py --url http://127.0.0.1:P/webhooks/avara --key whsec_... \\
             [--sign-key whsec_...] [--age SECONDS] [--tamper] [--id MSG_ID] \\
             EVENT_JSON

The event is signed with the `standardwebhooks` library (what Avara's SDKs
use). Unless the delivery is meant to be bad (--sign-key differs, --age beyond
five minutes, --tamper), the `avara` SDK's `webhooks.unwrap()` must accept the
same payload first, so test payloads are ones Avara's own code accepts.
Prints one JSON object: {"status": HTTP status, "body": parsed JSON body}.
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
import urllib.error
import urllib.request

import avara
from standardwebhooks.webhooks import Webhook


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--key", required=True, help="the secret the gateway is configured with")
    ap.add_argument("--sign-key", help="sign with this secret instead (a wrong or rotated key)")
    ap.add_argument("--age", type=int, default=0, help="seconds to backdate the timestamp")
    ap.add_argument("--tamper", action="store_true", help="change the body after signing")
    ap.add_argument("--id", default="msg_" + datetime.datetime.now().strftime("%H%M%S%f"))
    ap.add_argument("--raw", action="store_true", help="send EVENT verbatim (need not be JSON)")
    ap.add_argument("event", help="the event JSON, or @FILE")
    args = ap.parse_args()

    event = open(args.event[1:], encoding="utf-8").read() if args.event.startswith("@") else args.event
    payload = event if args.raw else json.dumps(json.loads(event), separators=(",", ":"))
    sent_at = datetime.datetime.now(tz=datetime.timezone.utc) - datetime.timedelta(seconds=args.age)
    signer = Webhook(args.sign_key or args.key)
    headers = {
        "webhook-id": args.id,
        "webhook-timestamp": str(int(sent_at.timestamp())),
        "webhook-signature": signer.sign(args.id, sent_at, payload),
    }
    meant_to_verify = (args.sign_key in (None, args.key)) and args.age < 300 and not args.tamper and not args.raw
    if meant_to_verify:
        client = avara.Avara(api_key="test", webhook_key=args.key)
        client.webhooks.unwrap(payload, headers=headers)  # raises if Avara would not accept it
    body = payload.replace("1.", "9.", 1) if args.tamper else payload

    request = urllib.request.Request(
        args.url,
        data=body.encode(),
        headers={**headers, "content-type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as err:
        status, raw = err.code, err.read()
    try:
        parsed = json.loads(raw) if raw else None
    except json.JSONDecodeError:
        parsed = raw.decode(errors="replace")
    print(json.dumps({"status": status, "body": parsed}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
