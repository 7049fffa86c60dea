//! Where cost is computed: exact decimal USD from a model's prices and reported usage.
//!
//! cost = (input − cached) × input price + cached × cached-input price + output × output
//! price, prices per million tokens. No floats anywhere on this path.

use crate::config::ModelConfig;
use crate::job::Usage;
use rust_decimal::Decimal;

const MILLION: Decimal = Decimal::from_parts(1_000_000, 0, 0, false, 0);

/// Exact cost of one call.
pub fn cost_of(model: &ModelConfig, usage: &Usage) -> Decimal {
    let cached = usage.cached_input_tokens.min(usage.input_tokens);
    let uncached = usage.input_tokens - cached;
    let cached_price = model.cached_input_per_mtok.unwrap_or(model.input_per_mtok);
    let total = Decimal::from(uncached) * model.input_per_mtok
        + Decimal::from(cached) * cached_price
        + Decimal::from(usage.output_tokens) * model.output_per_mtok;
    (total / MILLION).normalize()
}

/// The most a call can cost: every input token uncached and `max_tokens` of output.
pub fn worst_case(model: &ModelConfig, input_tokens: u64, max_tokens: u32) -> Decimal {
    cost_of(
        model,
        &Usage {
            input_tokens,
            cached_input_tokens: 0,
            output_tokens: u64::from(max_tokens),
            reasoning_tokens: 0,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Tier;
    use std::str::FromStr;

    fn model(input: &str, output: &str, cached: Option<&str>) -> ModelConfig {
        ModelConfig {
            name: "m".into(),
            provider: "p".into(),
            upstream: "m".into(),
            tier: Tier::Fast,
            context_window: 1000,
            input_per_mtok: Decimal::from_str(input).unwrap(),
            output_per_mtok: Decimal::from_str(output).unwrap(),
            cached_input_per_mtok: cached.map(|c| Decimal::from_str(c).unwrap()),
            batch_input_per_mtok: None,
            batch_output_per_mtok: None,
            aliases: vec![],
            max_output_tokens: None,
        }
    }

    #[test]
    fn contract_example() {
        // gemini-2.0-flash: 0.10 in, 0.40 out; 812 in, 96 out → 0.0001196
        let m = model("0.10", "0.40", Some("0.025"));
        let u = Usage {
            input_tokens: 812,
            cached_input_tokens: 0,
            output_tokens: 96,
            reasoning_tokens: 0,
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
            reasoning_tokens: 0,
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
            cached_input_tokens: 0,
            output_tokens: 0,
            reasoning_tokens: 0,
        };
        let mut total = Decimal::ZERO;
        for _ in 0..1_000_000 {
            total += cost_of(&m, &one);
        }
        assert_eq!(total, Decimal::from_str("0.15").unwrap());
    }
}
