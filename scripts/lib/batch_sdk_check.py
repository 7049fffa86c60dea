#!/usr/bin/env python3
"""Drive the provider simulator's batch APIs with the official SDKs (`openai`, and
`anthropic` when it is installed).

Usage: batch_sdk_check.py ADDR   (e.g. 127.0.0.1:8090; a `switchyard simulate` must be
listening there, with `batch_complete_ms` 0 and no batch faults).

Checks what switchyard relies on, through the SDK's own request building and response
parsing: files.create (multipart, purpose=batch), batches.create / retrieve / list /
cancel, files.content of the output file; that every line is answered as chat
completions answers; and that the simulator refuses what the real API refuses (a
completion_window other than 24h, an unknown argument, a file that is not for batches,
a batch whose lines name two models). Exits non-zero on the first failure. Needs no
internet: only the simulator.
"""
import io
import json
import sys
import time

import openai


def expect_status(fn, status):
    try:
        fn()
    except openai.APIStatusError as e:
        assert e.status_code == status, f"expected {status}, got {e.status_code}: {e}"
        return
    raise AssertionError(f"expected HTTP {status}, the call succeeded")


def lines(model, n, start=0):
    out = []
    for i in range(start, start + n):
        out.append(json.dumps({
            "custom_id": f"sy-{i}", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": model, "messages": [{"role": "user", "content": f"Say something about {i}"}],
                     "max_completion_tokens": 32},
        }))
    return ("\n".join(out) + "\n").encode()


def wait(client, batch_id, want, secs=10):
    deadline = time.time() + secs
    while time.time() < deadline:
        b = client.batches.retrieve(batch_id)
        if b.status in want:
            return b
        time.sleep(0.1)
    raise AssertionError(f"batch {batch_id} never reached {want}")


def check_openai(addr):
    base = f"http://{addr}/v1"
    client = openai.OpenAI(base_url=base, api_key="sk-sdk-check", max_retries=0)
    model = "gpt-4o-mini-2024-07-18"

    f = client.files.create(file=("in.jsonl", io.BytesIO(lines(model, 3))), purpose="batch")
    assert f.purpose == "batch" and f.bytes > 0, f
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                              completion_window="24h", metadata={"switchyard-batch": "sdk-check"})
    assert b.status == "validating", b
    b = wait(client, b.id, {"completed", "failed"})
    assert b.status == "completed", b
    assert b.request_counts.total == 3 and b.request_counts.completed == 3, b.request_counts
    out = client.files.content(b.output_file_id).text
    got = [json.loads(l) for l in out.splitlines() if l.strip()]
    assert sorted(l["custom_id"] for l in got) == ["sy-0", "sy-1", "sy-2"], got
    for l in got:
        body = l["response"]["body"]
        assert l["response"]["status_code"] == 200, l
        # The SDK's own model of a chat completion reads each answer.
        c = openai.types.chat.ChatCompletion.model_validate(body)
        assert c.choices[0].message.content, c
        assert c.usage.prompt_tokens > 0, c
    listed = client.batches.list(limit=10)
    assert any(x.id == b.id and (x.metadata or {}).get("switchyard-batch") == "sdk-check" for x in listed.data)

    # Cancelling: a new batch, cancelled before it runs, ends cancelled.
    f2 = client.files.create(file=("in2.jsonl", io.BytesIO(lines(model, 2))), purpose="batch")
    b2 = client.batches.create(input_file_id=f2.id, endpoint="/v1/chat/completions", completion_window="24h")
    c2 = client.batches.cancel(b2.id)
    assert c2.status == "cancelling", c2
    assert wait(client, b2.id, {"cancelled"}).status == "cancelled"

    # Refusals the real API makes.
    expect_status(lambda: client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                                completion_window="48h"), 400)
    expect_status(lambda: client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                                completion_window="24h", extra_body={"priority": 1}), 400)
    f3 = client.files.create(file=("notes.jsonl", io.BytesIO(b"{}\n")), purpose="user_data")
    expect_status(lambda: client.batches.create(input_file_id=f3.id, endpoint="/v1/chat/completions",
                                                completion_window="24h"), 400)
    expect_status(lambda: client.batches.retrieve("batch_nope"), 404)
    two = lines(model, 1) + lines("gpt-4o", 1, start=1)
    f4 = client.files.create(file=("two.jsonl", io.BytesIO(two)), purpose="batch")
    b4 = client.batches.create(input_file_id=f4.id, endpoint="/v1/chat/completions", completion_window="24h")
    b4 = wait(client, b4.id, {"failed", "completed"})
    assert b4.status == "failed" and b4.errors.data[0].code == "mismatched_model", b4
    expect_status(lambda: openai.OpenAI(base_url=base, api_key="nope", max_retries=0).batches.list(), 401)
    print("openai SDK batch check: ok")


def check_anthropic(addr):
    try:
        import anthropic
    except ImportError:
        print("anthropic SDK not installed: Message Batches not checked")
        return
    # As the SDK sends them: the key as `Authorization: Bearer`, its own anthropic-version.
    key = "sk-ant-sdk-check"
    client = anthropic.Anthropic(base_url=f"http://{addr}", api_key=key, max_retries=0)
    model = "claude-3-5-haiku-20241022"
    reqs = [{"custom_id": f"sy-{i}", "params": {"model": model, "max_tokens": 32,
             "messages": [{"role": "user", "content": f"Say something about {i}"}]}} for i in range(3)]
    # One request whose params the Messages API refuses: it ends `errored`, not the batch.
    reqs.append({"custom_id": "sy-3", "params": {"model": model, "messages": [{"role": "user", "content": "x"}]}})
    b = client.messages.batches.create(requests=reqs)
    assert b.type == "message_batch" and b.processing_status == "in_progress", b
    deadline = time.time() + 10
    while b.processing_status != "ended":
        assert time.time() < deadline, b
        time.sleep(0.1)
        b = client.messages.batches.retrieve(b.id)
    assert b.request_counts.succeeded == 3 and b.request_counts.errored == 1, b.request_counts
    assert b.results_url, b
    got = {r.custom_id: r.result for r in client.messages.batches.results(b.id)}
    assert sorted(got) == ["sy-0", "sy-1", "sy-2", "sy-3"], got
    for cid in ["sy-0", "sy-1", "sy-2"]:
        assert got[cid].type == "succeeded", got[cid]
        assert got[cid].message.content[0].text and got[cid].message.usage.input_tokens > 0
    assert got["sy-3"].type == "errored" and got["sy-3"].error.error.type == "invalid_request_error", got["sy-3"]
    assert any(x.id == b.id for x in client.messages.batches.list(limit=10).data)
    c = client.messages.batches.create(requests=reqs[:1])
    c = client.messages.batches.cancel(c.id)
    assert c.processing_status == "canceling", c
    c = client.messages.batches.retrieve(c.id)
    assert c.processing_status == "ended" and c.request_counts.canceled == 1, c
    assert [r.result.type for r in client.messages.batches.results(c.id)] == ["canceled"]
    # Refusals the real API makes at creation.
    for bad in ([{"custom_id": "has space", "params": reqs[0]["params"]}],
                [reqs[0], reqs[0]],
                []):
        try:
            client.messages.batches.create(requests=bad)
        except anthropic.BadRequestError:
            continue
        raise AssertionError(f"accepted {bad}")
    try:
        client.messages.batches.retrieve("msgbatch_nope")
    except anthropic.NotFoundError:
        pass
    else:
        raise AssertionError("an unknown batch was found")
    print("anthropic SDK batch check: ok")


def main():
    addr = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:8090"
    check_openai(addr)
    check_anthropic(addr)


if __name__ == "__main__":
    main()
