#!/usr/bin/env python3
"""Drive the provider simulator's OpenAI Batch API with the official `openai` SDK.

Usage: batch_sdk_check.py BASE_URL   (e.g. http://127.0.0.1:8090/v1; a `switchyard
simulate` must be listening there, with `batch_complete_ms` 0 and no batch faults).

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


def main():
    base = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8090/v1"
    client = openai.OpenAI(base_url=base, api_key="sk-sdk-check", max_retries=0)
    model = "gpt-4o-mini-2024-07-18"

    f = client.files.create(file=("in.jsonl", io.BytesIO(lines(model, 3))), purpose="batch")
    assert f.purpose == "batch" and f.bytes > 0, f
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                              completion_window="24h", metadata={"switchyard_batch": "sdk-check"})
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
    assert any(x.id == b.id and (x.metadata or {}).get("switchyard_batch") == "sdk-check" for x in listed.data)

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


if __name__ == "__main__":
    main()
