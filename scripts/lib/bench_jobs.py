#!/usr/bin/env python3
"""Generate N small, realistic, valid switchyard jobs as JSONL (deterministic).

    scripts/lib/bench_jobs.py N OUT.jsonl [--tag TAG] [--tenants acme,globex]

Ticket triage, short extraction and classification chunks for two tenants, ids
unique per run (`<tag>-<n>`), models from config/demo.toml (auto, tiers, names,
aliases), max_tokens 16..96 so answers stay small.
"""

import argparse
import json
import random

SUBJECTS = [
    "Invoice {inv} was charged twice",
    "Cannot log in after password reset",
    "Export to CSV times out for large reports",
    "Please add {n} seats to our plan",
    "Webhook deliveries failing with 502 since this morning",
    "Wrong VAT rate on invoice {inv}",
    "How do I rotate our API key?",
    "Dashboard shows stale data for project {n}",
]
BODIES = [
    "Hello, since yesterday {what}. We have {n} users affected in our {city} office. "
    "Could you look into it? Account {acct}.",
    "Hi team, {what}. This blocks our month-end closing. Thanks, {name}.",
    "Good morning, {what}; nothing changed on our side. Ref {acct}.",
]
WHATS = [
    "the admin page returns an error",
    "our nightly sync stopped",
    "invoices show the wrong currency",
    "the mobile app crashes on start",
    "search results are empty",
]
CITIES = ["Milan", "Berlin", "Austin", "Lyon", "Osaka"]
NAMES = ["Oliver", "Mia", "Ken", "Ana", "Priya", "Tom"]
LABELS = ["billing", "auth", "bug", "feature-request", "account"]

MODELS = ["auto", "fast", "cheap", "gpt-4o-mini", "gpt-4.1-nano", "llama"]


def job(rng, tag, i, tenants):
    tenant = tenants[i % len(tenants)]
    subj = rng.choice(SUBJECTS).format(inv="INV-%d" % rng.randrange(10000, 99999), n=rng.randrange(2, 60))
    body = rng.choice(BODIES).format(
        what=rng.choice(WHATS),
        n=rng.randrange(2, 200),
        city=rng.choice(CITIES),
        acct=rng.randrange(100000, 999999),
        name=rng.choice(NAMES),
    )
    kind = i % 3
    if kind == 0:
        feature, task = "ticket-triage", "classification"
        system = "Classify the ticket into one of: %s. Answer with the label only." % ", ".join(LABELS)
        max_tokens = 16
    elif kind == 1:
        feature, task = "contract-extraction", "extraction"
        system = "Extract the account number, the invoice number and the city as JSON."
        max_tokens = 64
    else:
        feature, task = "support-reply", "generation"
        system = "Write a short, friendly reply to the customer."
        max_tokens = 96
    j = {
        "id": "%s-%06d" % (tag, i),
        "tenant": tenant,
        "feature": feature,
        "user": "u-%d" % rng.randrange(1, 50),
        "task": task,
        "model": rng.choice(MODELS),
        "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": "Subject: %s\n\n%s" % (subj, body)},
        ],
        "max_tokens": max_tokens,
        "temperature": 0.2,
        "metadata": {"seq": i},
    }
    if kind == 1:
        j["response_format"] = {"type": "json_object"}
    return j


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("n", type=int)
    ap.add_argument("out")
    ap.add_argument("--tag", default="bench")
    ap.add_argument("--tenants", default="acme,globex")
    args = ap.parse_args()
    rng = random.Random(4711)
    tenants = [t for t in args.tenants.split(",") if t]
    with open(args.out, "w") as f:
        for i in range(args.n):
            f.write(json.dumps(job(rng, args.tag, i, tenants), separators=(",", ":")))
            f.write("\n")


if __name__ == "__main__":
    main()
