//! How values read on a page: clock times, event times, payload previews, rates, uptimes.

/// `HH:MM` (UTC) of unix milliseconds, for chart ticks.
pub(crate) fn clock(ms: i64, bucket_ms: i64) -> String {
    // Buckets of an hour or more span days: the date goes first.
    let format = if bucket_ms >= 3_600_000 { "%m-%d %H:%M" } else { "%H:%M" };
    chrono::DateTime::from_timestamp_millis(ms).map(|t| t.format(format).to_string()).unwrap_or_default()
}

/// An RFC 3339 time as `YYYY-MM-DD HH:MM:SS` UTC; the browser script writes the same form.
pub(crate) fn timestamp(rfc3339: Option<&str>) -> String {
    match rfc3339.and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok()) {
        Some(t) => t.with_timezone(&chrono::Utc).format("%Y-%m-%d %H:%M:%S").to_string(),
        None => "never".into(),
    }
}

/// The first `max` characters of a payload, with an ellipsis when cut.
pub(crate) fn preview(payload: &str, max: usize) -> String {
    match payload.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &payload[..cut]),
        None => payload.to_owned(),
    }
}

/// Events per second with the precision a person reads.
pub(crate) fn rate(per_second: f64) -> String {
    if per_second >= 100.0 { format!("{per_second:.0}") } else { format!("{per_second:.1}") }
}

/// `3d 4h`, `5h 12m`, `7m 3s`.
pub(crate) fn uptime(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h) {
        (0, 0) => format!("{m}m {s}s"),
        (0, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_read_as_a_person_expects() {
        assert_eq!(clock(90 * 60_000, 60_000), "01:30");
        assert_eq!(clock(90 * 60_000, 3_600_000), "01-01 01:30");
        assert_eq!(timestamp(Some("2026-11-23T10:01:02.345Z")), "2026-11-23 10:01:02");
        assert_eq!(timestamp(None), "never");
        assert_eq!(preview("héllo wörld", 5), "héllo…");
        assert_eq!(preview("short", 50), "short");
        assert_eq!(rate(0.05), "0.1");
        assert_eq!(rate(1234.4), "1234");
        assert_eq!(uptime(59), "0m 59s");
        assert_eq!(uptime(3 * 3600 + 120), "3h 2m");
        assert_eq!(uptime(2 * 86_400 + 3600), "2d 1h");
    }
}
