"""Checks of deploy/ that no off-the-shelf validator makes; run by scripts/check_deploy.sh.

The schema validators (Compose Specification, Kubernetes, promtool, nats-server -t)
check each file's shape. This checks what ties the files to each other and to switchyard:
services, volumes and files a compose file names exist; the dashboard's and the alert
rules' metrics and labels are those the worker exports (deploy/check/metrics.txt);
Grafana data sources resolve; the KEDA ScaledObject matches KEDA's ScaledObject schema
(as shipped by the cloudcoil-models-keda package, unknown fields refused) and points at
the Deployment and at switchyard's consumers; the Kubernetes objects refer to each other
correctly. Some subcommands also write files for the real tools: the dashboard's PromQL
as a rules file for `promtool check rules`, its SQL for `psql`, the worker's config and
environment for `switchyard migrate`.

Every problem is one line naming the file and the place; exit 1 when there is any.
"""

import json
import re
import sys
import tomllib
from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parent.parent
ROOT = DEPLOY.parent
PROBLEMS = []


def problem(where, message):
    PROBLEMS.append(f"{where}: {message}")


def rel(path):
    return str(Path(path).resolve().relative_to(ROOT))


def load_yaml_docs(path):
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


# --- metrics --------------------------------------------------------------------------

def load_metrics():
    metrics = {}
    for line in (DEPLOY / "check" / "metrics.txt").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, kind, labels = line.split()
        metrics[name] = (kind, set() if labels == "-" else set(labels.split(",")))
    return metrics


METRIC_RE = re.compile(r"\b(switchyard_[a-z0-9_]+)\b(\s*\{([^}]*)\})?")
MATCHER_RE = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)")
GROUPING_RE = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
ALWAYS = {"instance", "job"}


def check_promql(where, expr, metrics, legend=None):
    """Metric names, their suffixes and the labels an expression (and legend) uses."""
    used_labels = set(ALWAYS)
    found = False
    for m in METRIC_RE.finditer(expr):
        found = True
        name, matchers = m.group(1), m.group(3) or ""
        base, suffix = name, ""
        for s in ("_bucket", "_sum", "_count"):
            if name.endswith(s) and name[: -len(s)] in metrics:
                base, suffix = name[: -len(s)], s
        if base not in metrics:
            problem(where, f"unknown metric {name} (not in deploy/check/metrics.txt)")
            continue
        kind, labels = metrics[base]
        if kind == "histogram" and not suffix:
            problem(where, f"{name} is a histogram: use {name}_bucket, _sum or _count")
        if suffix and kind != "histogram":
            problem(where, f"{name}: {base} is a {kind}, not a histogram")
        allowed = labels | ALWAYS | ({"le"} if suffix == "_bucket" else set())
        for lm in MATCHER_RE.finditer(matchers):
            if lm.group(1) not in allowed:
                problem(where, f"{base} has no label {lm.group(1)!r} (labels: {sorted(labels)})")
        used_labels |= allowed
    if not found:
        problem(where, "the query uses no switchyard metric")
    for g in GROUPING_RE.finditer(expr):
        for label in filter(None, (x.strip() for x in g.group(1).split(","))):
            if label not in used_labels:
                problem(where, f"groups by {label!r}, a label none of its metrics has")
    for label in re.findall(r"\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}", legend or ""):
        if label not in used_labels:
            problem(where, f"legend names {{{{{label}}}}}, a label none of its metrics has")


def src_metrics(strict="0"):
    """The metrics of metrics.txt that src/ does not name (as a string literal). Until the
    worker exports the whole list this is a note; with strict=1 it fails."""
    text = "\n".join(p.read_text(errors="replace") for p in (ROOT / "src").rglob("*.rs"))
    missing = [m for m in load_metrics() if f'"{m}' not in text]
    if missing and strict == "1":
        problem("deploy/check/metrics.txt", f"not exported by src/: {', '.join(missing)}")
    elif missing:
        print(f"note: {len(missing)} of the dashboard's metrics are not in src/ yet: {', '.join(missing)}")


def docs_metrics():
    """README's Metrics table lists exactly deploy/check/metrics.txt (names, types,
    labels), and every switchyard_* metric named in README.md, DESIGN.md or deploy/ is
    one of them (a histogram's _bucket, _sum and _count included), nor is any name shaped
    like a metric (…_seconds, …_total) without the prefix: one list, no old names left
    behind."""
    metrics = load_metrics()
    readme = (ROOT / "README.md").read_text()
    m = re.search(r"^### Metrics\n(.*?)^#", readme, re.M | re.S)
    if not m:
        problem("README.md", "no section \"### Metrics\"")
        return
    table = {}
    for row in re.finditer(r"^\| `(switchyard_[a-z0-9_]+)(?:\{([a-z_,]*)\})?` \| ([a-z]+)", m.group(1), re.M):
        name, labels, kind = row.group(1), set(filter(None, (row.group(2) or "").split(","))), row.group(3)
        table[name] = (kind, labels)
        if name not in metrics:
            problem("README.md ### Metrics", f"{name} is not in deploy/check/metrics.txt")
        elif metrics[name] != (kind, labels):
            problem("README.md ### Metrics", f"{name}: {kind} {{{','.join(sorted(labels))}}}, metrics.txt says {metrics[name][0]} {{{','.join(sorted(metrics[name][1]))}}}")
    for name in metrics.keys() - table.keys():
        problem("README.md ### Metrics", f"{name} (deploy/check/metrics.txt) is missing from the table")
    files = [ROOT / "README.md", ROOT / "DESIGN.md"] + [
        f for f in sorted(DEPLOY.rglob("*")) if f.is_file() and f.suffix not in (".py",) and f.name != "metrics.txt"
    ]
    for f in files:
        for n, line in enumerate(f.read_text(errors="replace").splitlines(), 1):
            for name in re.findall(r"\b(switchyard_[a-z0-9_]+)", line):
                stem = re.sub(r"_(bucket|sum|count)$", "", name)
                if name not in metrics and metrics.get(stem, ("",))[0] != "histogram":
                    problem(f"{rel(f)}:{n}", f"{name} is not a metric of deploy/check/metrics.txt (an old name?)")
            # a metric-shaped name without the prefix (provider_call_seconds_total …)
            for name in re.findall(r"\b(?!switchyard_)([a-z][a-z0-9_]*_(?:seconds|total|bucket))\b", line):
                problem(f"{rel(f)}:{n}", f"{name} looks like a metric but is not one of deploy/check/metrics.txt (switchyard_…; an old name?)")


# --- Grafana --------------------------------------------------------------------------

GRAFANA_VARS = {
    "$__rate_interval": "5m",
    "$__interval": "1m",
    "$__range": "6h",
}


def substitute_promql(expr, variables):
    for k, v in GRAFANA_VARS.items():
        expr = expr.replace(k, v)
    for name in variables:
        expr = re.sub(r"\$\{" + name + r"(:[a-z]+)?\}", ".*", expr)
        expr = re.sub(r"\$" + name + r"\b", ".*", expr)
    return expr


def substitute_sql(sql, variables):
    sql = re.sub(
        r"\$__timeGroupAlias\(\s*([a-z_]+)\s*,[^)]*\)", r"date_trunc('minute', \1) AS time", sql
    )
    sql = re.sub(
        r"\$__timeFilter\(\s*([a-z_]+)\s*\)", r"\1 BETWEEN now() - interval '6 hours' AND now()", sql
    )
    for name in variables:
        sql = re.sub(r"\$\{" + name + r"(:[a-z]+)?\}", ".*", sql)
        sql = re.sub(r"\$" + name + r"\b", ".*", sql)
    return sql


def grafana(promql_out, sql_out):
    metrics = load_metrics()
    ds_file = DEPLOY / "grafana/provisioning/datasources/datasources.yaml"
    sources = {}
    for d in load_yaml_docs(ds_file)[0].get("datasources", []):
        if "uid" not in d or "type" not in d:
            problem(rel(ds_file), f"data source {d.get('name')!r} needs a uid and a type")
            continue
        sources[d["uid"]] = d
    compose = load_yaml_docs(DEPLOY / "compose.yaml")[0]
    check_grafana_provisioning(compose, sources)

    recording = []
    sql = []
    for path in sorted((DEPLOY / "grafana/dashboards").glob("*.json")):
        where = rel(path)
        try:
            dash = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            problem(where, f"not JSON: {e}")
            continue
        for key, kind in (("uid", str), ("title", str), ("schemaVersion", int), ("panels", list)):
            if not isinstance(dash.get(key), kind):
                problem(where, f"{key} missing or not a {kind.__name__}")
        variables = {v.get("name") for v in dash.get("templating", {}).get("list", [])}
        for v in dash.get("templating", {}).get("list", []):
            resolve_datasource(f"{where} variable {v.get('name')}", v.get("datasource"), sources)
            if v.get("type") == "query":
                q = v.get("query")
                q = q.get("query") if isinstance(q, dict) else q
                check_promql(f"{where} variable {v.get('name')}", q or "", metrics)
        panels = list(iter_panels(dash.get("panels", [])))
        ids = [p.get("id") for p in panels]
        for dup in sorted({i for i in ids if ids.count(i) > 1}, key=str):
            problem(where, f"panel id {dup} used twice")
        check_layout(where, panels)
        for p in panels:
            pw = f"{where} panel {p.get('id')} {p.get('title')!r}"
            if p.get("type") == "row":
                continue
            if not p.get("title"):
                problem(pw, "no title")
            targets = p.get("targets") or []
            if not targets:
                problem(pw, "no queries")
            panel_ds = resolve_datasource(pw, p.get("datasource"), sources)
            refs = [t.get("refId") for t in targets]
            if len(set(refs)) != len(refs) or None in refs:
                problem(pw, f"refIds must be present and distinct: {refs}")
            for t in targets:
                tw = f"{pw} query {t.get('refId')}"
                ds = resolve_datasource(tw, t.get("datasource"), sources) or panel_ds
                if ds is None:
                    continue
                if ds["type"] == "prometheus":
                    expr = t.get("expr")
                    if not expr:
                        problem(tw, "a Prometheus query without expr")
                        continue
                    check_variables(tw, expr, variables)
                    check_promql(tw, expr, metrics, t.get("legendFormat"))
                    recording.append(
                        {
                            "record": f"dashboard:{dash.get('uid', 'x')}_panel{p.get('id')}_{t.get('refId')}".replace("-", "_"),
                            "expr": substitute_promql(expr, variables),
                        }
                    )
                elif "postgres" in ds["type"]:
                    raw = t.get("rawSql")
                    if not raw:
                        problem(tw, "a Postgres query without rawSql")
                        continue
                    check_variables(tw, raw, variables)
                    text = substitute_sql(raw, variables)
                    if "$" in text:
                        problem(tw, f"a Grafana macro this check does not know: {text[text.index('$'):][:40]}")
                        continue
                    sql.append(f"-- {tw}\nEXPLAIN {text.strip().rstrip(';')};\n")
                else:
                    problem(tw, f"data source type {ds['type']} is not checked here")
    Path(promql_out).write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": recording}]}, sort_keys=False))
    Path(sql_out).write_text("\\set ON_ERROR_STOP on\n" + "".join(sql))


def iter_panels(panels):
    for p in panels:
        yield p
        yield from iter_panels(p.get("panels") or [])


def check_layout(where, panels):
    boxes = []
    for p in panels:
        g = p.get("gridPos") or {}
        if not all(isinstance(g.get(k), int) for k in ("x", "y", "w", "h")):
            problem(f"{where} panel {p.get('id')}", "gridPos needs integer x, y, w, h")
            continue
        if g["x"] < 0 or g["w"] < 1 or g["x"] + g["w"] > 24:
            problem(f"{where} panel {p.get('id')}", f"gridPos outside the 24 columns: {g}")
        for other_id, o in boxes:
            if g["x"] < o["x"] + o["w"] and o["x"] < g["x"] + g["w"] and g["y"] < o["y"] + o["h"] and o["y"] < g["y"] + g["h"]:
                problem(f"{where} panel {p.get('id')}", f"overlaps panel {other_id}")
        boxes.append((p.get("id"), g))


def check_variables(where, text, variables):
    for name in re.findall(r"\$\{?([a-zA-Z_][a-zA-Z0-9_]*)", text):
        if not name.startswith("__") and name not in variables:
            problem(where, f"uses ${name}, which the dashboard does not define")


def resolve_datasource(where, ref, sources):
    if ref is None:
        return None
    if isinstance(ref, str):
        problem(where, f"data source {ref!r} by name: refer to it by {{type, uid}}")
        return None
    uid = ref.get("uid")
    if uid not in sources:
        problem(where, f"data source uid {uid!r} is not provisioned (have {sorted(sources)})")
        return None
    if ref.get("type") != sources[uid]["type"]:
        problem(where, f"data source {uid!r} is of type {sources[uid]['type']}, not {ref.get('type')}")
    return sources[uid]


def check_grafana_provisioning(compose, sources):
    prov = DEPLOY / "grafana/provisioning/dashboards/dashboards.yaml"
    grafana_svc = compose.get("services", {}).get("grafana", {})
    mounts = {}
    for v in grafana_svc.get("volumes", []):
        src, _, rest = v.partition(":")
        mounts[rest.split(":")[0]] = src
    for p in load_yaml_docs(prov)[0].get("providers", []):
        path = (p.get("options") or {}).get("path")
        if mounts.get(path) != "./grafana/dashboards":
            problem(rel(prov), f"dashboards path {path!r} is not where compose.yaml mounts ./grafana/dashboards")
    env = grafana_svc.get("environment", {})
    pg = compose.get("services", {}).get("postgres", {}).get("environment", {})
    for uid, d in sources.items():
        if "postgres" in d["type"]:
            if (d.get("jsonData") or {}).get("database") != pg.get("POSTGRES_DB"):
                problem(rel(prov.parent.parent / "datasources/datasources.yaml"), f"{uid}: database is not compose's POSTGRES_DB")
            if d.get("user") != pg.get("POSTGRES_USER"):
                problem(rel(prov.parent.parent / "datasources/datasources.yaml"), f"{uid}: user is not compose's POSTGRES_USER")
            pw = (d.get("secureJsonData") or {}).get("password", "")
            if pw.startswith("$") and pw[1:] not in env:
                problem(rel(prov.parent.parent / "datasources/datasources.yaml"), f"{uid}: password {pw} is not in grafana's environment")


# --- Prometheus rules -----------------------------------------------------------------

def rules(path):
    metrics = load_metrics()
    for doc in load_yaml_docs(path):
        for g in doc.get("groups", []):
            for r in g.get("rules", []):
                name = r.get("alert") or r.get("record")
                check_promql(f"{rel(path)} {name}", str(r.get("expr", "")), metrics)
                if r.get("alert") and "summary" not in (r.get("annotations") or {}):
                    problem(f"{rel(path)} {name}", "an alert without a summary annotation")


# --- compose --------------------------------------------------------------------------

def compose_interpolate(value):
    """${VAR:-default} / ${VAR-default} to the default, $$ to $ (the variables unset)."""
    if not isinstance(value, str):
        return value
    return re.sub(r"\$\{[A-Z_][A-Z0-9_]*(?::?-([^}]*))?\}", lambda m: m.group(1) or "", value).replace("$$", "$")


def as_env(env):
    if isinstance(env, list):
        return dict(e.split("=", 1) if "=" in e else (e, "") for e in env)
    return dict(env or {})


def duration_s(text):
    m = re.fullmatch(r"(\d+)s", str(text))
    return int(m.group(1)) if m else None


# --- NATS logins and reply_to -----------------------------------------------------------

def nats_users(conf_text):
    """{user: password variable} of a NATS config's users whose password is `$VAR`."""
    return dict(re.findall(r"\buser:\s*([A-Za-z0-9_-]+)\s*,?\s*password:\s*\$([A-Z_][A-Z0-9_]*)", conf_text))


def accounts_tenants():
    """The tenants of deploy/nats/accounts.conf: the users that may subscribe only to
    their own inbox, _INBOX.<tenant>.>."""
    return sorted(set(re.findall(r'"_INBOX\.([a-z0-9][a-z0-9_-]*)\.>"', (DEPLOY / "nats/accounts.conf").read_text())))


def no_anonymous_login(where, conf_text):
    if re.search(r"^\s*no_auth_user\b", conf_text, re.M):
        problem(where, "no_auth_user lets clients in without credentials: the workers log in (nats.user, nats.password_env)")


def as_list(value):
    """A config list as the environment gives it: a TOML array or comma-separated."""
    if isinstance(value, list):
        return value
    text = str(value).strip()
    if text.startswith("["):
        return tomllib.loads(f"v = {text}")["v"]
    return [p.strip() for p in text.split(",") if p.strip()]


def subject_matches(pattern, subject):
    """NATS wildcards: `*` one token, `>` one or more at the end."""
    p, s = pattern.split("."), subject.split(".")
    for i, tok in enumerate(p):
        if tok == ">":
            return len(s) > i
        if i >= len(s) or (tok != "*" and tok != s[i]):
            return False
    return len(p) == len(s)


def check_reply_to(where, default, per_tenant, tenants):
    """Every tenant of accounts.conf has a reply_to list within its own inbox
    (_INBOX.<tenant>.…), and the default list (tenants without one) reaches no tenant's
    inbox: no job can have its result published into another tenant's inbox."""
    for t in tenants:
        allow = per_tenant.get(t)
        if allow is None:
            problem(where, f"reply_to: no list for tenant {t!r} of deploy/nats/accounts.conf (allow = [\"_INBOX.{t}.>\"])")
            continue
        if not allow:
            problem(where, f"reply_to: tenant {t!r} has an empty list; its inbox is _INBOX.{t}.>")
        for pat in allow:
            if pat.split(".")[:2] != ["_INBOX", t] or len(pat.split(".")) < 3:
                problem(where, f"reply_to: tenant {t!r} may name {pat!r}, outside its own inbox _INBOX.{t}.>")
    for pat in default:
        for t in tenants:
            if subject_matches(pat, f"_INBOX.{t}.x"):
                problem(where, f"reply_to.allow {pat!r} (tenants without a list of their own) reaches tenant {t!r}'s inbox")


def compose(env_out):
    path = DEPLOY / "compose.yaml"
    where = rel(path)
    doc = load_yaml_docs(path)[0]
    services = doc.get("services", {})
    volumes = set((doc.get("volumes") or {}).keys())
    for name, svc in services.items():
        sw = f"{where} services.{name}"
        deps = svc.get("depends_on", [])
        for dep in deps if isinstance(deps, list) else deps.keys():
            if dep not in services:
                problem(sw, f"depends on {dep!r}, which is not a service")
        for v in svc.get("volumes", []):
            src = v.split(":")[0] if isinstance(v, str) else v.get("source", "")
            if src.startswith((".", "/")):
                if not (path.parent / src).exists():
                    problem(sw, f"mounts {src}, which does not exist")
            elif src not in volumes:
                problem(sw, f"volume {src!r} is not declared under volumes:")
        for k, v in as_env(svc.get("environment")).items():
            if not isinstance(v, str):
                problem(sw, f"environment {k} must be a string (quote it): {v!r}")
        build = svc.get("build")
        if build:
            ctx = path.parent / build.get("context", ".")
            if not (ctx / build.get("dockerfile", "Dockerfile")).exists():
                problem(sw, f"build: {build} names no Dockerfile")
    # NATS: three nodes, each named in the routes of the config they run
    conf = (DEPLOY / "nats/cluster.conf").read_text()
    routes = set(re.findall(r"nats-route://([A-Za-z0-9_-]+):6222", conf))
    nodes = {n: s for n, s in services.items() if str(s.get("image", "")).startswith("nats:")}
    if len(nodes) != 3:
        problem(where, f"expected a three-node NATS cluster, found {sorted(nodes)}")
    for n, s in nodes.items():
        if as_env(s.get("environment")).get("SERVER_NAME") != n:
            problem(f"{where} services.{n}", "SERVER_NAME must be the service name")
        if n not in routes:
            problem(f"{where} services.{n}", f"not among cluster.conf's routes {sorted(routes)}")
    # workers: several, replicated streams, Prometheus finds them, a drain fits
    worker = services.get("worker", {})
    wenv = {k: compose_interpolate(v) for k, v in as_env(worker.get("environment")).items()}
    # NATS login: the worker's user is one of cluster.conf's, and the password the
    # workers send is the one every server reads
    no_anonymous_login(rel(DEPLOY / "nats/cluster.conf"), conf)
    users = nats_users(conf)
    ww = f"{where} services.worker"
    user, pw_env = wenv.get("SWITCHYARD_NATS__USER"), wenv.get("SWITCHYARD_NATS__PASSWORD_ENV")
    if not users:
        problem(rel(DEPLOY / "nats/cluster.conf"), "no users: clients must log in (authorization { users: [{ user: worker, password: $WORKER_PASSWORD }] })")
    elif not user or not pw_env:
        problem(ww, "the workers must log in: set SWITCHYARD_NATS__USER and SWITCHYARD_NATS__PASSWORD_ENV")
    elif user not in users:
        problem(ww, f"SWITCHYARD_NATS__USER {user!r} is not a user of nats/cluster.conf {sorted(users)}")
    elif not wenv.get(pw_env):
        problem(ww, f"{pw_env} (SWITCHYARD_NATS__PASSWORD_ENV) is not set in the workers' environment")
    else:
        for n, svc in nodes.items():
            served = compose_interpolate(as_env(svc.get("environment")).get(users[user]))
            if served != wenv[pw_env]:
                problem(f"{where} services.{n}", f"{users[user]} (user {user}'s password in cluster.conf) is not the workers' {pw_env}")
    if (worker.get("deploy") or {}).get("replicas", 1) < 2:
        problem(f"{where} services.worker", "run several workers (deploy.replicas)")
    if wenv.get("SWITCHYARD_NATS__REPLICAS") != "3":
        problem(f"{where} services.worker", "SWITCHYARD_NATS__REPLICAS must be 3 on a three-node cluster")
    cfg_path = wenv.get("SWITCHYARD_CONFIG", "")
    local_cfg = ROOT / "config" / Path(cfg_path).name
    if not cfg_path.startswith("/etc/switchyard/") or not local_cfg.exists():
        problem(f"{where} services.worker", f"SWITCHYARD_CONFIG {cfg_path!r} is not a file of config/ (the image copies config/ to /etc/switchyard/)")
    file_cfg = tomllib.loads(local_cfg.read_text()) if local_cfg.exists() else {}
    grace = file_cfg.get("worker", {}).get("shutdown_grace_s", 30)
    # reply_to as the file and the environment make it (an entry of the environment
    # replaces the file's list for that tenant)
    rt = file_cfg.get("reply_to", {})
    per_tenant = {t.get("tenant"): as_list(t.get("allow", [])) for t in rt.get("tenants", [])}
    for k, v in wenv.items():
        if m := re.fullmatch(r"SWITCHYARD_REPLY_TO__TENANTS__([A-Z0-9_-]+)__ALLOW", k):
            per_tenant[m.group(1).lower()] = as_list(v)
    default = as_list(wenv["SWITCHYARD_REPLY_TO__ALLOW"]) if "SWITCHYARD_REPLY_TO__ALLOW" in wenv else rt.get("allow", ["_INBOX.>"])
    check_reply_to(ww, default, per_tenant, accounts_tenants())
    stop = duration_s(worker.get("stop_grace_period", "10s"))
    if stop is None or stop < grace + 5:
        problem(f"{where} services.worker", f"stop_grace_period must be at least worker.shutdown_grace_s + 5 s ({grace + 5}s)")
    port = wenv.get("SWITCHYARD_METRICS__ADDR", "").rpartition(":")[2]
    prom = load_yaml_docs(DEPLOY / "prometheus/prometheus.yml")[0]
    targets = [
        (name, str(sd.get("port")))
        for sc in prom.get("scrape_configs", [])
        for sd in sc.get("dns_sd_configs", [])
        for name in sd.get("names", [])
    ]
    if ("worker", port) not in targets:
        problem(rel(DEPLOY / "prometheus/prometheus.yml"), f"does not scrape service worker on its metrics port {port} (has {targets})")
    # the worker's environment, for `switchyard migrate` with the real config loader
    lines = []
    for k, v in wenv.items():
        if k == "SWITCHYARD_CONFIG":
            v = str(local_cfg)
        lines.append(f"{k}={v}")
    Path(env_out).write_text("\n".join(lines) + "\n")


# --- Kubernetes -----------------------------------------------------------------------

def k8s_objects():
    objs = {}
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for d in load_yaml_docs(path):
            objs[(d.get("kind"), (d.get("metadata") or {}).get("name"))] = (path, d)
    return objs


def by_kind(objs, kind):
    found = [(p, d) for (k, _), (p, d) in objs.items() if k == kind]
    if len(found) != 1:
        problem("deploy/k8s", f"expected one {kind}, found {len(found)}")
        return None, {}
    return found[0]


def keda():
    from cloudcoil.models.keda.v1alpha1 import ScaledObject
    import jsonschema

    schema = ScaledObject.model_json_schema(by_alias=True)

    def strict(node):
        if isinstance(node, dict):
            if "properties" in node and "additionalProperties" not in node:
                node["additionalProperties"] = False
            for v in node.values():
                strict(v)
        elif isinstance(node, list):
            for v in node:
                strict(v)

    strict(schema)
    validator = jsonschema.Draft202012Validator(schema)
    objs = k8s_objects()
    path, so = by_kind(objs, "ScaledObject")
    if not so:
        return
    where = rel(path)
    for err in sorted(validator.iter_errors(so), key=lambda e: list(e.absolute_path)):
        loc = ".".join(str(x) for x in err.absolute_path) or "(top)"
        problem(where, f"{loc}: {err.message[:300]}")
    if so.get("apiVersion") != "keda.sh/v1alpha1" or so.get("kind") != "ScaledObject":
        problem(where, "apiVersion keda.sh/v1alpha1, kind ScaledObject expected")
    spec = so.get("spec") or {}
    dpath, dep = by_kind(objs, "Deployment")
    target = spec.get("scaleTargetRef") or {}
    if dep and (target.get("kind", "Deployment") != "Deployment" or target.get("name") != dep["metadata"]["name"]):
        problem(where, f"scaleTargetRef {target} is not the Deployment {dep['metadata']['name']}")
    consumers = set()
    accounts = set(re.findall(r"^\s*([A-Z][A-Z0-9_]*)\s*\{", (DEPLOY / "nats/accounts.conf").read_text(), re.M))
    for i, t in enumerate(spec.get("triggers") or []):
        tw = f"{where} spec.triggers[{i}]"
        if t.get("type") != "nats-jetstream":
            problem(tw, f"type {t.get('type')!r}: scale on the JetStream consumers (nats-jetstream)")
            continue
        md = t.get("metadata") or {}
        for key in ("natsServerMonitoringEndpoint", "account", "stream", "consumer", "lagThreshold"):
            if key not in md:
                problem(tw, f"metadata.{key} is required by KEDA's nats-jetstream scaler")
        allowed = {"natsServerMonitoringEndpoint", "account", "stream", "consumer", "lagThreshold", "activationLagThreshold", "useHttps"}
        for key in set(md) - allowed:
            problem(tw, f"metadata.{key} is not a setting of KEDA's nats-jetstream scaler")
        for key in ("lagThreshold", "activationLagThreshold"):
            if key in md and not re.fullmatch(r"\d+", str(md[key])):
                problem(tw, f"metadata.{key} must be a whole number as a string, not {md[key]!r}")
        if md.get("stream") != "LLM_JOBS":
            problem(tw, "stream must be LLM_JOBS (prefix llm)")
        if md.get("account") not in accounts | {"$G"}:
            problem(tw, f"account {md.get('account')!r} is neither $G nor an account of deploy/nats/accounts.conf {sorted(accounts)}")
        consumers.add(md.get("consumer"))
    if consumers != {"jobs-high", "jobs-normal", "jobs-low"}:
        problem(where, f"triggers must cover the consumers jobs-high, jobs-normal, jobs-low, not {sorted(c or '' for c in consumers)}")
    ppath, pdb = by_kind(objs, "PodDisruptionBudget")
    mu = (pdb.get("spec") or {}).get("maxUnavailable")
    if isinstance(mu, int) and spec.get("minReplicaCount", 0) <= mu:
        problem(where, f"minReplicaCount must exceed the PodDisruptionBudget's maxUnavailable ({mu})")


def k8s(toml_out, env_out):
    objs = k8s_objects()
    dpath, dep = by_kind(objs, "Deployment")
    cpath, cm = by_kind(objs, "ConfigMap")
    spath, secret = by_kind(objs, "Secret")
    ppath, pdb = by_kind(objs, "PodDisruptionBudget")
    if not (dep and cm and secret and pdb):
        return
    where = rel(dpath)
    pod = dep["spec"]["template"]["spec"]
    labels = dep["spec"]["template"]["metadata"].get("labels", {})
    if dep["spec"]["selector"].get("matchLabels") != {k: labels.get(k) for k in dep["spec"]["selector"].get("matchLabels", {})}:
        problem(where, "selector does not match the pod labels")
    if pdb["spec"]["selector"].get("matchLabels") != dep["spec"]["selector"].get("matchLabels"):
        problem(rel(ppath), "selector is not the Deployment's")
    for key in ("minAvailable", "maxUnavailable"):
        v = pdb["spec"].get(key)
        # the schema's int-or-string takes any string; the API server wants a percentage
        if isinstance(v, str) and not re.fullmatch(r"\d+%", v):
            problem(rel(ppath), f"spec.{key} {v!r}: a whole number or a percentage")
    (c,) = [c for c in pod["containers"] if c["name"] == "worker"] or [None]
    if c is None:
        problem(where, "no container named worker")
        return
    secret_values = {**(secret.get("data") or {}), **(secret.get("stringData") or {})}
    env = {}
    for e in c.get("env", []):
        ref = (e.get("valueFrom") or {}).get("secretKeyRef")
        if ref is None:
            env[e["name"]] = e.get("value")
        elif ref.get("name") != secret["metadata"]["name"]:
            problem(where, f"env {e['name']}: secretKeyRef names {ref.get('name')!r}, not the Secret {secret['metadata']['name']!r}")
        elif ref.get("key") not in secret_values:
            problem(rel(spath), f"has no key {ref.get('key')!r} (the Deployment's env {e['name']} takes it)")
        else:
            env[e["name"]] = secret_values[ref["key"]]
    from_secret = False
    for ef in c.get("envFrom", []):
        name = (ef.get("secretRef") or {}).get("name")
        if name and name != secret["metadata"]["name"]:
            problem(where, f"envFrom secret {name!r} is not {secret['metadata']['name']!r}")
        from_secret = from_secret or name == secret["metadata"]["name"]
    vols = {v["name"]: v for v in pod.get("volumes", [])}
    cfg = env.get("SWITCHYARD_CONFIG", "")
    toml_text = None
    for m in c.get("volumeMounts", []):
        v = vols.get(m["name"])
        if v is None:
            problem(where, f"volumeMount {m['name']} has no volume")
            continue
        if "configMap" in v:
            if v["configMap"]["name"] != cm["metadata"]["name"]:
                problem(where, f"volume {m['name']} names ConfigMap {v['configMap']['name']!r}, not {cm['metadata']['name']!r}")
            key = cfg.removeprefix(m["mountPath"].rstrip("/") + "/")
            if key == cfg or key not in cm.get("data", {}):
                problem(where, f"SWITCHYARD_CONFIG {cfg!r} is not a key of the mounted ConfigMap")
            else:
                toml_text = cm["data"][key]
    if toml_text is None:
        return
    try:
        conf = tomllib.loads(toml_text)
    except tomllib.TOMLDecodeError as e:
        problem(rel(cpath), f"switchyard.toml is not TOML: {e}")
        return
    grace = conf.get("worker", {}).get("shutdown_grace_s", 30)
    if pod.get("terminationGracePeriodSeconds", 30) < grace + 5:
        problem(where, f"terminationGracePeriodSeconds must be at least worker.shutdown_grace_s + 5 ({grace + 5})")
    if conf.get("nats", {}).get("replicas", 1) != 3:
        problem(rel(cpath), "nats.replicas must be 3 for a three-node JetStream cluster")
    port = str(conf.get("metrics", {}).get("addr", "")).rpartition(":")[2]
    ports = {p.get("name"): str(p["containerPort"]) for p in c.get("ports", [])}
    if port not in ports.values():
        problem(where, f"metrics.addr port {port!r} is not a containerPort {ports}")
    for probe in ("livenessProbe", "readinessProbe"):
        http = (c.get(probe) or {}).get("httpGet") or {}
        if str(http.get("port")) not in ports and str(http.get("port")) not in ports.values():
            problem(where, f"{probe} port {http.get('port')!r} is not a container port")
    if (c.get("readinessProbe") or {}).get("httpGet", {}).get("path") != "/readyz":
        problem(where, "readinessProbe must ask /readyz (503 while draining or while Postgres/NATS are away)")
    for p in conf.get("providers", []):
        var = p.get("api_key_env")
        if var and var not in secret.get("stringData", {}) and var not in secret.get("data", {}):
            problem(rel(spath), f"provider {p.get('name')}: {var} is not in the Secret")
    # NATS: the worker logs in as a user of accounts.conf with a password from the Secret
    nats = conf.get("nats", {})
    accounts_conf = (DEPLOY / "nats/accounts.conf").read_text()
    no_anonymous_login(rel(DEPLOY / "nats/accounts.conf"), accounts_conf)
    users = nats_users(accounts_conf)
    if not nats.get("user") or not nats.get("password_env"):
        problem(rel(cpath), "[nats] must log in as the worker user of deploy/nats/accounts.conf: user and password_env")
    else:
        if nats["user"] not in users:
            problem(rel(cpath), f"nats.user {nats['user']!r} is not a user of deploy/nats/accounts.conf {sorted(users)}")
        var = nats["password_env"]
        if var not in env and not (from_secret and var in secret_values):
            problem(where, f"nothing sets {var} (nats.password_env): take it from the Secret {secret['metadata']['name']!r}")
        elif var in (c2.get("name") for c2 in c.get("env", []) if "value" in c2):
            problem(where, f"{var} (nats.password_env) is written in the Deployment: take it from the Secret")
    if "@" in str(nats.get("url", "")):
        problem(rel(cpath), "nats.url carries credentials: use nats.user and nats.password_env")
    rt = conf.get("reply_to", {})
    check_reply_to(
        rel(cpath),
        rt.get("allow", ["_INBOX.>"]),
        {t.get("tenant"): as_list(t.get("allow", [])) for t in rt.get("tenants", [])},
        accounts_tenants(),
    )
    Path(toml_out).write_text(toml_text)
    lines = [f"{k}={v}" for k, v in env.items() if k != "SWITCHYARD_CONFIG"]
    lines += [f"{k}={v}" for k, v in (secret.get("stringData") or {}).items() if k not in env]
    Path(env_out).write_text("\n".join(lines) + "\n")


# --- Dockerfile -----------------------------------------------------------------------

def dockerfile(copies_out=None):
    """Also writes the paths the build COPYs from the context, one a line, to
    `copies_out` (check_deploy.sh loads the manifest from exactly those)."""
    path = DEPLOY / "Dockerfile"
    copies = []
    where = rel(path)
    lines = re.sub(r"\\\n", " ", path.read_text()).splitlines()
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    allowed = [p[1:].rstrip("/") for p in ignore if p.startswith("!")]
    if "*" not in ignore:
        problem(rel(DEPLOY / "Dockerfile.dockerignore"), "should start from * (send only what the build copies)")
    stages = []
    for n, line in enumerate(lines, 1):
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        op = words[0].upper()
        if op == "FROM":
            stages.append({"from": words[1], "user": None, "line": n})
        elif op == "USER" and stages:
            stages[-1]["user"] = words[1]
        elif op == "COPY" and not any(w.startswith("--from") for w in words):
            for src in [w for w in words[1:-1] if not w.startswith("--")]:
                src = src.rstrip("/")
                copies.append(src)
                if not (ROOT / src).exists():
                    problem(f"{where}:{n}", f"COPY {src}: no such file in the build context (the repository root)")
                elif allowed and not any(src == a or src.startswith(a + "/") for a in allowed):
                    problem(f"{where}:{n}", f"COPY {src}: excluded by Dockerfile.dockerignore")
    if copies_out:
        Path(copies_out).write_text("".join(f"{c}\n" for c in copies if c != "."))
    if len(stages) < 2:
        problem(where, "a multi-stage build expected (build, then a small runtime image)")
        return
    final = stages[-1]
    if not re.search(r"distroless|-slim", final["from"]):
        problem(f"{where}:{final['line']}", f"runtime image {final['from']}: use distroless or a -slim image")
    if (final["user"] or "root").split(":")[0] in ("root", "0"):
        problem(where, "the runtime stage must set a non-root USER")


def main():
    cmd, *args = sys.argv[1:]
    {
        "grafana": grafana,
        "rules": rules,
        "compose": compose,
        "keda": keda,
        "k8s": k8s,
        "dockerfile": dockerfile,
        "src-metrics": src_metrics,
        "docs-metrics": docs_metrics,
    }[cmd](*args)
    for p in PROBLEMS:
        print(f"FAIL {p}", file=sys.stderr)
    return 1 if PROBLEMS else 0


if __name__ == "__main__":
    sys.exit(main())
