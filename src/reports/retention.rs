//! Forgetting what the index keeps only for a while: webhook answers (kept
//! so a retried delivery gets the same answer) and finished report jobs
//! (kept so the operator sees how a delivery went). Without this the index
//! would grow with every event for as long as the gateway runs; pruning runs
//! at start-up and then every [`PRUNE_EVERY`].

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::index::Index;

/// How long a webhook answer is kept for repeated deliveries of the same
/// `webhook-id` (Standard Webhooks senders retry for about a day).
pub const WEBHOOK_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// How long a stored or failed report job stays listed in `/api/reports`.
pub const REPORT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// How often pruning runs while the gateway is up.
pub const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// What one pass forgot.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    pub webhook_answers: usize,
    pub report_jobs: usize,
}

/// One pass at `now` (Unix seconds). Blocking.
pub fn prune(index: &Index, now: u64) -> Result<Pruned, crate::index::Error> {
    let webhook_answers = index.prune_webhooks(now.saturating_sub(WEBHOOK_RETENTION.as_secs()))?;
    let report_jobs =
        index.prune_finished_report_jobs(now.saturating_sub(REPORT_RETENTION.as_secs()))?;
    let pruned = Pruned {
        webhook_answers,
        report_jobs,
    };
    if pruned != Pruned::default() {
        tracing::info!(
            webhook_answers,
            report_jobs,
            "forgot webhook answers and finished report jobs older than their retention"
        );
    }
    Ok(pruned)
}

/// The `pruner` task: a pass every [`PRUNE_EVERY`] until `cancel` (the first
/// one an interval after start, which pruned already).
pub async fn run(index: Index, cancel: CancellationToken) {
    let mut ticks = tokio::time::interval(PRUNE_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await; // the first tick is immediate
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = cancel.cancelled() => return,
        }
        let index = index.clone();
        let pass = tokio::task::spawn_blocking(move || prune(&index, super::unix_now())).await;
        match pass {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!(task = "pruner", error = %e, "pruning the index failed"),
            Err(e) => tracing::error!(task = "pruner", error = %e, "pruning the index panicked"),
        }
    }
}
