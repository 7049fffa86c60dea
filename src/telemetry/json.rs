//! The JSON log lines (`SWITCHYARD_LOG_FORMAT=json`, what the deploy files set), written
//! by a formatter of our own in the shape `tracing-subscriber`'s `.json()` writes:
//!
//! ```text
//! {"timestamp":"2026-12-07T19:00:00.123456Z","level":"INFO","fields":{"message":"…",…},
//!  "target":"switchyard::job","span":{<its fields, by name>,"name":"job"},"spans":[…]}
//! ```
//!
//! Why not theirs: it keeps each span's fields as a JSON text and parses it back with
//! `serde_json` for every event in the span (twice: once for `span`, once in `spans`), and
//! builds the event's fields through serde's map serializer. The worker writes one line per
//! finished job (`switchyard::job`), so the formatter is on the hot path: theirs cost
//! ~34,000 instructions a job more than the plain text lines (callgrind, `scripts/bench.sh
//! --only profile`); this one writes straight into the line's buffer. The output is the
//! same, byte for byte but the timestamp (tested against theirs below).

use std::fmt::{self, Write as _};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_log::NormalizeEvent;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::{LookupSpan, SpanRef};

/// The event format: one JSON object per line.
#[derive(Debug, Default, Clone, Copy)]
pub struct JsonLines;

/// How span fields are kept until an event prints them: the members of a JSON object
/// (`"k":v,…`, no braces), sorted by name, a later value of a name replacing an earlier.
#[derive(Debug, Default, Clone, Copy)]
pub struct JsonFields;

impl<S> FormatEvent<S, JsonFields> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonFields>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        // The line is built in a buffer of this thread's, reused from line to line, and
        // handed over in one piece: written straight into `w` (a `dyn fmt::Write`), each
        // of its ~100 pieces was a call through a vtable (callgrind: ~16,500 instructions
        // for the finished-job line).
        LINE.with(|cell| {
            let mut kept = cell.try_borrow_mut();
            // A buffer of its own only if formatting a value logged a line of its own on
            // this thread (the kept one is in use then); `String::new` allocates nothing.
            let mut own = String::new();
            let buf = match kept.as_deref_mut() {
                Ok(b) => b,
                Err(_) => &mut own,
            };
            buf.clear();
            line(ctx, buf, event)?;
            let r = w.write_str(buf);
            if buf.capacity() > MAX_KEPT {
                *buf = String::with_capacity(LINE_CAPACITY);
            }
            r
        })
    }
}

/// What a line's buffer starts with, and the most it keeps between lines.
const LINE_CAPACITY: usize = 1024;
const MAX_KEPT: usize = 64 * 1024;

thread_local! {
    static LINE: std::cell::RefCell<String> = std::cell::RefCell::new(String::with_capacity(LINE_CAPACITY));
}

fn line<S>(ctx: &FmtContext<'_, S, JsonFields>, w: &mut String, event: &Event<'_>) -> fmt::Result
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    let normalized = event.normalized_metadata();
    let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
    w.push_str("{\"timestamp\":\"");
    w.push_str(&timestamp(std::time::SystemTime::now()));
    w.push_str("\",\"level\":\"");
    w.push_str(meta.level().as_str());
    w.push_str("\",\"fields\":{");
    let mut fields = Members {
        w: &mut *w,
        first: true,
        result: Ok(()),
    };
    event.record(&mut fields);
    fields.result?;
    w.push_str("},\"target\":");
    string(w, meta.target())?;
    let current = event
        .parent()
        .and_then(|id| ctx.span(id))
        .or_else(|| ctx.lookup_current());
    if let Some(span) = &current {
        w.push_str(",\"span\":");
        span_object(w, span)?;
        // As theirs: the list is the current span's scope (not the event's parent's).
        if let Some(leaf) = ctx.lookup_current() {
            w.push_str(",\"spans\":[");
            for (i, s) in leaf.scope().from_root().enumerate() {
                if i > 0 {
                    w.push(',');
                }
                span_object(w, &s)?;
            }
            w.push(']');
        } else {
            w.push_str(",\"spans\":[]");
        }
    }
    w.push_str("}\n");
    Ok(())
}

fn span_object<S>(w: &mut String, span: &SpanRef<'_, S>) -> fmt::Result
where
    S: for<'a> LookupSpan<'a>,
{
    w.push('{');
    let ext = span.extensions();
    if let Some(fields) = ext.get::<FormattedFields<JsonFields>>() {
        if !fields.fields.is_empty() {
            w.push_str(&fields.fields);
            w.push(',');
        }
    }
    w.push_str("\"name\":");
    string(w, span.metadata().name())?;
    w.push('}');
    Ok(())
}

impl<'w> FormatFields<'w> for JsonFields {
    fn format_fields<R: RecordFields>(&self, mut w: Writer<'w>, fields: R) -> fmt::Result {
        let mut values = SpanValues::default();
        fields.record(&mut values);
        // Into a `String`, then `w` (a `dyn fmt::Write`) in one piece.
        let mut out = String::with_capacity(values.text.len() + 16 * values.members.len());
        values.write(&mut out)?;
        w.write_str(&out)
    }

    fn add_fields(
        &self,
        current: &'w mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        // Rare (a span's `record`): parse what is kept, add, write again.
        let mut values = SpanValues::default();
        if !current.fields.is_empty() {
            let kept: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(&format!("{{{}}}", current.fields)).map_err(|_| fmt::Error)?;
            for (k, v) in kept {
                let start = values.text.len();
                values.text.push_str(&v.to_string());
                values
                    .members
                    .push((Name::Owned(k), start..values.text.len()));
            }
        }
        fields.record(&mut values);
        let mut out = String::new();
        values.write(&mut out)?;
        current.fields = out;
        Ok(())
    }
}

enum Name {
    Static(&'static str),
    Owned(String),
}

impl Name {
    fn as_str(&self) -> &str {
        match self {
            Name::Static(s) => s,
            Name::Owned(s) => s,
        }
    }
}

/// A span's fields as their JSON texts, in one buffer.
#[derive(Default)]
struct SpanValues {
    text: String,
    members: Vec<(Name, std::ops::Range<usize>)>,
}

impl SpanValues {
    fn push(&mut self, field: &Field, value: Val<'_>) {
        let name = field.name();
        // As theirs: `r#type` is `type`, and a `log` record's metadata fields are left out
        // (those come as debug values).
        let name = name.strip_prefix("r#").unwrap_or(name);
        let start = self.text.len();
        if value.write(&mut self.text).is_ok() {
            self.members
                .push((Name::Static(name), start..self.text.len()));
        } else {
            self.text.truncate(start);
        }
    }

    fn write(mut self, w: &mut String) -> fmt::Result {
        // Sorted by name; of equal names the last recorded wins (a stable sort keeps them
        // in order, and only the last of each run is written).
        self.members.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
        let n = self.members.len();
        let mut first = true;
        for i in 0..n {
            if i + 1 < n && self.members[i + 1].0.as_str() == self.members[i].0.as_str() {
                continue;
            }
            let (name, range) = &self.members[i];
            if !first {
                w.write_char(',')?;
            }
            first = false;
            string(w, name.as_str())?;
            w.write_char(':')?;
            w.write_str(&self.text[range.clone()])?;
        }
        Ok(())
    }
}

impl Visit for SpanValues {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.push(field, Val::F64(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.push(field, Val::I64(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.push(field, Val::U64(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.push(field, Val::Bool(value));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.push(field, Val::Str(value));
    }
    fn record_bytes(&mut self, field: &Field, value: &[u8]) {
        // As serde_json writes a byte slice: an array of numbers.
        self.push(field, Val::Bytes(value));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name().starts_with("log.") {
            return;
        }
        self.push(field, Val::Debug(value));
    }
}

/// An event's fields, written as they are visited (as theirs: names as declared, every
/// field, `log.*` included).
struct Members<'a> {
    w: &'a mut String,
    first: bool,
    result: fmt::Result,
}

impl Members<'_> {
    fn member(&mut self, field: &Field, value: Val<'_>) {
        if self.result.is_err() {
            return;
        }
        let first = std::mem::replace(&mut self.first, false);
        let w = &mut *self.w;
        if !first {
            w.push(',');
        }
        self.result = string(w, field.name()).and_then(|()| {
            w.push(':');
            value.write(w)
        });
    }
}

impl Visit for Members<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.member(field, Val::F64(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.member(field, Val::I64(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.member(field, Val::U64(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.member(field, Val::Bool(value));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.member(field, Val::Str(value));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.member(field, Val::Debug(value));
    }
}

/// A field's value, as both visitors write it.
enum Val<'a> {
    F64(f64),
    I64(i64),
    U64(u64),
    Bool(bool),
    Str(&'a str),
    Bytes(&'a [u8]),
    Debug(&'a dyn fmt::Debug),
}

impl Val<'_> {
    fn write(self, w: &mut impl fmt::Write) -> fmt::Result {
        match self {
            Val::F64(v) => float(w, v),
            Val::I64(v) => w.write_str(itoa::Buffer::new().format(v)),
            Val::U64(v) => w.write_str(itoa::Buffer::new().format(v)),
            Val::Bool(v) => w.write_str(if v { "true" } else { "false" }),
            Val::Str(v) => string(w, v),
            Val::Bytes(v) => {
                w.write_char('[')?;
                for (i, b) in v.iter().enumerate() {
                    if i > 0 {
                        w.write_char(',')?;
                    }
                    w.write_str(itoa::Buffer::new().format(*b))?;
                }
                w.write_char(']')
            }
            Val::Debug(v) => debug_string(w, v),
        }
    }
}

/// A float as serde_json writes it (`null` when not finite).
fn float(w: &mut impl fmt::Write, value: f64) -> fmt::Result {
    match serde_json::Number::from_f64(value) {
        Some(n) => write!(w, "{n}"),
        None => w.write_str("null"),
    }
}

/// `value`'s `Debug` text as a JSON string, escaped as it is written (no copy).
fn debug_string(w: &mut impl fmt::Write, value: &dyn fmt::Debug) -> fmt::Result {
    w.write_char('"')?;
    write!(Escaping(w), "{value:?}")?;
    w.write_char('"')
}

/// A JSON string.
fn string(w: &mut impl fmt::Write, s: &str) -> fmt::Result {
    w.write_char('"')?;
    escape(w, s)?;
    w.write_char('"')
}

/// Writes what it is given with JSON string escaping, as serde_json escapes: `"`, `\` and
/// the control characters below U+0020, nothing else.
struct Escaping<'a, W: fmt::Write>(&'a mut W);

impl<W: fmt::Write> fmt::Write for Escaping<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        escape(self.0, s)
    }
}

fn escape(w: &mut (impl fmt::Write + ?Sized), s: &str) -> fmt::Result {
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc = ESCAPE[b as usize];
        if esc == 0 {
            continue;
        }
        // Every byte escaped is ASCII, so `i` is a character boundary.
        if start < i {
            w.write_str(&s[start..i])?;
        }
        match esc {
            b'u' => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                w.write_str("\\u00")?;
                w.write_char(HEX[(b >> 4) as usize] as char)?;
                w.write_char(HEX[(b & 0xf) as usize] as char)?;
            }
            c => {
                w.write_char('\\')?;
                w.write_char(c as char)?;
            }
        }
        start = i + 1;
    }
    if start < bytes.len() {
        w.write_str(&s[start..])?;
    }
    Ok(())
}

/// For each byte: 0 when it is written as it is, else the letter after its backslash
/// (`u`: `\u00XX`), as serde_json's table.
const ESCAPE: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = b'u';
        i += 1;
    }
    t[0x08] = b'b';
    t[0x09] = b't';
    t[0x0a] = b'n';
    t[0x0c] = b'f';
    t[0x0d] = b'r';
    t[b'"' as usize] = b'"';
    t[b'\\' as usize] = b'\\';
    t
};

/// `2026-12-07T19:00:00.123456Z`: UTC, microseconds, as theirs.
fn timestamp(now: std::time::SystemTime) -> TimeText {
    use chrono::{Datelike, Timelike};
    let t = chrono::DateTime::<chrono::Utc>::from(now);
    let mut b = *b"0000-00-00T00:00:00.000000Z";
    let year = t.year().clamp(0, 9999) as u32;
    put(&mut b[0..4], year);
    put(&mut b[5..7], t.month());
    put(&mut b[8..10], t.day());
    put(&mut b[11..13], t.hour());
    put(&mut b[14..16], t.minute());
    put(&mut b[17..19], t.second());
    put(&mut b[20..26], (t.nanosecond() % 1_000_000_000) / 1_000);
    TimeText(b)
}

/// The digits of `n`, zero-padded to the width of `out`.
fn put(out: &mut [u8], mut n: u32) {
    for d in out.iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

struct TimeText([u8; 27]);

impl std::ops::Deref for TimeText {
    type Target = str;
    fn deref(&self) -> &str {
        // Only ASCII digits and separators are ever written into it.
        std::str::from_utf8(&self.0).unwrap_or("")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn lines(&self) -> Vec<String> {
            let bytes = self.0.lock().unwrap().clone();
            String::from_utf8(bytes)
                .unwrap()
                .lines()
                .map(str::to_string)
                .collect()
        }
    }

    struct Shown;
    impl fmt::Display for Shown {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("shown \"quoted\"\n\u{1}")
        }
    }

    /// Events in nested spans with every kind of field, logged through both formatters.
    fn events() {
        let outer = tracing::info_span!("job", tenant = "acme", id = %"doc-1", priority = "normal");
        let _o = outer.enter();
        tracing::info!(target: "switchyard::job", id = %"doc-1", attempts = 2u64, delta = -3i64,
            ok = true, ratio = 0.25f64, nan = f64::NAN, r#type = "chat", shown = %Shown,
            debug = ?vec!["a", "b\"c"], text = "tab\there \\ \u{7f} é 😀", "job finished");
        let inner = tracing::info_span!(
            "call",
            provider = "openai",
            zeta = 1u64,
            alpha = true,
            r#kind = "x",
            dup = 1u64,
            dup = 2u64
        );
        let _i = inner.enter();
        tracing::warn!(latency_ms = 12u64, "a call failed: {}", "429 \"slow down\"");
        inner.record("zeta", 9u64);
        tracing::error!(empty = "", "recorded");
        drop(_i);
        drop(_o);
        tracing::info!(alone = 1u64, "no span");
        let parented = tracing::info_span!(parent: None, "detached", k = "v");
        tracing::info!(parent: &parented, "with an explicit parent");
    }

    fn ours(f: impl FnOnce()) -> Vec<String> {
        let out = Captured::default();
        let w = out.clone();
        let sub = tracing_subscriber::fmt()
            .fmt_fields(JsonFields)
            .event_format(JsonLines)
            .with_writer(move || w.clone())
            .finish();
        tracing::subscriber::with_default(sub, f);
        out.lines()
    }

    fn theirs(f: impl FnOnce()) -> Vec<String> {
        let out = Captured::default();
        let w = out.clone();
        let sub = tracing_subscriber::fmt()
            .json()
            .with_writer(move || w.clone())
            .finish();
        tracing::subscriber::with_default(sub, f);
        out.lines()
    }

    /// The line without its timestamp's value (the only part that differs).
    fn untimed(line: &str) -> String {
        let head = "{\"timestamp\":\"";
        assert!(line.starts_with(head), "{line}");
        let rest = &line[head.len()..];
        let end = rest.find('"').unwrap();
        format!("{head}{}", &rest[end..])
    }

    #[test]
    fn writes_what_tracing_subscribers_json_writes_byte_for_byte() {
        let a = ours(events);
        let b = theirs(events);
        assert_eq!(a.len(), 5, "{a:#?}");
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(untimed(x), untimed(y));
            serde_json::from_str::<serde_json::Value>(x).expect("one JSON object per line");
        }
        // And what the lines hold, read back.
        let v: serde_json::Value = serde_json::from_str(&a[1]).unwrap();
        assert_eq!(v["level"], "WARN");
        assert_eq!(v["fields"]["message"], "a call failed: 429 \"slow down\"");
        assert_eq!(v["span"]["name"], "call");
        assert_eq!(v["span"]["dup"], 2);
        assert_eq!(v["spans"][0]["tenant"], "acme");
        let v: serde_json::Value = serde_json::from_str(&a[2]).unwrap();
        assert_eq!(
            v["span"]["zeta"], 9,
            "a recorded field replaces the first value"
        );
    }

    #[test]
    fn timestamps_are_utc_microseconds() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_micros(1_796_670_000_123_456);
        assert_eq!(&*timestamp(t), "2026-12-07T19:00:00.123456Z");
        let now = std::time::SystemTime::now();
        let ours = timestamp(now);
        let parsed = chrono::DateTime::parse_from_rfc3339(&ours).unwrap();
        let back = chrono::DateTime::<chrono::Utc>::from(now);
        assert_eq!(parsed.timestamp_micros(), back.timestamp_micros());
    }

    #[test]
    fn escapes_as_serde_json_does() {
        let all: String = (0u8..=0x7f).map(char::from).chain("é😀".chars()).collect();
        let mut out = String::new();
        string(&mut out, &all).unwrap();
        assert_eq!(out, serde_json::to_string(&all).unwrap());
    }
}
