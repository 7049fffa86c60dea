#![allow(clippy::unwrap_used, clippy::expect_used)]
//! How the semantic cache finds a stored paraphrase at scale: lookup latency and recall
//! against brute force with a million entries in one tenant and one request shape (the
//! worst case: every entry is a candidate by key), for
//! (a) LSH band keys under a GIN index in Postgres, exact cosine on the candidates (what
//!     the worker does: `store::semantic::nearest`), and
//! (b) an in-memory index per tenant: the same bands in a hash map, and a brute-force
//!     scan of every vector, as a worker would hold them.
//!
//! `cargo test --release --test semantic_index -- --ignored --nocapture`
//! (`SEMCACHE_BENCH_N` entries, default 1,000,000; `SEMCACHE_BENCH_Q` queries, default
//! 200). Figures: BENCHMARKS.md "Cost levers".

mod common;

use common::TestEnv;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use switchyard::cache::embed::{builtin, BUILTIN_DIMS};
use switchyard::cache::lsh;
use switchyard::store::semantic::{nearest, SemanticLookup};

const SHAPE: [u8; 32] = [7; 32];
const SCOPE: u64 = 0x0123_4567_89ab_cdef;

/// A small deterministic generator (the bench must be repeatable).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// 3,000 pronounceable words.
fn vocabulary() -> Vec<String> {
    let syllables = [
        "ka", "lo", "mi", "ne", "su", "ta", "ri", "po", "de", "an", "ve", "gu", "sho", "bel",
        "tor", "min", "quo", "ras", "fen", "dul",
    ];
    let mut rng = Rng(42);
    (0..3000)
        .map(|_| {
            let n = 2 + rng.below(2);
            (0..n)
                .map(|_| syllables[rng.below(syllables.len())])
                .collect()
        })
        .collect()
}

fn prompt(rng: &mut Rng, vocab: &[String]) -> Vec<String> {
    let n = 6 + rng.below(9);
    (0..n)
        .map(|_| vocab[rng.below(vocab.len())].clone())
        .collect()
}

/// A near paraphrase: one word replaced, dropped or added, or none changed but a
/// suffix; its similarity to the original varies around the threshold.
fn perturb(rng: &mut Rng, vocab: &[String], words: &[String]) -> Vec<String> {
    let mut w = words.to_vec();
    match rng.below(4) {
        0 => {
            let i = rng.below(w.len());
            w[i] = vocab[rng.below(vocab.len())].clone();
        }
        1 => {
            w.remove(rng.below(w.len()));
        }
        2 => w.insert(rng.below(w.len()), vocab[rng.below(vocab.len())].clone()),
        _ => {
            let i = rng.below(w.len());
            w[i].push('s');
        }
    }
    w
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn summary(name: &str, mut t: Vec<Duration>) {
    t.sort();
    println!(
        "{name}: p50 {} p95 {} p99 {} max {}",
        ms(percentile(&t, 0.5)),
        ms(percentile(&t, 0.95)),
        ms(percentile(&t, 0.99)),
        ms(*t.last().unwrap())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: a million entries (minutes); run with --ignored --nocapture"]
async fn semantic_index_figures() {
    let n: usize = std::env::var("SEMCACHE_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let queries: usize = std::env::var("SEMCACHE_BENCH_Q")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let env = TestEnv::new(|_| {}).await;
    // As migration 0005 sets it (the binary may predate it; a JIT compile costs more than
    // the lookup).
    sqlx::query("ALTER FUNCTION semantic_candidates(bigint[], text, bytea, bigint) SET jit = off")
        .execute(&env.pool)
        .await
        .unwrap();
    let vocab = vocabulary();

    // The entries: prompts of 6-14 words, embedded by the built-in embedder.
    let t = Instant::now();
    let prompts: Vec<Vec<String>> = {
        let mut rng = Rng(7);
        (0..n).map(|_| prompt(&mut rng, &vocab)).collect()
    };
    let embedded: Vec<(Vec<i8>, Vec<i64>)> = std::thread::scope(|s| {
        let halves: Vec<_> = prompts
            .chunks(n.div_ceil(2).max(1))
            .map(|chunk| {
                s.spawn(move || {
                    chunk
                        .iter()
                        .map(|p| {
                            let q = lsh::quantize(&builtin(&p.join(" "), BUILTIN_DIMS));
                            let bands = lsh::band_keys(SCOPE, &lsh::signature(&q));
                            (q, bands)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        halves.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    println!("embedded {n} prompts in {:.1} s", t.elapsed().as_secs_f64());

    // Loaded without the GIN index, which is built after (as a migration on a full table
    // would).
    sqlx::query("DROP INDEX cache_entries_bands_idx")
        .execute(&env.pool)
        .await
        .unwrap();
    let t = Instant::now();
    for (b, chunk) in embedded.chunks(5000).enumerate() {
        let base = b * 5000;
        let keys: Vec<Vec<u8>> = (0..chunk.len())
            .map(|i| ((base + i) as u64).to_le_bytes().repeat(4))
            .collect();
        let jobs: Vec<String> = (0..chunk.len()).map(|i| format!("j{}", base + i)).collect();
        let vecs: Vec<Vec<u8>> = chunk.iter().map(|(q, _)| lsh::to_bytes(q)).collect();
        let bands: Vec<String> = chunk
            .iter()
            .map(|(_, b)| {
                let k: Vec<String> = b.iter().map(i64::to_string).collect();
                format!("{{{}}}", k.join(","))
            })
            .collect();
        sqlx::query(
            r#"INSERT INTO cache_entries (tenant, key_hash, provider, model, output, job_id,
                                          expires_at, shape_hash, embedding, bands)
               SELECT 'bench', k, 'openai', 'gpt-4o-mini',
                      '{"content":"x","tool_calls":[],"finish_reason":"stop"}', j,
                      now() + interval '1 day', $4, e, b::bigint[]
                 FROM unnest($1::bytea[], $2::text[], $3::bytea[], $5::text[]) AS x(k, j, e, b)"#,
        )
        .bind(&keys)
        .bind(&jobs)
        .bind(&vecs)
        .bind(&SHAPE[..])
        .bind(&bands)
        .execute(&env.pool)
        .await
        .unwrap();
    }
    println!("inserted {n} entries in {:.1} s", t.elapsed().as_secs_f64());
    let t = Instant::now();
    sqlx::query(
        "CREATE INDEX cache_entries_bands_idx ON cache_entries USING gin (bands) WHERE bands IS NOT NULL",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    sqlx::query("ANALYZE cache_entries")
        .execute(&env.pool)
        .await
        .unwrap();
    println!("GIN index built in {:.1} s", t.elapsed().as_secs_f64());
    let sizes: (i64, i64) = sqlx::query_as(
        "SELECT pg_table_size('cache_entries'), pg_relation_size('cache_entries_bands_idx')",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    println!(
        "table {} MiB, bands index {} MiB",
        sizes.0 >> 20,
        sizes.1 >> 20
    );

    // (b)'s index: band key -> entries.
    let t = Instant::now();
    let mut buckets: HashMap<i64, Vec<u32>> = HashMap::new();
    for (i, (_, bands)) in embedded.iter().enumerate() {
        for &k in bands {
            buckets.entry(k).or_default().push(i as u32);
        }
    }
    println!(
        "in-memory band index built in {:.1} s ({} keys)",
        t.elapsed().as_secs_f64(),
        buckets.len()
    );

    let mut rng = Rng(99);
    let (mut pg_t, mut mem_t, mut brute_t) = (Vec::new(), Vec::new(), Vec::new());
    let (mut wanted, mut pg_found, mut mem_found, mut cands) = (0usize, 0usize, 0usize, 0usize);
    let mut false_hits = 0usize;
    for _ in 0..queries {
        let src = rng.below(n);
        let words = perturb(&mut rng, &vocab, &prompts[src]);
        let q = lsh::quantize(&builtin(&words.join(" "), BUILTIN_DIMS));
        let bands = lsh::band_keys(SCOPE, &lsh::signature(&q));

        // Brute force: the truth, and option (b)'s scan.
        let t = Instant::now();
        let best = embedded
            .iter()
            .map(|(v, _)| lsh::cosine_i8(&q, v))
            .fold(f32::MIN, f32::max);
        brute_t.push(t.elapsed());

        // (b) in memory, by bands.
        let t = Instant::now();
        let mut seen = std::collections::HashSet::new();
        let mut mem_best = f32::MIN;
        for k in &bands {
            for &i in buckets.get(k).map_or(&[][..], |v| &v[..]) {
                if seen.insert(i) {
                    mem_best = mem_best.max(lsh::cosine_i8(&q, &embedded[i as usize].0));
                }
            }
        }
        mem_t.push(t.elapsed());

        // (a) Postgres.
        let req = SemanticLookup {
            tenant: "bench".into(),
            shape: SHAPE,
            embedding: q.clone(),
            bands,
            min_similarity: 0.92,
            ttl_s: 86_400,
        };
        let t = Instant::now();
        let hit = nearest(&env.pool, &req).await.unwrap();
        pg_t.push(t.elapsed());
        cands += seen.len();

        if best >= 0.92 {
            wanted += 1;
            if hit
                .as_ref()
                .is_some_and(|h| (h.similarity - best).abs() < 1e-6)
            {
                pg_found += 1;
            }
            if (mem_best - best).abs() < 1e-6 {
                mem_found += 1;
            }
        } else if hit.is_some() {
            false_hits += 1;
        }
    }
    println!(
        "{queries} queries; {wanted} have an entry at cosine >= 0.92 (brute force); mean candidates per lookup {:.0}",
        cands as f64 / queries as f64
    );
    println!(
        "recall (a) Postgres LSH {pg_found}/{wanted} = {:.1} %, (b) in-memory LSH {mem_found}/{wanted} = {:.1} %; hits below the threshold: {false_hits}",
        100.0 * pg_found as f64 / wanted.max(1) as f64,
        100.0 * mem_found as f64 / wanted.max(1) as f64
    );
    summary("(a) Postgres LSH + GIN lookup", pg_t);
    summary("(b) in-memory LSH lookup", mem_t);
    summary("(b') in-memory brute-force scan", brute_t);
    // The plan the function runs with (seq scans off, as it sets).
    let mut tx = env.pool.begin().await.unwrap();
    for set in ["SET LOCAL enable_seqscan = off", "SET LOCAL jit = off"] {
        sqlx::query(set).execute(&mut *tx).await.unwrap();
    }
    let plan: Vec<(String,)> = sqlx::query_as(
        "EXPLAIN (ANALYZE, BUFFERS) SELECT key_hash, embedding FROM cache_entries
          WHERE bands && $1 AND bands IS NOT NULL AND tenant = 'bench' AND shape_hash = $2
            AND expires_at > now()",
    )
    .bind(&embedded[0].1)
    .bind(&SHAPE[..])
    .fetch_all(&mut *tx)
    .await
    .unwrap();
    tx.rollback().await.unwrap();
    for (line,) in plan {
        println!("  {line}");
    }
    assert!(
        wanted == 0 || pg_found * 10 >= wanted * 8,
        "recall under 80 %"
    );
    env.cleanup().await;
}
