//! What a stored payload may hold. Every store keeps the event's JSON text exactly as sent, and
//! the read API hands it back verbatim; these bounds are what *every* store and every reader can
//! hold and round-trip, so an event that passes them is never refused after its 202.
//!
//! - nesting: at most [`MAX_DEPTH`] levels of arrays and objects;
//! - strings (keys too): no `\u0000` (PostgreSQL's text cannot hold it) and no lone UTF-16
//!   surrogate escape (`\ud800` alone is not a character);
//! - numbers: any JSON number whose value fits a finite 64-bit float (`1e309` and a 400-digit
//!   integer do not). Digits beyond a float's precision are kept: the text is stored and read
//!   back as sent.

/// Deepest nesting of arrays and objects an event may have (the event object is level 1).
pub const MAX_DEPTH: usize = 64;

/// Numbers written with fewer characters than this, and without an exponent, always fit a finite
/// `f64` (its largest value has 309 integer digits); longer ones or ones with an exponent are
/// parsed to find out.
const SHORT_NUMBER: usize = 300;

/// Checks the text of a JSON value that is already known to be well-formed.
pub(crate) fn check_payload(text: &str) -> Result<(), String> {
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'{' | b'[' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(format!("nesting is deeper than {MAX_DEPTH} levels"));
                }
                i += 1;
            }
            b'}' | b']' => {
                depth = depth.saturating_sub(1);
                i += 1;
            }
            b'"' => i = check_string(bytes, i + 1)?,
            b'-' | b'0'..=b'9' => i = check_number(bytes, i)?,
            _ => i += 1,
        }
    }
    Ok(())
}

/// Scans a string from just after its opening quote; returns the index after its closing quote.
fn check_string(bytes: &[u8], mut i: usize) -> Result<usize, String> {
    loop {
        let Some(offset) = memchr::memchr2(b'"', b'\\', &bytes[i.min(bytes.len())..]) else {
            return Ok(bytes.len());
        };
        i += offset;
        if bytes[i] == b'"' {
            return Ok(i + 1);
        }
        // A backslash escape.
        if bytes.get(i + 1) != Some(&b'u') {
            i += 2;
            continue;
        }
        let unit = hex4(bytes, i + 2);
        i += 6;
        match unit {
            Some(0) => return Err("a string holds \\u0000, which cannot be stored".into()),
            Some(0xD800..=0xDBFF) => {
                let low = if bytes.get(i) == Some(&b'\\') && bytes.get(i + 1) == Some(&b'u') {
                    hex4(bytes, i + 2)
                } else {
                    None
                };
                if !matches!(low, Some(0xDC00..=0xDFFF)) {
                    return Err("a string holds a lone UTF-16 surrogate (\\ud800-\\udbff without its pair)".into());
                }
                i += 6;
            }
            Some(0xDC00..=0xDFFF) => {
                return Err("a string holds a lone UTF-16 surrogate (\\udc00-\\udfff without its pair)".into());
            }
            _ => {}
        }
    }
}

fn hex4(bytes: &[u8], at: usize) -> Option<u32> {
    let digits = std::str::from_utf8(bytes.get(at..at + 4)?).ok()?;
    u32::from_str_radix(digits, 16).ok()
}

/// Scans a number; returns the index after it.
fn check_number(bytes: &[u8], start: usize) -> Result<usize, String> {
    let len = bytes[start..].iter().take_while(|b| matches!(b, b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')).count();
    let number = &bytes[start..start + len];
    if len >= SHORT_NUMBER || number.iter().any(|b| matches!(b, b'e' | b'E')) {
        let finite = std::str::from_utf8(number).ok().and_then(|t| t.parse::<f64>().ok()).is_some_and(f64::is_finite);
        if !finite {
            let shown: String = String::from_utf8_lossy(&number[..len.min(24)]).into_owned();
            let more = if len > 24 { "…" } else { "" };
            return Err(format!("the number {shown}{more} is outside the range of a 64-bit float"));
        }
    }
    Ok(start + len)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(levels: usize) -> String {
        format!("{{\"a\":{}1{}}}", "[".repeat(levels - 1), "]".repeat(levels - 1))
    }

    #[test]
    fn nesting_is_bounded() {
        assert!(check_payload(&nested(MAX_DEPTH)).is_ok());
        let err = check_payload(&nested(MAX_DEPTH + 1)).unwrap_err();
        assert!(err.contains("deeper than 64"), "{err}");
        // Brackets inside strings are text, not nesting.
        let text = format!("{{\"a\":\"{}\"}}", "[".repeat(500));
        assert!(check_payload(&text).is_ok());
    }

    #[test]
    fn strings_must_be_storable_text() {
        assert!(check_payload(r#"{"a":"x\u0000y"}"#).is_err());
        assert!(check_payload(r#"{"a\u0000":1}"#).is_err());
        assert!(check_payload(r#"{"a":"\ud800"}"#).is_err());
        assert!(check_payload(r#"{"a":"\ud800x"}"#).is_err());
        assert!(check_payload(r#"{"a":"\ud800\u0041"}"#).is_err());
        assert!(check_payload(r#"{"a":"\udc00"}"#).is_err());
        assert!(check_payload(r#"{"a":"\ud83d\ude00 \u00e9 \\u0000 \"\\ud800"}"#).is_ok());
        assert!(check_payload(r#"{"a":"\u0001 é"}"#).is_ok());
    }

    #[test]
    fn numbers_must_fit_a_float() {
        assert!(check_payload(r#"{"n":1e309}"#).is_err());
        assert!(check_payload(r#"{"n":-1E+400}"#).is_err());
        assert!(check_payload(&format!("{{\"n\":{}}}", "9".repeat(5000))).is_err());
        assert!(check_payload(&format!("{{\"n\":{}}}", "9".repeat(300))).is_ok());
        assert!(check_payload(&format!("{{\"n\":0.{}1}}", "0".repeat(5000))).is_ok());
        assert!(check_payload(r#"{"n":[1.7976931348623157e308,-0,1e-400,18446744073709551617]}"#).is_ok());
        let err = check_payload(&format!("{{\"n\":{}}}", "9".repeat(5000))).unwrap_err();
        assert!(err.len() < 120, "{err}");
    }
}
