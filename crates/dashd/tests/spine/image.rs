//! The container image, run the way Fly runs it: `release_command` first, then a web container
//! and an ingestor container from the same image, the commands taken from fly.toml, the
//! ingestor's `/data` a volume owned by root (as a fresh Fly volume is), PostgreSQL and NATS
//! between them, a signed webhook through the web container, and `podman stop` (SIGTERM through
//! tini) draining with exit 0.
//!
//! The image is the Dockerfile's runtime stage around the binary this suite built
//! (`scripts/image.sh runtime`); scripts/test.sh builds it, names it in `DASH_TEST_IMAGE` and
//! runs this test on its own (`--ignored`), once. The containers share the host's network, so
//! each listens on a loopback address of its own instead of fly.toml's `[::]:8080`.

use std::net::IpAddr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use dash_discovery::testing::DnsServer;
use serde_json::{Value, json};

use crate::support::{NatsServer, fresh_postgres, http_client, now_secs, signed_post, stored_events_postgres};

/// The app's name, as fly.toml's `app`: dashd derives these two names from it.
const FLY_APP: &str = "dash";
const CLUSTER_NAME: &str = "dash.internal";
const INGESTOR_NAME: &str = "ingestor.process.dash.internal";
const ADMIN_TOKEN: &str = "image-test-admin-token";
/// The image's user (Dockerfile: `useradd --uid 10001 … dash`).
const DASH_UID: u32 = 10001;

fn podman() -> Command {
    let mut command = Command::new("podman");
    command.args(["--storage-driver=vfs", "--runtime=runc", "--cgroup-manager=cgroupfs"]);
    command
}

/// `podman run` as containers run here: on the host's network, with ulimits the kernel accepts.
fn podman_run() -> Command {
    let mut command = podman();
    command.args(["run", "--network=host", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]);
    command
}

fn run(command: &mut Command) -> Output {
    let output = command.output().expect("podman runs");
    assert!(
        output.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// fly.toml as Fly reads it: the `[processes]` commands and `release_command`, split into words
/// as flyctl splits them (none of Dash's needs quoting).
struct FlyConfig {
    release_command: Vec<String>,
    processes: toml::Table,
    env: Vec<(String, String)>,
    kill_timeout: Duration,
}

impl FlyConfig {
    fn load() -> Self {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fly.toml");
        let config: toml::Table = std::fs::read_to_string(path).unwrap().parse().unwrap();
        assert_eq!(config["app"].as_str(), Some(FLY_APP), "the DNS names below are this app's");
        let release = config["deploy"]["release_command"].as_str().unwrap();
        let kill_timeout = config["kill_timeout"].as_str().unwrap();
        let seconds = kill_timeout.strip_suffix('s').and_then(|s| s.parse().ok()).expect("kill_timeout in seconds");
        Self {
            release_command: words(release),
            processes: config["processes"].as_table().unwrap().clone(),
            env: config["env"]
                .as_table()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                .collect(),
            kill_timeout: Duration::from_secs(seconds),
        }
    }

    fn process(&self, group: &str) -> Vec<String> {
        words(self.processes[group].as_str().unwrap())
    }
}

fn words(command: &str) -> Vec<String> {
    assert!(!command.contains(['"', '\'', '\\', '$']), "a command that needs a shell: {command}");
    command.split_whitespace().map(str::to_owned).collect()
}

/// One container, removed when dropped.
struct Container {
    name: String,
}

impl Container {
    fn start(image: &str, role: &str, env: &[(String, String)], volume: Option<&Path>, command: &[String]) -> Self {
        // Made first, so that a container created but not started is removed too.
        let container = Self { name: format!("dash-test-{role}-{}-{}", std::process::id(), now_secs()) };
        let mut podman = podman_run();
        podman.args(["--detach", "--name", &container.name]);
        for (key, value) in env {
            podman.arg("--env").arg(format!("{key}={value}"));
        }
        if let Some(volume) = volume {
            podman.arg("--volume").arg(format!("{}:/data", volume.display()));
        }
        run(podman.arg(image).args(command));
        container
    }

    fn logs(&self) -> String {
        let output = podman().args(["logs", &self.name]).output().unwrap();
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
    }

    fn inspect(&self, format: &str) -> String {
        let output = run(podman().args(["inspect", "--format", format, &self.name]));
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// The user id dashd runs as: the child of the container's first process (tini).
    fn server_uid(&self) -> u32 {
        let tini = self.inspect("{{.State.Pid}}");
        let children = std::fs::read_to_string(format!("/proc/{tini}/task/{tini}/children")).unwrap();
        let dashd = children.split_whitespace().next().unwrap_or_else(|| panic!("tini has no child: {}", self.logs()));
        assert!(
            std::fs::read_to_string(format!("/proc/{dashd}/comm")).unwrap().starts_with("dashd"),
            "tini's child is dashd itself (the entrypoint execs it)"
        );
        let status = std::fs::read_to_string(format!("/proc/{dashd}/status")).unwrap();
        let uids = status.lines().find_map(|l| l.strip_prefix("Uid:")).unwrap();
        uids.split_whitespace().next().unwrap().parse().unwrap()
    }

    /// `podman stop`: SIGTERM to tini, which passes it on; SIGKILL after `timeout`. Returns how
    /// long it took and the exit code.
    fn stop(&self, timeout: Duration) -> (Duration, i32) {
        let started = Instant::now();
        run(podman().args(["stop", "--time", &timeout.as_secs().to_string(), &self.name]));
        let took = started.elapsed();
        (took, self.inspect("{{.State.ExitCode}}").parse().unwrap())
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        // With its anonymous volumes (the image declares /data one).
        let _ = podman().args(["rm", "--force", "--volumes", "--time", "0", &self.name]).output();
    }
}

fn free_port(ip: IpAddr) -> u16 {
    std::net::TcpListener::bind((ip, 0)).unwrap().local_addr().unwrap().port()
}

async fn wait_until(
    client: &reqwest::Client,
    url: &str,
    container: &Container,
    what: &str,
    ok: impl Fn(u16, &Value) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(response) = client.get(url).send().await {
            let status = response.status().as_u16();
            let body = response.json::<Value>().await.unwrap_or_default();
            if ok(status, &body) {
                return;
            }
        }
        assert!(Instant::now() < deadline, "{what} never came; log:\n{}", container.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
#[ignore = "needs podman and the image: scripts/test.sh builds DASH_TEST_IMAGE and runs it"]
async fn the_image_runs_both_roles_as_fly_does_on_a_root_owned_volume() {
    let Ok(image) = std::env::var("DASH_TEST_IMAGE") else {
        eprintln!("!! SKIPPED: DASH_TEST_IMAGE names no image (scripts/test.sh builds one where podman runs)");
        return;
    };
    let admin = dash_store::testing::admin_url().expect("DASH_TEST_POSTGRES (scripts/test.sh sets it)");
    let fly = FlyConfig::load();
    let database = fresh_postgres(&admin).await;
    let nats = NatsServer::start();
    let dns = DnsServer::start().await.unwrap();
    let (ingestor_ip, web_ip) = (IpAddr::from([127, 0, 77, 2]), IpAddr::from([127, 0, 77, 4]));
    dns.set(CLUSTER_NAME, vec![ingestor_ip, web_ip]);
    dns.set(INGESTOR_NAME, vec![ingestor_ip]);
    let (ingestor_port, web_port) = (free_port(ingestor_ip), free_port(web_ip));
    // fly.toml's [env], the secrets, and what Fly sets on every machine: FLY_APP_NAME, from which
    // dashd takes its DNS names (the test's DNS server answers them).
    let mut common = fly.env.clone();
    common.extend(
        [
            ("DATABASE_URL", database.clone()),
            ("NATS_URL", nats.url.clone()),
            ("DASH_ADMIN_TOKEN", ADMIN_TOKEN.to_owned()),
            ("DNS_RESOLVER", dns.addr().to_string()),
            ("FLY_APP_NAME", FLY_APP.to_owned()),
            ("FLY_REGION", "ams".to_owned()),
        ]
        .map(|(k, v)| (k.to_owned(), v)),
    );
    let with = |extra: [(&str, String); 3]| {
        let mut env = common.clone();
        env.extend(extra.map(|(k, v)| (k.to_owned(), v)));
        env
    };

    // The release command, as Fly runs it: the image's ENTRYPOINT, fly.toml's command as CMD,
    // no volume, RELEASE_COMMAND=1.
    let mut release = podman_run();
    release.args(["--rm", "--env", &format!("DATABASE_URL={database}"), "--env", "RELEASE_COMMAND=1"]);
    let output = run(release.arg(&image).args(&fly.release_command));
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(said.contains("migrations applied (postgres"), "{said}");

    // The ingestor's volume: a fresh, empty directory owned by root, as Fly mounts one.
    let volume = tempfile::Builder::new().prefix("dash-volume.").tempdir_in("/var/tmp").unwrap();
    std::fs::set_permissions(volume.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(volume.path().metadata().unwrap().uid(), 0, "the test runs as root, so the volume is root's");

    let env = with([
        ("FLY_MACHINE_ID", "ingestor-1".to_owned()),
        ("FLY_PRIVATE_IP", ingestor_ip.to_string()),
        ("DASH_LISTEN", format!("{ingestor_ip}:{ingestor_port}")),
    ]);
    let ingestor = Container::start(&image, "ingestor", &env, Some(volume.path()), &fly.process("ingestor"));
    let mut env = with([
        ("FLY_MACHINE_ID", "web-1".to_owned()),
        ("FLY_PRIVATE_IP", web_ip.to_string()),
        ("DASH_LISTEN", format!("{web_ip}:{web_port}")),
    ]);
    env.push(("DASH_INGESTOR_PORT".to_owned(), ingestor_port.to_string()));
    let web = Container::start(&image, "web", &env, None, &fly.process("web"));

    let client = http_client().timeout(Duration::from_secs(10)).build().unwrap();
    let (ingestor_url, web_url) =
        (format!("http://{ingestor_ip}:{ingestor_port}"), format!("http://{web_ip}:{web_port}"));
    // Fly's checks: /health on both, /ready healthy (the web node knows the ingestor and it is up).
    // On the web node, healthy includes knowing the ingestor by DNS and hearing it beat.
    for (url, container, role) in [(&ingestor_url, &ingestor, "ingestor"), (&web_url, &web, "web")] {
        wait_until(&client, &format!("{url}/health"), container, "/health", |status, _| status == 200).await;
        wait_until(&client, &format!("{url}/ready"), container, "/ready healthy", |status, body| {
            let ingestors = &body["checks"]["ingestors"];
            let heard = if role == "web" {
                *ingestors == json!({ "ok": true, "known": 1, "up": 1 })
            } else {
                ingestors.is_null()
            };
            status == 200 && body["status"] == "healthy" && body["role"] == role && heard
        })
        .await;
    }

    // The server runs as dash, and its intake log is on the volume, dash's.
    assert_eq!(ingestor.server_uid(), DASH_UID, "dashd does not run as root");
    assert_eq!(web.server_uid(), DASH_UID);
    assert_eq!(volume.path().metadata().unwrap().uid(), DASH_UID, "the entrypoint handed the volume to dash");
    let intake = volume.path().join("intake");
    assert!(intake.is_dir(), "the intake log is on the volume: {}", ingestor.logs());
    assert_eq!(intake.metadata().unwrap().uid(), DASH_UID);

    // A signed webhook through the web container, sent twice (a sender's retry): stored once.
    let created = client
        .post(format!("{web_url}/api/pipelines"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({ "name": "orders" }))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201, "{}", web.logs());
    let created: Value = created.json().await.unwrap();
    let pipeline = created["id"].as_str().unwrap().to_owned();
    let secret = dash_signature::SigningSecret::parse(created["secret"].as_str().unwrap()).unwrap();
    let webhook_url = format!("{web_url}/webhooks/{pipeline}");
    let post = |id: String, body: String| {
        signed_post(&client, &webhook_url, &secret, &id, now_secs(), "application/json", &body).send()
    };
    for _ in 0..2 {
        let response = post("evt-first".into(), r#"{"amount":1}"#.into()).await.unwrap();
        assert!(response.status().is_success(), "{}: {}", response.status(), web.logs());
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while stored_events_postgres(&database, &pipeline).await.0.is_empty() {
        assert!(Instant::now() < deadline, "never stored; ingestor log:\n{}", ingestor.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // More events, and at once `podman stop`: the ingestor drains what it acknowledged into
    // PostgreSQL before it exits, with 0, well within fly.toml's kill_timeout.
    let mut acked = vec!["evt-first".to_owned()];
    for i in 0..50 {
        let id = format!("evt-{i}");
        let response = post(id.clone(), format!(r#"{{"amount":{i}}}"#)).await.unwrap();
        assert!(response.status().is_success(), "{}", response.status());
        acked.push(id);
    }
    let (took, code) = ingestor.stop(fly.kill_timeout);
    assert_eq!(code, 0, "the ingestor exits 0 on SIGTERM; log:\n{}", ingestor.logs());
    assert!(took < fly.kill_timeout, "stopped in {took:?}, not killed");
    let (rows, count) = stored_events_postgres(&database, &pipeline).await;
    assert!(rows.iter().all(|(_, copies)| *copies == 1), "an event stored twice: {rows:?}");
    assert_eq!(count, rows.len() as i64, "the pipeline's count matches its rows");
    let mut ids: Vec<String> = rows.into_iter().map(|(id, _)| id).collect();
    ids.sort();
    acked.sort();
    assert_eq!(ids, acked, "every acknowledged event stored once, before the exit; log:\n{}", ingestor.logs());

    let (took, code) = web.stop(fly.kill_timeout);
    assert_eq!(code, 0, "the web node exits 0 on SIGTERM; log:\n{}", web.logs());
    assert!(took < fly.kill_timeout);
    drop((ingestor, web, nats));
    dash_store::testing::drop_database(&admin, &database).await.ok();
}
