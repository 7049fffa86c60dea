#!/usr/bin/env python3
"""Drive `switchyard serve` (the OpenAI-compatible front door) with the official
`openai` Python SDK, as a team with existing OpenAI code would.

Usage: sdk_frontdoor_check.py BASE_URL API_KEY   (BASE_URL e.g. http://127.0.0.1:8080/v1;
a `switchyard serve` with API_KEY among its keys, and workers against the simulator,
must be running).

Checks, through the SDK's own request building and response parsing: chat with a system
prompt; streaming (deltas, finish reason, the usage chunk); a tools round trip (the
model calls a tool, the tool's answer goes back, the model answers); JSON mode; errors
(bad key -> AuthenticationError 401, unknown model -> NotFoundError 404, a malformed
request -> BadRequestError 400, a parameter switchyard cannot honour -> 400); models.list;
and a whole batch (files.create -> batches.create -> poll -> files.content of the
output and error files). Exits non-zero on the first failure.
"""
import io
import json
import sys
import time

import openai


def expect(exc, fn, what):
    try:
        fn()
    except exc as e:
        print(f"ok  {what}: {type(e).__name__} {getattr(e, 'status_code', '')}: {e.message if hasattr(e, 'message') else e}")
        return e
    raise AssertionError(f"{what}: expected {exc.__name__}, the call succeeded")


def main():
    base, key = sys.argv[1], sys.argv[2]
    client = openai.OpenAI(base_url=base, api_key=key, max_retries=0, timeout=60)

    # Chat with a system prompt.
    r = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say hello"}],
        max_tokens=40,
    )
    assert r.id.startswith("chatcmpl-"), r.id
    assert r.object == "chat.completion"
    assert isinstance(r.choices[0].message.content, str) and r.choices[0].message.content, r
    assert r.choices[0].finish_reason in ("stop", "length"), r.choices[0].finish_reason
    assert r.usage.prompt_tokens > 0 and r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.model == "gpt-4o-mini", r.model
    print(f"ok  chat: {r.choices[0].message.content[:40]!r} ({r.usage.total_tokens} tokens)")

    # Streaming, with the usage chunk.
    text, finish, usage, n = "", None, None, 0
    with client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Tell me a long story about ships"}],
        max_tokens=200, stream=True, stream_options={"include_usage": True},
    ) as stream:
        for chunk in stream:
            n += 1
            assert chunk.object == "chat.completion.chunk"
            if chunk.usage is not None:
                usage = chunk.usage
            for c in chunk.choices:
                text += c.delta.content or ""
                finish = c.finish_reason or finish
    assert text and finish in ("stop", "length"), (text, finish)
    assert usage is not None and usage.completion_tokens > 0, usage
    assert n >= 4, f"only {n} chunks"
    print(f"ok  stream: {n} chunks, {len(text)} chars, finish {finish}, {usage.total_tokens} tokens")

    # Tools round trip.
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
              "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
    msgs = [{"role": "user", "content": "Use get_weather for Paris"}]
    r = client.chat.completions.create(model="gpt-4o-mini", messages=msgs, tools=tools)
    call = r.choices[0].message.tool_calls[0]
    assert r.choices[0].finish_reason == "tool_calls" and call.function.name == "get_weather", r
    args = json.loads(call.function.arguments)
    assert "city" in args, args
    msgs.append(r.choices[0].message.model_dump(exclude_none=True))
    msgs.append({"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temp_c": 21})})
    r2 = client.chat.completions.create(model="gpt-4o-mini", messages=msgs, tools=tools)
    assert r2.choices[0].message.content, r2
    print(f"ok  tools: {call.function.name}({call.function.arguments}) then {r2.choices[0].message.content[:30]!r}")

    # JSON mode.
    r = client.chat.completions.create(
        model="gpt-4o-mini", response_format={"type": "json_object"},
        messages=[{"role": "user", "content": "Give me a JSON object describing a cat"}],
    )
    obj = json.loads(r.choices[0].message.content)
    assert isinstance(obj, dict), obj
    print(f"ok  json mode: {list(obj)[:4]}")

    # Errors.
    bad = openai.OpenAI(base_url=base, api_key="sk-wrong", max_retries=0)
    e = expect(openai.AuthenticationError, lambda: bad.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]), "bad key")
    assert "sk-wrong" not in str(e)
    expect(openai.NotFoundError, lambda: client.chat.completions.create(
        model="no-such-model", messages=[{"role": "user", "content": "hi"}]), "unknown model")
    e = expect(openai.BadRequestError, lambda: client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "wizard", "content": "hi"}]), "malformed request")
    assert "role" in e.message, e.message
    expect(openai.BadRequestError, lambda: client.chat.completions.create(
        model="gpt-4o-mini", n=3, messages=[{"role": "user", "content": "hi"}]), "n=3")

    ids = [m.id for m in client.models.list()]
    assert "gpt-4o-mini" in ids and "auto" in ids, ids
    print(f"ok  models: {len(ids)}")

    # A whole batch.
    lines = [json.dumps({"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
                         "body": {"model": "gpt-4o-mini", "max_tokens": 30,
                                  "messages": [{"role": "user", "content": f"Say something about {i}"}]}})
             for i in range(20)]
    lines.append(json.dumps({"custom_id": "bad-1", "method": "POST", "url": "/v1/embeddings", "body": {}}))
    f = client.files.create(file=("in.jsonl", io.BytesIO("\n".join(lines).encode())), purpose="batch")
    assert f.purpose == "batch" and f.bytes > 0, f
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h",
                              metadata={"run": "sdk-check"})
    assert b.request_counts.total == 21, b.request_counts
    deadline = time.time() + 90
    while b.status not in ("completed", "failed", "expired", "cancelled"):
        assert time.time() < deadline, f"batch still {b.status}: {b.request_counts}"
        time.sleep(0.5)
        b = client.batches.retrieve(b.id)
    assert b.status == "completed", b
    assert b.request_counts.completed == 20 and b.request_counts.failed == 1, b.request_counts
    out = [json.loads(l) for l in client.files.content(b.output_file_id).text.splitlines()]
    assert sorted(o["custom_id"] for o in out) == sorted(f"req-{i}" for i in range(20)), out[:2]
    for o in out:
        assert o["response"]["status_code"] == 200 and o["error"] is None, o
        assert o["response"]["body"]["choices"][0]["message"]["content"], o
    errs = [json.loads(l) for l in client.files.content(b.error_file_id).text.splitlines()]
    assert [e["custom_id"] for e in errs] == ["bad-1"] and errs[0]["error"]["code"] == "invalid_url", errs
    assert any(x.id == b.id for x in client.batches.list(limit=10).data)
    print(f"ok  batch: {b.request_counts.completed} answered, {b.request_counts.failed} refused, status {b.status}")

    # Cancelling a finished batch changes nothing.
    c = client.batches.cancel(b.id)
    assert c.status == "completed", c.status
    print("all passed")


if __name__ == "__main__":
    main()
