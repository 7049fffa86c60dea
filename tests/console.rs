#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The operator web console against real NATS and Postgres: a worker runs jobs (some
//! succeed, two are dead-lettered), the console serves every page over them, search finds
//! jobs, a job page lists its calls, a dead letter is replayed through the console's POST
//! (and succeeds, its dead letter gone) and another purged; roles, tokens, CSRF and HTML
//! escaping are checked on the way.

mod common;

use common::{job, serve_console as serve, TestEnv};
use sha2::{Digest, Sha256};
use switchyard::config::{ConsoleRole, ConsoleToken};
use switchyard::job::{ErrorKind, Priority, Status};
use switchyard::providers::simulator::FaultProfile;

const HOSTILE: &str = "<script>alert(1)</script>";

fn sha(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// GET `path` with an optional bearer token: (status, body).
async fn get(http: &reqwest::Client, base: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let mut req = http.get(format!("{base}{path}"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn post(
    http: &reqwest::Client,
    url: String,
    auth: (&str, &str),
    form: &[(&str, &str)],
) -> (u16, String) {
    let body: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form)
        .finish();
    let r = http
        .post(url)
        .header(auth.0, auth.1)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

fn csrf_of(page: &str) -> String {
    let at = page.find("name=\"csrf\" value=\"").expect("a csrf field") + 19;
    page[at..at + 64].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_pages_search_replay_purge_and_auth() {
    let env = TestEnv::new(|c| {
        c.worker.max_deliveries = 1;
        c.console.tokens = vec![
            ConsoleToken {
                name: "ops".into(),
                role: ConsoleRole::Operator,
                sha256: sha("op-token"),
            },
            ConsoleToken {
                name: "viewer".into(),
                role: ConsoleRole::ReadOnly,
                sha256: sha("ro-token"),
            },
        ];
    })
    .await;
    sqlx::query("INSERT INTO budgets (tenant, period, limit_usd) VALUES ('acme', 'day', 10)")
        .execute(&env.pool)
        .await
        .unwrap();
    env.fail_model("gpt-4o-mini-2024-07-18");
    let (stop, worker) = env.start_worker().await;
    let pinned = r#","model":"openai/gpt-4o-mini""#;
    for id in ["d1", "d2"] {
        env.publish(Priority::Low, "acme", job(id, "acme", pinned))
            .await;
    }
    for id in ["ok1", "ok2"] {
        env.publish(
            Priority::Normal,
            "acme",
            job(id, "acme", r#","model":"llama""#),
        )
        .await;
    }
    let hostile = serde_json::json!({"id": "evil", "tenant": "beta", "feature": HOSTILE,
        "model": "llama", "messages": [{"role": "user", "content": "hi"}]});
    env.publish(Priority::High, "beta", hostile.to_string())
        .await;
    for id in ["d1", "d2"] {
        let r = env.result("acme", id, 20).await;
        assert_eq!(r.error.unwrap().kind, ErrorKind::ProvidersExhausted);
    }
    assert_eq!(env.wait_succeeded(3, 20).await, 3);
    assert!(env.dlq("acme", "d1").await.is_some());

    let console = serve(env.config.clone()).await;
    let (base, http) = (
        console.base.clone(),
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
    );
    let op = Some("op-token");

    // No token, or a wrong one: 401 (assets and the login page are open).
    assert_eq!(get(&http, &base, "/", None).await.0, 401);
    assert_eq!(get(&http, &base, "/jobs", Some("op-tokenx")).await.0, 401);
    assert_eq!(get(&http, &base, "/assets/console.css", None).await.0, 200);
    let (code, js) = get(&http, &base, "/assets/console.js", None).await;
    assert!(code == 200 && js.contains("data-confirm"), "{js}");
    assert_eq!(get(&http, &base, "/login", None).await.0, 200);

    // Overview: backlog per priority, the last hour, budgets.
    let (code, page) = get(&http, &base, "/", op).await;
    assert_eq!(code, 200, "{page}");
    for needle in [
        "Backlog",
        "high",
        "normal",
        "low",
        "2 dead letters",
        "Budgets",
        "acme",
    ] {
        assert!(page.contains(needle), "overview lacks {needle:?}: {page}");
    }
    assert!(
        page.contains("<div class=\"n status-succeeded\">3</div>"),
        "{page}"
    );
    assert!(
        page.contains("<div class=\"n status-failed\">2</div>"),
        "{page}"
    );
    assert!(page.contains("providers_exhausted"), "{page}");
    // The last hour by five minutes: all five jobs ended in the last slice.
    assert!(
        page.contains("5–0 min ago: 3 succeeded, 2 failed")
            && page.contains("60–55 min ago: 0 succeeded, 0 failed"),
        "{page}"
    );

    // Jobs: search by tenant, status, id prefix; bad input named.
    let (code, page) = get(&http, &base, "/jobs?tenant=acme", op).await;
    assert_eq!(code, 200);
    for id in ["ok1", "ok2", "d1", "d2"] {
        assert!(page.contains(&format!(">{id}</a>")), "{id}: {page}");
    }
    assert!(!page.contains(">evil</a>"), "{page}");
    let (_, page) = get(
        &http,
        &base,
        "/jobs?status=failed&kind=providers_exhausted",
        op,
    )
    .await;
    assert!(
        page.contains(">d1</a>") && !page.contains(">ok1</a>"),
        "{page}"
    );
    let (_, page) = get(&http, &base, "/jobs?id=ok*", op).await;
    assert!(page.contains(">ok1</a>") && page.contains(">ok2</a>") && !page.contains(">d1</a>"));
    let (code, page) = get(&http, &base, "/jobs?kind=nonsense", op).await;
    assert_eq!(code, 400);
    assert!(page.contains("nonsense"), "{page}");
    let (code, _) = get(&http, &base, "/jobs?since=soon", op).await;
    assert_eq!(code, 400);

    // The hostile feature is escaped wherever it shows.
    let (_, page) = get(&http, &base, "/jobs?tenant=beta", op).await;
    assert!(
        page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{page}"
    );
    assert!(!page.contains(HOSTILE), "{page}");
    let (_, page) = get(&http, &base, "/jobs/beta/evil", op).await;
    assert!(
        !page.contains(HOSTILE) && page.contains("&lt;script&gt;"),
        "{page}"
    );

    // A job's page: its calls (from cost_rows), route, and content hidden.
    let (code, page) = get(&http, &base, "/jobs/acme/ok1", op).await;
    assert_eq!(code, 200, "{page}");
    let (model, latency): (String, i64) =
        sqlx::query_as("SELECT model, latency_ms FROM cost_rows WHERE job_id = 'ok1'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert!(
        page.contains(&model) && page.contains(&format!("{latency} ms")),
        "{page}"
    );
    assert!(
        page.contains("route reason") && page.contains("succeeded"),
        "{page}"
    );
    assert!(
        page.contains("show_content = false"),
        "output hidden: {page}"
    );
    assert!(
        page.contains("Gone: a job's message leaves the jobs stream"),
        "{page}"
    );
    let (_, page) = get(&http, &base, "/jobs/acme/d1", op).await;
    assert!(
        page.contains("Kept in <a href=\"/dlq/acme/d1\">its dead letter"),
        "{page}"
    );
    assert_eq!(get(&http, &base, "/jobs/acme/nope", op).await.0, 404);

    // Keyset paging (the store's search, a page of one at a time): every job once.
    let mut seen = Vec::new();
    let mut q = switchyard::store::console::JobSearch {
        limit: 1,
        ..Default::default()
    };
    loop {
        let page = switchyard::store::console::search_jobs(&env.pool, &q)
            .await
            .unwrap();
        let Some(last) = page.last() else { break };
        seen.push(format!("{}/{}", last.tenant, last.id));
        q.after = Some(switchyard::store::console::JobCursor {
            created_at: last.created_at,
            tenant: last.tenant.clone(),
            id: last.id.clone(),
        });
    }
    seen.sort();
    assert_eq!(
        seen,
        ["acme/d1", "acme/d2", "acme/ok1", "acme/ok2", "beta/evil"]
    );

    // Dead letters: the list with the CLI's filters, one dead letter's page.
    let (code, page) = get(
        &http,
        &base,
        "/dlq?kind=providers_exhausted&tenant=acme",
        op,
    )
    .await;
    assert_eq!(code, 200, "{page}");
    assert!(
        page.contains(">d1</a>") && page.contains(">d2</a>"),
        "{page}"
    );
    assert!(page.contains("2 dead letters match"), "{page}");
    let (_, page) = get(&http, &base, "/dlq?feature=other", op).await;
    assert!(page.contains("0 dead letters match"), "{page}");
    let (code, page) = get(&http, &base, "/dlq?kind=bogus", op).await;
    assert_eq!(code, 400, "{page}");
    // The list pages: 101 dead letters of another tenant, 100 a page.
    let mut entry = env.dlq("acme", "d2").await.unwrap();
    for i in 0..101 {
        entry.failed_at += chrono::Duration::seconds(1);
        let subject = env.names().dlq_subject("zeta", &format!("z{i:03}"));
        let body = serde_json::to_vec(&entry).unwrap();
        env.js
            .publish(subject, body.into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let (code, page) = get(&http, &base, "/dlq?tenant=zeta", op).await;
    assert_eq!(code, 200, "{page}");
    assert!(
        page.contains("101 dead letters match, oldest first: 1–100 shown (page 1 of 2)"),
        "{page}"
    );
    assert!(page.contains(">z099</a>") && !page.contains(">z100</a>"));
    assert!(
        page.contains("href=\"/dlq?tenant=zeta&amp;page=2\">Next page"),
        "{page}"
    );
    let (_, page) = get(&http, &base, "/dlq?tenant=zeta&page=2", op).await;
    assert!(page.contains("101–101 shown (page 2 of 2)"), "{page}");
    assert!(page.contains(">z100</a>") && !page.contains(">z099</a>"));
    assert!(page.contains("Previous page") && !page.contains("Next page"));
    assert_eq!(get(&http, &base, "/dlq?page=0", op).await.0, 400);
    let (code, page) = post(
        &http,
        format!("{base}/dlq/purge"),
        ("authorization", "Bearer op-token"),
        &[("all", "1"), ("tenant", "zeta"), ("confirm", "yes")],
    )
    .await;
    assert_eq!(code, 200, "{page}");
    assert!(page.contains("101 dead letters deleted"), "{page}");

    let (code, page) = get(&http, &base, "/dlq/acme/d1", op).await;
    assert_eq!(code, 200, "{page}");
    assert!(
        page.contains("providers_exhausted") && page.contains("gpt-4o-mini"),
        "{page}"
    );
    assert!(
        !page.contains("Say something about d1"),
        "prompt hidden: {page}"
    );

    // Spend: the chart and the downloads `report costs` gives.
    let (code, page) = get(&http, &base, "/spend", op).await;
    assert_eq!(code, 200);
    assert!(page.contains("<svg") && page.contains("<rect"), "{page}");
    for format in ["csv", "json"] {
        let (code, got) = get(
            &http,
            &base,
            &format!("/spend/download?format={format}"),
            op,
        )
        .await;
        assert_eq!(code, 200);
        let (c, want, err) = env.cli(&["report", "costs", "--format", format]).await;
        assert_eq!(c, 0, "{err}");
        assert_eq!(got, want, "{format}");
    }
    let (c, want, _) = env
        .cli(&["report", "costs", "--by", "day,model", "--format", "csv"])
        .await;
    assert_eq!(c, 0);
    let (_, got) = get(&http, &base, "/spend/download?format=csv&by=day,model", op).await;
    assert_eq!(got, want);

    // read_only reads, and may not act.
    assert_eq!(get(&http, &base, "/dlq", Some("ro-token")).await.0, 200);
    let replay_url = format!("{base}/dlq/replay");
    let (code, page) = post(
        &http,
        replay_url.clone(),
        ("authorization", "Bearer ro-token"),
        &[("key", "acme/d1"), ("confirm", "yes")],
    )
    .await;
    assert_eq!(code, 403, "{page}");
    assert!(env.dlq("acme", "d1").await.is_some());

    // The operator signs in with the form (an HttpOnly cookie); a POST needs the CSRF token.
    let r = http
        .post(format!("{base}/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("token=op-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 303);
    let set = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(set.contains("HttpOnly"), "{set}");
    let cookie = set.split(';').next().unwrap().to_string();
    let page = http
        .get(format!("{base}/dlq"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = csrf_of(&page);
    let (code, _) = post(
        &http,
        replay_url.clone(),
        ("cookie", &cookie),
        &[("key", "acme/d1")],
    )
    .await;
    assert_eq!(code, 403, "no CSRF token");
    // The provider is healthy again. First the confirmation (a dry run), then the replay.
    env.sim.set_profile(FaultProfile::default());
    let form = [("key", "acme/d1"), ("csrf", csrf.as_str())];
    let (code, page) = post(&http, replay_url.clone(), ("cookie", &cookie), &form).await;
    assert_eq!(code, 200, "{page}");
    assert!(
        page.contains("Confirm the replay") && page.contains("would replay acme/d1"),
        "{page}"
    );
    assert!(
        env.dlq("acme", "d1").await.is_some(),
        "nothing done before the confirmation"
    );
    let form = [
        ("key", "acme/d1"),
        ("csrf", csrf.as_str()),
        ("confirm", "yes"),
    ];
    let (code, page) = post(&http, replay_url.clone(), ("cookie", &cookie), &form).await;
    assert_eq!(code, 200, "{page}");
    assert!(page.contains("replayed acme/d1"), "{page}");
    let mut succeeded = false;
    for _ in 0..100 {
        if env.result("acme", "d1", 5).await.status == Status::Succeeded {
            succeeded = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(succeeded, "the replayed job succeeds");
    assert!(
        env.dlq("acme", "d1").await.is_none(),
        "its dead letter is gone"
    );

    // Sign out: the POST needs the CSRF token too; then the cookie is cleared.
    let logout = format!("{base}/logout");
    let (code, _) = post(&http, logout.clone(), ("cookie", &cookie), &[]).await;
    assert_eq!(code, 403, "no CSRF token");
    let body = format!("csrf={csrf}");
    let r = http
        .post(&logout)
        .header("cookie", &cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 303);
    assert_eq!(r.headers()["location"], "/login");
    assert!(r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));

    // Purge d2 (bearer: no CSRF needed), after its confirmation.
    let purge_url = format!("{base}/dlq/purge");
    let bearer = ("authorization", "Bearer op-token");
    let (code, page) = post(&http, purge_url.clone(), bearer, &[("key", "acme/d2")]).await;
    assert_eq!(code, 200, "{page}");
    assert!(page.contains("would delete acme/d2"), "{page}");
    assert!(env.dlq("acme", "d2").await.is_some());
    let form = [("key", "acme/d2"), ("confirm", "yes")];
    let (code, page) = post(&http, purge_url, bearer, &form).await;
    assert_eq!(code, 200, "{page}");
    assert!(page.contains("1 dead letters deleted"), "{page}");
    assert!(env.dlq("acme", "d2").await.is_none());

    console.stop.cancel();
    console.task.await.unwrap().unwrap();

    // Without tokens (loopback only) the console needs no sign-in.
    let mut open = env.config.clone();
    open.console.tokens.clear();
    let console = serve(open).await;
    assert_eq!(get(&http, &console.base, "/", None).await.0, 200);
    console.stop.cancel();
    console.task.await.unwrap().unwrap();

    stop.cancel();
    worker.await.unwrap().unwrap();
}

/// Breakers live in each worker's memory: the overview shows what the workers' heartbeats
/// say. A real worker whose model fails opens its breaker; a heartbeat without breakers
/// (a worker from before they were reported) is listed as such.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overview_shows_the_breakers_workers_report() {
    let env = TestEnv::new(|c| {
        c.worker.max_deliveries = 1;
        c.health.consecutive_failures = 2;
        c.health.open_s = 60;
        c.ratelimit.heartbeat_ms = 200;
        c.ratelimit.member_timeout_ms = 1000;
    })
    .await;
    let console = serve(env.config.clone()).await;
    let http = reqwest::Client::new();
    let (_, page) = get(&http, &console.base, "/", None).await;
    assert!(page.contains("No worker heard"), "{page}");
    assert!(page.contains("unknown: no live worker reports"), "{page}");

    env.fail_model("gpt-4o-mini-2024-07-18");
    let (stop, worker) = env.start_worker().await;
    let pinned = r#","model":"openai/gpt-4o-mini""#;
    for id in ["b1", "b2"] {
        env.publish(Priority::Normal, "acme", job(id, "acme", pinned))
            .await;
        let r = env.result("acme", id, 20).await;
        assert_eq!(r.error.unwrap().kind, ErrorKind::ProvidersExhausted);
    }
    // An older worker's heartbeat: no `breakers` field.
    let old = r#"{"id":"oldworker","limits":{}}"#;
    let hb = format!("{}.ctl.heartbeat", env.prefix);
    let mut page = String::new();
    for _ in 0..100 {
        env.client.publish(hb.clone(), old.into()).await.unwrap();
        page = get(&http, &console.base, "/", None).await.1;
        if page.contains("breaker-open\">open</span> on 1 of 1") && page.contains("oldworker") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let row = page
        .split("<tr>")
        .find(|r| r.contains("breaker-open"))
        .unwrap_or_else(|| panic!("no open breaker: {page}"));
    assert!(
        row.contains("<td>openai</td><td>gpt-4o-mini</td>") && row.contains("2 failures in a row"),
        "{row}"
    );
    assert!(row.contains("probed after <time"), "{row}");
    // The other models are closed on the one live worker that reports; the older worker
    // is listed, its breakers unknown.
    assert!(
        page.contains("<td>openai</td><td>gpt-4o</td><td><span class=\"breaker-closed\">closed</span> on all 1"),
        "{page}"
    );
    assert!(page.contains("not reported (an older worker)"), "{page}");
    // The worker says where it runs (in process here: this test's pid).
    assert!(
        page.contains(&format!(" pid {}</td>", std::process::id())),
        "{page}"
    );

    // The worker stops: its last heartbeat says so.
    stop.cancel();
    worker.await.unwrap().unwrap();
    let mut page = String::new();
    for _ in 0..50 {
        page = get(&http, &console.base, "/", None).await.1;
        if page.contains("stopped") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(page.contains("stopped"), "{page}");
    console.stop.cancel();
    console.task.await.unwrap().unwrap();
}
