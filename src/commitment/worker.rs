//! Delivers the reports owed on new associations: requests whose
//! requester's association ended before a successful N-EVENT-REPORT-RSP,
//! and every pending request found at start-up (the gateway was stopped or
//! killed in between). The first new-association attempt is immediate;
//! each failure waits the next step of the schedule
//! (`storage_commitment_retry`), and after the last the request is failed.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::deliver::{self, Settings};
use super::{Commitments, KEEP_FINISHED, Record, State, now_ms};
use crate::config::Config;

/// Checked at least this often even when nothing wakes the worker.
const IDLE: Duration = Duration::from_secs(60);

/// Runs until `stop` fires.
pub async fn run(
    commitments: Arc<Commitments>,
    cfg: Arc<Config>,
    schedule: Vec<Duration>,
    stop: CancellationToken,
) {
    let settings = Settings {
        ae_title: cfg.ae_title.clone(),
        max_pdu_length: cfg.max_pdu_length,
        timeout: cfg.read_timeout(),
        // Checked at start (tls::check); a CA that has become unreadable
        // since leaves TLS requesters failing with that reason.
        tls: crate::tls::TlsClient::from_config(&cfg).unwrap_or_else(|e| {
            tracing::error!(error = %e, "storage commitment: no TLS client");
            None
        }),
    };
    let mut first_pass = true;
    loop {
        // A delivery under way when `stop` fires is dropped (its association
        // closes); the request stays pending for the next start, so the
        // requester may get the report twice, never not at all.
        let passed = tokio::select! {
            passed = pass(&commitments, &cfg, &schedule, &settings, first_pass, &stop) => passed,
            () = stop.cancelled() => return,
        };
        let wait = match passed {
            Ok(wait) => wait,
            Err(e) => {
                tracing::error!(error = %e, "storage commitment worker: cannot read the index");
                IDLE
            }
        };
        first_pass = false;
        tokio::select! {
            () = stop.cancelled() => return,
            () = commitments.wake.notified() => {}
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// One look at every request; returns how long until the next is due.
async fn pass(
    c: &Arc<Commitments>,
    cfg: &Config,
    schedule: &[Duration],
    settings: &Settings,
    first_pass: bool,
    stop: &CancellationToken,
) -> Result<Duration, super::Error> {
    let index = c.index.clone();
    let records = tokio::task::spawn_blocking(move || index.commitments()).await??;
    let now = now_ms();
    let mut next = IDLE;
    // Requesters whose association failed in this pass, and why.
    let mut down: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    for mut record in records {
        if stop.is_cancelled() {
            break;
        }
        let keep_ms = u64::try_from(KEEP_FINISHED.as_millis()).unwrap_or(u64::MAX);
        match record.state {
            State::Delivered | State::Failed => {
                if record.received_at.saturating_add(keep_ms) < now {
                    let index = c.index.clone();
                    let (who, tx) = (record.requester.clone(), record.transaction_uid.clone());
                    tokio::task::spawn_blocking(move || index.delete_commitment(&who, &tx))
                        .await??;
                }
                continue;
            }
            // A restart may find the requester configured now.
            State::Undeliverable if first_pass && cfg.dicom_node(&record.requester).is_some() => {
                record.state = State::Pending;
                record.next_attempt_at = now;
            }
            State::Undeliverable => continue,
            State::Pending => {}
        }
        if c.is_claimed(&record.requester, &record.transaction_uid) {
            continue;
        }
        if record.next_attempt_at > now {
            next = next.min(Duration::from_millis(record.next_attempt_at - now));
            continue;
        }
        // Read again: the requester's association may have delivered it
        // since the list was read (its claim is gone by now).
        let index = c.index.clone();
        let (who, tx) = (record.requester.clone(), record.transaction_uid.clone());
        let fresh = tokio::task::spawn_blocking(move || index.commitment(&who, &tx)).await??;
        let Some(mut fresh) = fresh else { continue };
        if matches!(fresh.state, State::Delivered | State::Failed) {
            continue;
        }
        // Pending, or undeliverable and revived above.
        fresh.state = State::Pending;
        fresh.next_attempt_at = record.next_attempt_at;
        // A requester that could not be reached in this pass is not tried
        // again for its other reports: each would wait out the connection
        // time-out, and every other modality's report behind it.
        let unreachable = down.get(fresh.requester.trim()).cloned();
        let record = attempt(c, cfg, schedule, settings, fresh, unreachable).await?;
        if record.state != State::Delivered {
            if let Some(error) = &record.last_error {
                down.entry(record.requester.trim().to_owned())
                    .or_insert_with(|| error.clone());
            }
        }
        if record.state == State::Pending {
            let due = record.next_attempt_at.saturating_sub(now_ms());
            next = next.min(Duration::from_millis(due));
        }
    }
    Ok(next)
}

/// One new-association delivery of `record`, and what follows from it;
/// the record as saved. With `unreachable` (the requester failed earlier in
/// this pass) the attempt counts as failed with that reason, untried.
async fn attempt(
    c: &Arc<Commitments>,
    cfg: &Config,
    schedule: &[Duration],
    settings: &Settings,
    mut record: Record,
    unreachable: Option<String>,
) -> Result<Record, super::Error> {
    if record.outcomes.is_none() {
        c.decide(&mut record).await;
    }
    let Some(node) = cfg.dicom_node(&record.requester) else {
        let error = format!(
            "calling AE {:?} is not in [[dicom_nodes]]: the report cannot be sent on a new association",
            record.requester
        );
        tracing::warn!(
            requester = %record.requester,
            transaction_uid = %record.transaction_uid,
            "storage commitment report undeliverable: {error}"
        );
        record.state = State::Undeliverable;
        record.last_error = Some(error);
        crate::metrics::get().commitment_report("undeliverable");
        save(c, &record).await?;
        return Ok(record);
    };
    record.attempts = record.attempts.saturating_add(1);
    record.new_association_attempts = record.new_association_attempts.saturating_add(1);
    let result = match unreachable {
        Some(error) => Err(format!(
            "not tried: the requester was unreachable just before ({error})"
        )),
        None => deliver::deliver(&record, node, settings)
            .await
            .map_err(|e| e.to_string()),
    };
    match result {
        Ok(()) => {
            tracing::info!(
                requester = %record.requester,
                address = %node.address(),
                transaction_uid = %record.transaction_uid,
                committed = record.committed,
                failed = record.failed,
                "storage commitment report delivered on a new association"
            );
            record.finish(State::Delivered);
            record.last_error = None;
            crate::metrics::get().commitment_report("delivered");
        }
        Err(error) => {
            let step = usize::try_from(record.new_association_attempts - 1).unwrap_or(usize::MAX);
            match schedule.get(step) {
                Some(wait) => {
                    tracing::warn!(
                        requester = %record.requester,
                        address = %node.address(),
                        transaction_uid = %record.transaction_uid,
                        attempt = record.new_association_attempts,
                        retry_in = %humantime::format_duration(*wait),
                        %error,
                        "storage commitment report not delivered; will retry"
                    );
                    let wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
                    record.next_attempt_at = now_ms().saturating_add(wait_ms);
                    crate::metrics::get().commitment_report("retry");
                }
                None => {
                    tracing::error!(
                        requester = %record.requester,
                        transaction_uid = %record.transaction_uid,
                        attempts = record.attempts,
                        %error,
                        "storage commitment report failed: every attempt of the schedule failed"
                    );
                    record.finish(State::Failed);
                    crate::metrics::get().commitment_report("failed");
                }
            }
            record.last_error = Some(error);
        }
    }
    save(c, &record).await?;
    Ok(record)
}

/// The worker's writes: never over a request the modality repeated while
/// this one was being delivered (that one is newer and reported on its own).
async fn save(c: &Commitments, record: &Record) -> Result<(), super::Error> {
    if !c.save_if_current(record).await? {
        tracing::info!(
            requester = %record.requester,
            transaction_uid = %record.transaction_uid,
            "storage commitment request repeated while its report was being delivered; the newer one stands"
        );
    }
    Ok(())
}
