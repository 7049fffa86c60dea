"""Drive the simulator's OpenAI embeddings endpoint with the official `openai` Python SDK.

Usage: python sdk_embeddings.py http://127.0.0.1:PORT

Needs the `openai` package (a venv: `python3 -m venv V && V/bin/pip install openai`).
Checks that the SDK's default request (base64 encoding) and float requests, `dimensions`,
batched and token inputs are answered in a shape the SDK accepts, and that invalid
requests raise the SDK's own errors. Ends with `N passed, M failed`; exit 1 on a failure.
"""

import base64
import math
import struct
import sys

import openai
from openai import OpenAI

base = sys.argv[1].rstrip("/") + "/v1"
client = OpenAI(base_url=base, api_key="sk-sdk-check", max_retries=0)
results = []


def check(name, fn):
    try:
        fn()
        results.append((name, None))
    except Exception as e:  # noqa: BLE001 - report every failure
        results.append((name, f"{type(e).__name__}: {e}"))


def norm(v):
    return math.sqrt(sum(x * x for x in v))


def default_is_base64_decoded():
    r = client.embeddings.create(model="text-embedding-3-small", input="The quick brown fox")
    v = r.data[0].embedding
    assert isinstance(v, list) and len(v) == 1536, len(v)
    assert abs(norm(v) - 1.0) < 1e-3, norm(v)
    assert r.usage.prompt_tokens > 0 and r.usage.total_tokens == r.usage.prompt_tokens
    assert r.model == "text-embedding-3-small" and r.object == "list"
    assert r.data[0].object == "embedding" and r.data[0].index == 0


def float_and_dimensions():
    f = client.embeddings.create(
        model="text-embedding-3-small", input="The quick brown fox",
        encoding_format="float", dimensions=256,
    ).data[0].embedding
    b = client.embeddings.create(
        model="text-embedding-3-small", input="The quick brown fox",
        encoding_format="base64", dimensions=256,
    ).data[0].embedding
    # Asked for explicitly, base64 is handed back as the string the API sent: little-endian
    # float32s.
    assert isinstance(b, str), type(b)
    raw = base64.b64decode(b)
    b = list(struct.unpack(f"<{len(raw) // 4}f", raw))
    assert len(f) == 256 and len(b) == 256, (len(f), len(b))
    assert max(abs(x - y) for x, y in zip(f, b)) < 1e-6


def batch_and_tokens():
    r = client.embeddings.create(model="text-embedding-3-large", input=["a cat", "a dog", "tax law"])
    assert [d.index for d in r.data] == [0, 1, 2]
    assert all(len(d.embedding) == 3072 for d in r.data)
    t = client.embeddings.create(model="text-embedding-3-small", input=[[1, 2, 3], [4, 5]])
    assert len(t.data) == 2 and t.usage.prompt_tokens == 5


def raises(cls, **kw):
    try:
        client.embeddings.create(**kw)
    except cls:
        return
    raise AssertionError(f"no {cls.__name__} for {kw}")


def errors():
    raises(openai.BadRequestError, model="text-embedding-3-small", input="")
    raises(openai.BadRequestError, model="text-embedding-ada-002", input="x", dimensions=8)
    raises(openai.BadRequestError, model="text-embedding-3-small", input="x", dimensions=5000)
    bad = OpenAI(base_url=base, api_key="not-a-key", max_retries=0)
    try:
        bad.embeddings.create(model="text-embedding-3-small", input="x")
        raise AssertionError("no AuthenticationError")
    except openai.AuthenticationError:
        pass


check("default (base64) is decoded by the SDK", default_is_base64_decoded)
check("float and base64 agree, with dimensions", float_and_dimensions)
check("batched strings and token arrays", batch_and_tokens)
check("invalid requests raise the SDK's errors", errors)
failed = [r for r in results if r[1]]
for name, err in results:
    print(("ok   " if err is None else "FAIL ") + name + ("" if err is None else ": " + err))
print(f"{len(results) - len(failed)} passed, {len(failed)} failed")
sys.exit(1 if failed else 0)
