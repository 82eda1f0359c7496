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

/// Connections per loopback source address: well below one address's ~28k ephemeral ports, so
/// back-to-back runs (the last run's ports still in TIME_WAIT) do not run out.
const SOCKETS_PER_SOURCE: usize = 1_000;

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

/// Connects from `source`, retrying a few times: thousands of sockets opening at once can
/// overflow the server's accept queue, as a crowd of reconnecting browsers would.
async fn connect_from(source: IpAddr, server: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
    let mut attempt = 0;
    loop {
        let socket = TcpSocket::new_v4()?;
        socket.set_reuseaddr(true)?;
        socket.bind(SocketAddr::new(source, 0))?;
        match socket.connect(server).await {
            Ok(stream) => return Ok(stream),
            Err(_) if attempt < 5 => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
            }
            Err(err) => return Err(err),
        }
    }
}

/// The two fields of a server frame the benchmark reads, borrowed from the frame.
#[derive(serde::Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    at: Option<&'a str>,
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
    let (stop_tx, stop) = tokio::sync::watch::channel(false);

    let started = Instant::now();
    let mut sockets = Vec::with_capacity(options.sockets);
    for i in 0..options.sockets {
        let source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + (i / SOCKETS_PER_SOURCE) as u8));
        let (pipeline, subscribed, mut stop) = (options.pipeline.clone(), subscribed.clone(), stop.clone());
        sockets.push(tokio::spawn(async move {
            let stream = connect_from(source, server).await?;
            // tungstenite zeroes its whole read buffer before every read: the default 128 KiB
            // would cost the client more than the frames it reads.
            let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default().read_buffer_size(4096);
            let (mut ws, _) =
                tokio_tungstenite::client_async_with_config(format!("ws://{server}/live"), stream, Some(config))
                    .await?;
            let subscribe = serde_json::json!({"type": "subscribe", "pipeline": pipeline}).to_string();
            ws.send(Message::Text(subscribe.into())).await?;
            let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            let mut snapshot_seen = false;
            // One stop future per socket, not a timer per frame: the client shares the server's
            // cores, so its own cost per delivery is kept small.
            let stopped = stop.wait_for(|stopped| *stopped);
            tokio::pin!(stopped);
            loop {
                let frame = tokio::select! {
                    biased;
                    frame = ws.next() => match frame {
                        Some(Ok(Message::Text(text))) => text,
                        Some(Ok(_)) => continue,
                        _ => break,
                    },
                    _ = &mut stopped => break,
                };
                let received_us = dash_domain::now_ms() * 1000;
                let Ok(frame) = serde_json::from_str::<Frame<'_>>(&frame) else { continue };
                match (frame.kind, frame.at) {
                    ("snapshot", _) if !snapshot_seen => {
                        snapshot_seen = true;
                        subscribed.fetch_add(1, Ordering::Relaxed);
                    }
                    ("update", Some(at)) => {
                        if let Ok(at) = chrono::DateTime::parse_from_rfc3339(at) {
                            let _ = latency.record((received_us - at.timestamp_micros()).max(1) as u64);
                        }
                    }
                    _ => {}
                }
            }
            Ok::<_, anyhow::Error>(latency)
        }));
        if i % 500 == 499 {
            tokio::task::yield_now().await;
        }
    }
    // A socket whose connect or handshake failed has finished; it is reported, not waited for.
    while subscribed.load(Ordering::Relaxed) + sockets.iter().filter(|s| s.is_finished()).count() < options.sockets {
        anyhow::ensure!(started.elapsed() < Duration::from_secs(120), "sockets did not all subscribe in 120 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let connect_secs = started.elapsed().as_secs_f64();
    println!("all {} sockets subscribed in {connect_secs:.1} s; idle for {} s", options.sockets, options.idle_secs);
    tokio::time::sleep(Duration::from_secs(options.idle_secs)).await;

    // The poster runs on a runtime of its own, on a fixed schedule, so the sockets' bursts do
    // not slow the rate of updates being measured.
    let load_started = Instant::now();
    let (url, duration, rate) =
        (format!("http://{server}/webhooks/{}", options.pipeline), options.duration, options.posts_per_sec);
    let poster = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        runtime.block_on(async move {
            let client = reqwest::Client::new();
            let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut n = 0u64;
            while load_started.elapsed() < duration {
                ticks.tick().await;
                let now_ms = dash_domain::now_ms();
                let id = format!("live-{}-{n}", load_started.elapsed().as_nanos());
                let body = crate::sample_event(&id, now_ms);
                let request = client.post(&url).header("content-type", "application/json");
                let _ = crate::signed(request, &secret, &id, now_ms / 1000, body.as_bytes()).body(body).send().await;
                n += 1;
            }
        });
        Ok::<_, std::io::Error>(())
    });
    tokio::task::spawn_blocking(move || poster.join()).await?.map_err(|_| anyhow::anyhow!("the poster panicked"))??;
    tokio::time::sleep(Duration::from_secs(2)).await; // the last updates reach every socket
    let _ = stop_tx.send(true);
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut failed = 0;
    let mut first_error = None;
    for socket in sockets {
        match socket.await? {
            Ok(h) => all.add(&h)?,
            Err(err) => {
                failed += 1;
                first_error.get_or_insert(err);
            }
        }
    }
    if let Some(err) = first_error {
        eprintln!("{failed} sockets failed; the first: {err:#}");
    }
    Ok(format!(
        "sockets {} (failed {failed}), subscribed in {connect_secs:.1} s\n\
         deliveries {} over the {:.0} s load = {:.0}/s\n\
         delivery latency (commit -> frame) min {:.1} ms  p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
        options.sockets,
        all.len(),
        options.duration.as_secs_f64(),
        all.len() as f64 / options.duration.as_secs_f64(),
        all.min() as f64 / 1000.0,
        all.value_at_quantile(0.5) as f64 / 1000.0,
        all.value_at_quantile(0.99) as f64 / 1000.0,
        all.max() as f64 / 1000.0,
    ))
}
