#!/usr/bin/env python3
"""Drive the provider simulator's Gemini Batch Mode with the official `google-genai` SDK.

Usage: gemini_batch_sdk_check.py ADDR   (e.g. 127.0.0.1:8090; a simulator must be
listening there with `batch_complete_ms` 0 and no batch faults).

Checks, through the SDK's own request building and response parsing: batches.create with
inline requests (dicts, with a per-request config), batches.get until the job succeeds,
the inlined responses read as GenerateContentResponse objects (text and usage), the
request metadata echoed back, batches.list, batches.cancel of a new job, batches.delete;
and that the simulator refuses what the real API refuses (a request naming an unknown
field, an input file it does not hold). Exits non-zero on the first failure; prints
"gemini SDK batch check: ok" at the end. Needs no internet: only the simulator.
"""
import sys
import time

from google import genai
from google.genai import errors
from google.genai import types

MODEL = "gemini-2.0-flash"


def wait(client, name, want, secs=10):
    deadline = time.time() + secs
    while time.time() < deadline:
        job = client.batches.get(name=name)
        if job.state.name in want:
            return job
        time.sleep(0.1)
    raise AssertionError(f"batch {name} never reached {want}")


def expect_error(fn, code):
    try:
        fn()
    except errors.APIError as e:
        assert e.code == code, f"expected {code}, got {e.code}: {e}"
        return str(e)
    raise AssertionError(f"expected HTTP {code}, the call succeeded")


def main(addr):
    client = genai.Client(
        api_key="sim-key",
        http_options=types.HttpOptions(base_url=f"http://{addr}", api_version="v1beta"),
    )
    requests = [
        {"contents": [{"parts": [{"text": f"Tell me about {i}"}], "role": "user"}],
         "config": {"max_output_tokens": 64, "temperature": 0.2},
         "metadata": {"key": f"req-{i}"}}
        for i in range(3)
    ]
    job = client.batches.create(model=MODEL, src=requests, config={"display_name": "sdk-check"})
    assert job.name.startswith("batches/"), job
    assert job.display_name == "sdk-check", job
    assert job.state.name == "JOB_STATE_PENDING", job.state
    job = wait(client, job.name, {"JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED"})
    assert job.state.name == "JOB_STATE_SUCCEEDED", job
    got = job.dest.inlined_responses
    assert len(got) == 3, got
    for i, r in enumerate(got):
        assert r.error is None, r
        assert r.metadata == {"key": f"req-{i}"}, r.metadata
        assert r.response.text, r.response
        assert r.response.usage_metadata.prompt_token_count > 0, r.response.usage_metadata

    listed = list(client.batches.list(config={"page_size": 10}))
    assert any(b.name == job.name and b.display_name == "sdk-check" for b in listed), listed

    # Cancelled before it runs: it ends cancelled, with no responses.
    other = client.batches.create(model=MODEL, src=requests[:1], config={"display_name": "to-cancel"})
    client.batches.cancel(name=other.name)
    other = client.batches.get(name=other.name)
    assert other.state.name == "JOB_STATE_CANCELLED", other.state
    client.batches.delete(name=other.name)
    expect_error(lambda: client.batches.get(name=other.name), 404)

    # Refusals: an unknown field in a request (sent raw: the SDK would not build it), and
    # an input file the simulator does not hold.
    bad = expect_error(
        lambda: client._api_client.request(
            "post", f"models/{MODEL}:batchGenerateContent",
            {"batch": {"displayName": "bad", "inputConfig": {"requests": {"requests": [
                {"request": {"contents": [{"parts": [{"text": "x"}]}], "bogus": 1}}]}}}},
            None),
        400)
    assert "Unknown name" in bad, bad
    expect_error(lambda: client.batches.create(model=MODEL, src="files/none", config={"display_name": "f"}), 400)
    print("gemini SDK batch check: ok")


if __name__ == "__main__":
    main(sys.argv[1])
