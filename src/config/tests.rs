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
