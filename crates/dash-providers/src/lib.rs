//! How API providers sign and identify their webhooks, so a pipeline can take deliveries
//! straight from them. A pipeline's [`VerifySpec`] names its provider (and, for a generic HMAC
//! sender, how it signs); with the pipeline's secrets it checks a delivery ([`VerifySpec::precheck`]
//! on the headers alone, then [`VerifySpec::verify`] over the raw body), names the delivery's
//! duplicate key ([`VerifySpec::duplicate_key`]) and turns the form bodies some providers post
//! into one JSON event ([`VerifySpec::form_event`]).
//!
//! | provider | signature | duplicate key | event type |
//! |---|---|---|---|
//! | `standard-webhooks` | `webhook-signature` (checked by `dash-signature`, not here) | `webhook-id` | body `/type` |
//! | `github` | `X-Hub-Signature-256: sha256=<hex HMAC-SHA256(secret, body)>` | `X-GitHub-Delivery` | `X-GitHub-Event` |
//! | `stripe` | `Stripe-Signature: t=<ts>,v1=<hex HMAC-SHA256(secret, "<ts>.<body>")>` (any `v1`; 300 s) | body `/id` | body `/type` |
//! | `shopify` | `X-Shopify-Hmac-Sha256: <base64 HMAC-SHA256(secret, body)>` | `X-Shopify-Webhook-Id` | `X-Shopify-Topic` |
//! | `slack` | `X-Slack-Signature: v0=<hex HMAC-SHA256(secret, "v0:<ts>:<body>")>`, `X-Slack-Request-Timestamp` (300 s) | body `/event_id` | body `/event/type`, else `/type` |
//! | `gitlab` | `X-Gitlab-Token` equal to the secret | `Idempotency-Key`, else `X-Gitlab-Event-UUID` | `X-Gitlab-Event` |
//! | `twilio` | `X-Twilio-Signature: <base64 HMAC-SHA1(secret, URL + sorted form keys and values)>` | `I-Twilio-Idempotency-Token` | none |
//! | `hmac` | options `header`, `algorithm`, `encoding`, `prefix` over the raw body | option `id_header`, else body `/id` | option `type_header`, else `type_field`, else body `/type` |
//!
//! A type in the body's top-level `/type` is read from the payload where it is needed;
//! [`VerifySpec::event_type`] names only the types found elsewhere, which are stored with the
//! event.
//!
//! Every comparison of a signature or token runs in constant time.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use http::HeaderMap;
use serde_json::{Map, Value, json};
use subtle::ConstantTimeEq;

/// How far a signed timestamp may be from now (Stripe's and Slack's own tolerance).
pub const TIMESTAMP_TOLERANCE_SECS: i64 = 300;
/// Shortest secret taken: every provider's own are longer, and a shorter one typed by hand
/// could be guessed one request at a time.
pub const SECRET_MIN: usize = 16;
/// Longest secret taken.
pub const SECRET_MAX: usize = 1024;
/// Key of the digests a token is compared as.
const TOKEN_DIGEST_KEY: &[u8] = b"dash token comparison";
/// Longest `prefix` of a generic HMAC sender.
const PREFIX_MAX: usize = 64;
/// Longest duplicate key taken from a delivery.
const KEY_MAX: usize = 256;
/// Longest `type_field` pointer.
const POINTER_MAX: usize = 256;

/// Who sends a pipeline's webhooks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Provider {
    StandardWebhooks,
    Github,
    Stripe,
    Shopify,
    Slack,
    Gitlab,
    Twilio,
    Hmac,
}

impl Provider {
    pub const ALL: [Provider; 8] = [
        Self::StandardWebhooks,
        Self::Github,
        Self::Stripe,
        Self::Shopify,
        Self::Slack,
        Self::Gitlab,
        Self::Twilio,
        Self::Hmac,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::StandardWebhooks => "standard-webhooks",
            Self::Github => "github",
            Self::Stripe => "stripe",
            Self::Shopify => "shopify",
            Self::Slack => "slack",
            Self::Gitlab => "gitlab",
            Self::Twilio => "twilio",
            Self::Hmac => "hmac",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == name)
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The digest a generic HMAC sender signs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Sha1,
    Sha256,
    Sha512,
}

/// How a generic HMAC sender writes its digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Hex,
    Base64,
}

/// How a generic HMAC sender signs and identifies its deliveries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HmacOptions {
    /// The header carrying the signature (lower case).
    pub header: String,
    pub algorithm: Algorithm,
    pub encoding: Encoding,
    /// Text before the digest in the header (`sha256=`).
    pub prefix: Option<String>,
    /// The header carrying the duplicate key; else the body's `/id`.
    pub id_header: Option<String>,
    /// The header naming the event type (lower case); else `type_field`.
    pub type_header: Option<String>,
    /// The JSON pointer naming the event type in the body; else the body's `/type`.
    pub type_field: Option<String>,
}

/// A pipeline's way of checking its deliveries: the provider, with its options. Never holds the
/// secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifySpec {
    pub provider: Provider,
    /// Present exactly when the provider is `hmac`.
    pub hmac: Option<HmacOptions>,
}

/// A `verify` object that cannot be taken: which field, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct InvalidVerify {
    /// `provider`, `secret`, an option's name.
    pub field: String,
    pub message: String,
}

fn invalid(field: &str, message: impl Into<String>) -> InvalidVerify {
    InvalidVerify { field: field.to_owned(), message: message.into() }
}

/// Why a delivery was refused, as counted (`dash_webhook_refused_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefusalReason {
    MissingSignature,
    BadSignature,
    StaleTimestamp,
    BadToken,
}

impl RefusalReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MissingSignature => "missing_signature",
            Self::BadSignature => "bad_signature",
            Self::StaleTimestamp => "stale_timestamp",
            Self::BadToken => "bad_token",
        }
    }
}

/// A refused delivery; the message names the header that was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    pub reason: RefusalReason,
    pub message: String,
}

fn refuse(reason: RefusalReason, message: impl Into<String>) -> Refusal {
    Refusal { reason, message: message.into() }
}

/// A delivery as it arrived.
pub struct Delivery<'a> {
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
    /// The URL the sender posted to, as it sees it (Twilio signs it).
    pub url: &'a str,
    pub now_secs: i64,
}

/// A form body that cannot become an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FormError(pub String);

const GITHUB_SIGNATURE: &str = "x-hub-signature-256";
const STRIPE_SIGNATURE: &str = "stripe-signature";
const SHOPIFY_SIGNATURE: &str = "x-shopify-hmac-sha256";
const SLACK_SIGNATURE: &str = "x-slack-signature";
const SLACK_TIMESTAMP: &str = "x-slack-request-timestamp";
const GITLAB_TOKEN: &str = "x-gitlab-token";
const TWILIO_SIGNATURE: &str = "x-twilio-signature";

impl VerifySpec {
    /// The default: Standard Webhooks, with a secret Dash makes.
    pub fn standard() -> Self {
        Self { provider: Provider::StandardWebhooks, hmac: None }
    }

    /// A `verify` object of the API or the config: `provider` and the options (`secret` and
    /// `secret_*` keys are the caller's to read and are skipped here).
    pub fn from_json(object: &Value) -> Result<Self, InvalidVerify> {
        let Some(object) = object.as_object() else {
            return Err(invalid("verify", "must be an object with a provider"));
        };
        let provider = match object.get("provider") {
            None | Some(Value::Null) => Provider::StandardWebhooks,
            Some(Value::String(name)) => Provider::parse(name).ok_or_else(|| {
                let known: Vec<&str> = Provider::ALL.iter().map(|p| p.as_str()).collect();
                invalid("provider", format!("unknown provider {name:?}; one of {}", known.join(", ")))
            })?,
            Some(_) => return Err(invalid("provider", "must be a string")),
        };
        let options: Vec<(&String, &Value)> = object
            .iter()
            .filter(|(key, _)| *key != "provider" && *key != "secret" && !key.starts_with("secret_"))
            .collect();
        if provider != Provider::Hmac {
            if let Some((key, _)) = options.first() {
                return Err(invalid(key, format!("{provider} takes no option {key:?}")));
            }
            return Ok(Self { provider, hmac: None });
        }
        let text = |key: &str| -> Result<Option<String>, InvalidVerify> {
            match object.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) if !s.trim().is_empty() => Ok(Some(s.trim().to_owned())),
                Some(_) => Err(invalid(key, "must be a non-empty string")),
            }
        };
        for (key, _) in &options {
            if !HMAC_OPTIONS.contains(&key.as_str()) {
                return Err(invalid(
                    key,
                    format!("hmac takes no option {key:?}; it takes {}", HMAC_OPTIONS.join(", ")),
                ));
            }
        }
        let header_name = |key: &str, value: Option<String>| -> Result<Option<String>, InvalidVerify> {
            match value {
                Some(name) if http::HeaderName::from_bytes(name.as_bytes()).is_err() => {
                    Err(invalid(key, format!("{name:?} is not a header name")))
                }
                other => Ok(other.map(|n| n.to_ascii_lowercase())),
            }
        };
        let header = header_name("header", text("header")?)?
            .ok_or_else(|| invalid("header", "hmac needs the header its signature comes in"))?;
        let algorithm = match text("algorithm")?.as_deref() {
            None | Some("sha256") => Algorithm::Sha256,
            Some("sha1") => Algorithm::Sha1,
            Some("sha512") => Algorithm::Sha512,
            Some(other) => return Err(invalid("algorithm", format!("{other:?}: one of sha1, sha256, sha512"))),
        };
        let encoding = match text("encoding")?.as_deref() {
            None | Some("hex") => Encoding::Hex,
            Some("base64") => Encoding::Base64,
            Some(other) => return Err(invalid("encoding", format!("{other:?}: one of hex, base64"))),
        };
        let prefix = text("prefix")?;
        if prefix.as_ref().is_some_and(|p| p.len() > PREFIX_MAX) {
            return Err(invalid("prefix", format!("at most {PREFIX_MAX} bytes")));
        }
        let id_header = header_name("id_header", text("id_header")?)?;
        let type_header = header_name("type_header", text("type_header")?)?;
        let type_field = text("type_field")?;
        if let Some(pointer) = &type_field
            && (!pointer.starts_with('/') || pointer.len() > POINTER_MAX || pointer.chars().any(char::is_control))
        {
            return Err(invalid(
                "type_field",
                format!("a JSON pointer of at most {POINTER_MAX} bytes, starting with '/' (such as /event/type)"),
            ));
        }
        let hmac = HmacOptions { header, algorithm, encoding, prefix, id_header, type_header, type_field };
        Ok(Self { provider, hmac: Some(hmac) })
    }

    /// A `verify` object with its `secret`, checked together: every provider but Standard
    /// Webhooks needs the secret from its settings (at most 1024 bytes); Standard Webhooks takes
    /// none (Dash makes it).
    pub fn from_json_with_secret(object: &Value) -> Result<(Self, Option<String>), InvalidVerify> {
        let spec = Self::from_json(object)?;
        if let Some(key) = object.as_object().and_then(|o| o.keys().find(|k| k.starts_with("secret_"))) {
            return Err(invalid(
                key,
                format!("{key:?} is a config file's option; send the secret itself as \"secret\""),
            ));
        }
        let secret = match object.get("secret") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if (SECRET_MIN..=SECRET_MAX).contains(&s.len()) => Some(s.clone()),
            Some(_) => {
                return Err(invalid(
                    "secret",
                    format!(
                        "must be a string of {SECRET_MIN} to {SECRET_MAX} bytes (a shorter one could be guessed: make a longer one in the provider's settings)"
                    ),
                ));
            }
        };
        match (spec.provider, &secret) {
            (Provider::StandardWebhooks, Some(_)) => Err(invalid(
                "secret",
                "standard-webhooks pipelines sign with a secret Dash makes (rotate it with dashd pipeline rotate-secret)",
            )),
            (provider, None) if provider != Provider::StandardWebhooks => {
                Err(invalid("secret", format!("{provider} needs the secret from its webhook settings")))
            }
            _ => Ok((spec, secret)),
        }
    }

    /// What the API shows: the provider and its options, never a secret.
    pub fn to_json(&self) -> Value {
        let mut object = Map::new();
        object.insert("provider".into(), json!(self.provider.as_str()));
        if let Some(h) = &self.hmac {
            object.insert("header".into(), json!(h.header));
            object.insert(
                "algorithm".into(),
                json!(match h.algorithm {
                    Algorithm::Sha1 => "sha1",
                    Algorithm::Sha256 => "sha256",
                    Algorithm::Sha512 => "sha512",
                }),
            );
            object.insert(
                "encoding".into(),
                json!(match h.encoding {
                    Encoding::Hex => "hex",
                    Encoding::Base64 => "base64",
                }),
            );
            for (key, value) in [
                ("prefix", &h.prefix),
                ("id_header", &h.id_header),
                ("type_header", &h.type_header),
                ("type_field", &h.type_field),
            ] {
                if let Some(value) = value {
                    object.insert(key.into(), json!(value));
                }
            }
        }
        Value::Object(object)
    }

    /// The header a delivery must carry, as a 401 names it.
    pub fn signature_header(&self) -> &str {
        match self.provider {
            Provider::StandardWebhooks => "webhook-signature",
            Provider::Github => GITHUB_SIGNATURE,
            Provider::Stripe => STRIPE_SIGNATURE,
            Provider::Shopify => SHOPIFY_SIGNATURE,
            Provider::Slack => SLACK_SIGNATURE,
            Provider::Gitlab => GITLAB_TOKEN,
            Provider::Twilio => TWILIO_SIGNATURE,
            Provider::Hmac => self.hmac.as_ref().map_or("", |h| h.header.as_str()),
        }
    }

    /// What can be checked before the body is read: the signature header is there and the
    /// signed timestamp, where the scheme has one, is fresh.
    pub fn precheck(&self, headers: &HeaderMap, now_secs: i64) -> Result<(), Refusal> {
        let name = self.signature_header();
        if header(headers, name).is_none() {
            return Err(refuse(
                RefusalReason::MissingSignature,
                format!("this pipeline takes {} deliveries: the {name} header is missing", self.provider),
            ));
        }
        match self.provider {
            Provider::Stripe => {
                let ts = stripe_parts(header(headers, STRIPE_SIGNATURE).unwrap_or_default()).0;
                fresh(ts, now_secs, "the t= of Stripe-Signature")
            }
            Provider::Slack => {
                let ts = header(headers, SLACK_TIMESTAMP).and_then(|t| t.trim().parse::<i64>().ok());
                fresh(ts, now_secs, "X-Slack-Request-Timestamp")
            }
            _ => Ok(()),
        }
    }

    /// The delivery's signature (or token) checked against each of the pipeline's secrets,
    /// current first; one match is enough.
    pub fn verify(&self, secrets: &[&str], delivery: &Delivery<'_>) -> Result<(), Refusal> {
        self.precheck(delivery.headers, delivery.now_secs)?;
        let presented = header(delivery.headers, self.signature_header()).unwrap_or_default().trim();
        let body = delivery.body;
        let matches = |check: &dyn Fn(&[u8]) -> bool| secrets.iter().any(|s| check(s.as_bytes()));
        let ok = match self.provider {
            Provider::StandardWebhooks => false,
            Provider::Github => match presented.strip_prefix("sha256=").and_then(|h| hex::decode(h).ok()) {
                Some(digest) => matches(&|key| equal(&sha256(key, &[body]), &digest)),
                None => false,
            },
            Provider::Stripe => {
                // Signed as the timestamp is written in the header.
                let (_, ts, signatures) = stripe_parts(presented);
                let ts = ts.unwrap_or_default();
                matches(&|key| {
                    let mac = sha256(key, &[ts.as_bytes(), b".", body]);
                    signatures.iter().any(|s| equal(&mac, s))
                })
            }
            Provider::Shopify => match BASE64.decode(presented) {
                Ok(digest) => matches(&|key| equal(&sha256(key, &[body]), &digest)),
                Err(_) => false,
            },
            Provider::Slack => {
                let ts = header(delivery.headers, SLACK_TIMESTAMP).unwrap_or_default().trim();
                match presented.strip_prefix("v0=").and_then(|h| hex::decode(h).ok()) {
                    Some(digest) => matches(&|key| equal(&sha256(key, &[b"v0:", ts.as_bytes(), b":", body]), &digest)),
                    None => false,
                }
            }
            Provider::Gitlab => {
                // Compared as digests, so that not even the token's length shows in the timing.
                let presented = sha256(TOKEN_DIGEST_KEY, &[presented.as_bytes()]);
                return match matches(&|key| equal(&sha256(TOKEN_DIGEST_KEY, &[key]), &presented)) {
                    true => Ok(()),
                    false => {
                        Err(refuse(RefusalReason::BadToken, "the X-Gitlab-Token header is not this pipeline's secret"))
                    }
                };
            }
            Provider::Twilio => match BASE64.decode(presented) {
                Ok(digest) => {
                    let signed = twilio_signed_text(delivery.url, body);
                    matches(&|key| equal(&sha1(key, signed.as_bytes()), &digest))
                }
                Err(_) => false,
            },
            Provider::Hmac => {
                let options = self.hmac.as_ref().expect("hmac options are present for hmac");
                let text = presented.strip_prefix(options.prefix.as_deref().unwrap_or("")).unwrap_or("");
                let digest = match options.encoding {
                    Encoding::Hex => hex::decode(text.trim()).ok(),
                    Encoding::Base64 => BASE64.decode(text.trim()).ok(),
                };
                match digest {
                    Some(digest) => matches(&|key| equal(&hmac_with(options.algorithm, key, body), &digest)),
                    None => false,
                }
            }
        };
        match ok {
            true => Ok(()),
            false => Err(refuse(
                RefusalReason::BadSignature,
                format!(
                    "the {} header does not match the body under this pipeline's secret; check the secret in {}'s settings",
                    self.signature_header(),
                    self.provider
                ),
            )),
        }
    }

    /// The provider's duplicate key for a delivery whose JSON event (when it is one) is `event`.
    /// Too long, or with control characters: none.
    pub fn duplicate_key(&self, headers: &HeaderMap, event: Option<&Value>) -> Option<String> {
        let from_body = |pointer: &str| event.and_then(|e| e.pointer(pointer)).and_then(Value::as_str);
        let usable = |key: Option<&str>| {
            let key = key?.trim();
            (!key.is_empty() && key.len() <= KEY_MAX && !key.chars().any(char::is_control)).then(|| key.to_owned())
        };
        match self.provider {
            Provider::StandardWebhooks => None,
            Provider::Github => usable(header(headers, "x-github-delivery")),
            Provider::Stripe => usable(from_body("/id")),
            Provider::Shopify => usable(header(headers, "x-shopify-webhook-id")),
            Provider::Slack => usable(from_body("/event_id")),
            Provider::Gitlab => {
                usable(header(headers, "idempotency-key")).or_else(|| usable(header(headers, "x-gitlab-event-uuid")))
            }
            Provider::Twilio => usable(header(headers, "i-twilio-idempotency-token")),
            Provider::Hmac => match self.hmac.as_ref().and_then(|h| h.id_header.as_deref()) {
                Some(name) => usable(header(headers, name)),
                None => usable(from_body("/id")),
            },
        }
    }

    /// Where a delivery names its event type, when not in the body's top-level `/type` (which
    /// is read from the payload where it is needed).
    pub fn type_source(&self) -> Option<TypeSource<'_>> {
        match self.provider {
            Provider::StandardWebhooks | Provider::Stripe | Provider::Twilio => None,
            Provider::Github => Some(TypeSource::Header("x-github-event")),
            Provider::Shopify => Some(TypeSource::Header("x-shopify-topic")),
            Provider::Gitlab => Some(TypeSource::Header("x-gitlab-event")),
            Provider::Slack => Some(TypeSource::Body("/event/type")),
            Provider::Hmac => {
                let options = self.hmac.as_ref()?;
                match (&options.type_header, &options.type_field) {
                    (Some(name), _) => Some(TypeSource::Header(name)),
                    (None, Some(pointer)) if pointer != "/type" => Some(TypeSource::Body(pointer)),
                    _ => None,
                }
            }
        }
    }

    /// The delivery's event type, where it is not the body's top-level `/type`: from the
    /// provider's header, or from deeper in the body (`event`, when the delivery is JSON).
    /// Trimmed and bounded ([`dash_domain::event_type_of`]); `None` when the delivery names none
    /// there, and then the payload's own `/type`, if any, is its type.
    pub fn event_type(&self, headers: &HeaderMap, event: Option<&Value>) -> Option<String> {
        match self.type_source()? {
            TypeSource::Header(name) => header(headers, name).and_then(dash_domain::event_type_of),
            TypeSource::Body(pointer) => {
                event?.pointer(pointer).and_then(Value::as_str).and_then(dash_domain::event_type_of)
            }
        }
    }

    /// Whether the duplicate key, the event type or a handshake is read from the body (Stripe,
    /// Slack, a generic sender without `id_header` or with `type_field`): only then does the
    /// body need parsing before intake.
    pub fn reads_body(&self) -> bool {
        match self.provider {
            Provider::Stripe | Provider::Slack => true,
            Provider::Hmac => {
                self.hmac.as_ref().is_none_or(|h| h.id_header.is_none())
                    || matches!(self.type_source(), Some(TypeSource::Body(_)))
            }
            _ => false,
        }
    }

    /// The answer to Slack's `url_verification` handshake, when `event` is one: its challenge.
    pub fn handshake_challenge(&self, event: &Value) -> Option<String> {
        (self.provider == Provider::Slack && event.get("type").and_then(Value::as_str) == Some("url_verification"))
            .then(|| event.get("challenge").and_then(Value::as_str).unwrap_or_default().to_owned())
    }

    /// Whether this provider posts `application/x-www-form-urlencoded` bodies.
    pub fn takes_forms(&self) -> bool {
        matches!(self.provider, Provider::Github | Provider::Slack | Provider::Twilio)
    }

    /// A form body as one JSON event: the JSON in its `payload` field (GitHub; Slack's
    /// interactive messages), else an object of its fields (Twilio; Slack's slash commands),
    /// each a string, a repeated key an array of them.
    pub fn form_event(&self, body: &[u8]) -> Result<String, FormError> {
        let fields: Vec<(String, String)> = form_urlencoded::parse(body).into_owned().collect();
        let payload = fields.iter().find(|(k, _)| k == "payload").map(|(_, v)| v);
        match (self.provider, payload) {
            (Provider::Github | Provider::Slack, Some(payload)) => match serde_json::from_str::<Value>(payload) {
                Ok(Value::Object(_)) => Ok(payload.clone()),
                _ => Err(FormError("the form's payload field is not a JSON object".into())),
            },
            (Provider::Github, None) => {
                Err(FormError("a GitHub form delivery carries its JSON in a payload field".into()))
            }
            _ => {
                let mut object = Map::new();
                for (key, value) in fields {
                    match object.get_mut(&key) {
                        None => {
                            object.insert(key, Value::String(value));
                        }
                        Some(Value::Array(values)) => values.push(Value::String(value)),
                        Some(first) => {
                            let first = first.take();
                            *object.get_mut(&key).expect("present") = Value::Array(vec![first, Value::String(value)]);
                        }
                    }
                }
                Ok(Value::Object(object).to_string())
            }
        }
    }
}

const HMAC_OPTIONS: &[&str] = &["header", "algorithm", "encoding", "prefix", "id_header", "type_header", "type_field"];

/// Where a delivery names its event type ([`VerifySpec::type_source`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TypeSource<'a> {
    /// A header, by its lower-case name.
    Header(&'a str),
    /// A member of the body, by its JSON pointer.
    Body(&'a str),
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn fresh(ts: Option<i64>, now_secs: i64, what: &str) -> Result<(), Refusal> {
    match ts {
        None => Err(refuse(RefusalReason::MissingSignature, format!("{what} is missing or not a number"))),
        Some(ts) if ts.abs_diff(now_secs) > TIMESTAMP_TOLERANCE_SECS as u64 => Err(refuse(
            RefusalReason::StaleTimestamp,
            format!("{what} is more than {TIMESTAMP_TOLERANCE_SECS} s from now"),
        )),
        Some(_) => Ok(()),
    }
}

/// `t=<ts>,v1=<hex>,v1=<hex>,v0=…`: the timestamp (as a number when it is plain digits, and as
/// written) and every `v1` digest.
fn stripe_parts(value: &str) -> (Option<i64>, Option<&str>, Vec<Vec<u8>>) {
    let mut ts = None;
    let mut signatures = Vec::new();
    for part in value.split(',') {
        match part.trim().split_once('=') {
            Some(("t", t)) => ts = Some(t),
            Some(("v1", hex)) => signatures.extend(hex::decode(hex).ok()),
            _ => {}
        }
    }
    let number = ts.filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit())).and_then(|t| t.parse().ok());
    (number, ts, signatures)
}

/// Twilio's signed text: the URL, then each form key (sorted) followed by each of its values
/// (sorted, repeats once).
fn twilio_signed_text(url: &str, body: &[u8]) -> String {
    let mut fields: Vec<(String, String)> = form_urlencoded::parse(body).into_owned().collect();
    fields.sort();
    fields.dedup();
    let mut text = url.to_owned();
    for (key, value) in fields {
        text.push_str(&key);
        text.push_str(&value);
    }
    text
}

fn equal(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

fn sha256(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().to_vec()
}

fn sha1(key: &[u8], text: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(text);
    mac.finalize().into_bytes().to_vec()
}

fn hmac_with(algorithm: Algorithm, key: &[u8], body: &[u8]) -> Vec<u8> {
    match algorithm {
        Algorithm::Sha1 => sha1(key, body),
        Algorithm::Sha256 => sha256(key, &[body]),
        Algorithm::Sha512 => {
            let mut mac = Hmac::<sha2::Sha512>::new_from_slice(key).expect("HMAC takes any key length");
            mac.update(body);
            mac.finalize().into_bytes().to_vec()
        }
    }
}

#[cfg(test)]
mod tests;
