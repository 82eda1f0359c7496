//! The admin commands: migrate, pipeline create/list/rotate-secret/source/retention, ceilings.

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
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
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

fn print_credentials(heading: &str, issued: &IssuedCredentials, settings: &Settings, as_json: bool) {
    let url = format!("http://{}/webhooks/{}", settings.listen, issued.record.id);
    if as_json {
        let body = json!({
            "id": issued.record.id,
            "name": issued.record.name,
            "secret": issued.secret.expose(),
            "token": issued.token.expose(),
            "url": url,
        });
        println!("{body}");
        return;
    }
    println!("{heading}: {}", issued.record.name);
    println!("  id:     {}", issued.record.id);
    println!("  url:    {url}");
    println!("  secret: {}", issued.secret.expose());
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

pub async fn pipeline(settings: &Settings, action: PipelineAction) -> anyhow::Result<()> {
    let store = open_store(settings).await?;
    let result = match action {
        PipelineAction::Create { name, json } => store
            .create_pipeline(&name)
            .await
            .map(|issued| print_credentials("pipeline created", &issued, settings, json)),
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
