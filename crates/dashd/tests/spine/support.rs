//! Starts the real `dashd` binary on port 0 against a data dir of its own, and talks to it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use dash_signature::SigningSecret;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

/// A builder of the tests' HTTP clients. The build has one TLS crypto provider (ring), which
/// reqwest is told about rather than choosing its own: installed here as dashd installs it.
pub fn http_client() -> reqwest::ClientBuilder {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
}

pub struct Pipeline {
    pub id: String,
    pub secret: SigningSecret,
    pub token: String,
}

pub struct TestServer {
    child: Option<Child>,
    pub base: String,
    pub dir: tempfile::TempDir,
    env: Vec<(String, String)>,
    pub client: reqwest::Client,
    /// (admin URL, database URL) when the server runs on a PostgreSQL database of its own.
    postgres: Option<(String, String)>,
}

/// Which store the suite runs against: `DASH_TEST_BACKEND=postgres` (with `DASH_TEST_POSTGRES`
/// naming the server), else SQLite.
pub fn postgres_admin() -> Option<String> {
    if std::env::var("DASH_TEST_BACKEND").as_deref() != Ok("postgres") {
        return None;
    }
    Some(dash_store::testing::admin_url().expect("DASH_TEST_BACKEND=postgres needs DASH_TEST_POSTGRES"))
}

/// The URL of a fresh, empty database on the admin server.
pub async fn fresh_postgres(admin: &str) -> String {
    dash_store::testing::create_database(admin).await.unwrap()
}

/// A Standard Webhooks POST of `body` to `url`, signed with `secret` at `ts`.
pub fn signed_post(
    client: &reqwest::Client,
    url: &str,
    secret: &SigningSecret,
    msg_id: &str,
    ts: i64,
    content_type: &str,
    body: &str,
) -> reqwest::RequestBuilder {
    client
        .post(url)
        .header("content-type", content_type)
        .header("webhook-id", msg_id)
        .header("webhook-timestamp", ts.to_string())
        .header("webhook-signature", secret.sign(msg_id, ts, body.as_bytes()))
        .body(body.to_owned())
}

/// What a sender's own signing code prints for `args`, run by the program scripts/test.sh names
/// in `env` (`DASH_TEST_PYTHON`; `DASH_TEST_NODE_SIGNER`, a script run by `node`). `None`, with
/// a note, where it is not set; a failure instead when the suite demands every check.
pub fn sender_library(env: &str, args: &[&str]) -> Option<String> {
    let program = match std::env::var(env) {
        Ok(program) => program,
        Err(_) if std::env::var("DASH_TEST_REQUIRE_POSTGRES").is_ok_and(|v| v == "1") => {
            panic!("{env} is not set; scripts/test.sh sets it")
        }
        Err(_) => {
            eprintln!("note: {env} unset; a check with a sender's own signing library is skipped");
            return None;
        }
    };
    let mut command = match program.ends_with(".mjs") {
        true => {
            let mut node = Command::new("node");
            node.arg(&program);
            node
        }
        false => Command::new(&program),
    };
    let output = command.args(args).output().expect("the signing library runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    Some(String::from_utf8(output.stdout).unwrap().trim().to_owned())
}

/// Seconds since the epoch, as the signer's clock.
pub fn now_secs() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

fn dashd() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_dashd"));
    command.env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
    command
}

/// Runs a `dashd` subcommand to completion in `dir` with `env`.
pub fn run_dashd(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> std::process::Output {
    dashd().current_dir(dir).envs(env.iter().copied()).args(args).output().expect("dashd runs")
}

impl TestServer {
    pub async fn start(env: &[(&str, &str)]) -> Self {
        Self::start_at(env, "127.0.0.1:0").await
    }

    /// Starts listening on `listen` (e.g. `127.0.0.3:0`, or a fixed port shared with peers).
    pub async fn start_at(env: &[(&str, &str)], listen: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let mut postgres = None;
        if let Some(admin) = postgres_admin() {
            let url = match env.iter().find(|(k, _)| k == "DATABASE_URL") {
                Some((_, given)) => given.clone(),
                None => {
                    let url = fresh_postgres(&admin).await;
                    env.push(("DATABASE_URL".into(), url.clone()));
                    url
                }
            };
            postgres = Some((admin, url));
        }
        let mut server = Self {
            child: None,
            base: String::new(),
            dir,
            env,
            client: http_client().timeout(Duration::from_secs(30)).build().unwrap(),
            postgres,
        };
        server.spawn(listen);
        server
    }

    /// `data` in the server's folder, unless the test named another with `DASH_DATA_DIR`.
    pub fn data_dir(&self) -> PathBuf {
        match self.env.iter().find(|(k, _)| k == "DASH_DATA_DIR") {
            Some((_, dir)) => self.dir.path().join(dir),
            None => self.dir.path().join("data"),
        }
    }

    pub fn env(&self) -> Vec<(&str, &str)> {
        let mut env: Vec<(&str, &str)> = self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        if !env.iter().any(|(k, _)| *k == "DASH_DATA_DIR") {
            env.push(("DASH_DATA_DIR", "data"));
        }
        env
    }

    fn spawn(&mut self, listen: &str) {
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("dashd.log")).unwrap();
        let mut child = dashd()
            .current_dir(self.dir.path())
            .envs(self.env())
            .env("DASH_LISTEN", listen)
            .env("DASH_LOG", "info,dash_ingest=debug")
            .args(["serve"])
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("dashd starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("dashd listening on ") {
                    let _ = tx.send(addr.to_owned());
                }
            }
        });
        let base = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(base) => base,
            Err(_) => panic!("dashd did not start; log:\n{}", self.log()),
        };
        self.base = base;
        self.child = Some(child);
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dashd.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.as_ref().expect("running").id() as i32)
    }

    /// kill -9: no chance to flush or clean up.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// SIGTERM, then wait for the exit status.
    pub fn sigterm(&mut self) -> ExitStatus {
        kill(self.pid(), Signal::SIGTERM).unwrap();
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "dashd did not exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Changes one environment variable for the next (re)start.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_owned(), value.to_owned()));
    }

    /// Starts again on the same data dir (a new port).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the server first");
        self.spawn("127.0.0.1:0");
    }

    /// Starts again on the same data dir and the same address, as a browser expects after a
    /// restart.
    pub fn restart_same_port(&mut self) {
        assert!(self.child.is_none(), "stop the server first");
        let listen = self.base.trim_start_matches("http://").to_owned();
        self.spawn(&listen);
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `DASH_ADMIN_TOKEN` as this server was started with.
    pub fn admin_token(&self) -> Option<&str> {
        self.env.iter().find(|(k, _)| k == "DASH_ADMIN_TOKEN").map(|(_, v)| v.as_str())
    }

    pub async fn create_pipeline(&self, name: &str) -> Pipeline {
        let mut request = self.client.post(self.url("/api/pipelines")).json(&serde_json::json!({ "name": name }));
        if let Some(token) = self.admin_token() {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 201);
        let body: Value = response.json().await.unwrap();
        Pipeline {
            id: body["id"].as_str().unwrap().to_owned(),
            secret: SigningSecret::parse(body["secret"].as_str().unwrap()).unwrap(),
            token: body["token"].as_str().unwrap().to_owned(),
        }
    }

    /// A Standard Webhooks signed POST.
    pub async fn post_signed(
        &self,
        pipeline: &Pipeline,
        msg_id: &str,
        content_type: &str,
        body: &str,
    ) -> reqwest::Response {
        self.post_signed_at(pipeline, msg_id, now_secs(), content_type, body).await
    }

    /// A Standard Webhooks POST signed (correctly) with the timestamp `ts`, whatever it is.
    pub async fn post_signed_at(
        &self,
        pipeline: &Pipeline,
        msg_id: &str,
        ts: i64,
        content_type: &str,
        body: &str,
    ) -> reqwest::Response {
        let url = self.url(&format!("/webhooks/{}", pipeline.id));
        signed_post(&self.client, &url, &pipeline.secret, msg_id, ts, content_type, body).send().await.unwrap()
    }

    pub async fn post_json(&self, pipeline: &Pipeline, msg_id: &str, body: &str) -> reqwest::Response {
        self.post_signed(pipeline, msg_id, "application/json", body).await
    }

    pub async fn get_json(&self, path: &str) -> Value {
        let mut request = self.client.get(self.url(path));
        if let Some(token) = self.admin_token() {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        response.json().await.unwrap()
    }

    pub async fn count(&self, pipeline: &Pipeline) -> i64 {
        self.get_json(&format!("/api/pipelines/{}", pipeline.id)).await["stats"]["count"].as_i64().unwrap()
    }

    /// Polls until the stored count is `expected` (or panics after `within`).
    pub async fn wait_for_count(&self, pipeline: &Pipeline, expected: i64, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let count = self.count(pipeline).await;
            if count == expected {
                return;
            }
            assert!(Instant::now() < deadline, "count stayed at {count}, expected {expected}; log:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

const STORED_IDS: &str = "SELECT event_id, COUNT(*) FROM events WHERE pipeline_id = $1 GROUP BY event_id";
const STORED_COUNT: &str = "SELECT event_count FROM pipelines WHERE id = $1";

/// Every stored copy of each event id of `pipeline` (id, copies), and the pipeline's count, read
/// straight from the PostgreSQL database at `url`.
pub async fn stored_events_postgres(url: &str, pipeline: &str) -> (Vec<(String, i64)>, i64) {
    let db = sqlx::postgres::PgPoolOptions::new().max_connections(1).connect(url).await.unwrap();
    let ids = sqlx::query_as(STORED_IDS).bind(pipeline).fetch_all(&db).await.unwrap();
    let count = sqlx::query_scalar(STORED_COUNT).bind(pipeline).fetch_one(&db).await.unwrap();
    db.close().await;
    (ids, count)
}

impl TestServer {
    /// Every stored copy of each event id of `pipeline` (id, copies), and the pipeline's count,
    /// read straight from the server's database.
    pub async fn stored_events(&self, pipeline: &str) -> (Vec<(String, i64)>, i64) {
        if let Some((_, url)) = &self.postgres {
            return stored_events_postgres(url, pipeline).await;
        }
        let url = format!("sqlite://{}/dash.db", self.data_dir().display());
        let db = sqlx::sqlite::SqlitePoolOptions::new().max_connections(1).connect(&url).await.unwrap();
        let ids = sqlx::query_as(STORED_IDS).bind(pipeline).fetch_all(&db).await.unwrap();
        let count = sqlx::query_scalar(STORED_COUNT).bind(pipeline).fetch_one(&db).await.unwrap();
        db.close().await;
        (ids, count)
    }

    pub fn is_postgres(&self) -> bool {
        self.postgres.is_some()
    }

    /// The PostgreSQL database this server runs on; `None` on SQLite.
    pub fn database_url(&self) -> Option<String> {
        self.postgres.as_ref().map(|(_, url)| url.clone())
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some((admin, url)) = self.postgres.take() {
            // Drop runs outside async code: a short-lived runtime of its own.
            let _ = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                runtime.block_on(dash_store::testing::drop_database(&admin, &url))
            })
            .join();
        }
    }
}

pub async fn assert_error(response: reqwest::Response, status: u16, code: &str) -> Value {
    assert_eq!(response.status().as_u16(), status, "expected {status} {code}");
    let content_type = response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    assert!(content_type.starts_with("application/json"), "JSON error body, got {content_type}");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    body
}

/// A nats-server of the test's own on a free loopback port (never the machine's shared one).
pub struct NatsServer {
    child: Option<Child>,
    pub port: u16,
    pub url: String,
}

impl NatsServer {
    /// `nats-server` from PATH or /usr/sbin (scripts/test.sh installs it).
    fn binary() -> String {
        std::env::var("DASH_TEST_NATS_SERVER").unwrap_or_else(|_| {
            if Path::new("/usr/sbin/nats-server").exists() {
                "/usr/sbin/nats-server".into()
            } else {
                "nats-server".into()
            }
        })
    }

    pub fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut server = Self { child: None, port, url: format!("nats://127.0.0.1:{port}") };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let child = Command::new(Self::binary())
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server runs (scripts/test.sh installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not listen on {}", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills it (as a crash would).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop it first");
        self.spawn();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}
