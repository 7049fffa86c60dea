#!/usr/bin/env python3
"""Front door figures (issue 15). Needs httpx (in the openai SDK's venv).

  bench_frontdoor.py chat URL KEY N CONCURRENCY [PID ...]
      N chat completions at a fixed concurrency against URL (…/v1); prints p50/p99
      latency, throughput and, per PID given, the CPU seconds it used per request.
  bench_frontdoor.py batch URL KEY LINES
      upload a batch file of LINES requests, create a batch, wait for it to end; prints
      the file's size and the time to each step.
"""
import asyncio
import io
import json
import os
import sys
import time

try:
    import httpx
except ImportError:  # the openai SDK's newer releases ship it as httpx2
    import httpx2 as httpx

TICK = os.sysconf("SC_CLK_TCK")


def cpu(pid):
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / TICK


def body(i):
    return {"model": "gpt-4o-mini", "max_tokens": 16,
            "messages": [{"role": "user", "content": f"Say something short about {i}"}]}


async def chat(url, key, n, conc, pids):
    lat = []
    limits = httpx.Limits(max_connections=conc, max_keepalive_connections=conc)
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"},
                                 limits=limits, timeout=60) as c:
        for i in range(min(50, n)):  # warm up
            (await c.post("/chat/completions", json=body(-i))).raise_for_status()
        before = {p: cpu(p) for p in pids}
        queue = iter(range(n))

        async def one():
            for i in queue:
                t = time.perf_counter()
                r = await c.post("/chat/completions", json=body(i))
                lat.append(time.perf_counter() - t)
                assert r.status_code == 200, r.text

        t0 = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(conc)))
        wall = time.perf_counter() - t0
        after = {p: cpu(p) for p in pids}
    lat.sort()
    q = lambda x: lat[min(len(lat) - 1, int(x * len(lat)))] * 1000
    print(json.dumps({"url": url, "requests": n, "concurrency": conc, "wall_s": round(wall, 2),
                      "per_s": round(n / wall, 1), "p50_ms": round(q(0.50), 2), "p99_ms": round(q(0.99), 2),
                      "cpu_ms_per_request": {str(p): round((after[p] - before[p]) * 1000 / n, 3) for p in pids}}))


def batch(url, key, lines):
    h = {"Authorization": f"Bearer {key}"}
    text = "\n".join(json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
                                 "body": body(i)}) for i in range(lines)).encode()
    with httpx.Client(base_url=url, headers=h, timeout=600) as c:
        t0 = time.perf_counter()
        f = c.post("/files", files={"file": ("in.jsonl", io.BytesIO(text))}, data={"purpose": "batch"})
        f.raise_for_status()
        t1 = time.perf_counter()
        b = c.post("/batches", json={"input_file_id": f.json()["id"], "endpoint": "/v1/chat/completions",
                                     "completion_window": "24h"})
        b.raise_for_status()
        b = b.json()
        t2 = time.perf_counter()
        while b["status"] not in ("completed", "failed", "cancelled", "expired"):
            time.sleep(0.5)
            b = c.get(f"/batches/{b['id']}").json()
        t3 = time.perf_counter()
        out = c.get(f"/files/{b['output_file_id']}/content").content
        t4 = time.perf_counter()
    print(json.dumps({"lines": lines, "input_bytes": len(text), "status": b["status"],
                      "counts": b["request_counts"], "output_bytes": len(out),
                      "upload_s": round(t1 - t0, 2), "create_s": round(t2 - t1, 2),
                      "run_s": round(t3 - t2, 2), "download_s": round(t4 - t3, 2),
                      "total_s": round(t4 - t0, 2)}))


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "chat":
        asyncio.run(chat(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), [int(p) for p in sys.argv[6:]]))
    else:
        batch(sys.argv[2], sys.argv[3], int(sys.argv[4]))
