//! The processes of a local cluster: a private PostgreSQL, a nats-server and `dashd` nodes, each
//! of which can be crashed and started again on the same address with the same data.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::VerifyError;
use crate::network::command_in;

/// A port free on every one of `ips` at the moment of asking (ingestors share one port, as
/// they do on a private network).
pub(crate) fn common_port(ips: &[IpAddr]) -> Result<u16, VerifyError> {
    for _ in 0..200 {
        let first = std::net::TcpListener::bind((ips[0], 0))?;
        let port = first.local_addr()?.port();
        if ips[1..].iter().all(|ip| std::net::TcpListener::bind((*ip, port)).is_ok()) {
            return Ok(port);
        }
    }
    Err(VerifyError::Setup(format!("no port free on all of {ips:?}")))
}

/// Waits until something accepts TCP connections on `addr`.
async fn wait_listening(addr: SocketAddr, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// A PostgreSQL cluster of the run's own (TimescaleDB preloaded when its library is installed
/// next to the server), stopped as a crash stops it and started again on the same data.
pub(crate) struct Postgres {
    bin: PathBuf,
    dir: PathBuf,
    ip: IpAddr,
    port: u16,
    /// PostgreSQL refuses to run as root: under root it runs as the `postgres` user.
    owner: Option<(u32, u32)>,
    /// The network namespace it runs in, when the cluster has its own network.
    namespace: Option<String>,
    pub timescaledb: bool,
}

impl Postgres {
    /// On `ip` (one of the run's own, so that no outgoing connection of the machine's, whose
    /// source is 127.0.0.1, can take its port while it is down), in `namespace` when given (then
    /// on the standard port, which nothing else there holds).
    pub async fn start(bin: &Path, dir: PathBuf, ip: IpAddr, namespace: Option<String>) -> Result<Self, VerifyError> {
        std::fs::create_dir_all(&dir)?;
        let owner = match nix::unistd::Uid::effective().is_root() {
            true => {
                let user =
                    nix::unistd::User::from_name("postgres").map_err(std::io::Error::from)?.ok_or_else(|| {
                        VerifyError::Setup("running as root, and there is no postgres user to run PostgreSQL as".into())
                    })?;
                nix::unistd::chown(&dir, Some(user.uid), Some(user.gid)).map_err(std::io::Error::from)?;
                // A disk of its own mounted there already (for the full-disk fault).
                if dir.join("data").exists() {
                    nix::unistd::chown(&dir.join("data"), Some(user.uid), Some(user.gid))
                        .map_err(std::io::Error::from)?;
                }
                Some((user.uid.as_raw(), user.gid.as_raw()))
            }
            false => None,
        };
        let port = if namespace.is_some() { 5432 } else { common_port(&[ip])? };
        let mut postgres = Self { bin: bin.to_owned(), dir, ip, port, owner, namespace, timescaledb: false };
        let data = postgres.data();
        postgres.run("initdb", &["-D", path_str(&data)?, "-A", "trust", "-U", "postgres", "--no-sync"]).await?;
        postgres.timescaledb = postgres.has_timescaledb().await;
        let mut conf = format!(
            "\nport = {port}\nlisten_addresses = '{ip}'\nunix_socket_directories = '{}'\nmax_connections = 400\n",
            postgres.dir.display()
        );
        if postgres.timescaledb {
            conf.push_str("shared_preload_libraries = 'timescaledb'\ntimescaledb.telemetry_level = off\n");
        }
        use std::io::Write;
        std::fs::OpenOptions::new().append(true).open(data.join("postgresql.conf"))?.write_all(conf.as_bytes())?;
        // The cluster's own network, when it has one (see `network`): its addresses exist only
        // on the run's links.
        std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("pg_hba.conf"))?
            .write_all(b"\nhost all all 198.18.0.0/15 trust\n")?;
        postgres.up().await?;
        Ok(postgres)
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn admin_url(&self) -> String {
        self.url("postgres")
    }

    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@{}:{}/{database}", self.ip, self.port)
    }

    async fn has_timescaledb(&self) -> bool {
        let Ok(output) = tokio::process::Command::new(self.bin.join("pg_config")).arg("--pkglibdir").output().await
        else {
            return false;
        };
        let libdir = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        output.status.success() && Path::new(&libdir).join("timescaledb.so").exists()
    }

    async fn run(&self, program: &str, args: &[&str]) -> Result<(), VerifyError> {
        let path = self.bin.join(program);
        let mut command = match (&self.namespace, self.owner) {
            // Entering a namespace needs root: the program drops to its owner after.
            (Some(namespace), Some((uid, gid))) => {
                let mut command = tokio::process::Command::new("ip");
                command.args(["netns", "exec", namespace, "setpriv"]);
                command.args([format!("--reuid={uid}"), format!("--regid={gid}"), "--clear-groups".to_owned()]);
                command.arg(&path);
                command
            }
            (Some(namespace), None) => {
                let mut command = tokio::process::Command::new("ip");
                command.args(["netns", "exec", namespace]).arg(&path);
                command
            }
            (None, owner) => {
                let mut command = tokio::process::Command::new(&path);
                if let Some((uid, gid)) = owner {
                    command.uid(uid).gid(gid);
                }
                command
            }
        };
        command.args(args).current_dir(&self.dir).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        let output = command
            .output()
            .await
            .map_err(|err| VerifyError::Setup(format!("{}: {err}", self.bin.join(program).display())))?;
        match output.status.success() {
            true => Ok(()),
            false => Err(VerifyError::Setup(format!(
                "{program} {}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ))),
        }
    }

    /// Starts the server and waits until it accepts connections.
    pub async fn up(&self) -> Result<(), VerifyError> {
        let data = self.data();
        let log = self.dir.join("postgres.log");
        self.run("pg_ctl", &["-D", path_str(&data)?, "-l", path_str(&log)?, "-w", "-t", "60", "start"]).await
    }

    /// Waits until the server answers a query, starting it again if it stopped (it stops by
    /// itself when it cannot write its WAL, and its crash recovery can fail the same way).
    pub async fn ensure_up(&self) -> Result<(), VerifyError> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.answers().await {
                return Ok(());
            }
            let data = self.data();
            // `pg_ctl status` fails when no postmaster runs on the data folder.
            if self.run("pg_ctl", &["-D", path_str(&data)?, "status"]).await.is_err() {
                self.up().await?;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(VerifyError::Setup("PostgreSQL did not answer within 30 s of its disk having room again".into()))
    }

    /// Whether a fresh connection gets an answer to `SELECT 1` within 2 s.
    async fn answers(&self) -> bool {
        use sqlx::Connection;
        let probe = async {
            let mut connection = sqlx::PgConnection::connect(&self.admin_url()).await?;
            sqlx::query("SELECT 1").execute(&mut connection).await?;
            connection.close().await
        };
        matches!(tokio::time::timeout(Duration::from_secs(2), probe).await, Ok(Ok(())))
    }

    /// Stops the server as a crash would (no checkpoint; recovery replays the WAL at start).
    pub async fn crash(&self) -> Result<(), VerifyError> {
        let data = self.data();
        self.run("pg_ctl", &["-D", path_str(&data)?, "-m", "immediate", "-w", "stop"]).await
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let mut command = Command::new(self.bin.join("pg_ctl"));
        command.arg("-D").arg(self.data()).args(["-m", "immediate", "-w", "stop"]);
        command.stdout(Stdio::null()).stderr(Stdio::null());
        if let Some((uid, gid)) = self.owner {
            use std::os::unix::process::CommandExt;
            command.uid(uid).gid(gid);
        }
        let _ = command.status();
    }
}

fn path_str(path: &Path) -> Result<&str, VerifyError> {
    path.to_str().ok_or_else(|| VerifyError::Setup(format!("{} is not UTF-8", path.display())))
}

/// A nats-server of the run's own; core NATS, which is all Dash's bus uses.
pub(crate) struct Nats {
    binary: PathBuf,
    ip: IpAddr,
    port: u16,
    namespace: Option<String>,
    child: Option<Child>,
}

impl Nats {
    /// On `ip`, in `namespace` when given (see [`Postgres::start`]).
    pub async fn start(binary: &Path, ip: IpAddr, namespace: Option<String>) -> Result<Self, VerifyError> {
        let port = if namespace.is_some() { 4222 } else { common_port(&[ip])? };
        let mut nats = Self { binary: binary.to_owned(), ip, port, namespace, child: None };
        nats.restart().await?;
        Ok(nats)
    }

    pub fn url(&self) -> String {
        format!("nats://{}:{}", self.ip, self.port)
    }

    /// kill -9.
    pub fn crash(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it on its port and waits until it listens.
    pub async fn restart(&mut self) -> Result<(), VerifyError> {
        self.crash();
        let child = command_in(self.namespace.as_deref(), &self.binary)
            .args(["-a", &self.ip.to_string(), "-p", &self.port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|err| VerifyError::Setup(format!("{}: {err}", self.binary.display())))?;
        let mut child = child;
        let listening = wait_listening(SocketAddr::new(self.ip, self.port), Duration::from_secs(10)).await;
        let alive = matches!(child.try_wait(), Ok(None));
        self.child = Some(child);
        match listening && alive {
            true => Ok(()),
            false => Err(VerifyError::Setup(format!("nats-server did not come up on {}:{}", self.ip, self.port))),
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.crash();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Web,
    Ingestor,
}

/// One `dashd serve` process: its address, data directory and environment stay the same across
/// restarts, so a restarted ingestor replays its own intake log.
pub(crate) struct Node {
    pub name: String,
    pub role: Role,
    pub addr: SocketAddr,
    dir: PathBuf,
    binary: PathBuf,
    /// The other release it can be swapped to (`dashd verify --previous-binary`).
    other_release: Option<PathBuf>,
    /// Whether it runs the previous release now.
    pub on_previous: bool,
    env: Vec<(String, String)>,
    /// The network namespace it runs in, when the cluster has its own network.
    pub namespace: Option<String>,
    child: Option<Child>,
}

impl Node {
    pub fn new(
        name: &str,
        role: Role,
        addr: SocketAddr,
        dir: PathBuf,
        binary: &Path,
        env: Vec<(String, String)>,
    ) -> Self {
        Self {
            name: name.to_owned(),
            role,
            addr,
            dir,
            binary: binary.to_owned(),
            other_release: None,
            on_previous: false,
            env,
            namespace: None,
            child: None,
        }
    }

    /// Runs `previous` first, with `current` to swap to.
    pub fn with_releases(mut self, previous: &Path, current: &Path) -> Self {
        self.binary = previous.to_owned();
        self.other_release = Some(current.to_owned());
        self.on_previous = true;
        self
    }

    /// The next start runs the other release. Returns whether that is an upgrade.
    pub fn swap_release(&mut self) -> Option<bool> {
        let other = self.other_release.take()?;
        self.other_release = Some(std::mem::replace(&mut self.binary, other));
        self.on_previous = !self.on_previous;
        Some(!self.on_previous)
    }

    /// SIGTERM, and waits for the node to drain and exit (kill -9 past `within`).
    pub async fn stop(&mut self, within: Duration) {
        let Some(mut child) = self.child.take() else { return };
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if !matches!(child.try_wait(), Ok(None)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Starts the process and waits until it listens.
    pub async fn start(&mut self) -> Result<(), VerifyError> {
        std::fs::create_dir_all(&self.dir)?;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path())?;
        let child = command_in(self.namespace.as_deref(), &self.binary)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("DASH_LISTEN", self.addr.to_string())
            .env("DASH_DATA_DIR", "data")
            .current_dir(&self.dir)
            .arg("serve")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|err| VerifyError::Setup(format!("{}: {err}", self.binary.display())))?;
        let mut child = child;
        let listening = wait_listening(self.addr, Duration::from_secs(60)).await;
        // Something else on the address would answer too: the process must still be running.
        let alive = matches!(child.try_wait(), Ok(None));
        self.child = Some(child);
        match listening && alive {
            true => Ok(()),
            false => Err(VerifyError::Setup(format!("{} did not come up on {}", self.name, self.addr))),
        }
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("dashd.log")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// kill -9: no chance to flush or clean up.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn signal(&self, signal: Signal) {
        if let Some(child) = &self.child {
            let _ = kill(Pid::from_raw(child.id() as i32), signal);
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A tmpfs of its own under a node's data (mounting needs root), so that its disk can be filled
/// without touching the machine's; unmounted when dropped.
pub(crate) struct Tmpfs {
    dir: PathBuf,
    /// The size it was mounted with (`mount -o size=` syntax).
    size: String,
}

/// The file that fills a [`Tmpfs`].
const BALLAST: &str = "dash-verify-ballast";

impl Tmpfs {
    pub fn mount(dir: PathBuf, size: &str) -> Result<Self, VerifyError> {
        std::fs::create_dir_all(&dir)?;
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .stdout(Stdio::null())
            .status()
            .map_err(|err| VerifyError::Setup(format!("mount: {err}")))?;
        match status.success() {
            true => Ok(Self { dir, size: size.to_owned() }),
            false => Err(VerifyError::Setup(format!(
                "cannot mount a tmpfs on {} ({status}): the disk fault needs root; leave it out with --kinds",
                dir.display()
            ))),
        }
    }

    /// Writes a file until the disk has no room left.
    pub fn fill(&self) -> Result<(), VerifyError> {
        use std::io::Write;
        let mut file = std::fs::File::create(self.dir.join(BALLAST))?;
        let chunk = vec![0u8; 256 * 1024];
        while file.write_all(&chunk).is_ok() {}
        let _ = file.sync_all();
        Ok(())
    }

    pub fn free(&self) -> Result<(), VerifyError> {
        Ok(std::fs::remove_file(self.dir.join(BALLAST))?)
    }

    /// Fills it without writing: its size becomes what it holds (a tmpfs cannot shrink below
    /// that, so while something writes it takes a few tries).
    pub fn shrink_to_used(&self) -> Result<(), VerifyError> {
        for _ in 0..100 {
            let stat = nix::sys::statvfs::statvfs(&self.dir).map_err(std::io::Error::from)?;
            let used = (stat.blocks() - stat.blocks_free()) * stat.fragment_size();
            if self.remount(&used.max(4096).to_string()) {
                return Ok(());
            }
            // It grew meanwhile: let the writer pause before the next try.
            std::thread::sleep(Duration::from_millis(10));
        }
        Err(VerifyError::Setup(format!("could not shrink the tmpfs on {} to what it holds", self.dir.display())))
    }

    /// Gives back the room [`Tmpfs::shrink_to_used`] took.
    pub fn grow_back(&self) -> Result<(), VerifyError> {
        match self.remount(&self.size) {
            true => Ok(()),
            false => Err(VerifyError::Setup(format!("could not grow the tmpfs on {} back", self.dir.display()))),
        }
    }

    fn remount(&self, size: &str) -> bool {
        Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).stderr(Stdio::null()).status();
    }
}
