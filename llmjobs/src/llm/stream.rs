//! A server-sent events parser, fed with body chunks as they arrive.

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SseEvent {
    /// The `event:` field, if any.
    pub(crate) event: Option<String>,
    /// The `data:` lines, joined with newlines.
    pub(crate) data: String,
}

/// Incremental parser (per the WHATWG `text/event-stream` rules that LLM APIs use): bytes may
/// be split anywhere, even inside a UTF-8 character.
#[derive(Debug, Default)]
pub(crate) struct SseParser {
    pending: Vec<u8>,
    event: Option<String>,
    data: String,
    has_data: bool,
}

impl SseParser {
    /// Feeds a chunk; returns the events it completed.
    pub(crate) fn push(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        self.pending.extend_from_slice(chunk);
        let mut events = Vec::new();
        let mut start = 0;
        while let Some(offset) = self.pending[start..].iter().position(|&b| b == b'\n') {
            let end = start + offset;
            let mut line = &self.pending[start..end];
            if let Some(stripped) = line.strip_suffix(b"\r") {
                line = stripped;
            }
            let line = String::from_utf8_lossy(line).into_owned();
            if let Some(event) = self.line(&line) {
                events.push(event);
            }
            start = end + 1;
        }
        self.pending.drain(..start);
        events
    }

    /// Whether bytes or fields of an unfinished event are buffered (a stream that ends here
    /// was cut off mid-event).
    pub(crate) fn has_partial_event(&self) -> bool {
        !self.pending.is_empty() || self.has_data
    }

    fn line(&mut self, line: &str) -> Option<SseEvent> {
        if line.is_empty() {
            if !self.has_data {
                self.event = None;
                return None;
            }
            self.has_data = false;
            let mut data = std::mem::take(&mut self.data);
            if data.ends_with('\n') {
                data.pop();
            }
            return Some(SseEvent {
                event: self.event.take(),
                data,
            });
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "data" => {
                self.data.push_str(value);
                self.data.push('\n');
                self.has_data = true;
            }
            "event" => self.event = Some(value.to_string()),
            _ => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(chunks: &[&[u8]]) -> Vec<SseEvent> {
        let mut parser = SseParser::default();
        chunks.iter().flat_map(|c| parser.push(c)).collect()
    }

    #[test]
    fn events_split_across_chunks_and_crlf() {
        let events = parse_all(&[
            b"event: ping\r\nda",
            b"ta: {\"a\":",
            b" 1}\r\n\r\n: comment\n\ndata: [DONE]\n\n",
        ]);
        assert_eq!(
            events,
            [
                SseEvent {
                    event: Some("ping".into()),
                    data: "{\"a\": 1}".into()
                },
                SseEvent {
                    event: None,
                    data: "[DONE]".into()
                }
            ]
        );
    }

    #[test]
    fn multi_line_data_is_joined_and_utf8_survives_splits() {
        let text = "data: é\ndata: two\n\n".as_bytes();
        let (a, b) = text.split_at(7); // inside the two-byte 'é'
        let events = parse_all(&[a, b]);
        assert_eq!(events[0].data, "é\ntwo");
    }

    #[test]
    fn an_unterminated_event_is_reported_as_partial() {
        let mut parser = SseParser::default();
        assert!(parser.push(b"data: {\"cut").is_empty());
        assert!(parser.has_partial_event());
    }
}
