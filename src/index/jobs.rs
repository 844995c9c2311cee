//! What the store cannot rebuild: report jobs, webhook answers, Avara study
//! pairings.

use super::*;

/// An answer given to a webhook delivery.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StoredAnswer {
    /// Unix seconds when it was first answered (for pruning, and as the
    /// signing time when the answer is recomputed).
    pub at: u64,
    pub status: u16,
    /// The answer, or `null` when it is recomputed from `event`.
    #[serde(default)]
    pub body: serde_json::Value,
    /// Set for read-only events whose answer is large (signed URLs): the
    /// event itself, so a repeat is answered by computing it again at `at`,
    /// which gives the same URLs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<serde_json::Value>,
}

impl Index {
    /// Records a report job durably, unless one with this report id exists
    /// (a redelivery); returns the job as it stands.
    pub fn add_report_job(&self, job: &ReportJob) -> Result<ReportJob> {
        let id = job.report.report_id.as_str();
        let previous = self
            .reports
            .compare_and_swap(id, None as Option<&[u8]>, Some(encode(job)))
            .map_err(db_err("write report job"))?;
        self.flush()?;
        match previous {
            Ok(()) => Ok(job.clone()),
            Err(conflict) => decode(
                id.as_bytes(),
                &conflict.current.expect("present on conflict"),
            ),
        }
    }

    /// Updates a report job, durably. A job that fails here tells the
    /// subscriptions that want `report.failed`, in the same transaction
    /// (`report.stored` goes with the report's media entry).
    pub fn put_report_job(&self, job: &ReportJob) -> Result<()> {
        use sled::Transactional;
        let subscriptions = self.subscriptions_snapshot();
        let key = job.report.report_id.as_bytes();
        let value = encode(job);
        let failed = job.state == ReportState::Failed;
        let queued = (&self.reports, &self.outbox)
            .transaction(|(reports, outbox)| {
                let previous = reports.insert(key, value.clone())?;
                let was_failed = match previous {
                    Some(old) => tx_decode::<ReportJob>(key, &old)?.state == ReportState::Failed,
                    None => false,
                };
                if failed && !was_failed {
                    let event = crate::outbound::Event::report_failed(outbox::now_ms(), job);
                    return outbox::emit(outbox, &self.node, &subscriptions, event);
                }
                Ok(0)
            })
            .map_err(tx_error)?;
        self.flush()?;
        if queued > 0 {
            self.outbox_wake.notify_one();
        }
        Ok(())
    }

    /// Every report job, by report id.
    pub fn report_jobs(&self) -> Result<Vec<ReportJob>> {
        decode_all(self.reports.iter(), "list report jobs")
    }

    /// The answer already given to this `webhook-id`, if any.
    pub fn webhook_answer(&self, id: &str) -> Result<Option<StoredAnswer>> {
        match self.webhooks.get(id).map_err(db_err("read webhook"))? {
            Some(v) => decode(id.as_bytes(), &v).map(Some),
            None => Ok(None),
        }
    }

    /// Records the answer to a webhook delivery (durably when `durable`: the
    /// event had a side effect). If another delivery of the same id got there
    /// first, its answer wins and is returned.
    pub fn remember_webhook(
        &self,
        id: &str,
        answer: &StoredAnswer,
        durable: bool,
    ) -> Result<StoredAnswer> {
        let previous = self
            .webhooks
            .compare_and_swap(id, None as Option<&[u8]>, Some(encode(answer)))
            .map_err(db_err("write webhook"))?;
        if durable {
            self.flush()?;
        }
        match previous {
            Ok(()) => Ok(answer.clone()),
            Err(conflict) => decode(
                id.as_bytes(),
                &conflict.current.expect("present on conflict"),
            ),
        }
    }

    /// Forgets webhook answers first given before `before` (Unix seconds).
    pub fn prune_webhooks(&self, before: u64) -> Result<usize> {
        let mut pruned = 0;
        for kv in self.webhooks.iter() {
            let (k, v) = kv.map_err(db_err("scan webhooks"))?;
            let answer: StoredAnswer = decode(&k, &v)?;
            if answer.at < before {
                self.webhooks.remove(&k).map_err(db_err("prune webhooks"))?;
                pruned += 1;
            }
        }
        self.flush()?;
        Ok(pruned)
    }

    /// Remembers that Avara's `study_id` is this Study Instance UID.
    pub fn pair_avara_study(&self, study_id: &str, study: &Uid) -> Result<()> {
        let old = self
            .avara_studies
            .insert(study_id, study.as_str())
            .map_err(db_err("pair study"))?;
        if old.as_deref() != Some(study.as_str().as_bytes()) {
            self.flush()?;
        }
        Ok(())
    }

    /// The Study Instance UID paired with Avara's `study_id`.
    pub fn avara_study(&self, study_id: &str) -> Result<Option<Uid>> {
        let Some(v) = self
            .avara_studies
            .get(study_id)
            .map_err(db_err("read pairing"))?
        else {
            return Ok(None);
        };
        Ok(std::str::from_utf8(&v)
            .ok()
            .and_then(|s| Uid::parse(s).ok()))
    }
}
