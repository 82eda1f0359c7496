//! Settings, loaded once at start. Layers, later wins: built-in defaults → `config/default.toml`
//! → `config/<DASH_ENV>.toml` → `--config FILE` → environment → command-line flags.
//!
//! File keys are the snake_case field names of [`Settings`]; environment names are the
//! contract's (`APP_ROLE`, `DASH_LISTEN`, `DATABASE_URL`, …, see [`ENV_NAMES`]). Unknown file
//! keys are rejected, and every error names the key (and its environment name).

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytesize::ByteSize;
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// Environment variable → settings key. `FLY_*` come first so the `DASH_*` names win.
pub const ENV_NAMES: &[(&str, &str)] = &[
    ("FLY_MACHINE_ID", "node_id"),
    ("FLY_REGION", "region"),
    ("FLY_PRIVATE_IP", "advertise_ip"),
    ("APP_ROLE", "role"),
    ("DASH_LISTEN", "listen"),
    ("DATABASE_URL", "database_url"),
    ("NATS_URL", "nats_url"),
    ("NATS_TOKEN", "nats_token"),
    ("NATS_USER", "nats_user"),
    ("NATS_PASSWORD", "nats_password"),
    ("NATS_CREDS", "nats_creds"),
    ("NATS_TLS_CA", "nats_tls_ca"),
    ("NATS_TLS_REQUIRED", "nats_tls_required"),
    ("DNS_CLUSTER_QUERY", "dns_cluster_query"),
    ("DNS_CLUSTER_INTERVAL", "dns_cluster_interval"),
    ("DNS_INGESTOR_QUERY", "dns_ingestor_query"),
    ("DNS_RESOLVER", "dns_resolver"),
    ("DASH_INGESTOR_PORT", "ingestor_port"),
    ("DASH_ADVERTISE_IP", "advertise_ip"),
    ("DASH_NODE_ID", "node_id"),
    ("DASH_REGION", "region"),
    ("DASH_ADMIN_TOKEN", "admin_token"),
    ("DASH_EDGE_SECRET", "edge_secret"),
    ("DASH_PUBLIC_URL", "public_url"),
    ("DASH_CLIENT_IP_HEADER", "client_ip_header"),
    ("DASH_TRUSTED_PROXIES", "trusted_proxies"),
    ("DASH_FLUSH_INTERVAL", "flush_interval"),
    ("DASH_MAX_BATCH", "max_batch"),
    ("DASH_MAX_BACKLOG", "max_backlog"),
    ("DASH_MAX_BODY", "max_body"),
    ("DASH_DATA_DIR", "data_dir"),
    ("DASH_SPOOL_MAX", "spool_max"),
    ("DASH_PARTITIONS", "partitions"),
    ("DASH_SHUTDOWN_TIMEOUT", "shutdown_timeout"),
    ("DASH_RETENTION", "retention"),
    ("DASH_DEDUPE_WINDOW", "dedupe_window"),
    ("DASH_JOB_CONCURRENCY", "job_concurrency"),
    ("DASH_MAINTENANCE_EVERY", "maintenance_every"),
    ("DASH_MAX_CONNECTIONS", "max_connections"),
    ("DASH_MAX_LIVE_PER_CLIENT", "max_live_per_client"),
    ("DASH_MAX_CONNECTIONS_PER_CLIENT", "max_connections_per_client"),
    ("DASH_WRITE_TIMEOUT", "write_timeout"),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    All,
    Web,
    Ingestor,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::All => "all",
            Self::Web => "web",
            Self::Ingestor => "ingestor",
        }
    }

    pub fn serves_intake(self) -> bool {
        matches!(self, Self::All | Self::Ingestor)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The shortest edge secret accepted.
pub const EDGE_SECRET_MIN: usize = 16;

/// Networks, from a list or from one string separated by commas or spaces (an environment
/// variable); a bare address is its own network.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Networks(pub Vec<IpNet>);

impl<'de> Deserialize<'de> for Networks {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Given {
            One(String),
            Many(Vec<String>),
        }
        let items = match Given::deserialize(deserializer)? {
            Given::One(text) => {
                text.split([',', ' ']).map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect()
            }
            Given::Many(items) => items,
        };
        items
            .iter()
            .map(|item| {
                let item = item.trim();
                item.parse::<IpNet>()
                    .or_else(|_| item.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| serde::de::Error::custom(format!("{item:?} is neither a network nor an address")))
            })
            .collect::<Result<_, _>>()
            .map(Networks)
    }
}

/// An HTTP header name: one token (RFC 9110).
fn is_header_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A setting that must never be printed.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(…)")
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub role: Role,
    pub listen: SocketAddr,
    /// `None`: the SQLite file in `data_dir`.
    pub database_url: Option<Secret>,
    pub nats_url: Option<String>,
    pub nats_token: Option<Secret>,
    pub nats_user: Option<String>,
    pub nats_password: Option<Secret>,
    /// A NATS `.creds` file (JWT and nkey seed).
    pub nats_creds: Option<PathBuf>,
    /// CA certificates (PEM) to trust for the NATS server's TLS certificate.
    pub nats_tls_ca: Option<PathBuf>,
    pub nats_tls_required: bool,
    pub dns_cluster_query: Option<String>,
    #[serde(with = "humantime_serde")]
    pub dns_cluster_interval: Duration,
    pub dns_ingestor_query: Option<String>,
    pub dns_resolver: Option<SocketAddr>,
    pub ingestor_port: u16,
    /// The address peers reach this node at, announced in heartbeats; needed when `listen` is
    /// a wildcard (`[::]`). `None`: the listen address.
    pub advertise_ip: Option<IpAddr>,
    /// `None`: the hostname.
    pub node_id: Option<String>,
    pub region: String,
    pub admin_token: Option<Secret>,
    /// The address senders post to (`https://dash.example.com`), for schemes that sign the URL
    /// (Twilio); unset: built from `X-Forwarded-Proto` and the `Host` the request names.
    pub public_url: Option<String>,
    /// Shared by web edges and ingestors: an ingestor believes the client address a request
    /// names when the request carries it, also from a node it has not heard beat.
    pub edge_secret: Option<Secret>,
    /// The header the operator's proxy in front of this node names the client in
    /// (`Fly-Client-IP`, `X-Forwarded-For`); believed only from `trusted_proxies`.
    pub client_ip_header: Option<String>,
    /// Where that proxy connects from: networks (`172.16.0.0/12`) or addresses, a list or one
    /// string separated by commas or spaces.
    #[serde(default)]
    pub trusted_proxies: Networks,
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
    pub max_batch: usize,
    pub max_backlog: usize,
    pub max_body: ByteSize,
    pub data_dir: PathBuf,
    pub spool_max: ByteSize,
    /// Buffer partitions (each: an intake log and a buffer actor).
    pub partitions: usize,
    /// How long SIGTERM waits for buffers to drain before leaving the rest in the intake log.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// Events older than this (by event time) are dropped by maintenance.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// How long a dedupe key is kept on PostgreSQL (SQLite keeps it as long as the event).
    #[serde(with = "humantime_serde")]
    pub dedupe_window: Duration,
    /// Background jobs (source polls, maintenance) one ingestor runs at once.
    pub job_concurrency: usize,
    /// How often store maintenance (retention, dedupe pruning, partitions ahead) runs.
    #[serde(with = "humantime_serde")]
    pub maintenance_every: Duration,
    /// HTTP connections (and `/live` sessions) open at once; past it the longest-idle one is
    /// closed, or the newcomer gets 503. 0: 10,000, or fewer if the open-file limit says so.
    pub max_connections: usize,
    /// `/live` sessions one client (address, IPv6 /64) may hold at once; past it, 503.
    pub max_live_per_client: usize,
    /// Connections one client (address, IPv6 /64) may hold at once; past it, 503. 0: an eighth
    /// of the connection cap, at least 32.
    pub max_connections_per_client: usize,
    /// How long a connection may take no byte of what it is sent (a response, `/live` frames)
    /// before it is closed: a client that stops reading frees its slot.
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// Pipelines by name (`[pipelines.<name>]` tables): applied by ingestors at start,
    /// creating the pipeline if needed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pipelines: BTreeMap<String, PipelineConfig>,
    /// Boards by name (`[boards.<name>]` tables, panels as `[[boards.<name>.panels]]`), as the
    /// admin API's board objects: checked at start on every role (a bad one stops the start,
    /// naming it), then made or brought back to what the file says once the database answers.
    /// Boards made by the API or the pages are left alone.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub boards: BTreeMap<String, serde_json::Value>,
}

/// One `[pipelines.<name>]` table. What it names is set at start; what it leaves out is left
/// as the admin API or the CLI set it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// How long the pipeline keeps its events, instead of `retention`.
    #[serde(default, with = "humantime_serde::option", skip_serializing_if = "Option::is_none")]
    pub retention: Option<Duration>,
    /// A polling source, as the admin API's `source` object; checked by the ingestor against
    /// the same rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<serde_json::Value>,
    /// Views by name (`[pipelines.<name>.views.<view>]`), as the admin API's view objects;
    /// checked by the ingestor against the same rules. Views made by the API are left alone.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub views: BTreeMap<String, serde_json::Value>,
    /// Which provider signs the pipeline's deliveries (`[pipelines.<name>.verify]`), as the
    /// admin API's `verify` object, but with the secret read from `secret_file` or `secret_env`
    /// (a secret is never written in a config file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<serde_json::Value>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            role: Role::All,
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            database_url: None,
            nats_url: None,
            nats_token: None,
            nats_user: None,
            nats_password: None,
            nats_creds: None,
            nats_tls_ca: None,
            nats_tls_required: false,
            dns_cluster_query: None,
            dns_cluster_interval: Duration::from_secs(5),
            dns_ingestor_query: None,
            dns_resolver: None,
            ingestor_port: 8080,
            advertise_ip: None,
            node_id: None,
            region: "local".into(),
            admin_token: None,
            edge_secret: None,
            public_url: None,
            client_ip_header: None,
            trusted_proxies: Networks::default(),
            flush_interval: Duration::from_secs(1),
            max_batch: 1000,
            max_backlog: 5000,
            max_body: ByteSize::mib(1),
            data_dir: PathBuf::from("data"),
            spool_max: ByteSize::gib(1),
            partitions: 4,
            shutdown_timeout: Duration::from_secs(20),
            retention: Duration::from_secs(30 * 86_400),
            dedupe_window: Duration::from_secs(7 * 86_400),
            job_concurrency: 4,
            maintenance_every: Duration::from_secs(3600),
            max_connections: 0,
            max_live_per_client: 64,
            max_connections_per_client: 0,
            write_timeout: Duration::from_secs(30),
            pipelines: BTreeMap::new(),
            boards: BTreeMap::new(),
        }
    }
}

impl Settings {
    /// The database to use: `DATABASE_URL`, else the SQLite file `<data_dir>/dash.db`.
    pub fn database_url(&self) -> String {
        match &self.database_url {
            Some(url) => url.expose().to_owned(),
            None => format!("sqlite://{}", self.data_dir.join("dash.db").display()),
        }
    }

    /// Where peers reach this node, given the address its listener is bound to: that address,
    /// unless it is a wildcard and `advertise_ip` is set.
    pub fn advertised_addr(&self, bound: SocketAddr) -> SocketAddr {
        match self.advertise_ip {
            Some(ip) if bound.ip().is_unspecified() => SocketAddr::new(ip, bound.port()),
            _ => bound,
        }
    }

    /// This node's id: `DASH_NODE_ID`, `FLY_MACHINE_ID`, else the hostname.
    pub fn node_id(&self) -> String {
        self.node_id.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "local".into())
        })
    }
}

/// What the command line adds on top.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub role: Option<Role>,
    pub listen: Option<SocketAddr>,
    pub config_file: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid setting {name}: {message}")]
    Invalid { name: String, message: String },
    #[error("configuration file {0} not found")]
    MissingFile(PathBuf),
}

fn display_name(key: &str) -> String {
    let envs: Vec<&str> = ENV_NAMES.iter().filter(|(_, k)| *k == key).map(|(e, _)| *e).collect();
    match envs.last() {
        Some(env) => format!("{key} ({env})"),
        None => key.to_owned(),
    }
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { name: display_name(key), message: message.into() }
}

/// Loads settings from files in `config_dir` (normally `config/`), the process environment and
/// the command line, then checks them.
pub fn load(config_dir: &Path, overrides: &Overrides) -> Result<Settings, ConfigError> {
    let mut figment =
        Figment::from(Serialized::defaults(Settings::default())).merge(Toml::file(config_dir.join("default.toml")));
    if let Ok(env_name) = std::env::var("DASH_ENV")
        && !env_name.is_empty()
    {
        figment = figment.merge(Toml::file(config_dir.join(format!("{env_name}.toml"))));
    }
    if let Some(file) = &overrides.config_file {
        if !file.exists() {
            return Err(ConfigError::MissingFile(file.clone()));
        }
        figment = figment.merge(Toml::file(file));
    }
    for (env, key) in ENV_NAMES {
        let key = *key;
        figment = figment.merge(Env::raw().only(&[env]).filter_map(move |_| Some(key.into())));
    }
    if let Some(role) = overrides.role {
        figment = figment.merge(Serialized::default("role", role));
    }
    if let Some(listen) = overrides.listen {
        figment = figment.merge(Serialized::default("listen", listen));
    }
    let settings: Settings = figment.extract().map_err(|err| {
        let key = err.path.last().cloned().unwrap_or_default();
        let message = err.kind.to_string();
        if key.is_empty() {
            ConfigError::Invalid { name: "configuration".into(), message }
        } else {
            invalid(&key, message)
        }
    })?;
    validate(fly_defaults(normalize(settings), std::env::var("FLY_APP_NAME").ok().as_deref()))
}

/// Empty strings (an env var set to "") mean "unset".
fn normalize(mut s: Settings) -> Settings {
    fn blank(value: &mut Option<String>) {
        if value.as_deref().is_some_and(|v| v.trim().is_empty()) {
            *value = None;
        }
    }
    fn empty_secret(value: &mut Option<Secret>) {
        if value.as_ref().is_some_and(|v| v.expose().is_empty()) {
            *value = None;
        }
    }
    for text in [
        &mut s.nats_url,
        &mut s.nats_user,
        &mut s.dns_cluster_query,
        &mut s.dns_ingestor_query,
        &mut s.node_id,
        &mut s.client_ip_header,
        &mut s.public_url,
    ] {
        blank(text);
    }
    for secret in [&mut s.nats_token, &mut s.nats_password, &mut s.admin_token, &mut s.database_url, &mut s.edge_secret]
    {
        empty_secret(secret);
    }
    s
}

/// On Fly.io (`FLY_APP_NAME` set) the peer queries default to the app's private DNS names.
fn fly_defaults(mut s: Settings, fly_app: Option<&str>) -> Settings {
    if let Some(app) = fly_app.filter(|a| !a.is_empty()) {
        s.dns_cluster_query.get_or_insert_with(|| format!("{app}.internal"));
        s.dns_ingestor_query.get_or_insert_with(|| format!("ingestor.process.{app}.internal"));
    }
    s
}

fn validate(s: Settings) -> Result<Settings, ConfigError> {
    if s.role != Role::All && s.nats_url.is_none() {
        return Err(invalid(
            "nats_url",
            format!("role {} needs a bus between roles: set NATS_URL (only role all runs without one)", s.role),
        ));
    }
    if s.nats_user.is_some() != s.nats_password.is_some() {
        return Err(invalid("nats_user", "NATS_USER and NATS_PASSWORD go together"));
    }
    if !(1..=100_000).contains(&s.max_batch) {
        return Err(invalid("max_batch", "must be between 1 and 100000"));
    }
    if s.max_backlog == 0 {
        return Err(invalid("max_backlog", "must be at least 1"));
    }
    if s.max_connections > 1_000_000 {
        return Err(invalid("max_connections", "must be at most 1000000 (0: from the open-file limit)"));
    }
    if s.max_connections_per_client > 1_000_000 {
        return Err(invalid("max_connections_per_client", "must be at most 1000000 (0: an eighth of the cap)"));
    }
    if !(1..=100_000).contains(&s.max_live_per_client) {
        return Err(invalid("max_live_per_client", "must be between 1 and 100000"));
    }
    if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&s.write_timeout) {
        return Err(invalid("write_timeout", "must be between 1s and 1h"));
    }
    if !(1..=256).contains(&s.partitions) {
        return Err(invalid("partitions", "must be between 1 and 256"));
    }
    if s.flush_interval < Duration::from_millis(1) {
        return Err(invalid("flush_interval", "must be at least 1ms"));
    }
    if s.max_body.as_u64() == 0 || s.max_body.as_u64() > 256 * 1024 * 1024 {
        return Err(invalid("max_body", "must be between 1 byte and 256MiB"));
    }
    if s.spool_max.as_u64() < 64 * 1024 {
        return Err(invalid("spool_max", "must be at least 64KiB"));
    }
    if s.dedupe_window < Duration::from_secs(60) {
        return Err(invalid("dedupe_window", "must be at least 1m"));
    }
    if s.retention < s.dedupe_window {
        return Err(invalid("retention", "must be at least the dedupe window"));
    }
    if let Some(name) = &s.client_ip_header {
        if !is_header_name(name) {
            return Err(invalid("client_ip_header", format!("{name:?} is not a header name")));
        }
        if s.trusted_proxies.0.is_empty() {
            return Err(invalid(
                "client_ip_header",
                "needs trusted_proxies (DASH_TRUSTED_PROXIES): the header is believed only from them",
            ));
        }
    } else if !s.trusted_proxies.0.is_empty() {
        return Err(invalid("trusted_proxies", "needs client_ip_header (DASH_CLIENT_IP_HEADER): the header they set"));
    }
    if let Some(url) = &s.public_url {
        let scheme_ok = url.starts_with("http://") || url.starts_with("https://");
        if !scheme_ok || url.contains(char::is_whitespace) || url.contains(['?', '#']) {
            return Err(invalid(
                "public_url",
                "must be an http:// or https:// address without query, such as https://dash.example.com",
            ));
        }
    }
    if let Some(secret) = &s.edge_secret {
        let text = secret.expose();
        if text.len() < EDGE_SECRET_MIN || !text.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(invalid(
                "edge_secret",
                format!("must be at least {EDGE_SECRET_MIN} printable ASCII characters without spaces"),
            ));
        }
    }
    if s.region.trim().is_empty() {
        return Err(invalid("region", "must not be empty"));
    }
    for (name, pipeline) in &s.pipelines {
        if let Some(retention) = pipeline.retention {
            dash_domain::check_retention(retention)
                .map_err(|e| invalid(&format!("pipelines.{name}.retention"), e.to_string()))?;
        }
    }
    Ok(s)
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closures return figment::Error
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_contract() {
        figment::Jail::expect_with(|jail| {
            let s = load(jail.directory(), &Overrides::default()).unwrap();
            assert_eq!(s.role, Role::All);
            assert_eq!(s.listen.to_string(), "127.0.0.1:8080");
            assert_eq!(s.database_url(), "sqlite://data/dash.db");
            assert_eq!((s.max_batch, s.max_backlog), (1000, 5000));
            assert_eq!(s.max_body, ByteSize::mib(1));
            assert_eq!(s.spool_max, ByteSize::gib(1));
            assert_eq!(s.flush_interval, Duration::from_secs(1));
            Ok(())
        });
    }

    #[test]
    fn the_shipped_config_files_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config");
        figment::Jail::expect_with(|jail| {
            jail.set_env("DASH_ENV", "production");
            jail.set_env("APP_ROLE", "ingestor");
            jail.set_env("NATS_URL", "nats://127.0.0.1:4222");
            let s = load(&dir, &Overrides::default()).map_err(|e| figment::Error::from(e.to_string()))?;
            assert_eq!(s.data_dir, PathBuf::from("/data"));
            assert!(s.listen.ip().is_unspecified());
            assert!(s.shutdown_timeout < Duration::from_secs(30), "below fly.toml's kill_timeout");
            Ok(())
        });
    }

    #[test]
    fn pipelines_are_read_from_their_tables_and_checked() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "default.toml",
                "[pipelines.orders]\nretention = \"7days\"\n\
                 [pipelines.releases.source]\nurl = \"http://127.0.0.1:1/r\"\nevery = \"5m\"\n",
            )?;
            let s = load(jail.directory(), &Overrides::default()).unwrap();
            assert_eq!(s.pipelines["orders"].retention, Some(Duration::from_secs(7 * 86_400)));
            assert_eq!(s.pipelines["orders"].source, None);
            assert_eq!(s.pipelines["releases"].retention, None);
            assert_eq!(s.pipelines["releases"].source.as_ref().unwrap()["every"], "5m");
            Ok(())
        });
        figment::Jail::expect_with(|jail| {
            jail.create_file("default.toml", "[pipelines.orders]\nretention = \"5m\"\n")?;
            let err = load(jail.directory(), &Overrides::default()).unwrap_err().to_string();
            assert!(err.contains("pipelines.orders.retention") && err.contains("1h"), "{err}");
            Ok(())
        });
        figment::Jail::expect_with(|jail| {
            jail.create_file("default.toml", "[pipelines.orders]\nretain = \"7days\"\n")?;
            let err = load(jail.directory(), &Overrides::default()).unwrap_err().to_string();
            assert!(err.contains("retain"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn on_fly_the_peer_queries_come_from_the_app_name() {
        let s = fly_defaults(Settings::default(), Some("dash"));
        assert_eq!(s.dns_cluster_query.as_deref(), Some("dash.internal"));
        assert_eq!(s.dns_ingestor_query.as_deref(), Some("ingestor.process.dash.internal"));
        let given = Settings { dns_cluster_query: Some("peers.example".into()), ..Settings::default() };
        assert_eq!(fly_defaults(given, Some("dash")).dns_cluster_query.as_deref(), Some("peers.example"));
        assert_eq!(fly_defaults(Settings::default(), None).dns_cluster_query, None);
    }

    #[test]
    fn layers_apply_in_order() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("default.toml", "max_batch = 10\nregion = \"ams\"\nflush_interval = \"250ms\"")?;
            jail.create_file("production.toml", "max_batch = 20")?;
            jail.set_env("DASH_ENV", "production");
            jail.set_env("DASH_MAX_BODY", "2MiB");
            jail.set_env("FLY_REGION", "fra");
            jail.set_env("DASH_REGION", "cdg");
            jail.set_env("DATABASE_URL", "sqlite://x.db");
            let s =
                load(jail.directory(), &Overrides { listen: Some("0.0.0.0:1".parse().unwrap()), ..Default::default() })
                    .unwrap();
            assert_eq!(s.max_batch, 20);
            assert_eq!(s.flush_interval, Duration::from_millis(250));
            assert_eq!(s.max_body, ByteSize::mib(2));
            assert_eq!(s.region, "cdg");
            assert_eq!(s.database_url(), "sqlite://x.db");
            assert_eq!(s.listen.port(), 1);
            Ok(())
        });
    }

    #[test]
    fn errors_name_the_key() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("DASH_MAX_BATCH", "lots");
            let err = load(jail.directory(), &Overrides::default()).unwrap_err().to_string();
            assert!(err.contains("DASH_MAX_BATCH"), "{err}");
            Ok(())
        });
        figment::Jail::expect_with(|jail| {
            jail.create_file("default.toml", "max_batchh = 1")?;
            let err = load(jail.directory(), &Overrides::default()).unwrap_err().to_string();
            assert!(err.contains("max_batchh"), "{err}");
            Ok(())
        });
        figment::Jail::expect_with(|jail| {
            jail.set_env("APP_ROLE", "web");
            let err = load(jail.directory(), &Overrides::default()).unwrap_err().to_string();
            assert!(err.contains("NATS_URL"), "{err}");
            Ok(())
        });
        figment::Jail::expect_with(|jail| {
            jail.set_env("APP_ROLE", "sideways");
            let err = load(jail.directory(), &Overrides::default()).unwrap_err().to_string();
            assert!(err.contains("APP_ROLE"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn client_address_trust_is_read_and_checked() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("DASH_CLIENT_IP_HEADER", "Fly-Client-IP");
            jail.set_env("DASH_TRUSTED_PROXIES", "172.16.0.0/12, fdaa::/16 10.0.0.7");
            jail.set_env("DASH_EDGE_SECRET", "a-secret-of-sixteen");
            let s = load(jail.directory(), &Overrides::default()).unwrap();
            assert_eq!(s.client_ip_header.as_deref(), Some("Fly-Client-IP"));
            let nets: Vec<String> = s.trusted_proxies.0.iter().map(ToString::to_string).collect();
            assert_eq!(nets, ["172.16.0.0/12", "fdaa::/16", "10.0.0.7/32"]);
            assert_eq!(s.edge_secret.unwrap().expose(), "a-secret-of-sixteen");
            Ok(())
        });
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "default.toml",
                "client_ip_header = \"X-Forwarded-For\"\ntrusted_proxies = [\"10.0.0.0/8\"]",
            )?;
            let s = load(jail.directory(), &Overrides::default()).unwrap();
            assert_eq!(s.trusted_proxies.0, vec!["10.0.0.0/8".parse::<IpNet>().unwrap()]);
            Ok(())
        });
        for (env, value, named) in [
            ("DASH_TRUSTED_PROXIES", "10.0.0.0/33", "DASH_TRUSTED_PROXIES"),
            ("DASH_TRUSTED_PROXIES", "10.0.0.0/8", "DASH_CLIENT_IP_HEADER"),
            ("DASH_CLIENT_IP_HEADER", "X-Forwarded-For", "DASH_TRUSTED_PROXIES"),
            ("DASH_EDGE_SECRET", "short", "DASH_EDGE_SECRET"),
        ] {
            figment::Jail::expect_with(|jail| {
                jail.set_env(env, value);
                let err = load(jail.directory(), &Overrides::default()).unwrap_err().to_string();
                assert!(err.contains(named), "{env}={value}: {err}");
                Ok(())
            });
        }
        figment::Jail::expect_with(|jail| {
            jail.set_env("DASH_CLIENT_IP_HEADER", "Bad Header");
            jail.set_env("DASH_TRUSTED_PROXIES", "10.0.0.1");
            let err = load(jail.directory(), &Overrides::default()).unwrap_err().to_string();
            assert!(err.contains("not a header name"), "{err}");
            Ok(())
        });
    }
}
