//! Headless Chromium driven over the Chrome DevTools protocol: open a page, evaluate JavaScript
//! in it, wait for a condition, take a screenshot. Only what the dashboard tests need; the
//! protocol is JSON over one WebSocket, so this speaks it directly.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The browser binary: `DASH_TEST_CHROMIUM`, else Debian's `chromium` on PATH.
fn chromium_binary() -> String {
    std::env::var("DASH_TEST_CHROMIUM").unwrap_or_else(|_| "chromium".into())
}

pub struct Browser {
    child: Child,
    _profile: tempfile::TempDir,
    page: Socket,
    next_id: u64,
}

impl Browser {
    /// Starts a fresh headless Chromium (its own profile) with one blank page.
    pub async fn launch() -> Self {
        let profile = tempfile::tempdir().unwrap();
        let mut child = Command::new(chromium_binary())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--window-size=1280,1000",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {} ({e}); scripts/test.sh installs Debian's chromium", chromium_binary())
            });
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // Keep draining after the address so the browser never blocks on a full pipe.
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(at) = line.find("ws://") {
                    let _ = tx.send(line[at..].trim().to_owned());
                }
            }
        });
        let browser_ws = rx.recv_timeout(Duration::from_secs(60)).expect("chromium printed its DevTools address");
        let http = browser_ws.trim_start_matches("ws://").split('/').next().unwrap().to_owned();
        let targets: Value = reqwest::get(format!("http://{http}/json/list")).await.unwrap().json().await.unwrap();
        let page_ws = targets
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["type"] == "page")
            .and_then(|t| t["webSocketDebuggerUrl"].as_str())
            .expect("a page target")
            .to_owned();
        let (page, _) = tokio_tungstenite::connect_async(page_ws.as_str()).await.unwrap();
        let mut browser = Self { child, _profile: profile, page, next_id: 0 };
        browser.call("Page.enable", json!({})).await;
        browser
    }

    /// One protocol command; events arriving meanwhile are skipped.
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        match self.try_call(method, params).await {
            Ok(result) => result,
            Err(reply) => panic!("{method} failed: {reply}"),
        }
    }

    /// One protocol command; the protocol's error reply as `Err`.
    async fn try_call(&mut self, method: &str, params: Value) -> Result<Value, Value> {
        self.next_id += 1;
        let id = self.next_id;
        let command = json!({ "id": id, "method": method, "params": params });
        self.page.send(Message::Text(command.to_string().into())).await.unwrap();
        loop {
            let message = tokio::time::timeout(Duration::from_secs(30), self.page.next())
                .await
                .unwrap_or_else(|_| panic!("no answer to {method}"))
                .expect("devtools socket open")
                .unwrap();
            let Message::Text(text) = message else { continue };
            let reply: Value = serde_json::from_str(&text).unwrap();
            if reply["id"] == id {
                return match reply.get("error") {
                    Some(_) => Err(reply),
                    None => Ok(reply["result"].clone()),
                };
            }
        }
    }

    /// Lets the page download files into `dir` (as a person's browser would save them).
    pub async fn allow_downloads(&mut self, dir: &Path) {
        let params = json!({ "behavior": "allow", "downloadPath": dir.display().to_string() });
        if self.try_call("Browser.setDownloadBehavior", params.clone()).await.is_err() {
            self.call("Page.setDownloadBehavior", params).await;
        }
    }

    /// Navigates and waits for the document to be loaded.
    pub async fn open(&mut self, url: &str) {
        self.call("Page.navigate", json!({ "url": url })).await;
        self.wait_for("document.readyState === 'complete'", Duration::from_secs(20)).await;
    }

    /// `Runtime.evaluate` of `expression` (promises awaited); the protocol's error reply as `Err`.
    async fn evaluate(&mut self, expression: &str) -> Result<Value, Value> {
        let params = json!({ "expression": expression, "returnByValue": true, "awaitPromise": true });
        self.try_call("Runtime.evaluate", params).await
    }

    /// The value of a JavaScript expression in the page (promises awaited).
    pub async fn eval(&mut self, expression: &str) -> Value {
        let result = self.evaluate(expression).await.unwrap_or_else(|reply| panic!("Runtime.evaluate failed: {reply}"));
        if let Some(exception) = result.get("exceptionDetails") {
            panic!("{expression} threw: {exception}");
        }
        result["result"]["value"].clone()
    }

    /// Polls `expression` until it is `true`; panics with what the page shows after `within`.
    /// A page that navigates while it is asked (its context goes away under the question) is
    /// asked again: that is what waiting across a click or a submit looks like.
    pub async fn wait_for(&mut self, expression: &str, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let answered = self.evaluate(expression).await;
            if answered.is_ok_and(|result| result["result"]["value"] == Value::Bool(true)) {
                return;
            }
            if Instant::now() > deadline {
                let page = self.eval("document.body ? document.body.innerText.slice(0, 2000) : ''").await;
                panic!("waited {within:?} for `{expression}`; the page shows:\n{}", page.as_str().unwrap_or(""));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A PNG of the viewport, written under the test build's scratch directory; returns its path.
    pub async fn screenshot(&mut self, name: &str) -> PathBuf {
        let shot = self.call("Page.captureScreenshot", json!({ "format": "png" })).await;
        let png = base64::engine::general_purpose::STANDARD.decode(shot["data"].as_str().unwrap()).unwrap();
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        println!("screenshot: {}", path.display());
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The browser and every helper process it started share its process group.
        let _ = killpg(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
        let _ = self.child.wait();
    }
}
