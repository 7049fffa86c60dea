use super::*;
use crate::job::{FunctionCall, FunctionType, ToolCall};

fn out(content: &str) -> Output {
    Output {
        content: Some(content.to_string()),
        tool_calls: Vec::new(),
        finish_reason: "stop".into(),
    }
}

fn call(name: &str, args: &str) -> Output {
    Output {
        content: None,
        tool_calls: vec![ToolCall {
            id: "c1".into(),
            kind: FunctionType::Function,
            function: FunctionCall {
                name: name.into(),
                arguments: args.into(),
            },
        }],
        finish_reason: "tool_calls".into(),
    }
}

#[test]
fn json_equal_ignores_key_order_whitespace_and_number_spelling() {
    let a = out(r#"{"a": 1, "b": [true, {"x": "y"}], "c": 2.5}"#);
    let b = out("{\n  \"c\":2.50,\"b\":[true,{\"x\":\"y\"}],\n\"a\":1.0}");
    let c = compare(CompareKind::Json, &a, &b, 0.9).unwrap();
    assert!(c.agree);
    assert_eq!(c.similarity, None);
    // Exact sees the difference.
    assert!(!compare(CompareKind::Exact, &a, &b, 0.9).unwrap().agree);
    // A different value, a missing key, an extra key, array order: not equal.
    for other in [
        r#"{"a": 2, "b": [true, {"x": "y"}], "c": 2.5}"#,
        r#"{"a": 1, "b": [true, {"x": "y"}]}"#,
        r#"{"a": 1, "b": [true, {"x": "y"}], "c": 2.5, "d": null}"#,
        r#"{"a": 1, "b": [{"x": "y"}, true], "c": 2.5}"#,
    ] {
        assert!(
            !compare(CompareKind::Json, &a, &out(other), 0.9)
                .unwrap()
                .agree,
            "{other}"
        );
    }
    // Text that is not JSON is compared exactly.
    assert!(
        compare(CompareKind::Json, &out("hi"), &out("hi"), 0.9)
            .unwrap()
            .agree
    );
    assert!(
        !compare(CompareKind::Json, &out("hi"), &out("hi "), 0.9)
            .unwrap()
            .agree
    );
    assert!(!text_equal_as_json(Some("1"), Some("\"1\"")));
    assert!(text_equal_as_json(Some(" [1, 2] "), Some("[1,2]")));
}

#[test]
fn tool_calls_are_compared_too() {
    let a = call("lookup", r#"{"q": "x", "n": 1}"#);
    let b = call("lookup", r#"{"n": 1, "q": "x"}"#);
    assert!(!compare(CompareKind::Exact, &a, &b, 0.9).unwrap().agree);
    assert!(compare(CompareKind::Json, &a, &b, 0.9).unwrap().agree);
    let c = call("search", r#"{"q": "x", "n": 1}"#);
    assert!(!compare(CompareKind::Json, &a, &c, 0.9).unwrap().agree);
    assert!(!compare(CompareKind::Json, &a, &out(""), 0.9).unwrap().agree);
    assert!(
        compare(CompareKind::Exact, &a, &a.clone(), 0.9)
            .unwrap()
            .agree
    );
}

#[test]
fn embedding_similarity_against_the_threshold() {
    let a = out("The contract ends on the last day of March.");
    let b = out("the contract ends on the last day of march");
    let c = out("Write a haiku about autumn leaves falling.");
    let same = compare(CompareKind::Embedding, &a, &b, 0.9).unwrap();
    assert!(same.agree);
    assert_eq!(same.similarity, Some(1.0));
    let far = compare(CompareKind::Embedding, &a, &c, 0.9).unwrap();
    assert!(!far.agree);
    assert!(far.similarity.unwrap() < 0.3, "{far:?}");
    // The threshold decides.
    let s = far.similarity.unwrap();
    assert!(
        compare(CompareKind::Embedding, &a, &c, s.max(0.0001))
            .unwrap()
            .agree
    );
    // Empty against empty agrees; empty against text does not.
    assert!(
        compare(CompareKind::Embedding, &out(""), &out(""), 0.9)
            .unwrap()
            .agree
    );
    assert!(
        !compare(CompareKind::Embedding, &out(""), &a, 0.9)
            .unwrap()
            .agree
    );
    assert!(compare(CompareKind::Judge, &a, &b, 0.9).is_none());
}

#[test]
fn verdicts_are_parsed_strictly() {
    assert_eq!(parse_verdict(&out(r#"{"verdict": "agree"}"#)), Ok(true));
    assert_eq!(
        parse_verdict(&out(" {\"verdict\":\"disagree\"}\n")),
        Ok(false)
    );
    for bad in [
        "agree",
        "AGREE",
        r#"{"verdict": "Agree"}"#,
        r#"{"verdict": "agree", "why": "same"}"#,
        r#"{"verdict": true}"#,
        r#"["agree"]"#,
        "",
    ] {
        assert!(parse_verdict(&out(bad)).is_err(), "{bad}");
    }
}

#[test]
fn judge_request_holds_the_prompt_the_request_and_both_answers() {
    let job: Job = serde_json::from_str(
        r#"{"id":"j","tenant":"t","messages":[{"role":"system","content":"be brief"},{"role":"user","content":"What is 2+2?"}]}"#,
    )
    .unwrap();
    let (msgs, format) = judge_request("judge!", &job, &out("4"), &call("calc", "{}"));
    assert_eq!(msgs.len(), 2);
    assert_eq!(msgs[0].role, Role::System);
    let Some(Content::Text(user)) = &msgs[1].content else {
        panic!("no text")
    };
    assert!(user.contains("What is 2+2?") && user.contains("Answer A:\n4"));
    assert!(user.contains("Answer B:\ncalc({})"), "{user}");
    assert!(matches!(format, ResponseFormat::JsonSchema { .. }));
}

#[test]
fn sampling_is_stable_and_near_the_rate() {
    assert!(!sampled("t", "a", 0.0));
    assert!(sampled("t", "a", 1.0));
    let n = 20_000;
    let hits = (0..n)
        .filter(|i| sampled("acme", &format!("doc-{i}"), 0.1))
        .count();
    // 10 % of 20,000 = 2,000; a fair hash stays well inside ±10 %.
    assert!((1800..=2200).contains(&hits), "{hits}");
    for i in 0..100 {
        let id = format!("x{i}");
        assert_eq!(sampled("acme", &id, 0.3), sampled("acme", &id, 0.3));
    }
}
