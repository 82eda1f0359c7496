//! Webhook bodies: a JSON object, a JSON array of objects, or NDJSON, into [`Event`]s.

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::Event;
use crate::ids::{EVENT_ID_MAX, EventId};

/// How the request body is framed, from its `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFormat {
    Json,
    Ndjson,
}

impl BodyFormat {
    /// `application/json`, any `+json` type, and the NDJSON / JSON Lines names; parameters
    /// such as `charset` are ignored. `None` for anything else, or no content type at all.
    pub fn from_content_type(content_type: Option<&str>) -> Option<Self> {
        let essence = content_type?.split(';').next()?.trim().to_ascii_lowercase();
        match essence.as_str() {
            "application/json" => Some(Self::Json),
            "application/x-ndjson" | "application/ndjson" | "application/jsonl" | "application/x-jsonlines" => {
                Some(Self::Ndjson)
            }
            other if other.starts_with("application/") && other.ends_with("+json") => Some(Self::Json),
            _ => None,
        }
    }
}

/// What the request says about its own identity, and when it arrived.
#[derive(Debug, Clone, Default)]
pub struct RequestIdentity<'a> {
    /// `webhook-id`, else `Idempotency-Key`.
    pub request_id: Option<&'a str>,
    /// Receive time, unix milliseconds.
    pub received_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// Not JSON / NDJSON at all: 400.
    #[error("malformed JSON at line {line}, column {column}: {reason}")]
    Malformed { line: usize, column: usize, reason: String },
    /// Well-formed but not acceptable as an event: 422.
    #[error("event {index}: {reason}")]
    Invalid { index: usize, reason: String },
}

/// The fields Dash reads from an event; everything else is kept verbatim in the payload.
#[derive(Deserialize)]
struct EventFields<'a> {
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    timestamp: Option<&'a RawValue>,
}

/// Splits a body into events, applying the contract's identity and time rules.
/// All-or-nothing: any bad event fails the whole body.
pub fn parse_body(format: BodyFormat, body: &[u8], identity: &RequestIdentity<'_>) -> Result<Vec<Event>, BodyError> {
    match format {
        BodyFormat::Json => parse_json(body, identity),
        BodyFormat::Ndjson => parse_ndjson(body, identity),
    }
}

fn malformed(err: &serde_json::Error, line_offset: usize) -> BodyError {
    BodyError::Malformed { line: err.line() + line_offset, column: err.column(), reason: reason_of(err) }
}

/// serde_json's message without its trailing " at line L column C".
fn reason_of(err: &serde_json::Error) -> String {
    let text = err.to_string();
    match text.rfind(" at line ") {
        Some(cut) => text[..cut].to_owned(),
        None => text,
    }
}

fn parse_json(body: &[u8], identity: &RequestIdentity<'_>) -> Result<Vec<Event>, BodyError> {
    let whole: &RawValue = serde_json::from_slice(body).map_err(|e| malformed(&e, 0))?;
    match whole.get().as_bytes().first() {
        Some(b'{') => Ok(vec![event_from(whole, 0, Identity::Single(identity.request_id), identity.received_ms)?]),
        Some(b'[') => {
            let items: Vec<&RawValue> = serde_json::from_str(whole.get()).map_err(|e| malformed(&e, 0))?;
            items
                .into_iter()
                .enumerate()
                .map(|(index, raw)| {
                    event_from(raw, index, Identity::Indexed(identity.request_id), identity.received_ms)
                })
                .collect()
        }
        _ => Err(BodyError::Invalid { index: 0, reason: "body must be a JSON object or an array of objects".into() }),
    }
}

fn parse_ndjson(body: &[u8], identity: &RequestIdentity<'_>) -> Result<Vec<Event>, BodyError> {
    let mut events = Vec::with_capacity(memchr::memchr_iter(b'\n', body).count() + 1);
    let mut start = 0;
    let lines = memchr::memchr_iter(b'\n', body).chain(std::iter::once(body.len())).map(|end| {
        let line = &body[start..end];
        start = end + 1;
        line
    });
    for (line_index, line) in lines.enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let index = events.len();
        let line = line.trim_ascii();
        let event = match (line.first(), std::str::from_utf8(line)) {
            // The usual line, an object: one pass reads the fields and checks the syntax.
            (Some(b'{'), Ok(text)) => match serde_json::from_str::<EventFields<'_>>(text) {
                Ok(fields) => event_with_fields(
                    text,
                    fields,
                    index,
                    Identity::Indexed(identity.request_id),
                    identity.received_ms,
                )?,
                Err(e) if e.is_data() => return Err(unreadable(index, &e)),
                Err(e) => return Err(malformed(&e, line_index)),
            },
            _ => {
                let raw: &RawValue = serde_json::from_slice(line).map_err(|e| malformed(&e, line_index))?;
                event_from(raw, index, Identity::Indexed(identity.request_id), identity.received_ms)?
            }
        };
        events.push(event);
    }
    Ok(events)
}

/// Events from the array a polled source returned. Each item must be an object; its id is its
/// `id` field, else a digest of its text, so a poll that reads the same event again stores it once.
pub fn parse_polled(items: &[&RawValue], received_ms: i64) -> Result<Vec<Event>, BodyError> {
    items.iter().enumerate().map(|(index, raw)| event_from(raw, index, Identity::Content, received_ms)).collect()
}

/// `sha256:` and the first 128 bits of the text's SHA-256, in hex.
fn content_id(text: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(text.as_bytes());
    let mut id = String::with_capacity(7 + 32);
    id.push_str("sha256:");
    for byte in &digest[..16] {
        id.push_str(&format!("{byte:02x}"));
    }
    id
}

fn unreadable(index: usize, err: &serde_json::Error) -> BodyError {
    BodyError::Invalid { index, reason: format!("unreadable event: {}", reason_of(err)) }
}

/// Where an event without an `id` field gets its dedupe key from.
#[derive(Clone, Copy)]
enum Identity<'a> {
    /// A single-event body: the request id itself.
    Single(Option<&'a str>),
    /// One of many: `{request id}:{index}`.
    Indexed(Option<&'a str>),
    /// Read by a poll: a digest of the event's text, the same every time it is read again.
    Content,
}

fn event_from(raw: &RawValue, index: usize, identity: Identity<'_>, received_ms: i64) -> Result<Event, BodyError> {
    let invalid = |reason: String| BodyError::Invalid { index, reason };
    let text = raw.get();
    if !text.starts_with('{') {
        return Err(invalid("event must be a JSON object".into()));
    }
    let fields: EventFields<'_> = serde_json::from_str(text).map_err(|e| unreadable(index, &e))?;
    event_with_fields(text, fields, index, identity, received_ms)
}

/// Builds the event from its text and the fields already read from it.
fn event_with_fields(
    text: &str,
    fields: EventFields<'_>,
    index: usize,
    identity: Identity<'_>,
    received_ms: i64,
) -> Result<Event, BodyError> {
    let invalid = |reason: String| BodyError::Invalid { index, reason };
    let id = match fields.id.map(RawValue::get) {
        None | Some("null") => None,
        Some(raw_id) => Some(event_id_field(raw_id).map_err(invalid)?),
    };
    let id = match (id, identity) {
        (Some(id), _) => id,
        (None, Identity::Single(Some(request_id))) => request_id.to_owned(),
        (None, Identity::Indexed(Some(request_id))) => format!("{request_id}:{index}"),
        (None, Identity::Content) => content_id(text),
        (None, _) => EventId::generate().into_string(),
    };
    if id.is_empty() || id.len() > EVENT_ID_MAX + 21 {
        return Err(invalid(format!("event id must be 1 to {EVENT_ID_MAX} bytes")));
    }

    let time_ms = match fields.timestamp.map(RawValue::get) {
        None | Some("null") => received_ms,
        Some(raw_ts) => timestamp_field(raw_ts).map_err(invalid)?,
    };
    crate::payload::check_payload(text).map_err(|reason| invalid(format!("{reason} (event id {id:?})")))?;

    Ok(Event { id, time_ms, received_ms, payload: text.to_owned(), event_type: None })
}

/// The `id` field: a string, or an integer taken as its decimal text.
fn event_id_field(raw: &str) -> Result<String, String> {
    if raw.starts_with('"') {
        let id: String = serde_json::from_str(raw).map_err(|_| "field id is not a valid string".to_owned())?;
        EventId::check(&id).map_err(|e| format!("field id: {e}"))?;
        return Ok(id);
    }
    if raw.parse::<i64>().is_ok() {
        return Ok(raw.to_owned());
    }
    Err("field id must be a string".into())
}

/// Latest accepted event time: the last millisecond of year 9999.
const MAX_TIME_MS: i64 = 253_402_300_799_999;

/// The `timestamp` field: RFC 3339 text, or unix milliseconds.
fn timestamp_field(raw: &str) -> Result<i64, String> {
    let bad = || "field timestamp must be RFC 3339 text or unix milliseconds".to_owned();
    let ms = if raw.starts_with('"') {
        let text: String = serde_json::from_str(raw).map_err(|_| bad())?;
        chrono::DateTime::parse_from_rfc3339(&text).map_err(|_| bad())?.timestamp_millis()
    } else {
        raw.parse::<i64>().map_err(|_| bad())?
    };
    if !(0..=MAX_TIME_MS).contains(&ms) {
        return Err("field timestamp is out of range (1970 to 9999)".into());
    }
    Ok(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ident(request_id: Option<&str>) -> RequestIdentity<'_> {
        RequestIdentity { request_id, received_ms: 1_000 }
    }

    #[test]
    fn content_types() {
        assert_eq!(BodyFormat::from_content_type(Some("application/json; charset=utf-8")), Some(BodyFormat::Json));
        assert_eq!(BodyFormat::from_content_type(Some("application/cloudevents+json")), Some(BodyFormat::Json));
        assert_eq!(BodyFormat::from_content_type(Some("application/x-ndjson")), Some(BodyFormat::Ndjson));
        assert_eq!(BodyFormat::from_content_type(Some("text/plain")), None);
        assert_eq!(BodyFormat::from_content_type(None), None);
    }

    #[test]
    fn single_object_uses_field_then_header_then_uuid() {
        let with_field = parse_body(BodyFormat::Json, br#"{"id":"evt_1","a":1}"#, &ident(Some("msg_1"))).unwrap();
        assert_eq!(with_field[0].id, "evt_1");
        assert_eq!(with_field[0].payload, r#"{"id":"evt_1","a":1}"#);
        assert_eq!(with_field[0].time_ms, 1_000);
        let from_header = parse_body(BodyFormat::Json, br#"{"a":1}"#, &ident(Some("msg_1"))).unwrap();
        assert_eq!(from_header[0].id, "msg_1");
        let generated = parse_body(BodyFormat::Json, br#"{"a":1}"#, &ident(None)).unwrap();
        assert_eq!(generated[0].id.len(), 36);
        let nul = parse_body(BodyFormat::Json, br#"{"id":"a\u0000b"}"#, &ident(None)).unwrap_err();
        assert!(matches!(nul, BodyError::Invalid { index: 0, .. }), "{nul:?}");
        let numeric = parse_body(BodyFormat::Json, br#"{"id":42}"#, &ident(None)).unwrap();
        assert_eq!(numeric[0].id, "42");
    }

    #[test]
    fn polled_items_without_id_get_a_content_digest() {
        let items: Vec<&RawValue> = serde_json::from_str(r#"[{"a":1},{"id":"x"},{"a":1}]"#).unwrap();
        let events = parse_polled(&items, 5).unwrap();
        assert!(events[0].id.starts_with("sha256:") && events[0].id.len() == 39, "{}", events[0].id);
        assert_eq!(events[1].id, "x");
        assert_eq!(events[0].id, events[2].id, "the same text is the same event");
        let bad: Vec<&RawValue> = serde_json::from_str("[1]").unwrap();
        assert!(matches!(parse_polled(&bad, 5), Err(BodyError::Invalid { index: 0, .. })));
    }

    #[test]
    fn arrays_and_ndjson_index_the_request_id() {
        let array = parse_body(BodyFormat::Json, br#"[{"a":1},{"id":"x"},{"a":3}]"#, &ident(Some("req"))).unwrap();
        let ids: Vec<_> = array.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["req:0", "x", "req:2"]);
        let ndjson = parse_body(BodyFormat::Ndjson, b"{\"a\":1}\r\n\n{\"a\":2}\n", &ident(Some("req"))).unwrap();
        let ids: Vec<_> = ndjson.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["req:0", "req:1"]);
    }

    #[test]
    fn timestamps() {
        let rfc = parse_body(BodyFormat::Json, br#"{"timestamp":"2023-09-28T19:20:22+00:00"}"#, &ident(None)).unwrap();
        assert_eq!(rfc[0].time_ms, 1_695_928_822_000);
        let ms = parse_body(BodyFormat::Json, br#"{"timestamp":1695928822123}"#, &ident(None)).unwrap();
        assert_eq!(ms[0].time_ms, 1_695_928_822_123);
        let bad = parse_body(BodyFormat::Json, br#"[{},{"timestamp":"yesterday"}]"#, &ident(None)).unwrap_err();
        assert!(matches!(bad, BodyError::Invalid { index: 1, .. }), "{bad:?}");
        let negative = parse_body(BodyFormat::Json, br#"{"timestamp":-5}"#, &ident(None)).unwrap_err();
        assert!(matches!(negative, BodyError::Invalid { index: 0, .. }));
    }

    #[test]
    fn malformed_names_line_and_column() {
        let err = parse_body(BodyFormat::Ndjson, b"{\"a\":1}\n{\"a\":\n", &ident(None)).unwrap_err();
        match err {
            BodyError::Malformed { line, .. } => assert_eq!(line, 2),
            other => panic!("{other:?}"),
        }
        let err = parse_body(BodyFormat::Json, b"{\"a\" 1}", &ident(None)).unwrap_err();
        assert!(matches!(err, BodyError::Malformed { line: 1, column: 6, .. }), "{err:?}");
        assert!(err.to_string().contains("line 1, column 6"));
    }

    #[test]
    fn non_objects_are_invalid_not_malformed() {
        assert!(matches!(parse_body(BodyFormat::Json, b"42", &ident(None)), Err(BodyError::Invalid { index: 0, .. })));
        assert!(matches!(
            parse_body(BodyFormat::Json, b"[{}, 7]", &ident(None)),
            Err(BodyError::Invalid { index: 1, .. })
        ));
        assert!(matches!(
            parse_body(BodyFormat::Ndjson, b"{}\n[1]\n", &ident(None)),
            Err(BodyError::Invalid { index: 1, .. })
        ));
        assert!(matches!(
            parse_body(BodyFormat::Ndjson, b"{}\n{\"id\":1,\"id\":2}\n", &ident(None)),
            Err(BodyError::Invalid { index: 1, .. })
        ));
        assert!(matches!(
            parse_body(BodyFormat::Ndjson, b"  {\"a\":1}  \n\"text\"\n", &ident(None)),
            Err(BodyError::Invalid { index: 1, .. })
        ));
        assert!(matches!(
            parse_body(BodyFormat::Ndjson, b"{\"a\":1} {\"b\":2}\n", &ident(None)),
            Err(BodyError::Malformed { line: 1, .. })
        ));
        assert!(matches!(
            parse_body(BodyFormat::Json, br#"{"id":{"nested":1}}"#, &ident(None)),
            Err(BodyError::Invalid { index: 0, .. })
        ));
    }
}
