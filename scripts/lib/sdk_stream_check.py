#!/usr/bin/env python3
"""Drive a running provider simulator's streaming endpoints with the official SDKs.

    python3 sdk_stream_check.py http://127.0.0.1:8090

Needs the packages `openai`, `anthropic` and `google-genai` (e.g. a venv made with
`python3 -m venv /tmp/venv && /tmp/venv/bin/pip install openai anthropic google-genai`);
makes no call outside the given base URL. For each SDK's streaming call:

1. a streamed answer is read to its end, its text equals the plain (non-streamed) answer
   to the same request, and the usage arrives (OpenAI's last chunk with
   `stream_options.include_usage`, Anthropic's `message_delta`, Gemini's usageMetadata);
2. with `stream_fail_first: 1` (the simulator's mid-stream error: the provider's own
   in-stream error event) the SDK raises its API error after some text arrived;
3. with `stream_fault: "cut"` the SDK sees the body end early (an exception, or a
   stream that ends without its end).

Prints one line per check and exits 1 if any failed. tests/stream.rs runs it when
SWITCHYARD_SDK_PYTHON names a Python that has the three packages.
"""

import json
import sys
import urllib.request

import anthropic
import openai
from google import genai
from google.genai import types as gtypes

BASE = sys.argv[1].rstrip("/") if len(sys.argv) > 1 else "http://127.0.0.1:8090"
PROMPT = "Write a few sentences about rivers and the sea."
failures = []


def set_profile(profile):
    req = urllib.request.Request(
        BASE + "/_sim/profile",
        data=json.dumps(profile).encode(),
        headers={"content-type": "application/json"},
        method="POST",
    )
    urllib.request.urlopen(req).read()


def check(name, ok, detail=""):
    print(("ok   " if ok else "FAIL ") + name + (": " + detail if detail else ""))
    if not ok:
        failures.append(name)


oa = openai.OpenAI(base_url=BASE + "/v1", api_key="sk-sim", max_retries=0)
# As the SDK sends them: the key as `Authorization: Bearer`, its own anthropic-version.
an = anthropic.Anthropic(base_url=BASE, api_key="sk-ant-sim", max_retries=0)
gm = genai.Client(
    api_key="sim-key",
    http_options=gtypes.HttpOptions(base_url=BASE, api_version="v1beta"),
)
OA_ARGS = dict(model="gpt-4o-mini", messages=[{"role": "user", "content": PROMPT}], max_tokens=200)
AN_ARGS = dict(model="claude-3-5-haiku-20241022", max_tokens=200,
               messages=[{"role": "user", "content": PROMPT}])
GM_ARGS = dict(model="gemini-2.0-flash", contents=PROMPT,
               config=gtypes.GenerateContentConfig(max_output_tokens=200))


def openai_stream():
    text, usage, n = "", None, 0
    for chunk in oa.chat.completions.create(
        stream=True, stream_options={"include_usage": True}, **OA_ARGS
    ):
        n += 1
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
        if chunk.usage:
            usage = chunk.usage
    return text, usage, n


def anthropic_stream():
    with an.messages.stream(**AN_ARGS) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    return text, final.usage, final


def anthropic_raw_stream():
    text, n = "", 0
    for ev in an.messages.create(stream=True, **AN_ARGS):
        n += 1
        if ev.type == "content_block_delta" and ev.delta.type == "text_delta":
            text += ev.delta.text
    return text, n


def gemini_stream():
    text, usage, n = "", None, 0
    for chunk in gm.models.generate_content_stream(**GM_ARGS):
        n += 1
        text += chunk.text or ""
        usage = chunk.usage_metadata
    return text, usage, n


# 1. Whole streams equal the plain answers.
set_profile({})
plain = oa.chat.completions.create(**OA_ARGS)
full = {"openai": plain.choices[0].message.content}
text, usage, n = openai_stream()
check("openai stream=True: text equals the plain answer", text == plain.choices[0].message.content,
      f"{n} chunks")
check("openai include_usage: usage in the last chunk",
      usage is not None and usage.completion_tokens == plain.usage.completion_tokens)

plain = an.messages.create(**AN_ARGS)
full["anthropic"] = plain.content[0].text
text, usage, final = anthropic_stream()
check("anthropic messages.stream: text equals the plain answer", text == plain.content[0].text)
check("anthropic messages.stream: usage and stop_reason",
      usage.output_tokens == plain.usage.output_tokens and final.stop_reason == plain.stop_reason)
text, n = anthropic_raw_stream()
check("anthropic create(stream=True): text equals the plain answer",
      text == plain.content[0].text, f"{n} events")

plain = gm.models.generate_content(**GM_ARGS)
full["gemini"] = plain.text
text, usage, n = gemini_stream()
check("gemini generate_content_stream: text equals the plain answer", text == plain.text,
      f"{n} chunks")
check("gemini generate_content_stream: usageMetadata",
      usage is not None and usage.candidates_token_count == plain.usage_metadata.candidates_token_count)

# 2. The provider's own mid-stream error event: the SDK raises its API error.
for name, run, error in [
    ("openai", openai_stream, openai.APIError),
    ("anthropic", anthropic_stream, anthropic.APIError),
    ("gemini", gemini_stream, genai.errors.APIError),
]:
    set_profile({"stream_fail_first": 1})
    try:
        run()
        check(f"{name}: mid-stream error event raises", False, "no exception")
    except error as e:
        check(f"{name}: mid-stream error event raises", True, f"{type(e).__name__}: {str(e)[:80]}")

# 3. The body cut mid-way: an exception, or (an SDK that takes the end of the body as the
# end of the stream) less text than the whole answer.
for name, run in [("openai", openai_stream), ("anthropic", anthropic_stream),
                  ("gemini", gemini_stream)]:
    set_profile({"stream_fail_first": 1, "stream_fault": "cut"})
    try:
        out = run()
        check(f"{name}: a cut stream is not a whole answer", out[0] != full[name],
              f"no exception; {len(out[0])} of {len(full[name])} characters")
    except Exception as e:  # noqa: BLE001 - any transport error is the expected outcome
        check(f"{name}: a cut stream is not a whole answer", True, type(e).__name__)

set_profile({})
print(f"{len(failures)} failed" if failures else "all passed")
sys.exit(1 if failures else 0)
