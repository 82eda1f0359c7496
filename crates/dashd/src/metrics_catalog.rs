//! Every metric Dash records, with the help text and unit `/metrics` shows for it. A metric
//! recorded anywhere in the workspace is described here once; a test of the spine checks the
//! exposition with `promtool check metrics`.

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};

/// Registers the descriptions with the installed recorder.
pub fn describe() {
    // Intake.
    describe_counter!("dash_events_accepted_total", Unit::Count, "Events acknowledged (202) to senders.");
    describe_counter!(
        "dash_requests_rejected_total",
        Unit::Count,
        "Webhook requests refused, by reason (the error code)."
    );
    describe_counter!("dash_events_stored_total", Unit::Count, "Events committed to the store (new, not duplicates).");
    describe_counter!("dash_events_duplicate_total", Unit::Count, "Events whose id was already stored.");
    describe_counter!(
        "dash_events_set_aside_total",
        Unit::Count,
        "Events the store refused for their data, kept in events_set_aside."
    );
    describe_counter!("dash_store_errors_total", Unit::Count, "Failed batch writes (retried).");
    describe_counter!("dash_actor_restarts_total", Unit::Count, "Buffer actors restarted after a panic.");
    describe_counter!(
        "dash_intake_log_corrupt_total",
        Unit::Count,
        "Damaged stretches of acknowledged intake log data found (each kept in the quarantine)."
    );
    describe_counter!(
        "dash_intake_log_damaged_bytes_total",
        Unit::Bytes,
        "Acknowledged intake log bytes that failed their checksum and could not be stored."
    );
    describe_counter!(
        "dash_intake_log_unreadable_total",
        Unit::Count,
        "Acknowledged requests in the intake log this release cannot read, kept in the quarantine."
    );
    describe_counter!(
        "dash_intake_log_torn_bytes_total",
        Unit::Bytes,
        "Bytes of writes cut short by a stop, cut from a log tail at start (never acknowledged)."
    );
    describe_gauge!("dash_buffer_backlog", Unit::Count, "Unflushed events per partition.");
    describe_gauge!("dash_intake_log_bytes", Unit::Bytes, "Unflushed intake log bytes across partitions.");
    describe_histogram!("dash_flush_duration_seconds", Unit::Seconds, "From a batch's first event to its commit.");
    describe_histogram!("dash_flush_batch_size", Unit::Count, "Events per committed batch.");
    // HTTP.
    describe_counter!("dash_http_accept_errors_total", Unit::Count, "Failed accepts (out of file descriptors, say).");
    describe_counter!(
        "dash_http_connections_evicted_total",
        Unit::Count,
        "Idle connections closed to make room for a new one at the connection cap."
    );
    describe_counter!(
        "dash_http_connections_refused_total",
        Unit::Count,
        "Connections refused with 503 at the connection cap."
    );
    describe_counter!("dash_http_panics_total", Unit::Count, "Request handlers that panicked (answered 500).");
    describe_counter!(
        "dash_http_client_connections_refused_total",
        Unit::Count,
        "Connections refused (503) because their client held its share (DASH_MAX_CONNECTIONS_PER_CLIENT)."
    );
    describe_counter!(
        "dash_http_write_timeouts_total",
        Unit::Count,
        "Connections closed because the client took no byte of what it was sent for DASH_WRITE_TIMEOUT."
    );
    describe_counter!(
        "dash_auth_failures_total",
        Unit::Count,
        "Failed authentications counted by the throttle (wrong webhook credentials, wrong admin token)."
    );
    describe_counter!(
        "dash_auth_throttled_total",
        Unit::Count,
        "Times a client was throttled (429) for too many failed authentications."
    );
    describe_counter!(
        "dash_webhook_refused_total",
        Unit::Count,
        "Webhook deliveries refused for their credentials, by reason (missing_signature, bad_signature, stale_timestamp, bad_token)."
    );
    // Counters without labels exist from the start, at 0, with their help text.
    metrics::counter!("dash_auth_failures_total").absolute(0);
    metrics::counter!("dash_auth_throttled_total").absolute(0);
    metrics::counter!("dash_http_write_timeouts_total").absolute(0);
    metrics::counter!("dash_http_client_connections_refused_total").absolute(0);
    // Bus, live, cluster, edge.
    describe_counter!("dash_bus_publish_dropped_total", Unit::Count, "Updates not published (broker away or slow).");
    describe_counter!("dash_bus_bad_messages_total", Unit::Count, "Bus messages that could not be decoded.");
    describe_counter!("dash_live_bus_lagged_total", Unit::Count, "Times the live hub fell behind the bus.");
    describe_counter!("dash_live_frames_dropped_total", Unit::Count, "Live frames dropped for slow clients.");
    describe_gauge!("dash_live_connections", Unit::Count, "Open /live WebSocket sessions.");
    describe_counter!(
        "dash_live_refused_total",
        Unit::Count,
        "/live upgrades refused: the client held its share of sessions."
    );
    describe_counter!("dash_cluster_node_down_total", Unit::Count, "Nodes seen going down.");
    describe_gauge!("dash_cluster_nodes_up", Unit::Count, "Nodes heard from recently.");
    describe_counter!("dash_discovery_failures_total", Unit::Count, "Failed DNS lookups of peers.");
    describe_gauge!("dash_discovery_peers", Unit::Count, "Peers the last DNS lookup found.");
    describe_counter!("dash_edge_forwarded_total", Unit::Count, "Webhooks a web node forwarded, by outcome.");
    describe_counter!("dash_edge_attempt_failures_total", Unit::Count, "Forwarding attempts that failed.");
    describe_histogram!("dash_edge_forward_seconds", Unit::Seconds, "Time to forward a webhook to an ingestor.");
    // Jobs and sources.
    describe_counter!("dash_jobs_enqueued_total", Unit::Count, "Jobs enqueued.");
    describe_counter!("dash_jobs_runs_total", Unit::Count, "Jobs run, by kind and outcome.");
    describe_counter!("dash_jobs_worker_restarts_total", Unit::Count, "Job workers restarted.");
    describe_histogram!("dash_jobs_run_seconds", Unit::Seconds, "Job run time.");
    describe_counter!("dash_source_polls_total", Unit::Count, "Source polls, by outcome.");
    describe_counter!("dash_source_attempt_failures_total", Unit::Count, "Failed attempts within source polls.");
    describe_counter!("dash_source_events_total", Unit::Count, "Events read by source polls.");
    describe_histogram!("dash_source_poll_seconds", Unit::Seconds, "Source poll time.");
    describe_gauge!("dash_jobs_queue_depth", Unit::Count, "Jobs pending and running across the cluster, by state.");

    // Views.
    describe_counter!("dash_view_backfill_events_total", Unit::Count, "Events counted into views' histories.");
    describe_counter!(
        "dash_view_states_skipped_total",
        Unit::Count,
        "View states of a newer release left alone (a rolling upgrade under way)."
    );
    describe_histogram!(
        "dash_view_history_lock_seconds",
        Unit::Seconds,
        "How long a step of a view's history holds its pipeline's lock (its merge)."
    );
    describe_counter!(
        "dash_view_rollup_states_total",
        Unit::Count,
        "View states rolled into their views' hours, days and all-groups levels."
    );
    describe_histogram!(
        "dash_view_rollup_lock_seconds",
        Unit::Seconds,
        "How long a rollup step of a view's levels holds its pipeline's lock."
    );

    describe_gauge!("dash_node_info", "This node's role, region and id (always 1).");
    describe_gauge!(
        "dash_memory_limit_bytes",
        Unit::Bytes,
        "Memory this node may use (its cgroup's limit, else the machine's)."
    );
    describe_gauge!("dash_cpu_limit_cores", Unit::Count, "CPU cores this node may use (its cgroup's quota counts).");
    describe_gauge!("dash_store_up", "1 while batches reach the store, 0 while they fail.");
    describe_gauge!("dash_intake_spool_limit_bytes", Unit::Bytes, "The intake log's bound (DASH_SPOOL_MAX).");
    describe_gauge!("dash_bus_connected", "1 while NATS is connected (nodes on NATS only).");
    describe_histogram!(
        "dash_bus_round_trip_seconds",
        Unit::Seconds,
        "This node's heartbeat from publication until it comes back through NATS."
    );
    describe_counter!(
        "dash_http_requests_total",
        Unit::Count,
        "HTTP requests answered, by route pattern, method and status."
    );
    describe_histogram!(
        "dash_http_request_duration_seconds",
        Unit::Seconds,
        "HTTP request time until the answer's head, by route pattern."
    );
    metrics_process::Collector::default().describe();
}
