"""Try every rule of deploy/nats/accounts.conf against a live nats-server.

scripts/check_deploy.sh starts a throwaway server with that file and runs this with the
server's URL and the passwords in the environment (WORKER_PASSWORD, ACME_PASSWORD,
GLOBEX_PASSWORD). The worker user sets up the streams and writes one result per tenant;
then tenant acme must be able to do what a producer does (publish its jobs, read its
results by direct get and through its own consumer, use its inbox) and be refused
everything that would touch another tenant or the workers' subjects.

Exit 0 when every expectation holds, 1 with one line per broken expectation otherwise.
"""

import json
import os
import sys

from natsclient import Client, run

async def api(nc, subject, body=None, timeout=5.0):
    payload = b"" if body is None else json.dumps(body).encode()
    return await nc.request(subject, payload, timeout=timeout)


async def main() -> int:
    url = sys.argv[1]
    failures = []

    def expect(ok, what):
        print(("ok   " if ok else "FAIL ") + what)
        if not ok:
            failures.append(what)

    # --- the worker sets up the streams and writes results --------------------
    worker = await Client().connect(url, "worker", os.environ["WORKER_PASSWORD"], "_INBOX")
    js = worker.nc.jetstream()
    await js.add_stream(
        name="LLM_JOBS",
        subjects=["llm.jobs.high.>", "llm.jobs.normal.>", "llm.jobs.low.>"],
        retention="workqueue",
    )
    await js.add_stream(
        name="LLM_RESULTS",
        subjects=["llm.results.>"],
        max_msgs_per_subject=1,
        allow_direct=True,
    )
    await js.publish("llm.results.acme.j1", b'{"id":"j1","tenant":"acme"}')
    await js.publish("llm.results.globex.g1", b'{"id":"g1","tenant":"globex"}')
    await worker.nc.publish("llm.ctl.heartbeat", b"{}")
    await worker.nc.publish("_INBOX.acme.reply1", b"{}")
    await worker.nc.subscribe("llm.results.>")  # switchyard submit --wait
    await worker.nc.flush()

    # --- tenant acme ----------------------------------------------------------
    acme = await Client().connect(url, "acme", os.environ["ACME_PASSWORD"], "_INBOX.acme")
    nc = acme.nc

    ack = await api(nc, "llm.jobs.normal.acme", {"id": "a1", "tenant": "acme"})
    expect(json.loads(ack.data).get("stream") == "LLM_JOBS", "acme publishes llm.jobs.normal.acme")

    got = await api(nc, "$JS.API.DIRECT.GET.LLM_RESULTS.llm.results.acme.j1")
    expect(
        got.data == b'{"id":"j1","tenant":"acme"}',
        f"acme reads its result by direct get ({got.headers}, {got.data!r})",
    )

    create = await api(
        nc,
        "$JS.API.CONSUMER.CREATE.LLM_RESULTS.acme.llm.results.acme.>",
        {
            "stream_name": "LLM_RESULTS",
            "config": {
                "durable_name": "acme",
                "name": "acme",
                "filter_subject": "llm.results.acme.>",
                "ack_policy": "explicit",
            },
        },
    )
    expect("error" not in json.loads(create.data), f"acme creates its consumer ({create.data!r})")
    # A pulled message arrives on the request's reply subject under its stream subject,
    # so it is read from a subscription of its own, not through request().
    pulls = await nc.subscribe("_INBOX.acme.pull")
    await nc.publish(
        "$JS.API.CONSUMER.MSG.NEXT.LLM_RESULTS.acme",
        json.dumps({"batch": 1, "expires": 5_000_000_000}).encode(),
        reply="_INBOX.acme.pull",
    )
    nxt = await pulls.next_msg(timeout=10)
    expect(nxt.subject == "llm.results.acme.j1", f"acme pulls its result ({nxt.subject})")
    if nxt.reply:
        await nc.publish(nxt.reply, b"+ACK")

    # refused: other tenants' jobs and results, the workers' subjects, other inboxes
    for subject, what in [
        ("llm.jobs.normal.globex", "publish a job as globex"),
        ("llm.results.acme.forged", "forge a result"),
        ("llm.dlq.acme.x", "write a dead letter"),
        ("llm.ctl.heartbeat", "speak on the workers' control subjects"),
        ("$JS.API.DIRECT.GET.LLM_RESULTS.llm.results.globex.g1", "direct-get globex's result"),
        ("$JS.API.DIRECT.GET.LLM_RESULTS", "direct get with the subject in the body"),
        ("$JS.API.STREAM.MSG.GET.LLM_RESULTS", "stream message get (subject in the body)"),
        ("$JS.API.STREAM.INFO.LLM_RESULTS", "stream info (lists subjects)"),
        ("$JS.API.CONSUMER.CREATE.LLM_RESULTS", "create a consumer without the filter in the subject"),
        ("$JS.API.CONSUMER.CREATE.LLM_RESULTS.acme.llm.results.globex.>", "create a consumer on globex's results"),
        ("$JS.API.CONSUMER.CREATE.LLM_RESULTS.globex.llm.results.globex.>", "create globex's consumer"),
        ("$JS.API.CONSUMER.DURABLE.CREATE.LLM_RESULTS.acme", "durable create (filter in the body)"),
        ("$JS.API.CONSUMER.MSG.NEXT.LLM_JOBS.jobs-normal", "pull the workers' jobs"),
        ("$JS.API.STREAM.DELETE.LLM_JOBS", "delete a stream"),
    ]:
        await nc.publish(subject, b"{}", reply="_INBOX.acme.denied")
        await nc.flush()
        expect(await acme.refused(subject, "publish"), f"acme may not {what} ({subject})")

    for subject, what in [
        ("llm.results.>", "subscribe to every result"),
        ("llm.jobs.>", "subscribe to the jobs"),
        ("_INBOX.globex.>", "subscribe to globex's inbox"),
        ("_INBOX.>", "subscribe to every inbox"),
    ]:
        await nc.subscribe(subject)
        await nc.flush()
        expect(await acme.refused(subject, "subscription"), f"acme may not {what} ({subject})")

    # The server reports a violation after the flush: read the worker's at the end.
    await worker.nc.flush()
    expect(not worker.violations, f"worker: no violations ({worker.violations})")
    await nc.close()
    await worker.nc.close()
    if failures:
        print(f"{len(failures)} expectation(s) of deploy/nats/accounts.conf broken", file=sys.stderr)
        return 1
    print("deploy/nats/accounts.conf: every rule holds")
    return 0


if __name__ == "__main__":
    run(main, "nats permissions check")
