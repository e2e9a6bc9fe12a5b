//! `GET /metrics` in the Prometheus text format. Messages, deliveries, attempts and their latency
//! are read from the database at scrape time, so those numbers are the cluster's, not one node's,
//! and survive restarts; refusals and intake time leave no row and are this node's, in memory.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::Extension;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use crate::db::Histogram;
use crate::http::{ApiError, Caller, ErrorBody, HttpState};

#[utoipa::path(
    get,
    path = "/metrics",
    tag = "health",
    summary = "Prometheus metrics (admin)",
    responses(
        (status = 200, description = "Prometheus text format", content_type = "text/plain", body = String),
        (status = 401, description = "Missing or invalid key", body = ErrorBody),
        (status = 403, description = "Needs an admin key", body = ErrorBody),
    ),
)]
pub async fn metrics(
    State(state): State<Arc<HttpState>>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    // The numbers span every inbox, so a per-inbox key may not read them.
    caller.require_admin()?;
    let snapshot = state.db.metrics().await?;
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    };
    family(
        "mxhook_messages_accepted_total",
        "counter",
        "Messages accepted (250) and stored, per inbox.",
    );
    for (inbox, n) in &snapshot.messages_by_inbox {
        let _ = writeln!(
            out,
            "mxhook_messages_accepted_total{{inbox=\"{}\"}} {n}",
            label(inbox)
        );
    }
    out.push_str(
        "# HELP mxhook_deliveries Delivery jobs by current status; pending is the queue depth.\n\
         # TYPE mxhook_deliveries gauge\n",
    );
    for status in ["pending", "delivered", "dead"] {
        let n = count(&snapshot.deliveries_by_status, status);
        let _ = writeln!(out, "mxhook_deliveries{{status=\"{status}\"}} {n}");
    }
    let _ = writeln!(
        out,
        "# HELP mxhook_queue_depth Delivery jobs waiting to be attempted.\n\
         # TYPE mxhook_queue_depth gauge\nmxhook_queue_depth {}",
        count(&snapshot.deliveries_by_status, "pending")
    );
    out.push_str(
        "# HELP mxhook_delivery_attempts_total Webhook attempts by outcome.\n\
         # TYPE mxhook_delivery_attempts_total counter\n",
    );
    for (outcome, n) in &snapshot.attempts_by_outcome {
        let _ = writeln!(
            out,
            "mxhook_delivery_attempts_total{{outcome=\"{}\"}} {n}",
            label(outcome)
        );
    }
    histogram(
        &mut out,
        "mxhook_delivery_attempt_duration_seconds",
        "Webhook request latency, per attempt that sent a request.",
        &snapshot.attempt_latency,
    );
    histogram(
        &mut out,
        "mxhook_delivery_latency_seconds",
        "From the commit that accepted a message to its event's delivery, per delivered job \
         (retries included).",
        &snapshot.delivery_latency,
    );
    let intake = state.counters.intake_histogram();
    histogram(
        &mut out,
        "mxhook_intake_duration_seconds",
        "From the end of DATA to the reply, per message this node took in (in memory, since \
         this node started).",
        &Histogram {
            buckets_ms: intake
                .buckets
                .iter()
                .map(|(bound, n)| {
                    (
                        i64::try_from(*bound).unwrap_or(i64::MAX),
                        i64::try_from(*n).unwrap_or(i64::MAX),
                    )
                })
                .collect(),
            sum_ms: i64::try_from(intake.sum.as_millis()).unwrap_or(i64::MAX),
            count: i64::try_from(intake.count).unwrap_or(i64::MAX),
        },
    );
    out.push_str(
        "# HELP mxhook_messages_rejected_total Recipients and messages this node refused or \
         deferred, by reason (in memory, since this node started).\n\
         # TYPE mxhook_messages_rejected_total counter\n",
    );
    for (reason, n) in state.counters.rejected() {
        let _ = writeln!(
            out,
            "mxhook_messages_rejected_total{{reason=\"{reason}\"}} {n}"
        );
    }
    out.push_str(
        "# HELP mxhook_ingress_unauthorized_total Provider webhooks this node refused as \
         unauthenticated (401), by provider.\n\
         # TYPE mxhook_ingress_unauthorized_total counter\n",
    );
    for (provider, n) in state.counters.ingress_unauthorized() {
        let _ = writeln!(
            out,
            "mxhook_ingress_unauthorized_total{{provider=\"{provider}\"}} {n}"
        );
    }
    out.push_str(
        "# HELP mxhook_lifecycle_total Messages erased on request and removed by retention, \
         pruner runs, and raw objects left for check-store because removing them failed \
         (in memory, since this node started).\n\
         # TYPE mxhook_lifecycle_total counter\n",
    );
    for (what, n) in state.lifecycle.counters.snapshot() {
        let _ = writeln!(out, "mxhook_lifecycle_total{{what=\"{what}\"}} {n}");
    }
    out.push_str(
        "# HELP mxhook_db_statements_total Statements this node ran on each critical path \
         (BEGIN and COMMIT included): accepted messages (accept), rate-limit counts (rate), claims \
         of due jobs (claim) and attempt records (attempt) (in memory, since this node started).\n\
         # TYPE mxhook_db_statements_total counter\n",
    );
    for (path, n) in crate::db::statement_counts() {
        let _ = writeln!(
            out,
            "mxhook_db_statements_total{{path=\"{}\"}} {n}",
            path.as_str()
        );
    }
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response())
}

/// One histogram family in the text format, bounds in seconds.
fn histogram(out: &mut String, name: &str, help: &str, histogram: &Histogram) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    for (bound_ms, n) in &histogram.buckets_ms {
        let seconds = *bound_ms as f64 / 1000.0;
        let _ = writeln!(out, "{name}_bucket{{le=\"{seconds}\"}} {n}");
    }
    let _ = writeln!(
        out,
        "{name}_bucket{{le=\"+Inf\"}} {count}\n{name}_sum {sum}\n{name}_count {count}",
        count = histogram.count,
        sum = histogram.sum_ms as f64 / 1000.0,
    );
}

fn count(pairs: &[(String, i64)], key: &str) -> i64 {
    pairs
        .iter()
        .find(|(label, _)| label == key)
        .map_or(0, |(_, n)| *n)
}

/// Escapes a label value (Prometheus text format: backslash, quote, newline).
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
