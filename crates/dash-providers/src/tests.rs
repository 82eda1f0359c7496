//! Each scheme against the example its provider publishes in its own documentation, where it
//! publishes one (GitHub, Slack, Twilio); the rest against digests made here.

use super::*;
use http::HeaderValue;

fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(*name, HeaderValue::from_str(value).unwrap());
    }
    map
}

fn spec(object: Value) -> VerifySpec {
    VerifySpec::from_json(&object).unwrap()
}

fn check(spec: &VerifySpec, secret: &str, headers: &HeaderMap, body: &[u8], now: i64) -> Result<(), Refusal> {
    spec.verify(&[secret], &Delivery { headers, body, url: "", now_secs: now })
}

#[test]
fn github_as_its_documentation_signs() {
    // docs.github.com, "Validating webhook deliveries": the secret, the payload, the header.
    let github = spec(json!({"provider": "github"}));
    let signature = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
    let signed = headers(&[("x-hub-signature-256", signature)]);
    assert_eq!(check(&github, "It's a Secret to Everybody", &signed, b"Hello, World!", 0), Ok(()));
    let refused = check(&github, "It's a Secret to Everybody", &signed, b"Hello, World?", 0).unwrap_err();
    assert_eq!(refused.reason, RefusalReason::BadSignature);
    assert!(refused.message.contains("x-hub-signature-256"), "{refused}");
    assert_eq!(check(&github, "wrong", &signed, b"Hello, World!", 0).unwrap_err().reason, RefusalReason::BadSignature);
    let missing = check(&github, "s", &HeaderMap::new(), b"{}", 0).unwrap_err();
    assert_eq!(missing.reason, RefusalReason::MissingSignature);
    assert!(missing.message.contains("x-hub-signature-256"), "{missing}");
    // A rotated-out secret still in its grace period matches too.
    let both = github.verify(
        &["new", "It's a Secret to Everybody"],
        &Delivery { headers: &signed, body: b"Hello, World!", url: "", now_secs: 0 },
    );
    assert_eq!(both, Ok(()));
}

#[test]
fn slack_as_its_documentation_signs() {
    // api.slack.com, "Verifying requests from Slack": a slash command's form body.
    let slack = spec(json!({"provider": "slack"}));
    let body = "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V\
        &channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=\
        &response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN\
        &trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
    let signed = headers(&[
        ("x-slack-signature", "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"),
        ("x-slack-request-timestamp", "1531420618"),
    ]);
    let secret = "8f742231b10e8888abcd99yyyzzz85a5";
    assert_eq!(check(&slack, secret, &signed, body.as_bytes(), 1531420618 + 10), Ok(()));
    let stale = check(&slack, secret, &signed, body.as_bytes(), 1531420618 + 301).unwrap_err();
    assert_eq!(stale.reason, RefusalReason::StaleTimestamp);
    // A slash command becomes an object of its fields.
    let event: Value = serde_json::from_str(&slack.form_event(body.as_bytes()).unwrap()).unwrap();
    assert_eq!(event["command"], "/webhook-collect");
    assert_eq!(event["text"], "");
    // An interactive message carries its JSON in `payload`.
    let interactive = slack.form_event(b"payload=%7B%22type%22%3A%22block_actions%22%7D").unwrap();
    assert_eq!(interactive, r#"{"type":"block_actions"}"#);
    // The URL handshake is answered, not stored.
    let handshake = json!({"token": "t", "challenge": "3eZbrw1aB", "type": "url_verification"});
    assert_eq!(slack.handshake_challenge(&handshake).as_deref(), Some("3eZbrw1aB"));
    assert_eq!(slack.handshake_challenge(&json!({"type": "event_callback"})), None);
    assert_eq!(
        slack.duplicate_key(&HeaderMap::new(), Some(&json!({"event_id": "Ev0PV52K21"}))).as_deref(),
        Some("Ev0PV52K21")
    );
}

#[test]
fn twilio_as_its_documentation_signs() {
    // twilio.com, "Webhooks security": the auth token 12345, the URL and the form parameters.
    let twilio = spec(json!({"provider": "twilio"}));
    let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
    let body = b"CallSid=CA1234567890ABCDE&Caller=%2B12349013030&Digits=1234&From=%2B12349013030&To=%2B18005551212";
    let signed = headers(&[("x-twilio-signature", "0/KCTR6DLpKmkAf8muzZqo1nDgQ=")]);
    let delivery = |url| Delivery { headers: &signed, body, url, now_secs: 0 };
    assert_eq!(twilio.verify(&["12345"], &delivery(url)), Ok(()));
    let elsewhere = twilio.verify(&["12345"], &delivery("https://mycompany.com/other.php?foo=1&bar=2"));
    assert_eq!(elsewhere.unwrap_err().reason, RefusalReason::BadSignature, "the URL is signed");
    let event: Value = serde_json::from_str(&twilio.form_event(b"Body=hi&MediaUrl=a&MediaUrl=b").unwrap()).unwrap();
    assert_eq!(event, json!({"Body": "hi", "MediaUrl": ["a", "b"]}));
}

#[test]
fn stripe_takes_any_v1_and_holds_the_timestamp_to_five_minutes() {
    let stripe = spec(json!({"provider": "stripe"}));
    let body = br#"{"id":"evt_1","type":"invoice.paid"}"#;
    let mac = |secret: &str, ts: i64| hex::encode(sha256(secret.as_bytes(), &[ts.to_string().as_bytes(), b".", body]));
    let now = 1_700_000_000;
    let value = format!("t={now},v1={},v1={},v0=ignored", mac("old", now), mac("whsec_current", now));
    let signed = headers(&[("stripe-signature", &value)]);
    assert_eq!(check(&stripe, "whsec_current", &signed, body, now + 299), Ok(()));
    assert_eq!(
        check(&stripe, "whsec_current", &signed, body, now + 301).unwrap_err().reason,
        RefusalReason::StaleTimestamp
    );
    assert_eq!(check(&stripe, "whsec_other", &signed, body, now).unwrap_err().reason, RefusalReason::BadSignature);
    // The timestamp is signed as written: a plus sign or a leading zero is another text.
    let odd = headers(&[("stripe-signature", &format!("t=+{now},v1={}", mac("whsec_current", now)))]);
    assert_eq!(check(&stripe, "whsec_current", &odd, body, now).unwrap_err().reason, RefusalReason::MissingSignature);
    let event: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(stripe.duplicate_key(&HeaderMap::new(), Some(&event)).as_deref(), Some("evt_1"));
}

#[test]
fn shopify_gitlab_and_any_hmac_sender() {
    let body = br#"{"id":42}"#;
    let shopify = spec(json!({"provider": "shopify"}));
    let digest = BASE64.encode(sha256(b"shpss_1", &[body]));
    let signed = headers(&[("x-shopify-hmac-sha256", &digest), ("x-shopify-webhook-id", "b54557e4")]);
    assert_eq!(check(&shopify, "shpss_1", &signed, body, 0), Ok(()));
    assert_eq!(shopify.duplicate_key(&signed, None).as_deref(), Some("b54557e4"));

    let gitlab = spec(json!({"provider": "gitlab"}));
    let token = headers(&[("x-gitlab-token", "tok"), ("x-gitlab-event-uuid", "u-1")]);
    assert_eq!(check(&gitlab, "tok", &token, body, 0), Ok(()));
    assert_eq!(check(&gitlab, "tok2", &token, body, 0).unwrap_err().reason, RefusalReason::BadToken);
    assert_eq!(gitlab.duplicate_key(&token, None).as_deref(), Some("u-1"));

    let hmac = spec(json!({"provider": "hmac", "header": "X-Signature", "algorithm": "sha512",
        "encoding": "base64", "prefix": "sha512=", "id_header": "X-Delivery"}));
    let mut mac = Hmac::<sha2::Sha512>::new_from_slice(b"k").unwrap();
    mac.update(body);
    let value = format!("sha512={}", BASE64.encode(mac.finalize().into_bytes()));
    let signed = headers(&[("x-signature", &value), ("x-delivery", "d-9")]);
    assert_eq!(check(&hmac, "k", &signed, body, 0), Ok(()));
    assert_eq!(check(&hmac, "k", &signed, b"{}", 0).unwrap_err().reason, RefusalReason::BadSignature);
    assert_eq!(hmac.duplicate_key(&signed, Some(&json!({"id": "body-id"}))).as_deref(), Some("d-9"));
    let plain = spec(json!({"provider": "hmac", "header": "x-sig"}));
    assert_eq!(plain.duplicate_key(&HeaderMap::new(), Some(&json!({"id": "body-id"}))).as_deref(), Some("body-id"));
}

#[test]
fn a_bad_verify_names_its_field() {
    let field = |object: Value| VerifySpec::from_json(&object).unwrap_err().field;
    assert_eq!(field(json!({"provider": "gitbucket"})), "provider");
    assert_eq!(field(json!({"provider": 7})), "provider");
    assert_eq!(field(json!({"provider": "github", "header": "x"})), "header");
    assert_eq!(field(json!({"provider": "hmac"})), "header");
    assert_eq!(field(json!({"provider": "hmac", "header": "bad header"})), "header");
    assert_eq!(field(json!({"provider": "hmac", "header": "x", "algorithm": "md5"})), "algorithm");
    assert_eq!(field(json!({"provider": "hmac", "header": "x", "colour": "red"})), "colour");
    assert_eq!(field(json!({"provider": "hmac", "header": "x", "type_field": "type"})), "type_field");
    assert_eq!(field(json!({"provider": "hmac", "header": "x", "type_header": "a b"})), "type_header");
    assert_eq!(field(json!({"provider": "hmac", "header": "x", "prefix": "p".repeat(65)})), "prefix");
    assert_eq!(field(json!("github")), "verify");
    let with_secret = |object: Value| VerifySpec::from_json_with_secret(&object);
    assert_eq!(with_secret(json!({"provider": "github"})).unwrap_err().field, "secret");
    assert_eq!(with_secret(json!({"provider": "github", "secret": ""})).unwrap_err().field, "secret");
    assert_eq!(with_secret(json!({"provider": "github", "secret": 5})).unwrap_err().field, "secret");
    assert_eq!(with_secret(json!({"provider": "github", "secret_file": "/x"})).unwrap_err().field, "secret_file");
    assert_eq!(with_secret(json!({"secret": "whsec_x"})).unwrap_err().field, "secret");
    assert_eq!(with_secret(json!({"provider": "gitlab", "secret": "short-token"})).unwrap_err().field, "secret");
    let (github, secret) = with_secret(json!({"provider": "github", "secret": "sixteen-bytes-ok"})).unwrap();
    assert_eq!((github.provider, secret.as_deref()), (Provider::Github, Some("sixteen-bytes-ok")));
    assert_eq!(with_secret(json!({})).unwrap(), (VerifySpec::standard(), None));
    let hmac = spec(json!({"provider": "hmac", "header": "X-Sig", "prefix": "v1="}));
    assert_eq!(
        hmac.to_json(),
        json!({"provider": "hmac", "header": "x-sig", "algorithm": "sha256", "encoding": "hex", "prefix": "v1="})
    );
    assert_eq!(spec(json!({})), VerifySpec::standard());
    assert_eq!(spec(json!({"provider": "github", "secret": "s"})).to_json(), json!({"provider": "github"}));
    // GitLab's fallback: an unusable Idempotency-Key gives way to the event UUID.
    let gitlab = spec(json!({"provider": "gitlab"}));
    let long = "k".repeat(300);
    let keyed = headers(&[("idempotency-key", &long), ("x-gitlab-event-uuid", "u-2")]);
    assert_eq!(gitlab.duplicate_key(&keyed, None).as_deref(), Some("u-2"));
}

#[test]
fn github_forms_carry_the_json_in_payload() {
    let github = spec(json!({"provider": "github"}));
    assert_eq!(github.form_event(b"payload=%7B%22zen%22%3A%22ok%22%7D").unwrap(), r#"{"zen":"ok"}"#);
    assert!(github.form_event(b"zen=ok").is_err());
    assert!(github.form_event(b"payload=%5B1%5D").is_err(), "an array is no event");
    assert!(!spec(json!({"provider": "stripe"})).takes_forms());
    assert!(spec(json!({"provider": "stripe"})).reads_body() && !github.reads_body());
    assert!(spec(json!({"provider": "hmac", "header": "x"})).reads_body());
    assert!(!spec(json!({"provider": "hmac", "header": "x", "id_header": "x-id"})).reads_body());
}

#[test]
fn each_provider_names_its_event_type_where_it_puts_it() {
    let typed = headers(&[
        ("x-github-event", " pull_request "),
        ("x-shopify-topic", "orders/create"),
        ("x-gitlab-event", "Push Hook"),
        ("x-kind", "invoice.paid"),
    ]);
    let slack_event = json!({"type": "event_callback", "event": {"type": "app_mention"}});
    let body_typed = json!({"type": "outer", "meta": {"kind": "inner"}});
    let of = |object: Value, event: Option<&Value>| spec(object).event_type(&typed, event);
    assert_eq!(of(json!({"provider": "github"}), None).as_deref(), Some("pull_request"));
    assert_eq!(of(json!({"provider": "shopify"}), None).as_deref(), Some("orders/create"));
    assert_eq!(of(json!({"provider": "gitlab"}), None).as_deref(), Some("Push Hook"));
    assert_eq!(of(json!({"provider": "slack"}), Some(&slack_event)).as_deref(), Some("app_mention"));
    // The body's own /type is the payload's to give: nothing to store beside it.
    assert_eq!(of(json!({"provider": "slack"}), Some(&json!({"type": "url_verification"}))), None);
    assert_eq!(of(json!({"provider": "stripe"}), Some(&body_typed)), None);
    assert_eq!(of(json!({"provider": "standard-webhooks"}), Some(&body_typed)), None);
    assert_eq!(of(json!({"provider": "twilio"}), None), None);
    let hmac = |options: Value| {
        let mut object = json!({"provider": "hmac", "header": "x-sig"});
        object.as_object_mut().unwrap().extend(options.as_object().unwrap().clone());
        object
    };
    assert_eq!(of(hmac(json!({"type_header": "X-Kind"})), None).as_deref(), Some("invoice.paid"));
    assert_eq!(of(hmac(json!({"type_field": "/meta/kind"})), Some(&body_typed)).as_deref(), Some("inner"));
    assert_eq!(of(hmac(json!({"type_field": "/type"})), Some(&body_typed)), None);
    assert_eq!(of(hmac(json!({})), Some(&body_typed)), None);
    // A type deeper in the body makes the body worth reading even with the id in a header.
    assert!(spec(hmac(json!({"id_header": "x-id", "type_field": "/meta/kind"}))).reads_body());
    assert!(!spec(hmac(json!({"id_header": "x-id", "type_header": "x-kind"}))).reads_body());
    // The options round-trip through what the API shows.
    let shown = spec(hmac(json!({"type_header": "X-Kind", "type_field": "/meta/kind"}))).to_json();
    assert_eq!(shown["type_header"], "x-kind");
    assert_eq!(VerifySpec::from_json(&shown).unwrap().to_json(), shown);
}
