"""Jobs for scripts/chaos.sh: a realistic valid workload and hostile (poison) jobs.

Every valid job carries its key in the text of its last user message,
``job <tenant>/<id>: ...``, which the simulator keeps (the first 80 characters) in its
request log, so that the checker can attribute every provider request to a job.
"""

import json
import random
import re

# Tenants of the valid workload; CAPPED has a small `fail` budget in every scenario.
TENANTS = ["acme", "globex", "initech"]
CAPPED = "capped"
MODELS = ["fast"] * 5 + ["cheap"] * 2 + ["auto"] * 2 + ["openai/gpt-4o-mini"]
TAG_RE = re.compile(r"^job ([a-z0-9][a-z0-9_-]{0,63})/([A-Za-z0-9][A-Za-z0-9_:-]{0,127}):")

WORDS = (
    "contract party clause invoice payment term renewal notice liability warranty "
    "delivery schedule amendment signature appendix section obligation"
).split()


def valid_job(tenant, job_id, rnd):
    """One valid job (a dict) of a document-ingestion style workload."""
    body = " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(20, 60)))
    job = {
        "id": job_id,
        "tenant": tenant,
        "feature": rnd.choice(["extract", "summarise", "classify"]),
        "user": "u-%d" % rnd.randint(1, 50),
        "model": rnd.choice(MODELS),
        "messages": [
            {"role": "system", "content": "You are a terse assistant."},
            {"role": "user", "content": "job %s/%s: summarise this chunk. %s" % (tenant, job_id, body)},
        ],
        "max_tokens": rnd.choice([32, 64, 128]),
        "temperature": 0.2,
        "metadata": {"chunk": job_id},
    }
    if rnd.random() < 0.2:
        job["reply_to"] = "_INBOX.chaos.%s" % job_id.replace(":", "_")
    return job


def workload(name, n, seed=1, capped_share=0.05):
    """n valid jobs as (tenant, id, job dict), tenants round-robin, ~5% on CAPPED."""
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        tenant = CAPPED if rnd.random() < capped_share else TENANTS[i % len(TENANTS)]
        job_id = "%s-%05d" % (name, i)
        out.append((tenant, job_id, valid_job(tenant, job_id, rnd)))
    return out


def _j(obj):
    return json.dumps(obj, separators=(",", ":")).encode()


def poison(prefix, name, max_payload_bytes):
    """Hostile jobs. Each is a dict: kind (what is hostile), subject, payload (bytes),
    expect (set of acceptable error kinds), file_tenant, file_id (None: filed under
    `_seq<N>`, N being the stream sequence from the publish ack)."""
    base_tenant = "acme"
    rnd = random.Random(7)
    out = []

    def add(kind, payload, expect, file_id="same", tenant=base_tenant, subject=None, file_tenant=None):
        jid = "%s-p%02d" % (name, len(out))
        if callable(payload):
            payload = payload(jid)
        out.append(
            {
                "kind": kind,
                "subject": subject or "%s.jobs.normal.%s" % (prefix, tenant),
                "payload": payload,
                "expect": set(expect),
                "file_tenant": file_tenant or tenant,
                "file_id": jid if file_id == "same" else file_id,
            }
        )

    def job(jid, **over):
        j = valid_job(base_tenant, jid, rnd)
        j.pop("reply_to", None)
        for k, v in over.items():
            if v is DEL:
                j.pop(k, None)
            else:
                j[k] = v
        return j

    M, I = {"malformed_job"}, {"invalid_job"}
    # --- not one JSON object: malformed_job, filed under _seq<N> -------------------
    add("bad UTF-8", lambda jid: b'{"id":"' + jid.encode() + b'","x":"\xff\xfe"}', M, None)
    add("Latin-1 text", lambda jid: ('{"id":"%s","tenant":"acme","messages":[{"role":"user","content":"caf\xe9"}]}' % jid).encode("latin-1"), M, None)
    add("not JSON", b"hello, worker", M, None)
    add("empty payload", b"", M, None)
    add("truncated JSON", lambda jid: _j(job(jid))[:-7], M, None)
    add("trailing bytes", lambda jid: _j(job(jid)) + b" {}", M, None)
    add("JSON array", lambda jid: b"[" + _j(job(jid)) + b"]", M, None)
    add("JSON scalar", b"42", M, None)
    add("JSON null", b"null", M, None)
    add("duplicate keys", lambda jid: _j(job(jid))[:-1] + b',"id":"' + jid.encode() + b'x"}', M, None)
    add("raw NUL byte in a string", lambda jid: _j(job(jid)).replace(b"summarise", b"summa\x00rise", 1), M, None)
    add("raw control char in a string", lambda jid: _j(job(jid)).replace(b"summarise", b"summa\x01rise", 1), M, None)
    add("deep nesting (10000 levels)", lambda jid: _j(job(jid))[:-1] + b',"metadata":' + b'{"a":' * 10000 + b"1" + b"}" * 10000 + b"}", M | I, None)
    add("UTF-8 BOM", lambda jid: b"\xef\xbb\xbf" + _j(job(jid)), M, None)
    # --- objects that break the schema or the contract: invalid_job ----------------
    add("huge payload (over limits.max_payload_bytes)", lambda jid: _j(job(jid, metadata={"blob": "x" * (max_payload_bytes + 1000)})), I)
    add("escaped NUL (U+0000) in content", lambda jid: _j(job(jid)).replace(b"summarise", b"summa\\u0000rise", 1), I)
    add("escaped NUL in metadata key", lambda jid: _j(job(jid, metadata={"a\u0000b": 1})), I)
    add("tenant differs from subject", lambda jid: _j(dict(job(jid), tenant="globex")), I)
    add("tenant missing", lambda jid: _j(job(jid, tenant=DEL)), I)
    add("subject tenant invalid", lambda jid: _j(job(jid)), I, subject="%s.jobs.normal.Not_A_Tenant" % prefix, file_tenant="_unknown")
    add("subject with extra token", lambda jid: _j(job(jid)), I, subject="%s.jobs.normal.acme.extra" % prefix)
    add("reply_to wildcard", lambda jid: _j(job(jid, reply_to="_INBOX.*")), I)
    add("reply_to full wildcard", lambda jid: _j(job(jid, reply_to="_INBOX.>")), I)
    add("reply_to JetStream API", lambda jid: _j(job(jid, reply_to="$JS.API.STREAM.DELETE.%s_JOBS" % prefix.upper())), I)
    add("reply_to empty token", lambda jid: _j(job(jid, reply_to="_INBOX..x")), I)
    add("reply_to own prefix", lambda jid: _j(job(jid, reply_to="%s.results.acme.%s" % (prefix, jid))), I)
    add("reply_to over 256 bytes", lambda jid: _j(job(jid, reply_to="_INBOX." + "a" * 300)), I)
    add("reply_to with space", lambda jid: _j(job(jid, reply_to="_INBOX.a b")), I)
    add("reply_to not a string", lambda jid: _j(job(jid, reply_to=12)), I)
    add("unknown top-level field", lambda jid: _j(job(jid, max_tokenz=5)), I)
    add("max_tokens 0", lambda jid: _j(job(jid, max_tokens=0)), I)
    add("max_tokens above the cap", lambda jid: _j(job(jid, max_tokens=10**6)), I)
    add("max_tokens 1e400", lambda jid: _j(job(jid))[:-1] + b',"max_tokens":1e400}', M | I, None)
    add("max_tokens negative", lambda jid: _j(job(jid, max_tokens=-1)), I)
    add("max_tokens fractional", lambda jid: _j(job(jid, max_tokens=1.5)), I)
    add("temperature out of range", lambda jid: _j(job(jid, temperature=3)), I)
    add("temperature wrong type", lambda jid: _j(job(jid, temperature="hot")), I)
    add("messages empty", lambda jid: _j(job(jid, messages=[])), I)
    add("messages missing", lambda jid: _j(job(jid, messages=DEL)), I)
    add("messages not an array", lambda jid: _j(job(jid, messages="hi")), I)
    add("unknown role", lambda jid: _j(job(jid, messages=[{"role": "bot", "content": "x"}])), I)
    add("unknown content part", lambda jid: _j(job(jid, messages=[{"role": "user", "content": [{"type": "video", "url": "x"}]}])), I)
    add("too many messages", lambda jid: _j(job(jid, messages=[{"role": "user", "content": "x"}] * 1001)), I)
    add("stop with 5 strings", lambda jid: _j(job(jid, stop=["a", "b", "c", "d", "e"])), I)
    add("max_cost_usd 0", lambda jid: _j(job(jid, max_cost_usd=0)), I)
    add("max_cost_usd negative", lambda jid: _j(job(jid, max_cost_usd=-1)), I)
    add("deadline not RFC 3339", lambda jid: _j(job(jid, deadline="tomorrow")), I)
    add("bad response_format", lambda jid: _j(job(jid, response_format={"type": "xml"})), I)
    add("bad task", lambda jid: _j(job(jid, task="poetry")), I)
    add("bad cache mode", lambda jid: _j(job(jid, cache="always")), I)
    add("providers.allow unconfigured", lambda jid: _j(job(jid, providers={"allow": ["nosuchprovider"]})), I)
    add("metadata ok but id invalid", lambda jid: _j(job("bad id!")), I, None)
    add("id missing", lambda jid: _j(job(jid, id=DEL)), I, None)
    add("id reserved (_x)", lambda jid: _j(job("_reserved")), I, None)
    add("id too long", lambda jid: _j(job("x" * 129)), I, None)
    add("id wrong type", lambda jid: _j(job(jid, id=123)), I, None)
    # --- valid shape, refused by routing / time: no provider call ------------------
    add("unknown pinned model", lambda jid: _j(job(jid, model="openai/no-such-model")), {"unknown_model"})
    add("unknown model name", lambda jid: _j(job(jid, model="no-such-model")), {"unknown_model", "invalid_job"})
    add("deadline in the past", lambda jid: _j(job(jid, deadline="2020-01-01T00:00:00Z")), {"expired"})
    add("max_cost_usd too small", lambda jid: _j(job(jid, max_cost_usd=1e-12)), {"cost_cap_exceeded"})
    add("unknown region", lambda jid: _j(job(jid, region="mars")), {"no_route", "invalid_job"})
    return out


class _Del:
    pass


DEL = _Del()
