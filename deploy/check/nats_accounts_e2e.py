"""A job through a real switchyard worker under deploy/nats/accounts.conf.

scripts/check_deploy.sh starts nats-server with that file, the simulator and a worker
connected as the `worker` user; this then acts as tenant acme (inbox prefix
_INBOX.acme): it publishes a job, receives the result on its reply_to, reads the stored
result by direct get, checks that tenant globex cannot read it, and that the job was
acked. So the worker's permissions are enough for it to run, and the tenant's are
enough to use it. check_deploy.sh also fails on any permission violation the server
logged for the worker.

Exit 0 when all of that holds, 1 otherwise.
"""

import asyncio
import json
import os
import sys

import nats

JOB_ID = "deploy-check-1"
RESULT_WAIT_S = 60
ACK_WAIT_S = 15


async def main() -> int:
    url = sys.argv[1]
    acme = await nats.connect(url, user="acme", password=os.environ["ACME_PASSWORD"], inbox_prefix=b"_INBOX.acme", allow_reconnect=False)
    replies = await acme.subscribe("_INBOX.acme.deploy-check")
    job = {
        "id": JOB_ID,
        "tenant": "acme",
        "model": "fast",
        "messages": [{"role": "user", "content": "Say hello"}],
        "max_tokens": 16,
        "reply_to": "_INBOX.acme.deploy-check",
    }
    ack = await acme.request(
        "llm.jobs.normal.acme", json.dumps(job).encode(), timeout=10, headers={"Nats-Msg-Id": f"acme:{JOB_ID}"}
    )
    print("published:", ack.data.decode())
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

    violations = []

    async def on_error(e):
        violations.append(str(e).lower())

    globex = await nats.connect(url, user="globex", password=os.environ["GLOBEX_PASSWORD"], inbox_prefix=b"_INBOX.globex", error_cb=on_error, allow_reconnect=False)
    subject = f"$JS.API.DIRECT.GET.LLM_RESULTS.llm.results.acme.{JOB_ID}"
    await globex.publish(subject, b"", reply="_INBOX.globex.x")
    await globex.flush()
    deadline = asyncio.get_running_loop().time() + 5
    while not any(subject.lower() in v for v in violations):
        if asyncio.get_running_loop().time() > deadline:
            print(f"FAIL globex was not refused {subject} ({violations})", file=sys.stderr)
            return 1
        await asyncio.sleep(0.05)
    print("globex may not read acme's result")
    await globex.close()
    await acme.close()

    # The worker acks the job after publishing its result: the work-queue stream empties.
    # Read as the worker user (let in without credentials, see check_deploy.sh).
    ops = await nats.connect(url, allow_reconnect=False)
    deadline = asyncio.get_running_loop().time() + ACK_WAIT_S
    while True:
        info = json.loads((await ops.request("$JS.API.CONSUMER.INFO.LLM_JOBS.jobs-normal", b"", timeout=5)).data)
        if info.get("num_ack_pending") == 0 and info.get("num_pending") == 0:
            break
        if asyncio.get_running_loop().time() > deadline:
            print(f"FAIL the job was not acked: {json.dumps(info)[:400]}", file=sys.stderr)
            return 1
        await asyncio.sleep(0.1)
    print("job acked")
    await ops.close()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(asyncio.wait_for(main(), timeout=120)))
    except (asyncio.TimeoutError, OSError, nats.errors.Error) as e:
        print(f"FAIL accounts end to end: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
