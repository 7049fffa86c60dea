"""Jobs through a real switchyard worker under deploy/nats/accounts.conf.

scripts/check_deploy.sh starts nats-server with that file as it is (no no_auth_user),
the simulator, and a worker with deploy/k8s's ConfigMap config, logged in as the user
that config names with the password the server knows (WORKER_PASSWORD). This then
checks that the server refuses a client without credentials, and acts as tenant acme
(inbox prefix _INBOX.acme):
  - a job whose reply_to is its own inbox: the result arrives there, is stored, can be
    read by direct get by acme and not by tenant globex, and the job is acked;
  - a job whose reply_to is globex's inbox: the worker refuses it as invalid_job (the
    config's [[reply_to.tenants]]), stores that failure at llm.results.acme.<id>, and
    globex's inbox receives nothing.
check_deploy.sh also fails on any permission violation the server logged for the worker.

    nats_accounts_e2e.py NATS_URL [WORKER_USER]

Exit 0 when all of that holds, 1 otherwise.
"""

import json
import os
import sys

import nats

from natsclient import Client, run, until

JOB_ID = "deploy-check-1"
FOREIGN_ID = "deploy-check-foreign-inbox"
RESULT_WAIT_S = 60
ACK_WAIT_S = 15


def job(job_id, reply_to):
    return {
        "id": job_id,
        "tenant": "acme",
        "model": "fast",
        "messages": [{"role": "user", "content": "Say hello"}],
        "max_tokens": 16,
        "reply_to": reply_to,
    }


async def submit(nc, body):
    ack = await nc.request(
        "llm.jobs.normal.acme",
        json.dumps(body).encode(),
        timeout=10,
        headers={"Nats-Msg-Id": f"acme:{body['id']}"},
    )
    print("published:", ack.data.decode())


async def anonymous_refused(url):
    """The server lets no one in without credentials (there is no no_auth_user)."""
    errors = []

    async def on_error(e):
        errors.append(str(e))

    try:
        nc = await nats.connect(url, allow_reconnect=False, connect_timeout=5, max_reconnect_attempts=0, error_cb=on_error)
    except Exception as e:  # nats-py raises its own errors or the server's -ERR
        errors.append(f"{type(e).__name__}: {e}")
        return any("authorization" in x.lower() for x in errors), errors
    await nc.close()
    return False, errors


async def main() -> int:
    url = sys.argv[1]
    worker_user = sys.argv[2] if len(sys.argv) > 2 else "worker"

    refused, errors = await anonymous_refused(url)
    if not refused:
        print(f"FAIL a client without credentials was let in or not refused as unauthorized: {errors}", file=sys.stderr)
        return 1
    print("a client without credentials is refused:", errors[-1])

    acme = (await Client().connect(url, "acme", os.environ["ACME_PASSWORD"], "_INBOX.acme")).nc
    replies = await acme.subscribe("_INBOX.acme.deploy-check")
    await submit(acme, job(JOB_ID, "_INBOX.acme.deploy-check"))
    msg = await replies.next_msg(timeout=RESULT_WAIT_S)
    result = json.loads(msg.data)
    if result.get("id") != JOB_ID or result.get("status") != "succeeded":
        print(f"FAIL unexpected result on reply_to: {msg.data[:500]!r}", file=sys.stderr)
        return 1
    print("result on reply_to:", result["status"], result.get("provider"), result.get("model"))

    stored = await acme.request(f"$JS.API.DIRECT.GET.LLM_RESULTS.llm.results.acme.{JOB_ID}", b"", timeout=10)
    if json.loads(stored.data or b"{}").get("id") != JOB_ID:
        print(f"FAIL direct get of the stored result: {stored.headers} {stored.data[:300]!r}", file=sys.stderr)
        return 1
    print("stored result read by direct get")

    globex = await Client().connect(url, "globex", os.environ["GLOBEX_PASSWORD"], "_INBOX.globex")
    subject = f"$JS.API.DIRECT.GET.LLM_RESULTS.llm.results.acme.{JOB_ID}"
    await globex.nc.publish(subject, b"", reply="_INBOX.globex.x")
    await globex.nc.flush()
    if not await globex.refused(subject, "publish"):
        print(f"FAIL globex was not refused {subject} ({globex.violations})", file=sys.stderr)
        return 1
    print("globex may not read acme's result")

    # A job of acme that names globex's inbox: refused by the worker's reply_to list,
    # its failure stored under acme's results, nothing in globex's inbox.
    foreign_inbox = "_INBOX.globex.deploy-check"
    eavesdrop = await globex.nc.subscribe(foreign_inbox)
    await globex.nc.flush()
    await submit(acme, job(FOREIGN_ID, foreign_inbox))
    stored = {}

    async def failure_stored():
        reply = await acme.request(f"$JS.API.DIRECT.GET.LLM_RESULTS.llm.results.acme.{FOREIGN_ID}", b"", timeout=5)
        if reply.data:
            stored.update(json.loads(reply.data))
        return bool(stored)

    if not await until(failure_stored, RESULT_WAIT_S, pause=0.2):
        print(f"FAIL no result stored at llm.results.acme.{FOREIGN_ID} for the job naming {foreign_inbox}", file=sys.stderr)
        return 1
    error = stored.get("error") or {}
    if stored.get("status") != "failed" or error.get("kind") != "invalid_job":
        print(
            f"FAIL a job of acme with reply_to {foreign_inbox} must fail as invalid_job, got status "
            f"{stored.get('status')!r}, error {json.dumps(error)[:300]}",
            file=sys.stderr,
        )
        return 1
    print(f"reply_to {foreign_inbox} refused: {error.get('kind')}: {error.get('message')}")
    try:
        leaked = await eavesdrop.next_msg(timeout=1)
    except nats.errors.TimeoutError:
        leaked = None
    if leaked is not None:
        print(f"FAIL globex's inbox received {leaked.data[:300]!r}", file=sys.stderr)
        return 1
    print("globex's inbox received nothing")
    await globex.nc.close()
    await acme.close()

    # The worker acks the jobs after publishing their results: the work-queue stream
    # empties. Read as the worker user, with its password.
    ops = (await Client().connect(url, worker_user, os.environ["WORKER_PASSWORD"])).nc
    info = {}

    async def drained():
        reply = await ops.request("$JS.API.CONSUMER.INFO.LLM_JOBS.jobs-normal", b"", timeout=5)
        info.update(json.loads(reply.data))
        return info.get("num_ack_pending") == 0 and info.get("num_pending") == 0

    if not await until(drained, ACK_WAIT_S, pause=0.1):
        print(f"FAIL the jobs were not acked: {json.dumps(info)[:400]}", file=sys.stderr)
        return 1
    print("jobs acked")
    await ops.close()
    return 0


if __name__ == "__main__":
    run(main, "accounts end to end")
