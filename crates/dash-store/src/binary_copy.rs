//! PostgreSQL's binary `COPY` format, for the columns Dash writes: text (and `json`, whose binary
//! form is its text), `bytea` and `timestamptz`. The batch write sends its rows this way.

/// Microseconds between the Unix epoch and PostgreSQL's (2000-01-01).
const PG_EPOCH_OFFSET_US: i64 = 946_684_800_000_000;

/// One `COPY … FROM STDIN (FORMAT binary)` body, built row by row.
pub struct BinaryCopy {
    buf: Vec<u8>,
}

impl BinaryCopy {
    /// An empty body with room for about `bytes`.
    pub fn with_capacity(bytes: usize) -> Self {
        let mut buf = Vec::with_capacity(bytes + 21);
        buf.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
        buf.extend_from_slice(&0i32.to_be_bytes()); // flags: no OIDs
        buf.extend_from_slice(&0i32.to_be_bytes()); // no header extension
        Self { buf }
    }

    /// Starts a row of `fields` columns; that many field calls follow.
    pub fn row(&mut self, fields: i16) -> &mut Self {
        self.buf.extend_from_slice(&fields.to_be_bytes());
        self
    }

    /// A `text` (or `json`) field.
    pub fn text(&mut self, value: &str) -> &mut Self {
        self.buf.extend_from_slice(&(value.len() as i32).to_be_bytes());
        self.buf.extend_from_slice(value.as_bytes());
        self
    }

    /// A `text` field, or NULL (length -1) for `None`.
    pub fn text_or_null(&mut self, value: Option<&str>) -> &mut Self {
        match value {
            Some(value) => self.text(value),
            None => {
                self.buf.extend_from_slice(&(-1i32).to_be_bytes());
                self
            }
        }
    }

    /// A `bytea` field holding `parts` one after the other.
    pub fn bytea_concat(&mut self, parts: &[&[u8]]) -> &mut Self {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        self.buf.extend_from_slice(&(len as i32).to_be_bytes());
        for part in parts {
            self.buf.extend_from_slice(part);
        }
        self
    }

    /// A `timestamptz` field, from unix milliseconds.
    pub fn timestamptz_ms(&mut self, unix_ms: i64) -> &mut Self {
        self.buf.extend_from_slice(&8i32.to_be_bytes());
        self.buf.extend_from_slice(&(unix_ms * 1000 - PG_EPOCH_OFFSET_US).to_be_bytes());
        self
    }

    /// The whole body, trailer included.
    pub fn finish(mut self) -> Vec<u8> {
        self.buf.extend_from_slice(&(-1i16).to_be_bytes());
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_is_framed_as_postgres_reads_it() {
        let mut copy = BinaryCopy::with_capacity(0);
        copy.row(4).text("ab").timestamptz_ms(946_684_800_001).bytea_concat(&[b"c", b"\0", b"de"]).text_or_null(None);
        let body = copy.finish();
        let mut expected = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0".to_vec();
        expected.extend_from_slice(&[0, 4, 0, 0, 0, 2, b'a', b'b', 0, 0, 0, 8]);
        expected.extend_from_slice(&1000i64.to_be_bytes());
        expected.extend_from_slice(&[0, 0, 0, 4, b'c', 0, b'd', b'e']);
        expected.extend_from_slice(&[0xff, 0xff, 0xff, 0xff]);
        expected.extend_from_slice(&[0xff, 0xff]);
        assert_eq!(body, expected);
    }
}
