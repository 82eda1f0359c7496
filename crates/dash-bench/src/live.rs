//! `dashd bench-live`: many `/live` subscribers on one pipeline while signed POSTs make updates;
//! reports deliveries/s and delivery latency (update commit time `at` → frame received).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use dash_signature::SigningSecret;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::Message;

/// Connections per loopback source address (below the ~28k ephemeral ports of one address).
const SOCKETS_PER_SOURCE: usize = 20_000;

#[derive(Debug, Clone, clap::Args)]
pub struct LiveOptions {
    /// Dash's base URL, e.g. http://127.0.0.1:8080.
    #[arg(long)]
    pub url: String,
    #[arg(long, default_value = "bench")]
    pub pipeline: String,
    /// The pipeline's signing secret, to make updates with signed POSTs.
    #[arg(long)]
    pub secret: String,
    /// Subscribed WebSockets, spread over 127.0.0.x source addresses.
    #[arg(long, default_value_t = 1000)]
    pub sockets: usize,
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Signed POSTs per second (each server flush turns them into one update).
    #[arg(long, default_value_t = 50.0)]
    pub posts_per_sec: f64,
    /// Seconds to stay idle once every socket is subscribed (to read the server's memory).
    #[arg(long, default_value_t = 3)]
    pub idle_secs: u64,
}

fn raise_fd_limit(wanted: u64) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard.min(wanted.max(1024)), hard);
    }
}

pub async fn run_live(options: LiveOptions) -> anyhow::Result<String> {
    raise_fd_limit(options.sockets as u64 + 1024);
    let server: SocketAddr = options
        .url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .context("--url must be http://IP:PORT")?;
    let secret = SigningSecret::parse(&options.secret).context("--secret")?;
    let subscribed = Arc::new(AtomicUsize::new(0));
    let stop_at = Arc::new(std::sync::OnceLock::<Instant>::new());

    let started = Instant::now();
    let mut sockets = Vec::with_capacity(options.sockets);
    for i in 0..options.sockets {
        let source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + (i / SOCKETS_PER_SOURCE) as u8));
        let (pipeline, subscribed, stop_at) = (options.pipeline.clone(), subscribed.clone(), stop_at.clone());
        sockets.push(tokio::spawn(async move {
            let socket = TcpSocket::new_v4()?;
            socket.bind(SocketAddr::new(source, 0))?;
            let stream = socket.connect(server).await?;
            let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{server}/live"), stream).await?;
            let subscribe = serde_json::json!({"type": "subscribe", "pipeline": pipeline}).to_string();
            ws.send(Message::Text(subscribe.into())).await?;
            let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            let mut snapshot_seen = false;
            loop {
                let deadline = stop_at.get().copied().unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
                let frame = match tokio::time::timeout_at(deadline.into(), ws.next()).await {
                    Ok(Some(Ok(Message::Text(text)))) => text,
                    Ok(Some(Ok(_))) => continue,
                    Ok(_) | Err(_) => break,
                };
                let received = chrono::Utc::now();
                let value: serde_json::Value = serde_json::from_str(&frame)?;
                if !snapshot_seen && value["type"] == "snapshot" {
                    snapshot_seen = true;
                    subscribed.fetch_add(1, Ordering::Relaxed);
                } else if value["type"] == "update"
                    && let Some(at) = value["at"].as_str().and_then(|a| chrono::DateTime::parse_from_rfc3339(a).ok())
                {
                    let micros = (received - at.with_timezone(&chrono::Utc)).num_microseconds().unwrap_or(0).max(1);
                    let _ = latency.record(micros as u64);
                }
            }
            Ok::<_, anyhow::Error>(latency)
        }));
        if i % 500 == 499 {
            tokio::task::yield_now().await;
        }
    }
    while subscribed.load(Ordering::Relaxed) < options.sockets {
        anyhow::ensure!(started.elapsed() < Duration::from_secs(120), "sockets did not all subscribe in 120 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let connect_secs = started.elapsed().as_secs_f64();
    println!("all {} sockets subscribed in {connect_secs:.1} s; idle for {} s", options.sockets, options.idle_secs);
    tokio::time::sleep(Duration::from_secs(options.idle_secs)).await;

    let load_started = Instant::now();
    let _ = stop_at.set(load_started + options.duration + Duration::from_secs(2));
    let client = reqwest::Client::new();
    let url = format!("http://{server}/webhooks/{}", options.pipeline);
    let every = Duration::from_secs_f64(1.0 / options.posts_per_sec);
    let mut n = 0u64;
    while load_started.elapsed() < options.duration {
        let now_ms = dash_domain::now_ms();
        let id = format!("live-{}-{n}", load_started.elapsed().as_nanos());
        let body = crate::sample_event(&id, now_ms);
        let request = client.post(&url).header("content-type", "application/json");
        let _ = crate::signed(request, &secret, &id, now_ms / 1000, &body).body(body).send().await;
        n += 1;
        tokio::time::sleep(every).await;
    }
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut failed = 0;
    for socket in sockets {
        match socket.await? {
            Ok(h) => all.add(&h)?,
            Err(_) => failed += 1,
        }
    }
    let window = load_started.elapsed().as_secs_f64();
    Ok(format!(
        "sockets {} (failed {failed}), subscribed in {connect_secs:.1} s\n\
         deliveries {} in {window:.1} s = {:.0}/s\n\
         delivery latency (commit -> frame) p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
        options.sockets,
        all.len(),
        all.len() as f64 / window,
        all.value_at_quantile(0.5) as f64 / 1000.0,
        all.value_at_quantile(0.99) as f64 / 1000.0,
        all.max() as f64 / 1000.0,
    ))
}
