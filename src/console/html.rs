//! Server-side HTML: one escape function every rendered value goes through ([`esc`]),
//! the page frame, tables, times (`<time>` in UTC, shown in the viewer's zone by
//! `console.js`), query strings and hidden-content placeholders.

use super::auth::Session;
use chrono::{DateTime, Utc};
use std::fmt::Write as _;

/// `s` safe in HTML text and in a double- or single-quoted attribute.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// An optional value, escaped; `—` when absent.
pub fn opt(s: Option<&str>) -> String {
    s.map_or_else(|| "—".to_string(), esc)
}

/// A time for the viewer's zone: UTC in the text, converted by `console.js`.
pub fn time(t: DateTime<Utc>) -> String {
    format!(
        "<time datetime=\"{}\">{}</time>",
        t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        t.format("%Y-%m-%d %H:%M:%S UTC")
    )
}

pub fn opt_time(t: Option<DateTime<Utc>>) -> String {
    t.map_or_else(|| "—".to_string(), time)
}

/// A query string (`?a=1&b=2`) of the non-empty pairs, encoded.
pub fn query<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut ser = form_urlencoded::Serializer::new(String::new());
    let mut any = false;
    for (k, v) in pairs {
        if !v.is_empty() {
            ser.append_pair(k, v);
            any = true;
        }
    }
    if any {
        format!("?{}", ser.finish())
    } else {
        String::new()
    }
}

/// One path segment, percent-encoded (tenants and ids are plain, but a link is built
/// from what the database holds).
pub fn seg(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// A table: header cells (plain text, escaped here) and rows of cells that are HTML
/// already (each caller escapes its values).
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    if rows.is_empty() {
        return "<p class=\"empty\">Nothing here.</p>".into();
    }
    let mut out = String::from("<table>");
    // A table of label / value pairs has no headings: no empty heading row either.
    if headers.iter().any(|h| !h.is_empty()) {
        out.push_str("<thead><tr>");
        for h in headers {
            let _ = write!(out, "<th>{}</th>", esc(h));
        }
        out.push_str("</tr></thead>");
    }
    out.push_str("<tbody>");
    for r in rows {
        out.push_str("<tr>");
        for c in r {
            let _ = write!(out, "<td>{c}</td>");
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table>");
    out
}

/// A labelled text input of a filter form, holding `value`.
pub fn text_input(label: &str, name: &str, value: Option<&str>, hint: &str) -> String {
    format!(
        "<label>{}<input name=\"{}\" value=\"{}\" placeholder=\"{}\"></label>",
        esc(label),
        esc(name),
        esc(value.unwrap_or("")),
        esc(hint)
    )
}

/// A JSON value, pretty, escaped, in a `<pre>`.
pub fn json_block(v: &serde_json::Value) -> String {
    let text = serde_json::to_string_pretty(v).unwrap_or_default();
    format!("<pre class=\"json\">{}</pre>", esc(&text))
}

/// What stands where content is hidden.
pub const HIDDEN: &str = "(hidden: [console] show_content = false)";

/// The hidden field every POST form carries.
pub fn csrf_field(session: &Session) -> String {
    format!(
        "<input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        esc(&session.csrf)
    )
}

/// A whole page: the frame around `body` (HTML already).
pub fn page(title: &str, session: Option<&Session>, body: &str) -> String {
    let nav = match session {
        Some(s) => format!(
            "<nav><a href=\"/\">Overview</a><a href=\"/jobs\">Jobs</a><a href=\"/dlq\">Dead letters</a><a href=\"/spend\">Spend</a></nav>\
             <span class=\"who\">{} ({}){}</span>",
            esc(&s.who),
            esc(s.role.as_str()),
            if s.anonymous {
                String::new()
            } else {
                format!(
                    " <form method=\"post\" action=\"/logout\" class=\"inline\">{}<button>Sign out</button></form>",
                    csrf_field(s)
                )
            }
        ),
        None => String::new(),
    };
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · switchyard</title>\
         <link rel=\"stylesheet\" href=\"/assets/console.css\">\
         <script src=\"/assets/console.js\" defer></script></head>\
         <body><header><strong>switchyard</strong>{nav}</header><main><h1>{}</h1>{body}</main></body></html>\n",
        esc(title),
        esc(title)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_every_special_character() {
        assert_eq!(
            esc(r#"<script>alert("x" & 'y')</script>"#),
            "&lt;script&gt;alert(&quot;x&quot; &amp; &#39;y&#39;)&lt;/script&gt;"
        );
        assert_eq!(esc("plain ünïcode"), "plain ünïcode");
        assert_eq!(esc(""), "");
        assert_eq!(opt(None), "—");
        assert_eq!(opt(Some("<b>")), "&lt;b&gt;");
    }

    #[test]
    fn queries_and_segments_are_encoded() {
        assert_eq!(
            query([("a", "x y"), ("b", ""), ("c", "&=")]),
            "?a=x+y&c=%26%3D"
        );
        assert_eq!(query([("a", "")]), "");
        assert_eq!(seg("a/b c"), "a%2Fb+c");
    }

    #[test]
    fn table_cells_are_the_callers_html_and_headers_are_escaped() {
        let t = table(&["<h>"], &[vec![esc("<v>")]]);
        assert!(t.contains("<th>&lt;h&gt;</th>") && t.contains("<td>&lt;v&gt;</td>"));
        assert!(table(&["a"], &[]).contains("Nothing here"));
        assert!(!table(&["", ""], &[vec!["k".into(), "v".into()]]).contains("<thead>"));
    }
}
