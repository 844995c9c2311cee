//! Forgetting finished report jobs (the policy, how old is old, lives in
//! `crate::reports::retention`).

use super::{Index, ReportJob, ReportState, Result, db_err, decode};

impl Index {
    /// Forgets report jobs that are finished (stored, or failed for good)
    /// and were received before `before` (Unix seconds); a job still pending
    /// is kept whatever its age (the worker finishes it first). A job that
    /// changes while this runs is left for the next pass. Returns how many
    /// were forgotten. Blocking.
    pub fn prune_finished_report_jobs(&self, before: u64) -> Result<usize> {
        let mut pruned = 0;
        for kv in self.reports.iter() {
            let (k, v) = kv.map_err(db_err("scan report jobs"))?;
            let job: ReportJob = decode(&k, &v)?;
            if job.state == ReportState::Pending || job.received_at >= before {
                continue;
            }
            let swapped = self
                .reports
                .compare_and_swap(&k, Some(&v), None as Option<&[u8]>)
                .map_err(db_err("prune report jobs"))?;
            if swapped.is_ok() {
                pruned += 1;
            }
        }
        if pruned > 0 {
            self.flush()?;
        }
        Ok(pruned)
    }
}

#[cfg(test)]
mod tests {
    use crate::index::{Index, ReportJob, ReportState};

    fn job(id: &str, received_at: u64, state: ReportState) -> ReportJob {
        ReportJob::for_test(id, received_at, state)
    }

    #[test]
    fn only_finished_report_jobs_older_than_the_cutoff_are_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path()).unwrap();
        for j in [
            job("old_stored", 100, ReportState::Stored),
            job("old_failed", 199, ReportState::Failed),
            job("old_pending", 50, ReportState::Pending),
            job("new_stored", 200, ReportState::Stored),
            job("new_failed", 300, ReportState::Failed),
        ] {
            index.add_report_job(&j).unwrap();
        }
        assert_eq!(index.prune_finished_report_jobs(200).unwrap(), 2);
        let left: Vec<String> = index
            .report_jobs()
            .unwrap()
            .into_iter()
            .map(|j| j.report.report_id)
            .collect();
        assert_eq!(left, ["new_failed", "new_stored", "old_pending"]);
        // Nothing more to forget at the same cutoff; the rest goes later,
        // except what is still pending.
        assert_eq!(index.prune_finished_report_jobs(200).unwrap(), 0);
        assert_eq!(index.prune_finished_report_jobs(u64::MAX).unwrap(), 2);
        assert_eq!(index.report_jobs().unwrap().len(), 1);
        // Survives reopening: the removal was flushed.
        drop(index);
        let index = crate::index::tests::reopen(dir.path());
        assert_eq!(
            index.report_jobs().unwrap()[0].report.report_id,
            "old_pending"
        );
    }
}
