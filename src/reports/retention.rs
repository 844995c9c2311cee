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
/// How long a delivered or failed outbound webhook message stays listed in
/// `/api/webhooks/{id}/messages` (and can be redelivered).
pub const MESSAGE_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// How often pruning runs while the gateway is up.
pub const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// What one pass forgot.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    pub webhook_answers: usize,
    pub report_jobs: usize,
    pub messages: usize,
}

/// One pass at `now` (Unix seconds). Blocking.
pub fn prune(index: &Index, now: u64) -> Result<Pruned, crate::index::Error> {
    let webhook_answers = index.prune_webhooks(now.saturating_sub(WEBHOOK_RETENTION.as_secs()))?;
    let report_jobs =
        index.prune_finished_report_jobs(now.saturating_sub(REPORT_RETENTION.as_secs()))?;
    let messages = index.prune_messages(
        now.saturating_sub(MESSAGE_RETENTION.as_secs())
            .saturating_mul(1000),
    )?;
    let pruned = Pruned {
        webhook_answers,
        report_jobs,
        messages,
    };
    if pruned != Pruned::default() {
        tracing::info!(
            webhook_answers,
            report_jobs,
            messages,
            "forgot webhook answers, finished report jobs and outbound messages older than their retention"
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
    tracing::debug!(
        task = "pruner",
        every_s = PRUNE_EVERY.as_secs(),
        "pruner started"
    );
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::{ReportJob, ReportState, StoredAnswer};

    const DAY: u64 = 24 * 3600;

    fn job(id: &str, received_at: u64, state: ReportState) -> ReportJob {
        ReportJob::for_test(id, received_at, state)
    }

    #[test]
    fn a_pass_forgets_what_is_past_its_retention_and_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path()).unwrap();
        let now = 100 * DAY;
        for (id, age, state) in [
            ("stored_8d", 8 * DAY, ReportState::Stored),
            ("failed_8d", 8 * DAY, ReportState::Failed),
            ("pending_8d", 8 * DAY, ReportState::Pending),
            ("stored_6d", 6 * DAY, ReportState::Stored),
        ] {
            index.add_report_job(&job(id, now - age, state)).unwrap();
        }
        for (id, age) in [("msg_8d", 8 * DAY), ("msg_1d", DAY)] {
            let answer = StoredAnswer {
                at: now - age,
                status: 200,
                body: serde_json::json!({}),
                event: None,
            };
            index.remember_webhook(id, &answer, true).unwrap();
        }
        assert_eq!(
            prune(&index, now).unwrap(),
            Pruned {
                webhook_answers: 1,
                report_jobs: 2,
                messages: 0,
            }
        );
        let left: Vec<_> = index
            .report_jobs()
            .unwrap()
            .into_iter()
            .map(|j| j.report.report_id)
            .collect();
        assert_eq!(left, ["pending_8d", "stored_6d"]);
        assert!(index.webhook_answer("msg_8d").unwrap().is_none());
        assert!(index.webhook_answer("msg_1d").unwrap().is_some());
        // Two days on, the six-day-old job goes too.
        assert_eq!(prune(&index, now + 2 * DAY).unwrap().report_jobs, 1);
    }
}
