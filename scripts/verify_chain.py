#!/usr/bin/env python3
"""Verify a Jeanus tenant's hash chain from its history, as a third party would.

Reads NDJSON events (`GET /api/v1/events` with `Accept: application/x-ndjson`),
from a file or stdin, and recomputes each event's hash:

    hash = SHA-256(prev_hash || canonical bytes of the event)

prev_hash is the previous event's hash (32 zero bytes before the tenant's
first event, or the checkpoint's hash with --from). The canonical bytes are
the UTF-8 text of the JSON object of these ten fields of the event, in
PostgreSQL's jsonb text form: keys sorted by byte length, then bytewise;
", " between items and ": " after keys; strings escaped as json.dumps does
with ensure_ascii=False; numbers exactly as the API wrote them.

    curl -s -H "Authorization: Bearer $KEY" -H "Accept: application/x-ndjson" \\
         "$BASE/api/v1/events" | scripts/verify_chain.py

Exit 0 and the last position and hash (a checkpoint to keep) when every hash
matches; exit 1 naming the first position that does not.
"""

import argparse
import hashlib
import json
import sys

FIELDS = (
    "position", "id", "type", "schema_version", "stream_type", "stream_id",
    "stream_version", "occurred_at", "metadata", "data",
)


class Number(str):
    """A JSON number kept as the text it was written as."""


def canonical(value):
    if isinstance(value, dict):
        keys = sorted(value, key=lambda k: (len(k.encode()), k.encode()))
        return "{" + ", ".join(f"{canonical(k)}: {canonical(value[k])}" for k in keys) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(canonical(v) for v in value) + "]"
    if isinstance(value, Number):
        return str.__str__(value)
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    raise ValueError(f"unexpected JSON value {value!r}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", nargs="?", help="NDJSON events (default: stdin)")
    parser.add_argument("--from", dest="checkpoint", metavar="POSITION:HASH",
                        help="the events start after this checkpoint")
    args = parser.parse_args()

    prev, after = bytes(32), 0
    if args.checkpoint:
        position, _, hex_hash = args.checkpoint.partition(":")
        after, prev = int(position), bytes.fromhex(hex_hash)

    source = open(args.file, encoding="utf-8") if args.file else sys.stdin
    count, last = 0, None
    for line in source:
        if not line.strip():
            continue
        event = json.loads(line, parse_int=Number, parse_float=Number)
        position = int(event["position"])
        if position <= after:
            print(f"position {position}: not after the previous one ({after})", file=sys.stderr)
            return 1
        body = canonical({field: event[field] for field in FIELDS}).encode("utf-8")
        digest = hashlib.sha256(prev + body).digest()
        if digest.hex() != event["hash"]:
            print(f"position {position}: the hash does not match: this event, or an earlier "
                  f"one, was altered, removed or reordered", file=sys.stderr)
            return 1
        prev, after, count, last = digest, position, count + 1, position
    print(f"{count} events verified; head {last or after}:{prev.hex()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
