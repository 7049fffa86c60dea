//! Server-sent events (the WHATWG `text/event-stream` format) as the three providers
//! stream answers: bytes in as they arrive, whole events out. An event is its `event:`
//! field (if any) and its `data:` lines joined by `\n`; it ends at a blank line. Lines end
//! in `\n`, `\r\n` or `\r`; `:` lines are comments; a frame may be split anywhere across
//! reads (inside a line, between `\r` and `\n`, inside a UTF-8 sequence).

/// One event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Event {
    /// The `event:` field; `None` when the event has none (OpenAI, Gemini).
    pub event: Option<String>,
    pub data: String,
}

/// Bytes in, events out.
#[derive(Debug, Default)]
pub struct Decoder {
    /// The line read so far (bytes: a UTF-8 sequence may be split across reads).
    line: Vec<u8>,
    /// The last byte ended a line with `\r`: a `\n` right after it belongs to that end.
    after_cr: bool,
    event: Option<String>,
    data: String,
    /// Some `data:` line was seen for the event under way.
    has_data: bool,
}

impl Decoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feed the next bytes of the body; every event they complete goes to `on_event`, in
    /// order. An error of `on_event` stops the feed and is returned.
    pub fn feed<E>(
        &mut self,
        bytes: &[u8],
        mut on_event: impl FnMut(Event) -> Result<(), E>,
    ) -> Result<(), E> {
        for &b in bytes {
            if self.after_cr {
                self.after_cr = false;
                if b == b'\n' {
                    continue;
                }
            }
            match b {
                b'\n' | b'\r' => {
                    self.after_cr = b == b'\r';
                    if let Some(ev) = self.end_line() {
                        on_event(ev)?;
                    }
                }
                _ => self.line.push(b),
            }
        }
        Ok(())
    }

    /// Bytes of an event that has not ended (no blank line yet) are held: true when the
    /// body stopped inside an event (what a cut stream looks like).
    pub fn pending(&self) -> bool {
        !self.line.is_empty() || self.has_data || self.event.is_some()
    }

    fn end_line(&mut self) -> Option<Event> {
        let line = std::mem::take(&mut self.line);
        if line.is_empty() {
            if !self.has_data {
                // An event without data is not dispatched (WHATWG); its type is dropped.
                self.event = None;
                return None;
            }
            self.has_data = false;
            return Some(Event {
                event: self.event.take(),
                data: std::mem::take(&mut self.data),
            });
        }
        let line = String::from_utf8_lossy(&line);
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line.as_ref(), ""),
        };
        match field {
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            "event" => self.event = Some(value.to_string()),
            // `id:` and `retry:` mean nothing to a single answer.
            _ => {}
        }
        None
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn events_of(pieces: &[&[u8]]) -> (Vec<Event>, bool) {
        let mut d = Decoder::new();
        let mut out = Vec::new();
        for p in pieces {
            d.feed::<()>(p, |e| {
                out.push(e);
                Ok(())
            })
            .unwrap();
        }
        (out, d.pending())
    }

    fn ev(event: Option<&str>, data: &str) -> Event {
        Event {
            event: event.map(str::to_string),
            data: data.to_string(),
        }
    }

    #[test]
    fn whole_frames() {
        let body = b"event: message_start\ndata: {\"a\":1}\n\n: a comment\n\ndata: x\ndata: y\n\ndata: [DONE]\n\n";
        let (evs, pending) = events_of(&[body]);
        assert_eq!(
            evs,
            vec![
                ev(Some("message_start"), "{\"a\":1}"),
                ev(None, "x\ny"),
                ev(None, "[DONE]")
            ]
        );
        assert!(!pending);
    }

    #[test]
    fn every_split_of_a_body_gives_the_same_events() {
        // CRLF (Gemini), LF (OpenAI, Anthropic), a lone CR, a multi-byte character, a
        // field without a space, an event with no data.
        let body = "data: {\"t\":\"h\u{e9}llo \u{1F600}\"}\r\n\r\nevent: ping\ndata:{}\n\nevent: nothing\n\ndata: a\rdata: b\r\r".as_bytes();
        let (want, _) = events_of(&[body]);
        assert_eq!(
            want,
            vec![
                ev(None, "{\"t\":\"h\u{e9}llo \u{1F600}\"}"),
                ev(Some("ping"), "{}"),
                ev(None, "a\nb"),
            ]
        );
        for i in 0..=body.len() {
            for j in i..=body.len() {
                let (got, pending) = events_of(&[&body[..i], &body[i..j], &body[j..]]);
                assert_eq!(got, want, "split at {i}, {j}");
                assert!(!pending);
            }
        }
    }

    #[test]
    fn a_body_cut_inside_an_event_is_pending() {
        let (evs, pending) = events_of(&[b"data: {\"a\":1}\n\ndata: {\"b\""]);
        assert_eq!(evs.len(), 1);
        assert!(pending);
        let (_, pending) = events_of(&[b"data: {\"a\":1}\n\ndata: {}\n"]);
        assert!(pending, "a data line without its blank line has not ended");
    }

    #[test]
    fn the_callback_error_stops_the_feed() {
        let mut d = Decoder::new();
        let mut seen = 0;
        let r = d.feed(b"data: 1\n\ndata: 2\n\ndata: 3\n\n", |_| {
            seen += 1;
            if seen == 2 {
                Err("stop")
            } else {
                Ok(())
            }
        });
        assert_eq!((r, seen), (Err("stop"), 2));
    }
}
