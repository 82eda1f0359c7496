//! Standard Webhooks verification (<https://www.standardwebhooks.com>), pipeline tokens and the
//! dashboard's session cookies.
//!
//! Signed content is `{webhook-id}.{webhook-timestamp}.{raw body}`, HMAC-SHA256 keyed with the
//! base64-decoded part of a `whsec_…` secret. Every comparison runs in constant time.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD as BASE64, URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// How far a `webhook-timestamp` may be from now, in seconds.
pub const TOLERANCE_SECS: i64 = 5 * 60;
const SECRET_PREFIX: &str = "whsec_";
const TOKEN_PREFIX: &str = "dash_";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("missing webhook-id, webhook-timestamp or webhook-signature header")]
    MissingHeaders,
    #[error("webhook-timestamp is not unix seconds")]
    BadTimestamp,
    #[error("webhook-timestamp is more than 5 minutes away from the server's clock")]
    StaleTimestamp,
    #[error("no webhook-signature entry matches")]
    NoMatch,
    #[error("signing secret is not whsec_ followed by base64")]
    BadSecret,
}

/// A pipeline's signing secret (`whsec_<base64>`). Its `Debug` never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningSecret {
    key: Vec<u8>,
}

impl SigningSecret {
    /// 32 random bytes.
    pub fn generate() -> Self {
        let mut key = vec![0u8; 32];
        rand::rng().fill_bytes(&mut key);
        Self { key }
    }

    /// Accepts `whsec_<base64>`, or the bare base64 part.
    pub fn parse(text: &str) -> Result<Self, SignatureError> {
        let encoded = text.strip_prefix(SECRET_PREFIX).unwrap_or(text);
        let key = BASE64.decode(encoded).map_err(|_| SignatureError::BadSecret)?;
        if key.is_empty() {
            return Err(SignatureError::BadSecret);
        }
        Ok(Self { key })
    }

    /// The `whsec_…` text form, for storage and for showing the owner once.
    pub fn expose(&self) -> String {
        format!("{SECRET_PREFIX}{}", BASE64.encode(&self.key))
    }

    fn mac(&self, msg_id: &str, timestamp: &str, body: &[u8]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("hmac accepts keys of any length");
        mac.update(msg_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }

    /// The `webhook-signature` value a sender would put on this message: `v1,<base64>`.
    pub fn sign(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
        let digest = self.mac(msg_id, &timestamp.to_string(), body).finalize().into_bytes();
        format!("v1,{}", BASE64.encode(digest))
    }
}

impl fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningSecret(…)")
    }
}

/// The three Standard Webhooks headers of one request.
#[derive(Debug, Clone, Copy)]
pub struct SignedRequest<'a> {
    pub msg_id: Option<&'a str>,
    pub timestamp: Option<&'a str>,
    pub signature: Option<&'a str>,
}

impl SignedRequest<'_> {
    pub fn is_present(&self) -> bool {
        self.msg_id.is_some() || self.timestamp.is_some() || self.signature.is_some()
    }

    /// What can be checked before the body is read: all three headers present, the timestamp
    /// unix seconds within [`TOLERANCE_SECS`] of `now_secs`, and at least one `v1,` entry.
    pub fn precheck(&self, now_secs: i64) -> Result<(), SignatureError> {
        let (Some(_), Some(timestamp), Some(signature)) = (self.msg_id, self.timestamp, self.signature) else {
            return Err(SignatureError::MissingHeaders);
        };
        let sent_at: i64 = timestamp.trim().parse().map_err(|_| SignatureError::BadTimestamp)?;
        // Checked: a timestamp near i64's ends must not wrap into the window.
        if now_secs.checked_sub(sent_at).and_then(i64::checked_abs).is_none_or(|skew| skew > TOLERANCE_SECS) {
            return Err(SignatureError::StaleTimestamp);
        }
        if !signature.split_whitespace().any(|entry| entry.starts_with("v1,")) {
            return Err(SignatureError::NoMatch);
        }
        Ok(())
    }

    /// Passes when any `v1,` entry of the signature header matches under any of `secrets`
    /// (several secrets: a rotation's grace period) and the timestamp is within tolerance.
    pub fn verify(&self, secrets: &[&SigningSecret], body: &[u8], now_secs: i64) -> Result<(), SignatureError> {
        self.precheck(now_secs)?;
        let (Some(msg_id), Some(timestamp), Some(signature)) = (self.msg_id, self.timestamp, self.signature) else {
            return Err(SignatureError::MissingHeaders);
        };
        let candidates: Vec<Vec<u8>> = signature
            .split_whitespace()
            .filter_map(|entry| entry.strip_prefix("v1,"))
            .filter_map(|b64| BASE64.decode(b64).ok())
            .collect();
        for secret in secrets {
            let expected = secret.mac(msg_id, timestamp, body).finalize().into_bytes();
            // Check every candidate so that timing does not reveal which one matched.
            let mut matched = subtle::Choice::from(0);
            for candidate in &candidates {
                matched |= expected.as_slice().ct_eq(candidate.as_slice());
            }
            if bool::from(matched) {
                return Ok(());
            }
        }
        Err(SignatureError::NoMatch)
    }
}

/// A pipeline's bearer token. Only its SHA-256 is stored; the token is shown once.
pub struct BearerToken(String);

impl BearerToken {
    pub fn generate() -> Self {
        let mut bytes = [0u8; 24];
        rand::rng().fill_bytes(&mut bytes);
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        Self(format!("{TOKEN_PREFIX}{hex}"))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn hash(&self) -> String {
        hash_token(&self.0)
    }
}

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BearerToken(…)")
    }
}

/// Hex SHA-256 of a presented token, the form tokens are stored in.
pub fn hash_token(token: &str) -> String {
    Sha256::digest(token.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// Constant-time check of a presented token against stored hashes.
pub fn token_matches(presented: &str, stored_hashes: &[&str]) -> bool {
    let presented = hash_token(presented);
    let mut matched = subtle::Choice::from(0);
    for stored in stored_hashes {
        matched |= presented.as_bytes().ct_eq(stored.as_bytes());
    }
    bool::from(matched)
}

/// The dashboard's login session: `<expiry unix secs>.<base64url HMAC-SHA256>`, keyed with the
/// admin token. Nothing is stored server-side; changing the admin token ends every session.
pub struct SessionKey<'a> {
    admin_token: &'a str,
}

impl<'a> SessionKey<'a> {
    pub fn new(admin_token: &'a str) -> Self {
        Self { admin_token }
    }

    fn mac(&self, expires: i64) -> [u8; 32] {
        let mut mac = HmacSha256::new_from_slice(self.admin_token.as_bytes()).expect("hmac accepts keys of any length");
        mac.update(b"dash-session.");
        mac.update(expires.to_string().as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// A session value valid until `expires` (unix seconds).
    pub fn issue(&self, expires: i64) -> String {
        format!("{expires}.{}", URL_SAFE_NO_PAD.encode(self.mac(expires)))
    }

    /// Whether `value` was issued with this key and has not expired at `now_secs`.
    pub fn verify(&self, value: &str, now_secs: i64) -> bool {
        let Some((expires, tag)) = value.split_once('.') else { return false };
        let Ok(expires) = expires.parse::<i64>() else { return false };
        let Ok(tag) = URL_SAFE_NO_PAD.decode(tag) else { return false };
        expires > now_secs && bool::from(self.mac(expires).as_slice().ct_eq(&tag))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_verify_until_expiry_and_only_under_their_key() {
        let key = SessionKey::new("admin-token");
        let value = key.issue(1_000);
        assert!(key.verify(&value, 999));
        assert!(!key.verify(&value, 1_000), "expired");
        assert!(!SessionKey::new("other-token").verify(&value, 999), "another admin token");
        let forged = value.replacen("1000", "9000", 1);
        assert!(!key.verify(&forged, 999), "expiry is covered by the tag");
        for junk in ["", ".", "abc", "1000.", "1000.!!!", "x.y"] {
            assert!(!key.verify(junk, 0), "{junk:?}");
        }
    }

    /// The vector of the Standard Webhooks repository, `libraries/testdata/signatures.json`.
    const SPEC_VECTOR: &str = r#"[{
        "id": "msg_p5jXN8AQM9LWM0D4loKWxJek",
        "timestamp": 1696200454,
        "secret": "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "payload": "{\"type\": \"example.created\", \"timestamp\":\"2023-09-28T19:20:22+00:00\", \"data\":{\"str\":\"string\",\"bool\":true,\"int\":42}}",
        "signature":"v1,GgjvufBlIj71MBIVQotYGb+xEC3LNXCsIZp0HsDC8qs="
    }]"#;

    #[test]
    fn spec_vector_verifies() {
        let vectors: serde_json::Value = serde_json::from_str(SPEC_VECTOR).unwrap();
        for v in vectors.as_array().unwrap() {
            let secret = SigningSecret::parse(v["secret"].as_str().unwrap()).unwrap();
            let prefixed = SigningSecret::parse(&format!("whsec_{}", v["secret"].as_str().unwrap())).unwrap();
            assert_eq!(secret, prefixed);
            let ts = v["timestamp"].as_i64().unwrap();
            let body = v["payload"].as_str().unwrap().as_bytes();
            let id = v["id"].as_str().unwrap();
            assert_eq!(secret.sign(id, ts, body), v["signature"].as_str().unwrap());
            let ts_text = ts.to_string();
            let req = SignedRequest { msg_id: Some(id), timestamp: Some(&ts_text), signature: v["signature"].as_str() };
            assert_eq!(req.verify(&[&secret], body, ts + 10), Ok(()));
            assert_eq!(req.verify(&[&secret], b"tampered", ts), Err(SignatureError::NoMatch));
            assert_eq!(req.verify(&[&secret], body, ts + TOLERANCE_SECS + 1), Err(SignatureError::StaleTimestamp));
            assert_eq!(req.verify(&[&secret], body, ts - TOLERANCE_SECS - 1), Err(SignatureError::StaleTimestamp));
        }
    }

    #[test]
    fn any_entry_and_any_secret_passes() {
        let old = SigningSecret::generate();
        let new = SigningSecret::generate();
        let good = new.sign("m", 100, b"{}");
        let header = format!("v1,AAAA v2,zzz {good}");
        let req = SignedRequest { msg_id: Some("m"), timestamp: Some("100"), signature: Some(&header) };
        assert_eq!(req.verify(&[&old, &new], b"{}", 100), Ok(()));
        assert_eq!(req.verify(&[&old], b"{}", 100), Err(SignatureError::NoMatch));
        let missing = SignedRequest { msg_id: Some("m"), timestamp: None, signature: Some(&header) };
        assert_eq!(missing.verify(&[&new], b"{}", 100), Err(SignatureError::MissingHeaders));
        for far in [i64::MIN, i64::MIN + 1, 100i64.wrapping_sub(i64::MIN), i64::MAX] {
            let text = far.to_string();
            let signature = new.sign("m", far, b"{}");
            let req = SignedRequest { msg_id: Some("m"), timestamp: Some(&text), signature: Some(&signature) };
            assert_eq!(req.verify(&[&new], b"{}", 100), Err(SignatureError::StaleTimestamp), "{far}");
        }
        let bad_ts = SignedRequest { msg_id: Some("m"), timestamp: Some("soon"), signature: Some(&header) };
        assert_eq!(bad_ts.verify(&[&new], b"{}", 100), Err(SignatureError::BadTimestamp));
    }

    #[test]
    fn secrets_round_trip_and_hide() {
        let s = SigningSecret::generate();
        assert_eq!(SigningSecret::parse(&s.expose()).unwrap(), s);
        assert!(!format!("{s:?}").contains(&s.expose()[6..]));
        assert!(SigningSecret::parse("whsec_!!!").is_err());
    }

    #[test]
    fn tokens_compare_by_hash() {
        let t = BearerToken::generate();
        let stored = t.hash();
        assert!(token_matches(t.expose(), &[&stored]));
        assert!(!token_matches("dash_wrong", &[&stored]));
        assert!(!token_matches(t.expose(), &[]));
    }
}
