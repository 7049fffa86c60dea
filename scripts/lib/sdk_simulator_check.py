#!/usr/bin/env python3
"""Drive a running provider simulator with one official SDK, in ordinary use.

    python3 sdk_simulator_check.py openai|anthropic|gemini http://127.0.0.1:8090 [KEY]

Needs the package of the chosen provider (`openai`, `anthropic` or `google-genai`, e.g. in
a venv made with `python3 -m venv /tmp/venv && /tmp/venv/bin/pip install openai anthropic
google-genai`); makes no call outside the given base URL. For the chosen SDK it checks, as
an application would use it against the real API:

- chat: a plain answer with text and usage;
- system prompt: the provider's own way of sending one;
- JSON output: each way the SDK asks for structured output today (OpenAI
  `response_format` json_object and json_schema; Anthropic `output_config.format`
  json_schema, and a forced tool; Gemini `response_mime_type` + `response_schema`),
  and the answer parses as JSON of that shape;
- tool round trip: the assistant turn sent back EXACTLY as the SDK returned it (OpenAI
  `messages.append(resp.choices[0].message)`, the pydantic object with its `refusal`,
  `annotations` … fields; Anthropic `resp.content` as the assistant content; Gemini
  `resp.candidates[0].content`), then the tool's answer, and a final text answer;
- truncation: a small max tokens ends with `length` / `max_tokens` / `MAX_TOKENS`;
- missing key: the SDK's authentication / permission error (401, Gemini 403);
- unknown model: 404, the SDK's NotFound error;
- malformed body: 400, the SDK's BadRequest error (a parameter the API does not know,
  sent through the SDK's `extra_body`);
- rate-limit headers on a success, read through `with_raw_response` (OpenAI
  `x-ratelimit-*`, Anthropic `anthropic-ratelimit-*`).

Prints one line per check, then a JSON summary (`{"provider", "sdk_version", "passed",
"failed": [names]}`), and exits 1 naming the failing checks. tests/sdk_simulator.rs runs
it for each provider when SWITCHYARD_SDK_PYTHON names a Python that has the packages.
"""

import json
import sys

PROVIDER = sys.argv[1] if len(sys.argv) > 1 else ""
BASE = sys.argv[2].rstrip("/") if len(sys.argv) > 2 else "http://127.0.0.1:8090"
KEY = sys.argv[3] if len(sys.argv) > 3 else None
passed, failed = [], []

WEATHER_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
    "additionalProperties": False,
}
PERSON_SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


def check(name, ok, detail=""):
    print(("ok   " if ok else "FAIL ") + name + (": " + str(detail) if detail else ""))
    (passed if ok else failed).append(name)


def run(name, fn):
    """Run one case; an exception is that case's failure, named."""
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - any error is this case's failure, reported
        check(name, False, f"{type(e).__name__}: {str(e)[:300]}")


def expect_error(name, call, error_type, status):
    try:
        call()
        check(name, False, "no error raised")
    except error_type as e:
        got = getattr(e, "status_code", None) or getattr(e, "code", None)
        check(name, got == status, f"{type(e).__name__} {got}: {str(e)[:120]}")


def is_person(obj):
    return isinstance(obj, dict) and isinstance(obj.get("name"), str) and isinstance(
        obj.get("age"), int)


# --- OpenAI: chat.completions ---------------------------------------------------------


def openai_checks():
    import openai

    key = KEY or "sk-sim"
    oa = openai.OpenAI(base_url=BASE + "/v1", api_key=key, max_retries=0)
    model = "gpt-4o-mini"

    def chat():
        r = oa.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Say hello."}])
        m = r.choices[0].message
        check("chat", bool(m.content) and r.usage.completion_tokens > 0
              and r.choices[0].finish_reason == "stop", m.content[:40])

    def system():
        r = oa.chat.completions.create(model=model, messages=[
            {"role": "system", "content": "You are terse."},
            {"role": "developer", "content": "Answer in English."},
            {"role": "user", "content": "Say hello."}])
        check("system prompt", bool(r.choices[0].message.content))

    def json_object():
        r = oa.chat.completions.create(model=model, response_format={"type": "json_object"},
                                       messages=[{"role": "user", "content": "A person as JSON."}])
        check("json_object", isinstance(json.loads(r.choices[0].message.content), dict))

    def json_schema():
        r = oa.chat.completions.create(model=model, messages=[
            {"role": "user", "content": "A person."}], response_format={
            "type": "json_schema",
            "json_schema": {"name": "person", "strict": True, "schema": PERSON_SCHEMA}})
        check("json_schema", is_person(json.loads(r.choices[0].message.content)))

    def json_parse():
        # The SDK's own structured-output helper: a pydantic model as response_format.
        import pydantic

        class Person(pydantic.BaseModel):
            name: str
            age: int

        r = oa.chat.completions.parse(model=model, response_format=Person,
                                      messages=[{"role": "user", "content": "A person."}])
        check("parse (pydantic response_format)", isinstance(r.choices[0].message.parsed, Person))

    def tools():
        tool = {"type": "function", "function": {
            "name": "get_weather", "description": "Weather in a city",
            "parameters": WEATHER_SCHEMA, "strict": True}}
        messages = [{"role": "user", "content": "What is the weather in Paris? Use get_weather."}]
        r = oa.chat.completions.create(model=model, messages=messages, tools=[tool],
                                       tool_choice="required")
        msg = r.choices[0].message
        calls = msg.tool_calls or []
        check("tool call", r.choices[0].finish_reason == "tool_calls" and len(calls) >= 1,
              calls[0].function.arguments if calls else "no tool call")
        messages.append(msg)  # the pydantic message exactly as the SDK returned it
        for c in calls:
            args = json.loads(c.function.arguments)
            messages.append({"role": "tool", "tool_call_id": c.id,
                             "content": json.dumps({"city": args.get("city"), "sky": "clear"})})
        r2 = oa.chat.completions.create(model=model, messages=messages, tools=[tool])
        check("tool round trip (assistant message as returned)",
              r2.choices[0].finish_reason == "stop" and bool(r2.choices[0].message.content))

    def truncation():
        r = oa.chat.completions.create(model=model, max_completion_tokens=3, messages=[
            {"role": "user", "content": "Write a long story about rivers."}])
        check("truncation", r.choices[0].finish_reason == "length"
              and r.usage.completion_tokens <= 3, r.choices[0].finish_reason)

    def missing_key():
        c = openai.OpenAI(base_url=BASE + "/v1", api_key=key, max_retries=0)
        expect_error("missing key", lambda: c.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}],
            extra_headers={"Authorization": openai.Omit()}), openai.AuthenticationError, 401)

    def unknown_model():
        expect_error("unknown model", lambda: oa.chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "hi"}]),
            openai.NotFoundError, 404)

    def malformed():
        expect_error("malformed body", lambda: oa.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}],
            extra_body={"temperature": "hot"}), openai.BadRequestError, 400)
        expect_error("unknown parameter", lambda: oa.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}],
            extra_body={"no_such_parameter": 1}), openai.BadRequestError, 400)

    def rate_headers():
        raw = oa.chat.completions.with_raw_response.create(
            model=model, messages=[{"role": "user", "content": "hi"}])
        h = raw.headers
        names = ["x-ratelimit-limit-requests", "x-ratelimit-remaining-requests",
                 "x-ratelimit-reset-requests", "x-ratelimit-limit-tokens",
                 "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens"]
        missing = [n for n in names if n not in h]
        check("rate-limit headers", not missing and raw.parse().choices[0].message.content,
              missing or {n: h[n] for n in names[:3]})

    return openai.__version__, [
        ("chat", chat), ("system prompt", system), ("json_object", json_object),
        ("json_schema", json_schema), ("parse", json_parse), ("tools", tools),
        ("truncation", truncation), ("missing key", missing_key),
        ("unknown model", unknown_model), ("malformed body", malformed),
        ("rate-limit headers", rate_headers)]


# --- Anthropic: messages ----------------------------------------------------------------


def anthropic_checks():
    import anthropic

    key = KEY or "sk-ant-sim"
    an = anthropic.Anthropic(base_url=BASE, api_key=key, max_retries=0)
    model = "claude-3-5-haiku-20241022"

    def text_of(r):
        return "".join(b.text for b in r.content if b.type == "text")

    def chat():
        r = an.messages.create(model=model, max_tokens=200,
                               messages=[{"role": "user", "content": "Say hello."}])
        check("chat", bool(text_of(r)) and r.stop_reason == "end_turn"
              and r.usage.output_tokens > 0, text_of(r)[:40])

    def system():
        r = an.messages.create(model=model, max_tokens=200, system="You are terse.",
                               messages=[{"role": "user", "content": "Say hello."}])
        r2 = an.messages.create(model=model, max_tokens=200,
                                system=[{"type": "text", "text": "You are terse.",
                                         "cache_control": {"type": "ephemeral"}}],
                                messages=[{"role": "user", "content": "Say hello."}])
        check("system prompt", bool(text_of(r)) and bool(text_of(r2)))

    def json_output():
        # Structured outputs: output_config.format (what messages.parse sends too).
        r = an.messages.create(model=model, max_tokens=300, messages=[
            {"role": "user", "content": "A person."}],
            output_config={"format": {"type": "json_schema", "schema": PERSON_SCHEMA}})
        check("output_config json_schema", is_person(json.loads(text_of(r))), text_of(r)[:60])

    def json_parse():
        import pydantic

        class Person(pydantic.BaseModel):
            name: str
            age: int

        r = an.messages.parse(model=model, max_tokens=300, output_format=Person,
                              messages=[{"role": "user", "content": "A person."}])
        check("parse (pydantic output_format)", isinstance(r.parsed_output, Person))

    def json_tool():
        # The older way: a tool forced with tool_choice, its input is the JSON.
        r = an.messages.create(model=model, max_tokens=300, messages=[
            {"role": "user", "content": "A person."}],
            tools=[{"name": "record_person", "input_schema": PERSON_SCHEMA}],
            tool_choice={"type": "tool", "name": "record_person"})
        uses = [b for b in r.content if b.type == "tool_use"]
        check("forced tool JSON", r.stop_reason == "tool_use" and uses
              and is_person(uses[0].input))

    def tools():
        tool = {"name": "get_weather", "description": "Weather in a city",
                "input_schema": WEATHER_SCHEMA}
        messages = [{"role": "user", "content": "What is the weather in Paris? Use get_weather."}]
        r = an.messages.create(model=model, max_tokens=300, messages=messages, tools=[tool],
                               tool_choice={"type": "any"})
        uses = [b for b in r.content if b.type == "tool_use"]
        check("tool call", r.stop_reason == "tool_use" and bool(uses),
              uses[0].input if uses else "no tool_use")
        messages.append({"role": "assistant", "content": r.content})  # blocks as returned
        messages.append({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": u.id,
             "content": json.dumps({"city": u.input.get("city"), "sky": "clear"})}
            for u in uses]})
        r2 = an.messages.create(model=model, max_tokens=300, messages=messages, tools=[tool])
        check("tool round trip (content blocks as returned)",
              r2.stop_reason == "end_turn" and bool(text_of(r2)))

    def truncation():
        r = an.messages.create(model=model, max_tokens=3, messages=[
            {"role": "user", "content": "Write a long story about rivers."}])
        check("truncation", r.stop_reason == "max_tokens" and r.usage.output_tokens <= 3,
              r.stop_reason)

    def missing_key():
        c = anthropic.Anthropic(base_url=BASE, api_key=key, max_retries=0)
        expect_error("missing key", lambda: c.messages.create(
            model=model, max_tokens=10, messages=[{"role": "user", "content": "hi"}],
            extra_headers={"Authorization": anthropic.Omit(), "X-Api-Key": anthropic.Omit()}),
            anthropic.AuthenticationError, 401)

    def unknown_model():
        expect_error("unknown model", lambda: an.messages.create(
            model="no-such-model", max_tokens=10, messages=[{"role": "user", "content": "hi"}]),
            anthropic.NotFoundError, 404)

    def malformed():
        expect_error("malformed body", lambda: an.messages.create(
            model=model, max_tokens=10, messages=[{"role": "user", "content": "hi"}],
            extra_body={"temperature": "hot"}), anthropic.BadRequestError, 400)
        expect_error("unknown parameter", lambda: an.messages.create(
            model=model, max_tokens=10, messages=[{"role": "user", "content": "hi"}],
            extra_body={"no_such_parameter": 1}), anthropic.BadRequestError, 400)

    def rate_headers():
        raw = an.messages.with_raw_response.create(
            model=model, max_tokens=50, messages=[{"role": "user", "content": "hi"}])
        h = raw.headers
        names = [f"anthropic-ratelimit-{k}-{f}" for k in ("requests", "tokens")
                 for f in ("limit", "remaining", "reset")]
        missing = [n for n in names if n not in h]
        check("rate-limit headers", not missing and bool(text_of(raw.parse())),
              missing or {n: h[n] for n in names[:3]})

    return anthropic.__version__, [
        ("chat", chat), ("system prompt", system), ("output_config json_schema", json_output),
        ("parse", json_parse), ("forced tool JSON", json_tool), ("tools", tools),
        ("truncation", truncation), ("missing key", missing_key),
        ("unknown model", unknown_model), ("malformed body", malformed),
        ("rate-limit headers", rate_headers)]


# --- Gemini: google-genai models.generate_content ----------------------------------------


def gemini_checks():
    from google import genai
    from google.genai import errors as gerrors
    from google.genai import types as gt

    key = KEY or "sim-key"
    opts = gt.HttpOptions(base_url=BASE, api_version="v1beta")
    gm = genai.Client(api_key=key, http_options=opts)
    model = "gemini-2.0-flash"

    def chat():
        r = gm.models.generate_content(model=model, contents="Say hello.")
        check("chat", bool(r.text) and r.candidates[0].finish_reason == gt.FinishReason.STOP
              and r.usage_metadata.candidates_token_count > 0, r.text[:40])

    def system():
        r = gm.models.generate_content(model=model, contents="Say hello.",
                                       config=gt.GenerateContentConfig(
                                           system_instruction="You are terse.", temperature=0.2))
        check("system prompt", bool(r.text))

    def json_output():
        r = gm.models.generate_content(model=model, contents="A person.",
                                       config=gt.GenerateContentConfig(
                                           response_mime_type="application/json",
                                           response_schema={
                                               "type": "OBJECT",
                                               "properties": {"name": {"type": "STRING"},
                                                              "age": {"type": "INTEGER"}},
                                               "required": ["name", "age"]}))
        check("response_schema", is_person(json.loads(r.text)), r.text[:60])

    def json_pydantic():
        import pydantic

        class Person(pydantic.BaseModel):
            name: str
            age: int

        r = gm.models.generate_content(model=model, contents="A person.",
                                       config=gt.GenerateContentConfig(
                                           response_mime_type="application/json",
                                           response_schema=Person))
        check("response_schema (pydantic)", isinstance(r.parsed, Person), r.text[:60])

    def json_json_schema():
        r = gm.models.generate_content(model=model, contents="A person.",
                                       config=gt.GenerateContentConfig(
                                           response_mime_type="application/json",
                                           response_json_schema=PERSON_SCHEMA))
        check("response_json_schema", is_person(json.loads(r.text)), r.text[:60])

    def tools():
        fd = gt.FunctionDeclaration(
            name="get_weather", description="Weather in a city",
            parameters=gt.Schema(type="OBJECT", properties={"city": gt.Schema(type="STRING")},
                                 required=["city"]))
        cfg = gt.GenerateContentConfig(
            tools=[gt.Tool(function_declarations=[fd])],
            tool_config=gt.ToolConfig(function_calling_config=gt.FunctionCallingConfig(
                mode="ANY")),
            automatic_function_calling=gt.AutomaticFunctionCallingConfig(disable=True))
        contents = [gt.Content(role="user", parts=[gt.Part(
            text="What is the weather in Paris? Use get_weather.")])]
        r = gm.models.generate_content(model=model, contents=contents, config=cfg)
        calls = r.function_calls or []
        check("tool call", bool(calls), calls[0].args if calls else "no functionCall")
        contents.append(r.candidates[0].content)  # the model's turn as returned
        contents.append(gt.Content(role="user", parts=[
            gt.Part.from_function_response(name=c.name, response={
                "city": (c.args or {}).get("city"), "sky": "clear"}) for c in calls]))
        cfg2 = gt.GenerateContentConfig(tools=cfg.tools,
                                        automatic_function_calling=cfg.automatic_function_calling)
        r2 = gm.models.generate_content(model=model, contents=contents, config=cfg2)
        check("tool round trip (content as returned)", bool(r2.text) and not r2.function_calls)

    def truncation():
        r = gm.models.generate_content(model=model, contents="Write a long story about rivers.",
                                       config=gt.GenerateContentConfig(max_output_tokens=3))
        fr = r.candidates[0].finish_reason
        check("truncation", fr == gt.FinishReason.MAX_TOKENS
              and r.usage_metadata.candidates_token_count <= 3, fr)

    def missing_key():
        # The SDK refuses to run without a key, so the request without one is made by
        # hand (Google: 403 PERMISSION_DENIED); a key that is not valid goes through the
        # SDK (Google: 400 INVALID_ARGUMENT, reason API_KEY_INVALID).
        import urllib.error
        import urllib.request

        req = urllib.request.Request(
            f"{BASE}/v1beta/models/{model}:generateContent", method="POST",
            headers={"content-type": "application/json"},
            data=json.dumps({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}).encode())
        try:
            urllib.request.urlopen(req).read()
            check("missing key", False, "no error")
        except urllib.error.HTTPError as e:
            status = json.loads(e.read()).get("error", {}).get("status")
            check("missing key", e.code == 403 and status == "PERMISSION_DENIED",
                  f"{e.code} {status}")
        c = genai.Client(api_key=key, http_options=gt.HttpOptions(
            base_url=BASE, api_version="v1beta", headers={"x-goog-api-key": ""}))
        expect_error("invalid key", lambda: c.models.generate_content(
            model=model, contents="hi"), gerrors.ClientError, 400)

    def unknown_model():
        expect_error("unknown model", lambda: gm.models.generate_content(
            model="no-such-model", contents="hi"), gerrors.ClientError, 404)

    def malformed():
        expect_error("malformed body", lambda: gm.models.generate_content(
            model=model, contents="hi", config=gt.GenerateContentConfig(
                http_options=gt.HttpOptions(extra_body={"generationConfig": {
                    "temperature": "hot"}}))), gerrors.ClientError, 400)
        expect_error("unknown parameter", lambda: gm.models.generate_content(
            model=model, contents="hi", config=gt.GenerateContentConfig(
                http_options=gt.HttpOptions(extra_body={"noSuchParameter": 1}))),
            gerrors.ClientError, 400)

    def usage_headers():
        # Gemini sends no rate-limit headers on a success (its quota is per project, told
        # in a 429's RetryInfo); the check is that the answer's headers reach the SDK.
        r = gm.models.generate_content(model=model, contents="hi")
        h = r.sdk_http_response.headers if r.sdk_http_response else {}
        check("response headers", "content-type" in {k.lower() for k in h}, dict(h))

    return genai.__version__, [
        ("chat", chat), ("system prompt", system), ("response_schema", json_output),
        ("response_schema (pydantic)", json_pydantic),
        ("response_json_schema", json_json_schema), ("tools", tools),
        ("truncation", truncation), ("missing key", missing_key),
        ("unknown model", unknown_model), ("malformed body", malformed),
        ("response headers", usage_headers)]


def main():
    suites = {"openai": openai_checks, "anthropic": anthropic_checks, "gemini": gemini_checks}
    if PROVIDER not in suites:
        print(f"usage: {sys.argv[0]} openai|anthropic|gemini BASE_URL [KEY]", file=sys.stderr)
        return 2
    version, cases = suites[PROVIDER]()
    for name, fn in cases:
        run(name, fn)
    print(json.dumps({"provider": PROVIDER, "sdk_version": version, "passed": len(passed),
                      "failed": failed}))
    if failed:
        print(f"{len(failed)} failed: {', '.join(failed)}")
        return 1
    print("all passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
