//! The admin commands: migrate, pipeline create/list/rotate-secret/source/retention, ceilings.

use dash_providers::Provider;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use dash_config::Settings;
use dash_store::{IssuedCredentials, Store};
use serde_json::json;

#[derive(Subcommand)]
pub enum PipelineAction {
    /// Create a pipeline; prints its signing secret and token once.
    Create {
        name: String,
        #[command(flatten)]
        verify: VerifyArgs,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Set which provider signs a pipeline's deliveries (`standard-webhooks` goes back to the
    /// pipeline's own secret); under the same provider the old secret works for 24 hours.
    Verify {
        name: String,
        #[command(flatten)]
        verify: VerifyArgs,
    },
    /// List pipelines with their counts.
    List {
        #[arg(long)]
        json: bool,
    },
    /// New signing secret and token; the old ones keep working for 24 hours.
    RotateSecret {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Show, set or remove a pipeline's polling source (same rules as the admin API).
    Source {
        name: String,
        /// URL to fetch; with `--every` or `--cron`, sets the source.
        #[arg(long)]
        url: Option<String>,
        /// Interval, e.g. `30s`, `5m`.
        #[arg(long)]
        every: Option<String>,
        /// Cron expression (UTC), e.g. `*/5 * * * *`.
        #[arg(long)]
        cron: Option<String>,
        /// JSON pointer to the array of events in the response (`""`: the response itself).
        #[arg(long, default_value = "")]
        events: String,
        /// Request header `Name: value` (repeatable); values are never shown.
        #[arg(long = "header")]
        headers: Vec<String>,
        /// Cursor: query parameter name, with `--cursor-from`.
        #[arg(long, requires = "cursor_from")]
        cursor_param: Option<String>,
        /// Cursor: JSON pointer to the value in the response.
        #[arg(long, requires = "cursor_param")]
        cursor_from: Option<String>,
        /// Stop polling: remove the source.
        #[arg(long, conflicts_with = "url")]
        remove: bool,
    },
    /// Show or set how long a pipeline keeps its events.
    Retention {
        name: String,
        /// A duration from 1h to 10 years, e.g. `7days`, `12h`; without it, shows the retention.
        duration: Option<String>,
        /// Go back to the node default (`DASH_RETENTION`).
        #[arg(long, conflicts_with = "duration")]
        default: bool,
    },
}

#[derive(Subcommand)]
pub enum CeilingAction {
    /// Serve a plain axum handler that parses the same JSON and answers 202.
    Http {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
    },
    /// Binary COPY of the same rows into Dash's events table on PostgreSQL (migrated first).
    Postgres {
        /// A database for Dash's schema; it is migrated, then filled.
        #[arg(long)]
        url: String,
        #[arg(long, default_value_t = 1000)]
        rows_per_tx: usize,
        /// Rows per COPY statement; a transaction sends as many statements as it needs.
        #[arg(long, default_value_t = 1000)]
        rows_per_copy: usize,
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        duration: Duration,
    },
    /// Serve the fan-out baseline: a naive broadcast `/live` (a task per socket, each update
    /// serialized per socket) with the same frames, and a `/webhooks/{pipeline}` that counts.
    Live {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// One update per this interval that counted events (Dash: one per batch).
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        flush: Duration,
    },
    /// Insert the same rows straight into SQLite in fixed-size transactions.
    Sqlite {
        /// The SQLite file to create (removed first).
        #[arg(long)]
        file: std::path::PathBuf,
        #[arg(long, default_value_t = 1000)]
        rows_per_tx: usize,
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        duration: Duration,
    },
}

/// `dashd export`'s arguments.
#[derive(clap::Args)]
pub struct ExportArgs {
    /// The pipeline's id or name.
    pipeline: String,
    /// Events from this time on (RFC 3339 or unix ms); by default the oldest kept.
    #[arg(long, value_parser = parse_instant)]
    from: Option<i64>,
    /// Events before this time (RFC 3339 or unix ms); by default all.
    #[arg(long, value_parser = parse_instant)]
    to: Option<i64>,
    /// The file to write (written beside it under `.partial`, renamed once complete); by default
    /// standard output.
    #[arg(long, short)]
    output: Option<std::path::PathBuf>,
}

fn parse_instant(raw: &str) -> Result<i64, String> {
    dash_domain::parse_instant(raw).ok_or_else(|| format!("{raw:?} is neither RFC 3339 nor unix milliseconds"))
}

/// Writes a pipeline's events as NDJSON, a page at a time; prints how many to standard error.
pub async fn export(settings: &Settings, args: ExportArgs) -> anyhow::Result<()> {
    use futures_util::TryStreamExt;
    use std::io::Write;

    let store = open_store(settings).await?;
    let result = async {
        let record =
            store.find_pipeline(&args.pipeline).await?.with_context(|| format!("no pipeline {:?}", args.pipeline))?;
        let (from, to) = (args.from.unwrap_or(i64::MIN), args.to.unwrap_or(i64::MAX));
        anyhow::ensure!(from < to, "--to must be after --from");
        let partial = args.output.as_ref().map(|path| {
            let mut name = path.as_os_str().to_owned();
            name.push(".partial");
            std::path::PathBuf::from(name)
        });
        let mut out: Box<dyn Write> = match &partial {
            Some(path) => Box::new(std::io::BufWriter::new(
                std::fs::File::create(path).with_context(|| format!("cannot write {}", path.display()))?,
            )),
            None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
        };
        let mut pages = std::pin::pin!(store.export_pages(&record.id, from, to));
        let mut events = 0u64;
        while let Some(page) = pages.try_next().await? {
            events += page.len() as u64;
            out.write_all(&dash_store::ndjson(&page))?;
        }
        out.flush()?;
        drop(out);
        if let (Some(partial), Some(path)) = (&partial, &args.output) {
            std::fs::rename(partial, path)?;
        }
        eprintln!("exported {events} events of {}", record.id);
        Ok(())
    }
    .await;
    store.close().await;
    result
}

async fn open_store(settings: &Settings) -> anyhow::Result<Store> {
    let store = Store::connect(&settings.database_url()).await?;
    store.migrate().await?;
    Ok(store)
}

pub async fn migrate(settings: &Settings) -> anyhow::Result<()> {
    let store = open_store(settings).await?;
    println!("migrations applied ({})", store.backend());
    store.close().await;
    Ok(())
}

/// Which provider signs a pipeline's deliveries, and its secret.
#[derive(clap::Args)]
pub struct VerifyArgs {
    /// standard-webhooks (the default: Dash makes the secret), github, stripe, shopify, slack,
    /// gitlab, twilio or hmac.
    #[arg(long)]
    provider: Option<String>,
    /// A file holding the provider's webhook secret (a trailing newline is dropped).
    #[arg(long)]
    secret_file: Option<std::path::PathBuf>,
    /// An hmac sender's option KEY=VALUE (header, algorithm, encoding, prefix, id_header,
    /// type_header, type_field); repeat for more.
    #[arg(long = "verify-option", value_name = "KEY=VALUE")]
    options: Vec<String>,
}

impl VerifyArgs {
    /// The provider with its secret, checked as the admin API checks them; `None` without
    /// `--provider`.
    fn read(&self) -> anyhow::Result<Option<(dash_providers::VerifySpec, Option<String>)>> {
        let Some(provider) = &self.provider else {
            anyhow::ensure!(
                self.secret_file.is_none() && self.options.is_empty(),
                "--secret-file and --verify-option go with --provider"
            );
            return Ok(None);
        };
        let mut object = serde_json::Map::new();
        object.insert("provider".into(), json!(provider));
        for option in &self.options {
            let (key, value) = option.split_once('=').context("--verify-option takes KEY=VALUE")?;
            object.insert(key.trim().to_owned(), json!(value.trim()));
        }
        if let Some(path) = &self.secret_file {
            let text = std::fs::read_to_string(path).with_context(|| format!("--secret-file {}", path.display()))?;
            object.insert("secret".into(), json!(text.trim_end_matches(['\n', '\r'])));
        }
        let checked = dash_providers::VerifySpec::from_json_with_secret(&serde_json::Value::Object(object))
            .map_err(|e| anyhow::anyhow!("invalid verify: {e}"))?;
        Ok(Some(checked))
    }
}

fn print_credentials(heading: &str, issued: &IssuedCredentials, settings: &Settings, as_json: bool) {
    let url = format!("http://{}/webhooks/{}", settings.listen, issued.record.id);
    // A provider pipeline signs with the provider's secret, the user's own: never printed.
    let provider = issued.record.provider();
    let provider = provider.as_deref();
    if as_json {
        let mut body = json!({
            "id": issued.record.id,
            "name": issued.record.name,
            "token": issued.token.expose(),
            "url": url,
            "verify": { "provider": provider.unwrap_or("standard-webhooks") },
        });
        if provider.is_none() {
            body["secret"] = json!(issued.secret.expose());
        }
        println!("{body}");
        return;
    }
    println!("{heading}: {}", issued.record.name);
    println!("  id:     {}", issued.record.id);
    println!("  url:    {url}");
    match provider {
        Some(provider) => println!("  verify: {provider}, with the secret from its webhook settings"),
        None => println!("  secret: {}", issued.secret.expose()),
    }
    println!("  token:  {}", issued.token.expose());
    println!("The secret and token are shown only now; keep them somewhere safe.");
}

#[derive(Subcommand)]
pub enum ViewAction {
    /// Create a view, or change it (`--replace`): its history is computed in the background.
    Create {
        pipeline: String,
        view: String,
        /// count, sum, avg, min, max, distinct, p50, p90, p95 or p99.
        #[arg(long)]
        aggregate: String,
        /// JSON pointer of the value aggregated (required except for count), e.g. /amount.
        #[arg(long)]
        field: Option<String>,
        /// JSON pointer whose value names the group, e.g. /currency.
        #[arg(long)]
        group_by: Option<String>,
        /// Most groups kept (later values go to "(other)"); 50 unless given.
        #[arg(long)]
        max_groups: Option<u32>,
        /// Equality condition POINTER=VALUE (VALUE is JSON, or else text); repeat for more.
        #[arg(long = "filter", value_name = "POINTER=VALUE")]
        filters: Vec<String>,
        /// How long its per-minute results are kept, e.g. 365days.
        #[arg(long)]
        keep: Option<String>,
        /// Show it next to the pipeline on the overview.
        #[arg(long)]
        pinned: bool,
        /// Change the view if it exists.
        #[arg(long)]
        replace: bool,
        #[arg(long)]
        json: bool,
    },
    /// List a pipeline's views with how far their history has been computed.
    List {
        pipeline: String,
        #[arg(long)]
        json: bool,
    },
    /// Delete a view and what it holds.
    Delete { pipeline: String, view: String },
}

pub async fn view(settings: &Settings, action: ViewAction) -> anyhow::Result<()> {
    let store = open_store(settings).await?;
    let result = async {
        match action {
            ViewAction::Create {
                pipeline,
                view,
                aggregate,
                field,
                group_by,
                max_groups,
                filters,
                keep,
                pinned,
                replace,
                json,
            } => {
                let filters: Vec<&str> = filters.iter().map(String::as_str).collect();
                let spec = dash_views::ViewSpec::from_parts(
                    &aggregate,
                    field.as_deref(),
                    group_by.as_deref(),
                    max_groups,
                    &filters,
                    keep.as_deref(),
                    pinned,
                )
                .map_err(|e| anyhow::anyhow!("invalid view: {e}"))?;
                let mode = if replace { dash_store::PutMode::Upsert } else { dash_store::PutMode::Create };
                let (record, write) = store.put_view(&pipeline, &view, &spec, mode).await?;
                if json {
                    println!("{}", serde_json::to_string(&record)?);
                } else {
                    println!("view {} on {}: {} ({write:?})", record.name, record.pipeline, record.describe);
                }
            }
            ViewAction::List { pipeline, json } => {
                let found =
                    store.find_pipeline(&pipeline).await?.with_context(|| format!("no pipeline {pipeline:?}"))?;
                let views = store.list_views(&found.id).await?;
                if json {
                    println!("{}", serde_json::to_string(&views)?);
                } else {
                    println!("{:<24} {:<10} {:<48} history", "view", "aggregate", "definition");
                    for v in views {
                        let history = if v.backfill.done {
                            "computed".to_owned()
                        } else {
                            format!("{:.0} %", v.backfill.fraction() * 100.0)
                        };
                        println!("{:<24} {:<10} {:<48} {history}", v.name, v.spec.aggregate.as_str(), v.describe);
                    }
                }
            }
            ViewAction::Delete { pipeline, view } => {
                if !store.delete_view(&pipeline, &view).await? {
                    anyhow::bail!("no view {view:?} on {pipeline:?}");
                }
                println!("view {view} deleted");
            }
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    store.close().await;
    result
}

#[derive(Subcommand)]
pub enum BoardAction {
    /// List boards.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Print a board as JSON (the API's board object).
    Show { name: String },
    /// Make a board, or replace it, from a JSON file (`-`: standard input) holding the API's
    /// board object (`{"title", "range", "panels": [...]}`; a `name` in it must match).
    Apply {
        name: String,
        /// The file to read.
        #[arg(long, short)]
        file: std::path::PathBuf,
    },
    /// Delete a board.
    Delete { name: String },
}

/// Reads a board object for `dashd board apply`.
fn read_board(name: &str, file: &std::path::Path) -> anyhow::Result<dash_boards::BoardSpec> {
    use std::io::Read;
    /// A board is at most 48 panels of 10,000 characters: a file far past that is not one.
    const MAX_BOARD_FILE: u64 = 4 << 20;
    let source: Box<dyn Read> = if file.as_os_str() == "-" {
        Box::new(std::io::stdin())
    } else {
        Box::new(std::fs::File::open(file).with_context(|| format!("reading {}", file.display()))?)
    };
    let mut text = String::new();
    source.take(MAX_BOARD_FILE + 1).read_to_string(&mut text).with_context(|| format!("reading {}", file.display()))?;
    if text.len() as u64 > MAX_BOARD_FILE {
        anyhow::bail!("{} is larger than a board can be ({} MiB)", file.display(), MAX_BOARD_FILE >> 20);
    }
    let mut value: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", file.display()))?;
    if let Some(object) = value.as_object_mut()
        && let Some(given) = object.remove("name")
        && given != name
    {
        anyhow::bail!("the file names board {given}, not {name:?}");
    }
    // The timestamps `board show` prints are the store's to set.
    if let Some(object) = value.as_object_mut() {
        object.remove("created_at");
        object.remove("updated_at");
        object.remove("version");
    }
    dash_boards::check_board_name(name)
        .and_then(|()| dash_boards::BoardSpec::from_json(value))
        .map_err(|e| anyhow::anyhow!("invalid board: {e}"))
}

pub async fn board(settings: &Settings, action: BoardAction) -> anyhow::Result<()> {
    let store = open_store(settings).await?;
    let result = async {
        match action {
            BoardAction::List { json } => {
                let boards = store.list_boards().await?;
                if json {
                    println!("{}", serde_json::to_string(&boards)?);
                } else {
                    println!("{:<24} {:<32} {:>6}  pipelines", "board", "title", "panels");
                    for b in boards {
                        let title = b.spec.title.clone().unwrap_or_default();
                        println!(
                            "{:<24} {:<32} {:>6}  {}",
                            b.name,
                            title,
                            b.spec.panels.len(),
                            b.spec.pipelines().join(", ")
                        );
                    }
                }
            }
            BoardAction::Show { name } => {
                let board = store.find_board(&name).await?.with_context(|| format!("no board {name:?}"))?;
                println!("{}", serde_json::to_string_pretty(&board)?);
            }
            BoardAction::Apply { name, file } => {
                let spec = read_board(&name, &file)?;
                let kept = store.find_board(&name).await?.map(|b| b.spec.panels).unwrap_or_default();
                let spec = store.resolve_board(spec, &kept).await.map_err(|e| anyhow::anyhow!("invalid board: {e}"))?;
                let changed = store.put_board(&name, &spec, dash_store::PutMode::Upsert).await?;
                println!("board {name}: {}", if changed { "saved" } else { "unchanged" });
            }
            BoardAction::Delete { name } => {
                if !store.delete_board(&name).await? {
                    anyhow::bail!("no board {name:?}");
                }
                println!("board {name} deleted");
            }
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    store.close().await;
    result
}

pub async fn pipeline(settings: &Settings, action: PipelineAction) -> anyhow::Result<()> {
    let store = open_store(settings).await?;
    let result = match action {
        PipelineAction::Create { name, verify, json } => {
            let verify = verify.read()?;
            match store.create_pipeline(&name).await {
                Ok(mut issued) => {
                    if let Some((spec, secret)) = verify.filter(|(s, _)| s.provider != Provider::StandardWebhooks) {
                        issued.record = store.set_verify(&issued.record.id, &spec, secret.as_deref()).await?.0;
                    }
                    print_credentials("pipeline created", &issued, settings, json);
                    Ok(())
                }
                Err(err) => Err(err),
            }
        }
        PipelineAction::Verify { name, verify } => {
            let (spec, secret) = verify.read()?.context("--provider is required")?;
            store.set_verify(&name, &spec, secret.as_deref()).await.map(|(record, changed)| {
                let what = if changed { "set" } else { "unchanged" };
                println!("pipeline {}: verify {what}: {}", record.id, spec.to_json());
            })
        }
        PipelineAction::RotateSecret { name, json } => store
            .rotate_credentials(&name)
            .await
            .map(|issued| print_credentials("credentials rotated", &issued, settings, json)),
        PipelineAction::List { json } => store.list_pipelines().await.map(|records| {
            if json {
                println!("{}", serde_json::to_string(&records).unwrap_or_default());
            } else {
                println!("{:<24} {:<24} {:>12} {:>8}  last event", "id", "name", "events", "seq");
                for r in records {
                    println!(
                        "{:<24} {:<24} {:>12} {:>8}  {}",
                        r.id,
                        r.name,
                        r.stats.count,
                        r.stats.seq,
                        r.stats.last_event_at.as_deref().unwrap_or("-")
                    );
                }
            }
        }),
        PipelineAction::Source { name, url, every, cron, events, headers, cursor_param, cursor_from, remove } => {
            let spec = match url {
                Some(url) => {
                    let mut header_map = std::collections::BTreeMap::new();
                    for header in headers {
                        let (key, value) = header.split_once(':').context("--header takes \"Name: value\"")?;
                        header_map.insert(key.trim().to_owned(), value.trim().to_owned());
                    }
                    let cursor =
                        cursor_param.zip(cursor_from).map(|(param, from)| dash_jobs::CursorSpec { param, from });
                    Some(dash_jobs::SourceSpec {
                        url,
                        method: "GET".into(),
                        every,
                        cron,
                        events,
                        headers: header_map,
                        cursor,
                        timeout: None,
                    })
                }
                None => None,
            };
            let outcome = pipeline_source(&store, &name, spec, remove).await;
            store.close().await;
            return outcome;
        }
        PipelineAction::Retention { name, duration, default } => {
            let outcome = pipeline_retention(&store, settings, &name, duration.as_deref(), default).await;
            store.close().await;
            return outcome;
        }
    };
    store.close().await;
    Ok(result?)
}

/// `dashd pipeline retention`: sets (a duration, or `--default`), then shows the retention.
async fn pipeline_retention(
    store: &Store,
    settings: &Settings,
    name: &str,
    duration: Option<&str>,
    default: bool,
) -> anyhow::Result<()> {
    let record = store.find_pipeline(name).await?.with_context(|| format!("no pipeline {name:?}"))?;
    let retention = match duration {
        Some(text) => Some(dash_domain::parse_retention(text)?),
        None if default => None,
        None => record.retention,
    };
    if duration.is_some() || default {
        store.set_retention(&record.id, retention).await?;
    }
    match retention {
        Some(own) => println!("{}: events kept {}", record.id, dash_domain::format_retention(own)),
        None => println!(
            "{}: events kept {} (the node default, DASH_RETENTION)",
            record.id,
            dash_domain::format_retention(settings.retention)
        ),
    }
    Ok(())
}

/// `dashd pipeline source`: sets (when given a spec), removes, then shows the source.
async fn pipeline_source(
    store: &Store,
    name: &str,
    spec: Option<dash_jobs::SourceSpec>,
    remove: bool,
) -> anyhow::Result<()> {
    let record = store.find_pipeline(name).await?.with_context(|| format!("no pipeline {name:?}"))?;
    if remove {
        let removed = store.remove_source(&record.id).await?;
        println!("{}", if removed { "source removed" } else { "the pipeline had no source" });
        return Ok(());
    }
    if let Some(spec) = spec {
        spec.validate()?;
        store.set_source(&record.id, &serde_json::to_string(&spec)?, dash_domain::now_ms()).await?;
        println!("source set");
    }
    match store.source(&record.id).await? {
        Some(source) => {
            let shown = dash_http::source_json(&source, dash_domain::now_ms());
            println!("{}", serde_json::to_string_pretty(&shown)?);
        }
        None => println!("pipeline {name:?} has no source"),
    }
    Ok(())
}

pub async fn ceiling(action: CeilingAction) -> anyhow::Result<()> {
    match action {
        CeilingAction::Http { listen } => dash_bench::serve_plain(listen).await,
        CeilingAction::Live { listen, flush } => dash_bench::serve_naive_live(listen, flush).await,
        CeilingAction::Postgres { url, rows_per_tx, rows_per_copy, duration } => {
            let store = Store::connect(&url).await?;
            store.migrate().await?;
            store.close().await;
            println!("{}", dash_bench::postgres_ceiling(&url, rows_per_tx, rows_per_copy, duration).await?);
            Ok(())
        }
        CeilingAction::Sqlite { file, rows_per_tx, duration } => {
            let report = dash_bench::sqlite_ceiling(&file, rows_per_tx, duration).await?;
            println!("{report}");
            Ok(())
        }
    }
}

/// `dashd verify`: prints the report; a run that did not pass writes its replay command to the
/// failures file and fails.
pub async fn verify(options: dash_verify::VerifyOptions) -> anyhow::Result<()> {
    let (json, failures_file) = (options.json, options.failures_file.clone());
    let report = dash_verify::run(options).await?;
    match json {
        true => println!("{}", serde_json::to_string_pretty(&report)?),
        false => print!("{report}"),
    }
    if report.passed() {
        return Ok(());
    }
    report
        .record_failure(&failures_file)
        .with_context(|| format!("writing the failing seed to {}", failures_file.display()))?;
    anyhow::bail!("the run broke the promise; its replay command is in {}", failures_file.display())
}
