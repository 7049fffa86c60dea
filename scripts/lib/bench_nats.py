#!/usr/bin/env python3
"""JetStream alone, without switchyard: publish + consume rate of a work-queue stream.

    scripts/lib/bench_nats.py pubsub HOST PORT JOBS.jsonl [--stream NAME] [--window 1024] [--batch 500]
    scripts/lib/bench_nats.py mkstream HOST PORT PREFIX

pubsub: creates a file-backed work-queue stream (the same shape as <PREFIX>_JOBS) on a
subject of its own, publishes every line of JOBS.jsonl to it with a
`Nats-Msg-Id` header and a window of outstanding publish acks (like `switchyard
submit`), then drains it through a durable pull consumer with explicit acks
(like the worker, without the work), and deletes the stream.  Prints one JSON
object on stdout: {"n", "publish_s", "publish_per_s", "consume_s", "consume_per_s"}.

The client is pure Python on one thread (scripts/lib/nats_delete_streams.py's
MiniNats), so on a small machine it is itself a bottleneck: the figures are a
lower bound for what the server can do, not the server's ceiling.

mkstream: creates only the stream <PREFIX>_JOBS on <prefix>.jobs.{high,normal,low}.>
(as the worker would, without consumers), so that `switchyard submit` can publish
into it with no worker running: its own "published N jobs ... (R/s)" line is then
the Rust client's publish rate.  Delete it with nats_delete_streams.py.
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from nats_delete_streams import MiniNats, NatsError  # noqa: E402


def mkstream(argv):
    if len(argv) != 3:
        print("usage: bench_nats.py mkstream HOST PORT PREFIX", file=sys.stderr)
        return 2
    host, port, prefix = argv
    stream = prefix.upper() + "_JOBS"
    nc = MiniNats(host, port)
    r = nc.js_api(
        "STREAM.CREATE." + stream,
        {
            "name": stream,
            "subjects": ["%s.jobs.%s.>" % (prefix, p) for p in ("high", "normal", "low")],
            "retention": "workqueue",
            "storage": "file",
            "num_replicas": 1,
            "duplicate_window": 120 * 10**9,
        },
    )
    nc.close()
    if "error" in r:
        raise NatsError("stream create: %s" % r["error"])
    return 0


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "mkstream":
        return mkstream(sys.argv[2:])
    if len(sys.argv) > 1 and sys.argv[1] == "pubsub":
        del sys.argv[1]
    ap = argparse.ArgumentParser()
    ap.add_argument("host")
    ap.add_argument("port")
    ap.add_argument("jobs")
    ap.add_argument("--stream", default="SYBENCH%d_JOBS" % os.getpid())
    ap.add_argument("--window", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=500)
    args = ap.parse_args()

    lines = []
    with open(args.jobs, "rb") as f:
        for line in f:
            line = line.rstrip(b"\r\n")
            if line:
                lines.append(line)
    n = len(lines)
    if n == 0:
        print("bench_nats: no jobs in %s" % args.jobs, file=sys.stderr)
        return 1

    stream = args.stream
    subject = stream.lower().replace("_", "-") + ".jobs"
    nc = MiniNats(args.host, args.port, timeout=30)
    try:
        r = nc.js_api(
            "STREAM.CREATE." + stream,
            {
                "name": stream,
                "subjects": [subject + ".>"],
                "retention": "workqueue",
                "storage": "file",
                "num_replicas": 1,
                "duplicate_window": 120 * 10**9,
            },
        )
        if "error" in r:
            raise NatsError("stream create: %s" % r["error"])

        # -- publish ------------------------------------------------------------
        ack_sid = nc.subscribe(nc.inbox_prefix + ".ack")
        ack_subj = (nc.inbox_prefix + ".ack").encode()
        sid_b = str(ack_sid).encode()
        outstanding = 0
        half = max(1, args.window // 2)
        errors = 0
        t0 = time.monotonic()
        i = 0
        while i < n or outstanding > 0:
            chunk_end = min(n, i + half)
            while i < chunk_end:
                nc.publish(
                    "%s.t%d" % (subject, i % 2),
                    lines[i],
                    reply=ack_subj,
                    headers={"Nats-Msg-Id": "bench:%d" % i},
                )
                outstanding += 1
                i += 1
            nc.flush()
            target = half if i < n else 0
            while outstanding > target:
                kind, msg = nc.read_op()
                if kind == "MSG" and msg[1] == sid_b:
                    outstanding -= 1
                    if b'"error"' in msg[4] or msg[3].startswith(b"NATS/1.0 503"):
                        errors += 1
        publish_s = time.monotonic() - t0
        if errors:
            raise NatsError("%d publishes were not acknowledged" % errors)

        # -- consume ------------------------------------------------------------
        consumer = "bench"
        r = nc.js_api(
            "CONSUMER.DURABLE.CREATE.%s.%s" % (stream, consumer),
            {
                "stream_name": stream,
                "config": {
                    "durable_name": consumer,
                    "ack_policy": "explicit",
                    "ack_wait": 30 * 10**9,
                    "max_ack_pending": -1,
                    "max_deliver": -1,
                    "filter_subject": subject + ".>",
                },
            },
        )
        if "error" in r:
            raise NatsError("consumer create: %s" % r["error"])
        pull_inbox = nc.inbox_prefix + ".pull"
        pull_sid = str(nc.subscribe(pull_inbox)).encode()
        next_subj = "$JS.API.CONSUMER.MSG.NEXT.%s.%s" % (stream, consumer)
        got = 0
        t0 = time.monotonic()
        while got < n:
            want = min(args.batch, n - got)
            nc.publish(
                next_subj,
                json.dumps({"batch": want, "expires": 2 * 10**9}).encode(),
                reply=pull_inbox,
            )
            nc.flush()
            recv = 0
            while recv < want:
                kind, msg = nc.read_op()
                if kind != "MSG" or msg[1] != pull_sid:
                    continue
                if msg[2] is None:  # status message (404/408): the request ended
                    break
                nc.publish(msg[2], b"+ACK")
                recv += 1
            got += recv
            nc.flush()
        # make sure the server has read every ack
        nc.write(b"PING\r\n")
        nc.flush()
        while nc.read_op()[0] != "PONG":
            pass
        consume_s = time.monotonic() - t0
        info = nc.js_api("STREAM.INFO." + stream)
        left = info.get("state", {}).get("messages")
    finally:
        try:
            nc.js_api("STREAM.DELETE." + stream)
        except (OSError, NatsError, ValueError):
            pass
        nc.close()
    print(
        json.dumps(
            {
                "n": n,
                "publish_s": round(publish_s, 3),
                "publish_per_s": round(n / publish_s),
                "consume_s": round(consume_s, 3),
                "consume_per_s": round(n / consume_s),
                "left_in_stream": left,
            }
        )
    )
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (OSError, NatsError, ValueError) as e:
        print("bench_nats: %s" % e, file=sys.stderr)
        sys.exit(1)
