use super::*;

const BASE: &str = r#"
[nats]
prefix = "llm"
[[providers]]
name = "openai"
kind = "openai"
base_url = "https://api.openai.com/v1"
api_key_env = "OPENAI_API_KEY"
rpm = 500
[[models]]
name = "gpt-4o-mini"
provider = "openai"
upstream = "gpt-4o-mini-2024-07-18"
tier = "fast"
context_window = 128000
input_per_mtok = "0.15"
output_per_mtok = "0.60"
cached_input_per_mtok = "0.075"
"#;

fn load(text: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let vars: Vec<(String, String)> = vars
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    FileConfig::from_toml_with_env(text, "test.toml", &vars)
}

#[test]
fn loads_and_keeps_exact_prices() {
    let c = load(BASE, &[]).unwrap();
    assert_eq!(c.models[0].input_per_mtok, Decimal::new(15, 2));
    assert_eq!(c.models[0].cached_input_per_mtok, Some(Decimal::new(75, 3)));
    assert_eq!(c.worker.max_in_flight, 2000);
}

#[test]
fn environment_overrides() {
    let c = load(
        BASE,
        &[
            ("NATS_URL", "nats://10.0.0.1:4222"),
            ("DATABASE_URL", "postgres://x@y/z"),
            ("SWITCHYARD_WORKER__MAX_IN_FLIGHT", "77"),
            ("SWITCHYARD_NATS__PREFIX", "t1"),
            (
                "SWITCHYARD_PROVIDERS__OPENAI__BASE_URL",
                "http://127.0.0.1:9/v1",
            ),
            ("SWITCHYARD_MODELS__GPT-4O-MINI__INPUT_PER_MTOK", "0.2"),
            ("SWITCHYARD_WORKER__PRIORITY_WEIGHTS", "[4,2,1]"),
        ],
    )
    .unwrap();
    assert_eq!(c.nats.url, "nats://10.0.0.1:4222");
    assert_eq!(c.postgres.url, "postgres://x@y/z");
    assert_eq!(c.worker.max_in_flight, 77);
    assert_eq!(c.nats.prefix, "t1");
    assert_eq!(c.providers[0].base_url, "http://127.0.0.1:9/v1");
    assert_eq!(c.models[0].input_per_mtok, Decimal::new(2, 1));
    assert_eq!(c.worker.priority_weights, [4, 2, 1]);
}

#[test]
fn bad_configs_name_the_field() {
    let cases: Vec<(String, &str)> = vec![
        (
            format!("{BASE}\n[worker]\nmax_in_flite = 3\n"),
            "max_in_flite",
        ),
        (
            BASE.replace("prefix = \"llm\"", "prefix = \"LLM\""),
            "nats.prefix",
        ),
        (
            BASE.replace("kind = \"openai\"", "kind = \"azure\""),
            "providers[0].kind",
        ),
        (
            BASE.replace("\"0.15\"", "\"cheap\""),
            "models[0].input_per_mtok",
        ),
        (
            BASE.replace("provider = \"openai\"", "provider = \"nobody\""),
            "models[0].provider",
        ),
        (
            BASE.replace("https://api.openai.com/v1", "ftp://x"),
            "providers[0].base_url",
        ),
        (BASE.replace("rpm = 500", "rpm = 0"), "providers[0].rpm"),
        (
            format!("{BASE}\n[ratelimit]\nheartbeat_ms = 1000\nmember_timeout_ms = 1500\n"),
            "ratelimit.member_timeout_ms",
        ),
        (
            BASE.replace("tier = \"fast\"", "tier = \"turbo\""),
            "models[0].tier",
        ),
    ];
    for (text, field) in cases {
        let e = load(&text, &[]).unwrap_err().to_string();
        assert!(e.contains(field), "{e:?} should name {field}");
    }
    let e = load(BASE, &[("SWITCHYARD_PROVIDERS__NOPE__RPM", "1")])
        .unwrap_err()
        .to_string();
    assert!(e.contains("SWITCHYARD_PROVIDERS__NOPE__RPM"), "{e}");
}

#[test]
fn shipped_configs_load() {
    for (name, text) in [
        (
            "config/switchyard.toml",
            include_str!("../../config/switchyard.toml"),
        ),
        ("config/demo.toml", include_str!("../../config/demo.toml")),
    ] {
        let c = load(text, &[]).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(c.models.len() >= 4, "{name}");
        for m in &c.models {
            if let (Some(bi), Some(bo)) = (m.batch_input_per_mtok, m.batch_output_per_mtok) {
                assert!(
                    bi < m.input_per_mtok && bo < m.output_per_mtok,
                    "{name}: {}",
                    m.name
                );
            }
        }
    }
}

#[test]
fn response_cap_and_cache_write_price() {
    let c = load(BASE, &[]).unwrap();
    assert_eq!(c.limits.max_response_bytes, 8 * 1024 * 1024);
    // 1.25 × 0.15 when not configured, exactly.
    assert_eq!(c.models[0].cache_write_price(), Decimal::new(1875, 4));
    let c = load(
        BASE,
        &[
            ("SWITCHYARD_LIMITS__MAX_RESPONSE_BYTES", "1024"),
            (
                "SWITCHYARD_MODELS__GPT-4O-MINI__CACHE_WRITE_PER_MTOK",
                "0.3",
            ),
        ],
    )
    .unwrap();
    assert_eq!(c.limits.max_response_bytes, 1024);
    assert_eq!(c.models[0].cache_write_price(), Decimal::new(3, 1));
    let e = load(BASE, &[("SWITCHYARD_LIMITS__MAX_RESPONSE_BYTES", "0")]).unwrap_err();
    assert!(e.to_string().contains("limits.max_response_bytes"), "{e}");
    let e = load(
        BASE,
        &[("SWITCHYARD_MODELS__GPT-4O-MINI__CACHE_WRITE_PER_MTOK", "-1")],
    )
    .unwrap_err();
    assert!(e.to_string().contains("cache_write_per_mtok"), "{e}");
}

#[test]
fn health_section_has_defaults_takes_env_floats_and_is_checked() {
    let c = load(BASE, &[]).unwrap();
    assert!(c.health.enabled);
    assert_eq!(c.health.window_s, 30);
    assert_eq!(c.health.consecutive_failures, 5);
    let c = load(
        &format!("{BASE}\n[health]\nerror_rate = 0.25\nslow_factor = 2\n"),
        &[("SWITCHYARD_HEALTH__EWMA_ALPHA", "0.5")],
    )
    .unwrap();
    assert_eq!(c.health.error_rate, 0.25);
    assert_eq!(c.health.slow_factor, 2.0);
    assert_eq!(c.health.ewma_alpha, 0.5);
    for (extra, field) in [
        ("error_rate = 1.5", "health.error_rate"),
        ("error_rate = \"half\"", "health.error_rate"),
        ("open_s = 30\nmax_open_s = 10", "health.max_open_s"),
        ("half_open_probes = 0", "health.half_open_probes"),
        ("slow_factor = 0.5", "health.slow_factor"),
        ("breakers = true", "breakers"),
    ] {
        let e = load(&format!("{BASE}\n[health]\n{extra}\n"), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains(field), "{e:?} should name {field}");
    }
}

#[test]
fn provider_http_settings_have_defaults_aliases_and_checks() {
    let c = load(BASE, &[]).unwrap();
    let p = &c.providers[0];
    assert_eq!(p.http(), HttpVersion::Auto);
    assert_eq!(p.max_concurrent_calls, None);
    assert_eq!(p.http2_streams_per_connection, 100);
    let c = load(
        BASE,
        &[
            ("SWITCHYARD_PROVIDERS__OPENAI__HTTP", "http2"),
            ("SWITCHYARD_PROVIDERS__OPENAI__MAX_CONCURRENT_CALLS", "500"),
            (
                "SWITCHYARD_PROVIDERS__OPENAI__HTTP2_STREAMS_PER_CONNECTION",
                "256",
            ),
        ],
    )
    .unwrap();
    let p = &c.providers[0];
    assert_eq!(p.http(), HttpVersion::Http2);
    assert_eq!(p.max_concurrent_calls, Some(500));
    assert_eq!(p.http2_streams_per_connection, 256);
    // The deprecated key still works, as `http = "http2"`; beside `http` it must agree.
    let old = BASE.replace("rpm = 500\n", "rpm = 500\nhttp2_prior_knowledge = true\n");
    let c = load(&old, &[]).unwrap();
    assert_eq!(c.providers[0].http(), HttpVersion::Http2);
    let c = load(&old, &[("SWITCHYARD_PROVIDERS__OPENAI__HTTP", "http2")]).unwrap();
    assert_eq!(c.providers[0].http(), HttpVersion::Http2);
    let e = load(&old, &[("SWITCHYARD_PROVIDERS__OPENAI__HTTP", "http1")]).unwrap_err();
    assert!(e.to_string().contains("http2_prior_knowledge"), "{e}");
    for (var, value, field) in [
        ("HTTP", "h3", "providers[0].http"),
        (
            "MAX_CONCURRENT_CALLS",
            "0",
            "providers[0].max_concurrent_calls",
        ),
        (
            "HTTP2_STREAMS_PER_CONNECTION",
            "0",
            "providers[0].http2_streams_per_connection",
        ),
    ] {
        let var = format!("SWITCHYARD_PROVIDERS__OPENAI__{var}");
        let e = load(BASE, &[(var.as_str(), value)])
            .unwrap_err()
            .to_string();
        assert!(e.contains(field), "{e:?} should name {field}");
    }
}

#[test]
fn variables_that_are_not_config_shaped_are_left_alone() {
    let c = load(
        BASE,
        &[
            ("SWITCHYARD_SIM_ADDR", "127.0.0.1:8090"),
            ("SWITCHYARD_BIN", "/usr/local/bin/switchyard"),
            ("SWITCHYARD_SKIP_CHAOS", "1"),
            ("SWITCHYARD_LOG", "debug"),
            ("SWITCHYARD_", "x"),
            ("SWITCHYARD_WORKER__MAX_IN_FLIGHT", "9"),
        ],
    )
    .unwrap();
    assert_eq!(c.worker.max_in_flight, 9);
}

#[test]
fn a_config_shaped_variable_that_names_nothing_is_an_error_naming_it() {
    for (var, value, says) in [
        ("SWITCHYARD_SIM__ADDR", "x", "no section [sim]"),
        ("SWITCHYARD_WORKR__MAX_IN_FLIGHT", "1", "no section [workr]"),
        ("SWITCHYARD_WORKER__MAX_IN_FLITE", "1", "max_in_flite"),
        ("SWITCHYARD_WORKER__MAX_IN_FLIGHT", "many", "max_in_flight"),
        ("SWITCHYARD_NATS__URL", "[1, 2]", "nats.url"),
        ("SWITCHYARD_PROVIDERS__OPENAI__RPN", "1", "rpn"),
        ("SWITCHYARD_WORKER__", "1", "empty name"),
        ("SWITCHYARD_A__B__C__D__E", "1", "no section [a]"),
        (
            "SWITCHYARD_WORKER__X__Y",
            "1",
            "expected SWITCHYARD_<SECTION>__<KEY>",
        ),
    ] {
        let e = load(BASE, &[(var, value)]).unwrap_err().to_string();
        assert!(e.contains(var), "{var}: {e}");
        assert!(e.contains(says), "{var}: {e:?} should say {says:?}");
    }
}

#[test]
fn env_sections_are_the_files_sections() {
    let t = toml::Table::try_from(FileConfig::default()).unwrap();
    let mut keys: Vec<&str> = t.keys().map(String::as_str).collect();
    let mut sections = env::SECTIONS.to_vec();
    keys.sort_unstable();
    sections.sort_unstable();
    assert_eq!(keys, sections);
}

#[test]
fn nats_url_takes_a_list_of_members() {
    let addrs = |c: &Config| -> Vec<String> {
        c.nats
            .servers()
            .unwrap()
            .into_iter()
            .map(|s| s.addr)
            .collect()
    };
    let c = load(
        &BASE.replace(
            "prefix = \"llm\"",
            "prefix = \"llm\"\nurl = \"nats://a:4222, nats://b:4223,c\"",
        ),
        &[],
    )
    .unwrap();
    assert_eq!(addrs(&c), ["nats://a:4222", "nats://b:4223", "nats://c"]);
    let c = load(
        &BASE.replace(
            "prefix = \"llm\"",
            "prefix = \"llm\"\nurl = [\"nats://a:4222\", \"tls://b:4223\"]",
        ),
        &[],
    )
    .unwrap();
    assert_eq!(addrs(&c), ["nats://a:4222", "tls://b:4223"]);
    let c = load(BASE, &[("NATS_URL", "nats://x:1,nats://y:2")]).unwrap();
    assert_eq!(addrs(&c), ["nats://x:1", "nats://y:2"]);
    let c = load(
        BASE,
        &[("SWITCHYARD_NATS__URL", "[\"nats://x:1\",\"nats://y:2\"]")],
    )
    .unwrap();
    assert_eq!(addrs(&c), ["nats://x:1", "nats://y:2"]);
    // Userinfo is taken out of the address (the client logs addresses) and kept apart.
    let c = load(BASE, &[("NATS_URL", "nats://sy:pw@x:1,nats://sy:pw@y:2")]).unwrap();
    let s = c.nats.servers().unwrap();
    assert_eq!(s[1].addr, "nats://y:2");
    assert_eq!(
        s[1].credentials,
        Some(UrlCredentials::UserPassword {
            user: "sy".into(),
            password: "pw".into()
        })
    );
    assert!(!format!("{s:?}").contains("pw"));
    assert!(!format!("{c:?}").contains(":pw@"), "{c:?}");
    let pg = load(BASE, &[("DATABASE_URL", "postgres://u:pg-secret@h/db")]).unwrap();
    assert!(!format!("{pg:?}").contains("pg-secret"));
    assert_eq!(c.nats.redacted_url(), "nats://sy:***@x:1,nats://sy:***@y:2");
    let c = load(BASE, &[("NATS_URL", "nats://s3cr%40t@x:1")]).unwrap();
    assert_eq!(
        c.nats.servers().unwrap()[0].credentials,
        Some(UrlCredentials::Token("s3cr@t".into()))
    );
    assert_eq!(c.nats.redacted_url(), "nats://***@x:1");
    for (url, field, says) in [
        ("nats://a:1,,nats://b:2", "nats.url[1]", "empty"),
        ("http://a:1", "nats.url", "scheme"),
        ("nats://a:1,ws://b:2", "nats.url[1]", "scheme"),
        ("", "nats.url", "empty"),
        (
            "nats://u:p@a:1,nats://b:2",
            "nats.url",
            "different credentials",
        ),
    ] {
        let e = load(BASE, &[("NATS_URL", url)]).unwrap_err().to_string();
        assert!(e.contains(field) && e.contains(says), "{url}: {e}");
        assert!(!e.contains(":p@"), "{e}");
    }
}

#[test]
fn nats_and_postgres_security_keys_are_checked() {
    let with = |extra: &str| format!("{BASE}\n{extra}\n");
    let c = load(
        &with("[postgres]\nssl_mode = \"verify-full\"\nssl_root_cert = \"/etc/ca.pem\"\n"),
        &[
            ("SWITCHYARD_NATS__USER", "sy"),
            ("SWITCHYARD_NATS__PASSWORD_ENV", "SY_NATS_PASSWORD"),
            ("SWITCHYARD_NATS__TLS_REQUIRED", "true"),
        ],
    )
    .unwrap();
    assert_eq!(c.postgres.ssl_mode, Some(PgSslMode::VerifyFull));
    assert_eq!(c.nats.user.as_deref(), Some("sy"));
    assert!(c.nats.tls_required);
    for (vars, field) in [
        (vec![("SWITCHYARD_NATS__USER", "sy")], "nats.password_env"),
        (vec![("SWITCHYARD_NATS__PASSWORD_ENV", "P")], "nats.user"),
        (
            vec![
                ("SWITCHYARD_NATS__TOKEN_ENV", "T"),
                ("SWITCHYARD_NATS__CREDENTIALS_FILE", "/x.creds"),
            ],
            "nats.token_env and nats.credentials_file",
        ),
        (
            vec![
                ("NATS_URL", "nats://tok@a:1"),
                ("SWITCHYARD_NATS__TOKEN_ENV", "T"),
            ],
            "credentials in nats.url and nats.token_env",
        ),
        (
            vec![
                ("SWITCHYARD_NATS__NKEY_ENV", "N"),
                ("SWITCHYARD_NATS__NKEY_SEED_FILE", "/n.seed"),
            ],
            "nats.nkey_seed_file",
        ),
        (
            vec![("SWITCHYARD_NATS__TLS_CERT_FILE", "/c.pem")],
            "nats.tls_key_file",
        ),
        (vec![("SWITCHYARD_NATS__TOKEN_ENV", "")], "nats.token_env"),
        (
            vec![("SWITCHYARD_POSTGRES__SSL_MODE", "on")],
            "postgres.ssl_mode",
        ),
        (
            vec![("SWITCHYARD_POSTGRES__SSL_KEY", "/k.pem")],
            "postgres.ssl_cert",
        ),
        (vec![("DATABASE_URL", "mysql://x/y")], "postgres.url"),
        (
            vec![("SWITCHYARD_NATS__PASSWORD", "inline")],
            "SWITCHYARD_NATS__PASSWORD",
        ),
    ] {
        let e = load(BASE, &vars).unwrap_err().to_string();
        assert!(e.contains(field), "{vars:?}: {e:?} should name {field}");
    }
}

#[test]
fn reply_to_allow_list_defaults_to_inboxes_and_is_checked() {
    let c = load(BASE, &[]).unwrap();
    assert_eq!(c.reply_to.allow, ["_INBOX.>"]);
    let rules = c.parse_rules().reply_to;
    assert!(rules.allows("acme", "_INBOX.x.1"));
    assert!(!rules.allows("acme", "orders.create"));
    let text = format!(
        "{BASE}\n[reply_to]\nallow = [\"_INBOX.>\", \"replies.*\"]\n\
         [[reply_to.tenants]]\ntenant = \"acme\"\nallow = [\"acme.>\"]\n"
    );
    let c = load(
        &text,
        &[(
            "SWITCHYARD_REPLY_TO__TENANTS__GLOBEX__ALLOW",
            "globex.>,_INBOX.>",
        )],
    )
    .unwrap();
    let rules = c.parse_rules().reply_to;
    assert!(rules.allows("initech", "replies.x"));
    assert!(!rules.allows("initech", "replies.x.y"));
    assert!(rules.allows("acme", "acme.r.1"));
    assert!(!rules.allows("acme", "_INBOX.x"));
    assert!(rules.allows("globex", "globex.r"));
    assert!(rules.allows("globex", "_INBOX.x"));
    let c = load(BASE, &[("SWITCHYARD_REPLY_TO__ALLOW", "[\">\"]")]).unwrap();
    assert!(c.parse_rules().reply_to.allows("acme", "orders.create"));
    let c = load(BASE, &[("SWITCHYARD_REPLY_TO__ALLOW", "[]")]).unwrap();
    assert!(!c.parse_rules().reply_to.allows("acme", "_INBOX.x"));
    for (extra, field) in [
        ("[reply_to]\nallow = [\"_INBOX.>.x\"]", "reply_to.allow[0]"),
        ("[reply_to]\nallow = [\"ok.>\", \"llm.>\"]", "reply_to.allow[1]"),
        ("[reply_to]\nallow = [\"$JS.API.>\"]", "reply_to.allow[0]"),
        (
            "[[reply_to.tenants]]\ntenant = \"Acme\"\nallow = []",
            "reply_to.tenants[0].tenant",
        ),
        (
            "[[reply_to.tenants]]\ntenant = \"a\"\nallow = []\n[[reply_to.tenants]]\ntenant = \"a\"\nallow = []",
            "reply_to.tenants[1].tenant",
        ),
        (
            "[[reply_to.tenants]]\ntenant = \"a\"\nallow = [\"a..b\"]",
            "reply_to.tenants[0].allow[0]",
        ),
        ("[[reply_to.tenants]]\ntenant = \"a\"", "allow"),
        ("[reply_to]\nalow = []", "alow"),
    ] {
        let e = load(&format!("{BASE}\n{extra}\n"), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains(field), "{extra}: {e:?} should name {field}");
    }
}

#[test]
fn errors_that_quote_the_file_or_a_value_mask_passwords() {
    let e = load(
        &BASE.replace(
            "prefix = \"llm\"",
            "prefix = \"llm\"\nurl = \"nats://sy:hunter2@a:4222\" x",
        ),
        &[],
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("nats://***@a:4222") && !e.contains("hunter2"),
        "{e}"
    );
    let e = load(
        BASE,
        &[("SWITCHYARD_WORKER__MAX_IN_FLIGHT", "nats://u:hunter2@h")],
    )
    .unwrap_err()
    .to_string();
    assert!(!e.contains("hunter2"), "{e}");
    assert_eq!(
        connections::mask_userinfo("a postgres://u:p@h/db, nats://t@x:1 and http://plain/x@y"),
        "a postgres://***@h/db, nats://***@x:1 and http://plain/x@y"
    );
}

#[test]
fn hedge_settings_have_defaults_per_rule_forms_and_checks() {
    let c = load(BASE, &[]).unwrap();
    assert!(!c.routing.hedge_high, "hedging is opt-in");
    assert_eq!(c.routing.hedge, HedgeConfig::default());
    assert_eq!(c.routing.hedge.after.percent(), 95);
    let text = format!(
        "{BASE}\n[routing]\nhedge_high = true\n[routing.hedge]\nafter = \"p90\"\nmin_ms = 50\n\
         [[routing.rules]]\ntenant = \"a\"\nhedge = false\n\
         [[routing.rules]]\ntenant = \"b\"\nhedge = true\n\
         [[routing.rules]]\ntenant = \"c\"\nhedge = {{ after = \"p99\", max_extra = 2 }}\n"
    );
    let c = load(&text, &[("SWITCHYARD_ROUTING__HEDGE_HIGH", "false")]).unwrap();
    assert!(!c.routing.hedge_high, "the environment overrides the file");
    assert_eq!(c.routing.hedge.after.to_string(), "p90");
    assert_eq!(c.routing.hedge.min_ms, 50);
    assert_eq!(c.routing.hedge.max_ms, 10_000);
    assert_eq!(c.routing.rules[0].hedge, Some(RuleHedge::On(false)));
    assert_eq!(c.routing.rules[1].hedge, Some(RuleHedge::On(true)));
    let Some(RuleHedge::With(h)) = c.routing.rules[2].hedge else {
        panic!("{:?}", c.routing.rules[2].hedge)
    };
    assert_eq!((h.after.percent(), h.max_extra, h.min_ms), (99, 2, 100));
    for (extra, field, why) in [
        ("[routing.hedge]\nafter = \"95\"", "after", "p50 … p99"),
        ("[routing.hedge]\nafter = \"p100\"", "after", "p50 … p99"),
        (
            "[routing.hedge]\nmin_ms = 500\nmax_ms = 100",
            "routing.hedge.min_ms",
            "above max_ms",
        ),
        (
            "[routing.hedge]\nmax_extra = 9",
            "routing.hedge.max_extra",
            "above the most allowed, 3",
        ),
        ("[routing.hedge]\nafter_ms = 9", "after_ms", "unknown field"),
        (
            "[[routing.rules]]\ntenant = \"x\"\nhedge = { max_extra = 4 }",
            "routing.rules[0].hedge.max_extra",
            "above the most allowed",
        ),
        (
            "[[routing.rules]]\ntenant = \"x\"\nhedge = { after = \"p2\" }",
            "after",
            "p50 … p99",
        ),
        (
            "[[routing.rules]]\ntenant = \"x\"\nhedge = 3",
            "hedge",
            "true, false or a table",
        ),
    ] {
        let e = load(&format!("{BASE}\n{extra}\n"), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains(field), "{e:?} should name {field}");
        assert!(e.contains(why), "{e:?} should say {why}");
    }
}
