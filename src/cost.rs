//! Where cost is computed: exact decimal USD from a model's prices and reported usage.
//!
//! cost = (input − cached − cache writes) × input price + cached × cached-input price
//! plus cache writes × cache-write price + output × output price, prices per million
//! tokens. No floats anywhere on this path, and no panic on any token count (counts
//! come from providers): the arithmetic saturates.

use crate::config::ModelConfig;
use crate::job::Usage;
use rust_decimal::Decimal;

const MILLION: Decimal = Decimal::from_parts(1_000_000, 0, 0, false, 0);

/// Exact cost of one call.
pub fn cost_of(model: &ModelConfig, usage: &Usage) -> Decimal {
    let cached = usage.cached_input_tokens.min(usage.input_tokens);
    let written = usage.cache_write_tokens.min(usage.input_tokens - cached);
    let uncached = usage.input_tokens - cached - written;
    let total = [
        (uncached, model.input_per_mtok),
        (cached, model.cached_input_price()),
        (written, model.cache_write_price()),
        (usage.output_tokens, model.output_per_mtok),
    ]
    .into_iter()
    .fold(Decimal::ZERO, |sum, (tokens, price)| {
        sum.saturating_add(Decimal::from(tokens).saturating_mul(price))
    });
    (total / MILLION).normalize()
}

/// The batch-API prices of `model` (`batch_input_per_mtok`, `batch_output_per_mtok`), as
/// a model whose live prices are those, or `None` when it has no batch prices. Cached
/// input and cache writes get the batch discount of plain input (their live price times
/// batch input / input): the providers' batch discounts apply to every token kind.
pub fn batch_priced(model: &ModelConfig) -> Option<ModelConfig> {
    let (input, output) = (model.batch_input_per_mtok?, model.batch_output_per_mtok?);
    let scale = |live: Decimal| {
        if model.input_per_mtok.is_zero() {
            input
        } else {
            live.saturating_mul(input) / model.input_per_mtok
        }
    };
    Some(ModelConfig {
        input_per_mtok: input,
        output_per_mtok: output,
        cached_input_per_mtok: Some(scale(model.cached_input_price())),
        cache_write_per_mtok: Some(scale(model.cache_write_price())),
        ..model.clone()
    })
}

/// Exact cost of one call sent in a provider batch (`None`: no batch prices).
pub fn batch_cost_of(model: &ModelConfig, usage: &Usage) -> Option<Decimal> {
    batch_priced(model).map(|m| cost_of(&m, usage))
}

/// Exact cost of an embedding call (the semantic cache's): its input tokens at
/// `cache.embeddings.input_per_mtok`.
pub fn embedding_cost(input_tokens: u64, input_per_mtok: Decimal) -> Decimal {
    (Decimal::from(input_tokens).saturating_mul(input_per_mtok) / MILLION).normalize()
}

/// The most a call can cost: every input token uncached and `max_tokens` of output.
pub fn worst_case(model: &ModelConfig, input_tokens: u64, max_tokens: u32) -> Decimal {
    cost_of(
        model,
        &Usage {
            input_tokens,
            output_tokens: u64::from(max_tokens),
            ..Usage::default()
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Tier;
    use std::str::FromStr;

    fn model(input: &str, output: &str, cached: Option<&str>) -> ModelConfig {
        model_with_write(input, output, cached, None)
    }

    fn model_with_write(
        input: &str,
        output: &str,
        cached: Option<&str>,
        write: Option<&str>,
    ) -> ModelConfig {
        ModelConfig {
            name: "m".into(),
            provider: "p".into(),
            upstream: "m".into(),
            tier: Tier::Fast,
            context_window: 1000,
            input_per_mtok: Decimal::from_str(input).unwrap(),
            output_per_mtok: Decimal::from_str(output).unwrap(),
            cached_input_per_mtok: cached.map(|c| Decimal::from_str(c).unwrap()),
            cache_write_per_mtok: write.map(|c| Decimal::from_str(c).unwrap()),
            batch_input_per_mtok: None,
            batch_output_per_mtok: None,
            aliases: vec![],
            max_output_tokens: None,
        }
    }

    #[test]
    fn batch_prices_are_charged_and_discount_cached_input_alike() {
        // gpt-4o-mini: 0.15 / 0.60 live, 0.075 cached; batch 0.075 / 0.30.
        let mut m = model("0.15", "0.60", Some("0.075"));
        let u = Usage {
            input_tokens: 2048,
            cached_input_tokens: 1024,
            output_tokens: 100,
            ..Usage::default()
        };
        assert_eq!(batch_cost_of(&m, &u), None);
        m.batch_input_per_mtok = Some(Decimal::from_str("0.075").unwrap());
        m.batch_output_per_mtok = Some(Decimal::from_str("0.30").unwrap());
        // 1024×0.075 + 1024×0.0375 + 100×0.30 = 76.8 + 38.4 + 30 = 145.2 → /1e6: half of live.
        assert_eq!(batch_cost_of(&m, &u).unwrap().to_string(), "0.0001452");
        assert_eq!(cost_of(&m, &u).to_string(), "0.0002904");
    }

    #[test]
    fn contract_example() {
        // gemini-2.0-flash: 0.10 in, 0.40 out; 812 in, 96 out → 0.0001196
        let m = model("0.10", "0.40", Some("0.025"));
        let u = Usage {
            input_tokens: 812,
            output_tokens: 96,
            ..Usage::default()
        };
        assert_eq!(cost_of(&m, &u).to_string(), "0.0001196");
    }

    #[test]
    fn cached_tokens_use_cached_price() {
        let m = model("0.15", "0.60", Some("0.075"));
        let u = Usage {
            input_tokens: 2048,
            cached_input_tokens: 1024,
            output_tokens: 100,
            ..Usage::default()
        };
        // 1024×0.15 + 1024×0.075 + 100×0.60 = 153.6 + 76.8 + 60 = 290.4 → /1e6
        assert_eq!(cost_of(&m, &u).to_string(), "0.0002904");
        // Without a cached price, cached tokens cost the input price.
        let m = model("0.15", "0.60", None);
        assert_eq!(cost_of(&m, &u).to_string(), "0.0003672");
    }

    #[test]
    fn sums_are_exact() {
        let m = model("0.15", "0.60", None);
        let one = Usage {
            input_tokens: 1,
            ..Usage::default()
        };
        let mut total = Decimal::ZERO;
        for _ in 0..1_000_000 {
            total += cost_of(&m, &one);
        }
        assert_eq!(total, Decimal::from_str("0.15").unwrap());
    }

    #[test]
    fn cache_writes_use_the_cache_write_price() {
        // claude-sonnet-4: 3 in, 15 out, 0.30 cache read, 3.75 cache write.
        let m = model_with_write("3", "15", Some("0.30"), Some("3.75"));
        // The cache_usage.json fixture: 12 plain + 2048 read + 248 written, 57 out.
        let u = Usage {
            input_tokens: 12 + 2048 + 248,
            cached_input_tokens: 2048,
            cache_write_tokens: 248,
            output_tokens: 57,
            reasoning_tokens: 0,
        };
        // 12×3 + 2048×0.30 + 248×3.75 + 57×15 = 36 + 614.4 + 930 + 855 = 2435.4 → /1e6
        assert_eq!(cost_of(&m, &u).to_string(), "0.0024354");
        // Without a cache-write price: 1.25 × input = 3.75, the same here …
        let m = model_with_write("3", "15", Some("0.30"), None);
        assert_eq!(cost_of(&m, &u).to_string(), "0.0024354");
        // … and at an odd input price, exactly 1.25 × it: 248 × 0.123 × 1.25 = 38.13.
        let m = model_with_write("0.123", "0", Some("0"), None);
        let only_writes = Usage {
            input_tokens: 248,
            cache_write_tokens: 248,
            ..Usage::default()
        };
        assert_eq!(cost_of(&m, &only_writes).to_string(), "0.00003813");
        // Writes were priced as plain input before: 248 × 0.123 = 30.504.
        let plain = Usage {
            input_tokens: 248,
            ..Usage::default()
        };
        assert_eq!(cost_of(&m, &plain).to_string(), "0.000030504");
    }

    #[test]
    fn inconsistent_counts_never_bill_more_than_the_input() {
        // More cache reads and writes reported than input tokens: reads first, then
        // writes, each capped by what is left.
        let m = model_with_write("1", "0", Some("0.1"), Some("10"));
        let u = Usage {
            input_tokens: 100,
            cached_input_tokens: 60,
            cache_write_tokens: 70,
            ..Usage::default()
        };
        // 0 plain + 60×0.1 + 40×10 = 406 → /1e6
        assert_eq!(cost_of(&m, &u).to_string(), "0.000406");
    }

    #[test]
    fn huge_counts_and_prices_saturate_instead_of_panicking() {
        let m = model_with_write(
            "79228162514264337593543950335",
            "79228162514264337593543950335",
            None,
            None,
        );
        let u = Usage {
            input_tokens: u64::MAX,
            cached_input_tokens: u64::MAX / 2,
            cache_write_tokens: u64::MAX / 4,
            output_tokens: u64::MAX,
            reasoning_tokens: u64::MAX,
        };
        assert_eq!(cost_of(&m, &u), Decimal::MAX / MILLION);
        let m = model("0.15", "0.60", None);
        assert!(cost_of(&m, &u) > Decimal::ZERO);
    }
}
