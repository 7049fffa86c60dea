#!/usr/bin/env python3
"""Delete JetStream streams with nothing but the standard library.

    scripts/lib/nats_delete_streams.py HOST PORT NAME...

Speaks the NATS text protocol on a raw socket: CONNECT, SUB to an inbox, one
`PUB $JS.API.STREAM.DELETE.<name> <inbox>` per stream, and reads the JSON
replies.  A stream that does not exist counts as deleted.  Credentials, when the
server wants them, are taken from NATS_URL (nats://user:pass@host:port or
nats://token@host:port).  Exit status: 0 when every stream is gone, 1 otherwise.

Also importable: `MiniNats` is the small client that scripts/lib/bench_nats.py
uses.  No TLS, no cluster reconnects: it is for local scripts only.
"""

import json
import os
import random
import socket
import string
import sys
import time
import urllib.parse


class NatsError(Exception):
    pass


class MiniNats:
    """A blocking, single-threaded NATS client: enough for request/reply,
    pipelined publishes and pull-consumer fetches."""

    def __init__(self, host, port, timeout=10.0, name="switchyard-script"):
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.rfile = self.sock.makefile("rb", buffering=1 << 20)
        self.out = []
        self.sid = 0
        line = self._readline()
        if not line.startswith(b"INFO "):
            raise NatsError("server did not say INFO: %r" % line[:80])
        self.info = json.loads(line[5:])
        opts = {
            "verbose": False,
            "pedantic": False,
            "lang": "python-raw",
            "version": "0",
            "protocol": 1,
            "name": name,
            "headers": True,
            "no_responders": True,
        }
        opts.update(self._credentials(host, port))
        self.write(b"CONNECT " + json.dumps(opts).encode() + b"\r\n")
        self.write(b"PING\r\n")
        self.flush()
        # wait for the PONG (an -ERR here means authorization failed)
        while True:
            kind, _ = self.read_op()
            if kind == "PONG":
                break
        self.inbox_prefix = "_INBOX." + "".join(
            random.choice(string.ascii_letters + string.digits) for _ in range(16)
        )

    @staticmethod
    def _credentials(host, port):
        url = os.environ.get("NATS_URL", "")
        for one in url.split(","):
            one = one.strip()
            if not one:
                continue
            if "://" not in one:
                one = "nats://" + one
            u = urllib.parse.urlsplit(one)
            if not u.username:
                continue
            if (u.hostname or "") in (host, "localhost", "127.0.0.1") and str(
                u.port or 4222
            ) == str(port):
                user = urllib.parse.unquote(u.username)
                if u.password is None:
                    return {"auth_token": user}
                return {"user": user, "pass": urllib.parse.unquote(u.password)}
        return {}

    # -- low level -----------------------------------------------------------
    def _readline(self):
        line = self.rfile.readline()
        if not line:
            raise NatsError("connection closed by the server")
        return line.rstrip(b"\r\n")

    def write(self, data):
        self.out.append(data)

    def flush(self):
        if self.out:
            self.sock.sendall(b"".join(self.out))
            self.out = []

    def read_op(self):
        """Next protocol operation: ("MSG", (subject, sid, reply, headers, payload)),
        ("PONG", None) ...  PINGs are answered here."""
        while True:
            line = self._readline()
            if line.startswith(b"MSG "):
                parts = line.split(b" ")
                size = int(parts[-1])
                reply = parts[3] if len(parts) == 5 else None
                payload = self.rfile.read(size + 2)[:-2]
                return "MSG", (parts[1], parts[2], reply, b"", payload)
            if line.startswith(b"HMSG "):
                parts = line.split(b" ")
                hsize, total = int(parts[-2]), int(parts[-1])
                reply = parts[3] if len(parts) == 6 else None
                data = self.rfile.read(total + 2)[:-2]
                return "MSG", (parts[1], parts[2], reply, data[:hsize], data[hsize:])
            if line == b"PING":
                self.sock.sendall(b"PONG\r\n")
                continue
            if line == b"PONG":
                return "PONG", None
            if line == b"+OK" or line.startswith(b"INFO "):
                continue
            if line.startswith(b"-ERR"):
                raise NatsError(line.decode(errors="replace"))
            raise NatsError("unexpected line from server: %r" % line[:80])

    def subscribe(self, subject):
        self.sid += 1
        self.write(b"SUB %s %d\r\n" % (subject.encode(), self.sid))
        return self.sid

    def publish(self, subject, payload=b"", reply=None, headers=None):
        if isinstance(subject, str):
            subject = subject.encode()
        if isinstance(reply, str):
            reply = reply.encode()
        if headers:
            hdr = b"NATS/1.0\r\n" + b"".join(
                b"%s: %s\r\n" % (k.encode(), v.encode()) for k, v in headers.items()
            ) + b"\r\n"
            head = b"HPUB " + subject + (b" " + reply if reply else b"")
            self.write(
                head + b" %d %d\r\n" % (len(hdr), len(hdr) + len(payload)) + hdr + payload + b"\r\n"
            )
        else:
            head = b"PUB " + subject + (b" " + reply if reply else b"")
            self.write(head + b" %d\r\n" % len(payload) + payload + b"\r\n")

    # -- request/reply -------------------------------------------------------
    def request(self, subject, payload=b"", timeout=5.0):
        inbox = "%s.r%d" % (self.inbox_prefix, random.randrange(1 << 30))
        sid = self.subscribe(inbox)
        self.write(b"UNSUB %d 1\r\n" % sid)
        self.publish(subject, payload, reply=inbox)
        self.flush()
        deadline = time.monotonic() + timeout
        self.sock.settimeout(timeout)
        try:
            while True:
                kind, msg = self.read_op()
                if kind == "MSG" and msg[1] == str(sid).encode():
                    headers, body = msg[3], msg[4]
                    if headers.startswith(b"NATS/1.0 503"):
                        raise NatsError("no responders for %s (is JetStream enabled?)" % subject)
                    return body
                if time.monotonic() > deadline:
                    raise NatsError("timed out waiting for a reply on %s" % subject)
        except socket.timeout:
            raise NatsError("timed out waiting for a reply on %s" % subject) from None

    def js_api(self, what, body=None, timeout=5.0):
        payload = b"" if body is None else json.dumps(body).encode()
        reply = json.loads(self.request("$JS.API." + what, payload, timeout))
        return reply

    def close(self):
        try:
            self.flush()
            self.sock.close()
        except OSError:
            pass


def main(argv):
    if len(argv) < 3 or not argv[1].isdigit():
        print("usage: nats_delete_streams.py HOST PORT NAME...", file=sys.stderr)
        return 2
    host, port, names = argv[0], argv[1], argv[2:]
    try:
        nc = MiniNats(host, port)
    except (OSError, NatsError, ValueError) as e:
        print("nats_delete_streams: cannot connect to %s:%s: %s" % (host, port, e), file=sys.stderr)
        return 1
    ok = True
    for name in names:
        try:
            reply = nc.js_api("STREAM.DELETE." + name)
        except (OSError, NatsError, ValueError) as e:
            print("nats_delete_streams: %s: %s" % (name, e), file=sys.stderr)
            ok = False
            continue
        err = reply.get("error")
        if reply.get("success"):
            print("nats_delete_streams: deleted stream %s" % name, file=sys.stderr)
        elif err and (err.get("err_code") == 10059 or err.get("code") == 404):
            print("nats_delete_streams: stream %s does not exist" % name, file=sys.stderr)
        else:
            print("nats_delete_streams: %s: %s" % (name, json.dumps(reply)), file=sys.stderr)
            ok = False
    nc.close()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
