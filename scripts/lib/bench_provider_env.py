#!/usr/bin/env python3
"""Point every provider of a switchyard config at one simulator.

    scripts/lib/bench_provider_env.py CONFIG.toml SIM_URL [KEY]

Prints NAME=VALUE lines (one per line, nothing else) for scripts/demo.sh and
scripts/bench.sh to export:
    SWITCHYARD_PROVIDERS__<NAME>__BASE_URL=<SIM_URL><suffix>
        suffix by kind: openai, openai_compatible -> /v1; anthropic -> (none);
        gemini -> /v1beta (the simulator serves all of them on one port)
    <api_key_env>=<KEY>     (default sk-sim-demo; the simulator wants OpenAI keys
                             to start with sk-, and any non-empty key otherwise)
Works with whatever providers the file lists, so the scripts do not break when
providers are added or removed.  Uses tomllib (Python 3.11+) when present, else
a small reader that understands the [[providers]] tables of config/*.toml.
"""

import re
import sys

SUFFIX = {"openai": "/v1", "openai_compatible": "/v1", "anthropic": "", "gemini": "/v1beta"}


def providers(path):
    with open(path, "rb") as f:
        raw = f.read()
    try:
        import tomllib  # Python 3.11+

        return tomllib.loads(raw.decode()).get("providers", [])
    except ImportError:
        pass
    out, cur = [], None
    for line in raw.decode().splitlines():
        s = re.sub(r'\s*#[^"]*$', "", line).strip()
        if not s:
            continue
        if s.startswith("["):
            cur = {} if s == "[[providers]]" else None
            if cur is not None:
                out.append(cur)
            continue
        m = re.match(r'^([A-Za-z0-9_]+)\s*=\s*"([^"]*)"', s)
        if cur is not None and m:
            cur[m.group(1)] = m.group(2)
    return out


def main(argv):
    if len(argv) not in (2, 3):
        print(__doc__, file=sys.stderr)
        return 2
    path, sim = argv[0], argv[1].rstrip("/")
    key = argv[2] if len(argv) == 3 else "sk-sim-demo"
    seen_keys = set()
    for p in providers(path):
        name, kind = p.get("name"), p.get("kind")
        if not name or kind not in SUFFIX:
            print("bench_provider_env: skipping provider %r (kind %r)" % (name, kind), file=sys.stderr)
            continue
        var = re.sub(r"[^A-Za-z0-9]", "_", name).upper()
        print("SWITCHYARD_PROVIDERS__%s__BASE_URL=%s%s" % (var, sim, SUFFIX[kind]))
        env = p.get("api_key_env")
        if env and env not in seen_keys:
            seen_keys.add(env)
            print("%s=%s" % (env, key))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
