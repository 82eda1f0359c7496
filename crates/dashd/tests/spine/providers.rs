//! Deliveries from the API providers people watch, signed by the providers' own code where they
//! ship it: GitHub's `@octokit/webhooks-methods` and the `stripe` library's test-header generator
//! (Node.js), `slack_sdk`'s `SignatureVerifier` and `twilio`'s `RequestValidator` (Python), all
//! installed by scripts/test.sh. Shopify, GitLab and the generic HMAC sender have no such library:
//! their headers are made here, as their documentation describes them.
//!
//! Each provider is checked the same way, on `all` and through a web edge, on the pass's store:
//! good deliveries stored once and a redelivery deduped on the provider's key, a tampered body, a
//! wrong secret and a missing header each 401, a stale timestamp 401 where the scheme has one,
//! and the refusals counted by reason.

use std::time::{Duration, Instant};

use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};

use crate::edge_trust::{client_at, host, wait_for_ingestor, wait_until_up};
use crate::support::{NatsServer, TestServer, assert_error, now_secs, sender_library};

/// Where deliveries go: an `all` node, or a web edge in front of an ingestor.
struct Site {
    /// Runs intake: pipelines are made and counted here.
    ingestor: TestServer,
    /// The edge deliveries go through, when there is one.
    web: Option<TestServer>,
    _nats: Option<NatsServer>,
    client: reqwest::Client,
}

impl Site {
    async fn all() -> Site {
        let ingestor = TestServer::start(&[("DASH_FLUSH_INTERVAL", "50ms")]).await;
        let client = ingestor.client.clone();
        Site { ingestor, web: None, _nats: None, client }
    }

    async fn edge(net: u8) -> Site {
        let nats = NatsServer::start();
        let env = |role, node| {
            [
                ("NATS_URL", nats.url.as_str()),
                ("APP_ROLE", role),
                ("DASH_NODE_ID", node),
                ("DASH_FLUSH_INTERVAL", "50ms"),
            ]
        };
        let ingestor = TestServer::start_at(&env("ingestor", "ingestor-p"), &format!("{}:0", host(net, 2))).await;
        let web = TestServer::start_at(&env("web", "web-p"), &format!("{}:0", host(net, 4))).await;
        wait_for_ingestor(&web).await;
        wait_until_up(&ingestor, "web-p").await;
        Site { ingestor, web: Some(web), _nats: Some(nats), client: client_at(host(net, 20)) }
    }

    fn front(&self) -> &TestServer {
        self.web.as_ref().unwrap_or(&self.ingestor)
    }

    fn url(&self, pipeline: &str) -> String {
        self.front().url(&format!("/webhooks/{pipeline}"))
    }

    async fn create(&self, name: &str, verify: Value) -> String {
        let response = self
            .ingestor
            .client
            .post(self.ingestor.url("/api/pipelines"))
            .json(&json!({ "name": name, "verify": verify }))
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert_eq!(status, 201, "{body}");
        assert!(body.get("secret").is_none(), "a provider's secret is never echoed: {body}");
        assert_eq!(body["verify"]["provider"], verify["provider"], "{body}");
        assert!(body["verify"].get("secret").is_none());
        let id = body["id"].as_str().unwrap().to_owned();
        // Deliveries by event type, one view (see `by_type`).
        let view = self
            .ingestor
            .client
            .post(self.ingestor.url(&format!("/api/pipelines/{id}/views")))
            .json(&json!({"name": "by_type", "aggregate": "count", "group_by": "$type"}))
            .send()
            .await
            .unwrap();
        assert_eq!(view.status(), 201, "{}", view.text().await.unwrap());
        id
    }

    /// The pipeline's `by_type` view: each group (event type) over the last hour with its count.
    async fn by_type(&self, pipeline: &str) -> Vec<(String, u64)> {
        let now = now_secs() * 1000;
        let path =
            format!("/api/pipelines/{pipeline}/views/by_type/groups?from={}&to={}", now - 3_600_000, now + 60_000);
        let got = self.ingestor.get_json(&path).await;
        let mut groups: Vec<(String, u64)> = got["groups"]
            .as_array()
            .unwrap_or_else(|| panic!("{got}"))
            .iter()
            .map(|g| (g["group"].as_str().unwrap().to_owned(), g["n"].as_u64().unwrap()))
            .collect();
        groups.sort();
        groups
    }

    /// Waits for the pipeline's count, then checks its duplicates and stored ids.
    async fn stored(&self, pipeline: &str, count: i64, duplicates: i64) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let stats = self.ingestor.get_json(&format!("/api/pipelines/{pipeline}")).await;
            if stats["stats"]["count"] == count && stats["stats"]["duplicates"] == duplicates {
                break;
            }
            assert!(Instant::now() < deadline, "{pipeline}: expected {count} stored, {duplicates} duplicates: {stats}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let events = self.ingestor.get_json(&format!("/api/pipelines/{pipeline}/events")).await;
        events["events"].as_array().unwrap().clone()
    }

    async fn refused(&self, reason: &str) -> f64 {
        let text = crate::monitoring::metrics_text(&self.ingestor).await;
        crate::monitoring::sample(&text, &format!("dash_webhook_refused_total{{reason=\"{reason}\"}}")).unwrap_or(0.0)
    }

    fn post(
        &self,
        pipeline: &str,
        content_type: &str,
        headers: &[(&str, String)],
        body: &str,
    ) -> reqwest::RequestBuilder {
        let mut request =
            self.client.post(self.url(pipeline)).header("content-type", content_type).body(body.to_owned());
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        request
    }
}

/// GitHub's or Stripe's own library (Node.js).
fn node_sign(args: &[&str]) -> Option<String> {
    sender_library("DASH_TEST_NODE_SIGNER", args)
}

/// Slack's or Twilio's own library (Python).
fn python_sign(args: &[&str]) -> Option<String> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/sign-webhook.py");
    sender_library("DASH_TEST_PYTHON", &[&[script], args].concat())
}

fn hmac_sha256(secret: &str, text: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(text);
    mac.finalize().into_bytes().to_vec()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn status(request: reqwest::RequestBuilder) -> u16 {
    request.send().await.unwrap().status().as_u16()
}

async fn github(site: &Site) {
    let secret = "github-webhook-secret";
    let p = site.create("github", json!({"provider": "github", "secret": secret})).await;
    // The body's own `id` is not the delivery's identity: X-GitHub-Delivery is.
    let body = r#"{"action":"opened","issue":{"number":7},"id":1}"#;
    let Some(signature) = node_sign(&["github", secret, body]) else { return };
    // X-GitHub-Event is each event's type.
    let typed = |event: &str, id: &str, sig: &str| {
        vec![
            ("x-github-event", event.to_owned()),
            ("x-github-delivery", id.to_owned()),
            ("x-hub-signature-256", sig.to_owned()),
        ]
    };
    let delivery = |id: &str, sig: &str| typed("issues", id, sig);
    let ok = delivery("72d3162e-cc78-11e3-81ab-4c9367dc0958", &signature);
    assert_eq!(status(site.post(&p, "application/json", &ok, body)).await, 202);
    assert_eq!(status(site.post(&p, "application/json", &ok, body)).await, 202, "redelivered");
    let other = r#"{"action":"closed","issue":{"number":7},"id":1}"#;
    let other_sig = node_sign(&["github", secret, other]).unwrap();
    let second = delivery("9a1f0c2e-cc78-11e3-81ab-4c9367dc0958", &other_sig);
    assert_eq!(status(site.post(&p, "application/json", &second, other)).await, 202);
    // A form delivery carries the JSON in `payload`, signed over the form as sent.
    let form =
        format!("payload={}", crate::hostile::percent_encoded(r#"{"zen":"Keep it logically awesome.","hook_id":1}"#));
    let form_sig = node_sign(&["github", secret, &form]).unwrap();
    let ping = typed("ping", "b0c1d2e3-cc78-11e3-81ab-4c9367dc0958", &form_sig);
    assert_eq!(status(site.post(&p, "application/x-www-form-urlencoded", &ping, &form)).await, 202);

    let bad_before = site.refused("bad_signature").await;
    let missing_before = site.refused("missing_signature").await;
    let tampered = site.post(&p, "application/json", &delivery("t-1", &signature), r#"{"action":"deleted"}"#);
    assert_error(tampered.send().await.unwrap(), 401, "invalid_signature").await;
    let wrong = node_sign(&["github", "not-the-secret", body]).unwrap();
    assert_error(
        site.post(&p, "application/json", &delivery("t-2", &wrong), body).send().await.unwrap(),
        401,
        "invalid_signature",
    )
    .await;
    let missing = site.post(&p, "application/json", &[("x-github-delivery", "t-3".into())], body);
    let refusal = assert_error(missing.send().await.unwrap(), 401, "missing_signature").await;
    assert!(refusal["error"]["message"].as_str().unwrap().contains("x-hub-signature-256"), "{refusal}");
    assert_eq!(site.refused("bad_signature").await, bad_before + 2.0);
    assert_eq!(site.refused("missing_signature").await, missing_before + 1.0);

    // The pipeline's own refusal counts reach its stats within a flush (5 s), and its page.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let shown = site.ingestor.get_json(&format!("/api/pipelines/{p}")).await;
        let refused = &shown["refused"];
        if refused["by_reason"]["bad_signature"] == 2 && refused["by_reason"]["missing_signature"] == 1 {
            assert_eq!(refused["last_hour"], 3, "{shown}");
            assert_eq!(refused["latest_reason"], "missing_signature", "{shown}");
            break;
        }
        assert!(Instant::now() < deadline, "refusals never counted: {shown}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if site.web.is_none() {
        let page = site.ingestor.client.get(site.ingestor.url(&format!("/pipelines/{p}"))).send().await.unwrap();
        let page = page.text().await.unwrap();
        assert!(
            page.contains("3 deliveries refused in the last hour: bad signature — check the secret in GitHub"),
            "{page}"
        );
        assert!(page.contains("Connect GitHub"), "{page}");
    }

    let events = site.stored(&p, 3, 1).await;
    let ids: Vec<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert!(ids.contains(&"72d3162e-cc78-11e3-81ab-4c9367dc0958"), "{events:?}");
    assert!(events.iter().any(|e| e["payload"]["zen"] == "Keep it logically awesome."), "{events:?}");
    let mut types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    types.sort_unstable();
    assert_eq!(types, ["issues", "issues", "ping"], "{events:?}");
    assert_eq!(site.by_type(&p).await, [("issues".to_owned(), 2), ("ping".to_owned(), 1)]);
}

async fn stripe(site: &Site) {
    let secret = "whsec_stripe_endpoint_secret";
    let p = site.create("stripe", json!({"provider": "stripe", "secret": secret})).await;
    let body = r#"{"id":"evt_1NG8Du2eZvKYlo2CUI79vXWy","type":"invoice.paid","data":{"object":{"amount_paid":2000}}}"#;
    let Some(header) = node_sign(&["stripe", secret, body]) else { return };
    let signed = |value: String| vec![("stripe-signature", value)];
    assert_eq!(status(site.post(&p, "application/json", &signed(header.clone()), body)).await, 202);
    // A retry is signed anew (a new t=): the event id still makes it the same delivery.
    let retry = node_sign(&["stripe", secret, body]).unwrap();
    assert_eq!(status(site.post(&p, "application/json", &signed(retry), body)).await, 202);

    let stale_before = site.refused("stale_timestamp").await;
    let old = (now_secs() - 600).to_string();
    let stale = node_sign(&["stripe", secret, body, &old]).unwrap();
    assert_error(site.post(&p, "application/json", &signed(stale), body).send().await.unwrap(), 401, "stale_timestamp")
        .await;
    assert_eq!(site.refused("stale_timestamp").await, stale_before + 1.0);
    let tampered = body.replace("2000", "2");
    assert_error(
        site.post(&p, "application/json", &signed(header), &tampered).send().await.unwrap(),
        401,
        "invalid_signature",
    )
    .await;
    let wrong = node_sign(&["stripe", "whsec_someone_else", body]).unwrap();
    assert_error(
        site.post(&p, "application/json", &signed(wrong), body).send().await.unwrap(),
        401,
        "invalid_signature",
    )
    .await;
    assert_error(site.post(&p, "application/json", &[], body).send().await.unwrap(), 401, "missing_signature").await;
    let events = site.stored(&p, 1, 1).await;
    assert_eq!(events[0]["id"], "evt_1NG8Du2eZvKYlo2CUI79vXWy");
    assert_eq!(events[0]["type"], "invoice.paid", "the body's own type");
    assert_eq!(site.by_type(&p).await, [("invoice.paid".to_owned(), 1)]);
}

async fn slack(site: &Site) {
    let secret = "8f742231b10e8888abcd99yyyzzz85a5";
    let p = site.create("slack", json!({"provider": "slack", "secret": secret})).await;
    let signed = |ts: &str, body: &str| -> Option<Vec<(&str, String)>> {
        let signature = python_sign(&["slack", secret, ts, body])?;
        Some(vec![("x-slack-signature", signature), ("x-slack-request-timestamp", ts.to_owned())])
    };
    let now = now_secs().to_string();
    // The URL handshake: answered with its challenge, stored nowhere.
    let handshake = r#"{"token":"Jhj5dZrVaK7ZwHHjRyZWjbDl","challenge":"3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P","type":"url_verification"}"#;
    let Some(headers) = signed(&now, handshake) else { return };
    let answer = site.post(&p, "application/json", &headers, handshake).send().await.unwrap();
    assert_eq!(answer.status(), 200);
    let answer: Value = answer.json().await.unwrap();
    assert_eq!(answer["challenge"], "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P");

    let event = r#"{"type":"event_callback","event_id":"Ev0PV52K21","event":{"type":"app_mention","text":"hi"}}"#;
    let headers = signed(&now, event).unwrap();
    assert_eq!(status(site.post(&p, "application/json", &headers, event)).await, 202);
    assert_eq!(status(site.post(&p, "application/json", &headers, event)).await, 202, "Slack retries");
    // A slash command posts a form: stored as an object of its fields.
    let command = "token=gIkuvaNzQIHg97ATvDxqgjtO&team_id=T0001&command=%2Fweather&text=94070&user_name=Steve";
    assert_eq!(
        status(site.post(&p, "application/x-www-form-urlencoded", &signed(&now, command).unwrap(), command)).await,
        202
    );

    let old = (now_secs() - 400).to_string();
    let stale = site.post(&p, "application/json", &signed(&old, event).unwrap(), event);
    assert_error(stale.send().await.unwrap(), 401, "stale_timestamp").await;
    let tampered = site.post(&p, "application/json", &headers, &event.replace("hi", "bye"));
    assert_error(tampered.send().await.unwrap(), 401, "invalid_signature").await;
    let wrong = python_sign(&["slack", "another-signing-secret", &now, event]).unwrap();
    let wrong = vec![("x-slack-signature", wrong), ("x-slack-request-timestamp", now.clone())];
    assert_error(site.post(&p, "application/json", &wrong, event).send().await.unwrap(), 401, "invalid_signature")
        .await;
    assert_error(site.post(&p, "application/json", &[], event).send().await.unwrap(), 401, "missing_signature").await;
    let events = site.stored(&p, 2, 1).await;
    assert!(events.iter().any(|e| e["id"] == "Ev0PV52K21" && e["type"] == "app_mention"), "{events:?}");
    assert!(events.iter().any(|e| e["payload"]["command"] == "/weather" && e["type"].is_null()), "{events:?}");
    assert_eq!(site.by_type(&p).await, [("(none)".to_owned(), 1), ("app_mention".to_owned(), 1)]);
}

async fn twilio(site: &Site) {
    let token = "twilio-auth-token-0123456789abcdef";
    let p = site.create("twilio", json!({"provider": "twilio", "secret": token})).await;
    // The URL Twilio signs is the one it posted to: the edge's, when there is one.
    let url = site.url(&p);
    let form = "AccountSid=AC123&Body=Hello&From=%2B15005550006&MessageSid=SM123&MediaUrl0=a&To=%2B15005550001";
    let Some(signature) = python_sign(&["twilio", token, &url, form]) else { return };
    let headers = vec![("x-twilio-signature", signature.clone()), ("i-twilio-idempotency-token", "idem-1".into())];
    let form_type = "application/x-www-form-urlencoded";
    assert_eq!(status(site.post(&p, form_type, &headers, form)).await, 202);
    assert_eq!(status(site.post(&p, form_type, &headers, form)).await, 202, "Twilio retries");
    let tampered = site.post(&p, form_type, &headers, &form.replace("Hello", "Goodbye"));
    assert_error(tampered.send().await.unwrap(), 401, "invalid_signature").await;
    let elsewhere = python_sign(&["twilio", token, "https://elsewhere.example/webhooks/twilio", form]).unwrap();
    let wrong = vec![("x-twilio-signature", elsewhere)];
    assert_error(site.post(&p, form_type, &wrong, form).send().await.unwrap(), 401, "invalid_signature").await;
    assert_error(site.post(&p, form_type, &[], form).send().await.unwrap(), 401, "missing_signature").await;
    let events = site.stored(&p, 1, 1).await;
    assert_eq!(events[0]["id"], "idem-1");
    assert_eq!(events[0]["payload"]["Body"], "Hello");
    assert_eq!(events[0]["payload"]["From"], "+15005550006");
    assert_eq!(site.by_type(&p).await, [("(none)".to_owned(), 1)], "Twilio names no type");
}

async fn shopify_gitlab_and_hmac(site: &Site) {
    // Shopify: base64 HMAC-SHA256 of the body under the app's secret (shopify.dev, "Verify webhooks").
    let secret = "shpss_app_client_secret";
    let p = site.create("shopify", json!({"provider": "shopify", "secret": secret})).await;
    let body = r#"{"id":820982911946154508,"email":"jon@example.com"}"#;
    let headers = |digest: String, id: &str| {
        vec![
            ("x-shopify-hmac-sha256", digest),
            ("x-shopify-topic", "orders/create".into()),
            ("x-shopify-webhook-id", id.to_owned()),
        ]
    };
    let digest = b64(&hmac_sha256(secret, body.as_bytes()));
    assert_eq!(status(site.post(&p, "application/json", &headers(digest.clone(), "b54557e4-bdd9"), body)).await, 202);
    assert_eq!(status(site.post(&p, "application/json", &headers(digest.clone(), "b54557e4-bdd9"), body)).await, 202);
    let tampered = site.post(&p, "application/json", &headers(digest, "x"), &body.replace("jon", "bob"));
    assert_error(tampered.send().await.unwrap(), 401, "invalid_signature").await;
    let wrong = b64(&hmac_sha256("another", body.as_bytes()));
    assert_error(
        site.post(&p, "application/json", &headers(wrong, "y"), body).send().await.unwrap(),
        401,
        "invalid_signature",
    )
    .await;
    let events = site.stored(&p, 1, 1).await;
    assert_eq!(events[0]["id"], "b54557e4-bdd9");
    assert_eq!(events[0]["type"], "orders/create");
    assert_eq!(site.by_type(&p).await, [("orders/create".to_owned(), 1)]);

    // GitLab: the secret token itself, in X-Gitlab-Token (docs.gitlab.com, "Webhooks").
    let token = "gitlab-secret-token";
    let p = site.create("gitlab", json!({"provider": "gitlab", "secret": token})).await;
    let body = r#"{"object_kind":"push","ref":"refs/heads/main"}"#;
    let headers = |token: &str| {
        vec![
            ("x-gitlab-token", token.to_owned()),
            ("x-gitlab-event", "Push Hook".into()),
            ("x-gitlab-event-uuid", "5b4d3d0e-8a7e-4b0e-8f3c-1a2b3c4d5e6f".into()),
        ]
    };
    assert_eq!(status(site.post(&p, "application/json", &headers(token), body)).await, 202);
    assert_eq!(status(site.post(&p, "application/json", &headers(token), body)).await, 202);
    let bad_token = site.refused("bad_token").await;
    assert_error(
        site.post(&p, "application/json", &headers("guess"), body).send().await.unwrap(),
        401,
        "invalid_token",
    )
    .await;
    assert_eq!(site.refused("bad_token").await, bad_token + 1.0);
    assert_error(site.post(&p, "application/json", &[], body).send().await.unwrap(), 401, "missing_signature").await;
    let events = site.stored(&p, 1, 1).await;
    assert_eq!(events[0]["type"], "Push Hook");
    assert_eq!(site.by_type(&p).await, [("Push Hook".to_owned(), 1)]);

    // Any other HMAC sender: its header, digest, encoding and prefix, its own delivery id.
    let secret = "generic-sender-secret";
    let verify = json!({"provider": "hmac", "secret": secret, "header": "X-Signature", "prefix": "sha256=",
        "id_header": "X-Request-Id", "type_field": "/event"});
    let p = site.create("generic", verify).await;
    let body = r#"{"event":"build.finished","status":"green"}"#;
    let signed =
        |digest: String, id: &str| vec![("x-signature", format!("sha256={digest}")), ("x-request-id", id.to_owned())];
    let digest = hex(&hmac_sha256(secret, body.as_bytes()));
    assert_eq!(status(site.post(&p, "application/json", &signed(digest.clone(), "req-1"), body)).await, 202);
    assert_eq!(status(site.post(&p, "application/json", &signed(digest.clone(), "req-1"), body)).await, 202);
    let tampered = site.post(&p, "application/json", &signed(digest, "req-2"), r#"{"status":"red"}"#);
    assert_error(tampered.send().await.unwrap(), 401, "invalid_signature").await;
    let events = site.stored(&p, 1, 1).await;
    assert_eq!(events[0]["type"], "build.finished", "type_field names where the type is");
    assert_eq!(site.by_type(&p).await, [("build.finished".to_owned(), 1)]);
}

/// The verify API: shown without its secret, replaced with the old secret kept for a grace
/// period, bad input 422 naming the field.
async fn verify_api(site: &Site) {
    let api = &site.ingestor;
    let p = site.create("rotating", json!({"provider": "github", "secret": "the-first-secret"})).await;
    let put = |verify: Value| api.client.put(api.url(&format!("/api/pipelines/{p}/verify"))).json(&verify).send();
    let replaced = put(json!({"provider": "github", "secret": "the-second-secret"})).await.unwrap();
    assert_eq!(replaced.status(), 200);
    let shown = api.get_json(&format!("/api/pipelines/{p}")).await;
    assert_eq!(shown["verify"], json!({"provider": "github"}), "{shown}");
    assert!(!shown.to_string().contains("the-second-secret"), "the secret is never shown: {shown}");
    // Both secrets sign for now.
    let body = r#"{"n":1}"#;
    for (i, secret) in ["the-first-secret", "the-second-secret"].into_iter().enumerate() {
        let signature = format!("sha256={}", hex(&hmac_sha256(secret, body.as_bytes())));
        let headers = vec![("x-hub-signature-256", signature), ("x-github-delivery", format!("rot-{i}"))];
        assert_eq!(status(site.post(&p, "application/json", &headers, body)).await, 202, "{secret}");
    }
    for (verify, field) in [
        (json!({"provider": "gitbucket", "secret": "s"}), "provider"),
        (json!({"provider": "github"}), "secret"),
        (json!({"provider": "github", "secret": "guessable"}), "secret"),
        (json!({"provider": "github", "secret": "s", "colour": "red"}), "colour"),
        (json!({"provider": "hmac", "secret": "s"}), "header"),
    ] {
        let refused = assert_error(put(verify.clone()).await.unwrap(), 422, "invalid_verify").await;
        assert_eq!(refused["error"]["field"], field, "{verify}: {refused}");
    }
    let create = api.client.post(api.url("/api/pipelines")).json(&json!({"name": "nope", "verify": {"provider": "x"}}));
    assert_error(create.send().await.unwrap(), 422, "invalid_verify").await;
    assert!(api.get_json("/api/pipelines/nope").await.get("error").is_some(), "a bad verify creates nothing");
    // Back to Standard Webhooks: the pipeline's own secret signs again.
    assert_eq!(put(json!({"provider": "standard-webhooks"})).await.unwrap().status(), 200);
    let shown = api.get_json(&format!("/api/pipelines/{p}")).await;
    assert_eq!(shown["verify"], json!({"provider": "standard-webhooks"}));
    site.stored(&p, 2, 0).await;
}

/// Anyone can point a webhook with a wrong secret at a pipeline from the provider's own address
/// pool: its failures are throttled, the real deliveries from the same addresses never are.
async fn a_misconfigured_webhook_in_the_same_pool_stops_nothing(site: &Site) {
    let secret = "the-real-github-secret";
    let p = site.create("shared-pool", json!({"provider": "github", "secret": secret})).await;
    let body = r#"{"action":"opened"}"#;
    let delivery = |id: String, secret: &str| {
        let signature = format!("sha256={}", hex(&hmac_sha256(secret, body.as_bytes())));
        vec![("x-github-delivery", id), ("x-hub-signature-256", signature)]
    };
    let mut statuses = Vec::new();
    for i in 0..40 {
        let wrong = site.post(&p, "application/json", &delivery(format!("theirs-{i}"), "someone-elses-secret"), body);
        statuses.push(status(wrong).await);
    }
    assert!(statuses[..20].iter().all(|s| *s == 401) && statuses[35..].iter().all(|s| *s == 429), "{statuses:?}");
    for i in 0..5 {
        let right = site.post(&p, "application/json", &delivery(format!("ours-{i}"), secret), body);
        assert_eq!(status(right).await, 202, "the real delivery {i} gets through");
    }
    site.stored(&p, 5, 0).await;
}

/// What a sender's own headers cannot do: make a Twilio signature meant for another URL fit,
/// or grow a form past the body limit by escaping.
async fn forwarded_headers_and_forms_stay_in_bounds(site: &Site) {
    let token = "twilio-auth-token-for-the-bounds";
    let p = site.create("twilio-bounds", json!({"provider": "twilio", "secret": token})).await;
    let form = "Body=Hello&From=%2B15005550006";
    let Some(elsewhere) = python_sign(&["twilio", token, &format!("https://evil.example/webhooks/{p}"), form]) else {
        return;
    };
    let headers = vec![
        ("x-twilio-signature", elsewhere),
        ("x-forwarded-host", "evil.example".to_owned()),
        ("x-forwarded-proto", "https".to_owned()),
    ];
    // From a sender, X-Forwarded-* are its own claims: not believed, nor passed on by an edge.
    let spoofed = site.post(&p, "application/x-www-form-urlencoded", &headers, form);
    assert_error(spoofed.send().await.unwrap(), 401, "invalid_signature").await;
    // A Slack form of control characters: 0.9 MiB sent, 5 MiB once escaped as JSON.
    let secret = "slack-signing-secret-for-bounds";
    let p = site.create("slack-bounds", json!({"provider": "slack", "secret": secret})).await;
    let form = format!("text={}", "%01".repeat(300_000));
    let ts = now_secs().to_string();
    let signature = format!("v0={}", hex(&hmac_sha256(secret, format!("v0:{ts}:{form}").as_bytes())));
    let headers = vec![("x-slack-signature", signature), ("x-slack-request-timestamp", ts)];
    let grown = site.post(&p, "application/x-www-form-urlencoded", &headers, &form);
    assert_error(grown.send().await.unwrap(), 413, "body_too_large").await;
}

async fn every_provider(site: &Site) {
    github(site).await;
    stripe(site).await;
    slack(site).await;
    twilio(site).await;
    shopify_gitlab_and_hmac(site).await;
    verify_api(site).await;
    a_misconfigured_webhook_in_the_same_pool_stops_nothing(site).await;
    forwarded_headers_and_forms_stay_in_bounds(site).await;
}

#[tokio::test]
async fn every_provider_posts_straight_to_an_all_node() {
    every_provider(&Site::all().await).await;
}

#[tokio::test]
async fn every_provider_posts_through_a_web_edge() {
    every_provider(&Site::edge(34).await).await;
}
