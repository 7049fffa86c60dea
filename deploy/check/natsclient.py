"""What the two live NATS checks share: a connection that records the server's
permission violations, waiting with a deadline, and running a check under a time limit."""

import asyncio
import sys

import nats

DENY_WAIT_S = 5.0  # how long a refusal may take to arrive (the server answers at once)


async def until(predicate, seconds, pause=0.05):
    """Await `predicate()` (async) until it is true or `seconds` pass; its last value."""
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        value = await predicate()
        if value or asyncio.get_running_loop().time() > deadline:
            return value
        await asyncio.sleep(pause)


class Client:
    """A connection that keeps the server's errors (permission violations)."""

    def __init__(self):
        self.violations = []
        self.nc = None

    async def _error(self, e):
        self.violations.append(str(e).lower())

    async def connect(self, url, user=None, password=None, inbox_prefix="_INBOX"):
        self.nc = await nats.connect(
            url,
            user=user,
            password=password,
            inbox_prefix=inbox_prefix.encode(),
            error_cb=self._error,
            allow_reconnect=False,
            connect_timeout=5,
        )
        return self

    async def refused(self, subject, kind):
        """True once the server reported a violation for `kind` (publish or
        subscription) on `subject`."""
        needle = f'permissions violation for {kind} to "{subject}"'.lower()

        async def seen():
            return any(needle in v for v in self.violations)

        return await until(seen, DENY_WAIT_S)


def run(main, what):
    """Run the coroutine function `main` (returns an exit code) within two minutes."""
    try:
        sys.exit(asyncio.run(asyncio.wait_for(main(), timeout=120)))
    except (asyncio.TimeoutError, OSError, nats.errors.Error) as e:
        print(f"FAIL {what}: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
