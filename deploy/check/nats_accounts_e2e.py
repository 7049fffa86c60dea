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

import json
import os
import sys

from natsclient import Client, run, until

JOB_ID = "deploy-check-1"
RESULT_WAIT_S = 60
ACK_WAIT_S = 15


async def main() -> int:
    url = sys.argv[1]
    acme = (await Client().connect(url, "acme", os.environ["ACME_PASSWORD"], "_INBOX.acme")).nc
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

    globex = await Client().connect(url, "globex", os.environ["GLOBEX_PASSWORD"], "_INBOX.globex")
    subject = f"$JS.API.DIRECT.GET.LLM_RESULTS.llm.results.acme.{JOB_ID}"
    await globex.nc.publish(subject, b"", reply="_INBOX.globex.x")
    await globex.nc.flush()
    if not await globex.refused(subject, "publish"):
        print(f"FAIL globex was not refused {subject} ({globex.violations})", file=sys.stderr)
        return 1
    print("globex may not read acme's result")
    await globex.nc.close()
    await acme.close()

    # The worker acks the job after publishing its result: the work-queue stream empties.
    # Read as the worker user (let in without credentials, see check_deploy.sh).
    ops = (await Client().connect(url)).nc
    info = {}

    async def drained():
        reply = await ops.request("$JS.API.CONSUMER.INFO.LLM_JOBS.jobs-normal", b"", timeout=5)
        info.update(json.loads(reply.data))
        return info.get("num_ack_pending") == 0 and info.get("num_pending") == 0

    if not await until(drained, ACK_WAIT_S, pause=0.1):
        print(f"FAIL the job was not acked: {json.dumps(info)[:400]}", file=sys.stderr)
        return 1
    print("job acked")
    await ops.close()
    return 0


if __name__ == "__main__":
    run(main, "accounts end to end")
