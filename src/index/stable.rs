//! Which studies are still changing, kept in the index so `study.stable`
//! survives a restart: `v1/unstable` maps a study to the Unix milliseconds
//! of its last change (written by ingest in the batch's transaction), and
//! `v1/stable` to the version of its last `study.stable` event.
//!
//! A study is told stable by one transaction that checks its last change is
//! still the one the caller saw, removes it from `v1/unstable`, counts the
//! version up and queues the event: a study that changed meanwhile is left
//! for later, and no restart can tell it twice or forget it.

use super::*;
use crate::outbound::Event;

/// What [`Index::fire_stable`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum StableOutcome {
    /// Told stable with this version; `queued` messages.
    Fired { version: u64, queued: usize },
    /// The study changed since the caller looked: not yet.
    Changed,
    /// The study is no longer indexed; forgotten.
    Gone,
}

/// Marks `study` as changed at `now_ms`.
pub(super) fn touch(unstable: &impl Kv, study: &Uid, now_ms: u64) -> TxResult<()> {
    unstable.insert(study.as_str().as_bytes(), &now_ms.to_be_bytes()[..])?;
    Ok(())
}

fn millis(key: &[u8], raw: &[u8]) -> Result<u64> {
    let bytes: [u8; 8] = raw.try_into().map_err(|_| Error::BadKey {
        key: String::from_utf8_lossy(key).into_owned(),
    })?;
    Ok(u64::from_be_bytes(bytes))
}

impl Index {
    /// Every study not yet told stable since it last changed, with the Unix
    /// milliseconds of that change.
    pub fn unstable_studies(&self) -> Result<Vec<(Uid, u64)>> {
        self.unstable
            .iter()
            .map(|kv| {
                let (k, v) = kv.map_err(db_err("scan unstable studies"))?;
                let study = std::str::from_utf8(&k)
                    .ok()
                    .and_then(|s| Uid::parse(s).ok())
                    .ok_or_else(|| Error::BadKey {
                        key: String::from_utf8_lossy(&k).into_owned(),
                    })?;
                Ok((study, millis(&k, &v)?))
            })
            .collect()
    }

    /// Tells `study` stable if it has not changed since `changed_ms`:
    /// `instances` are its instances as the caller read them (for the
    /// event's counts). Durable when it returns if it queued messages. Blocking.
    pub fn fire_stable(
        &self,
        study: &Uid,
        changed_ms: u64,
        now_ms: u64,
        instances: &[InstanceRecord],
    ) -> Result<StableOutcome> {
        let subscriptions = self.subscriptions_snapshot();
        let routes = self.forward_routes_snapshot();
        let key = study.as_str().as_bytes();
        let mut forwarded = 0;
        let outcome = (
            &self.unstable,
            &self.stable,
            &self.studies,
            &self.outbox,
            &self.forward,
        )
            .transaction(|(unstable, stable, studies, outbox, forward)| {
                match unstable.get(key)? {
                    Some(v) if v.as_ref() == changed_ms.to_be_bytes() => {}
                    _ => return Ok((StableOutcome::Changed, 0)),
                }
                unstable.remove(key)?;
                let Some(record) = studies.get(key)? else {
                    return Ok((StableOutcome::Gone, 0));
                };
                let record: StudyRecord = tx_decode(key, &record)?;
                let version = match stable.get(key)? {
                    Some(v) => millis(key, &v).map_err(ConflictableTransactionError::Abort)? + 1,
                    None => 1,
                };
                stable.insert(key, &version.to_be_bytes())?;
                let event = Event::study_stable(now_ms, version, &record, instances);
                let queued = outbox::emit(outbox, &self.node, &subscriptions, event)?;
                // `study_stable` forwarding rules: the study's instances are
                // queued with the event, or neither is.
                let n = forward::enqueue_stable(forward, &routes, instances, version, now_ms)?;
                Ok((StableOutcome::Fired { version, queued }, n))
            })
            .map(|(outcome, n)| {
                forwarded = n;
                outcome
            })
            .map_err(tx_error)?;
        // Durable before it is delivered; with nobody to tell, the version
        // rides on the next flush (a crash before it only tells nobody
        // again).
        if matches!(outcome, StableOutcome::Fired { queued: 1.., .. }) || forwarded > 0 {
            self.flush()?;
        }
        if forwarded > 0 {
            self.forward_queued();
        }
        if let StableOutcome::Fired { queued: 1.., .. } = outcome {
            self.outbox_wake.notify_one();
        }
        Ok(outcome)
    }

    /// Forgets that `study` is changing, without telling anyone, if it has
    /// not changed since `changed_ms` (another gateway received a later
    /// instance and tells it).
    pub fn forget_unstable(&self, study: &Uid, changed_ms: u64) -> Result<bool> {
        let key = study.as_str().as_bytes();
        let swapped = self
            .unstable
            .compare_and_swap(
                key,
                Some(&changed_ms.to_be_bytes()[..]),
                None as Option<&[u8]>,
            )
            .map_err(db_err("forget unstable study"))?
            .is_ok();
        Ok(swapped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(study: &str, sop: &str) -> NewEntry {
        NewEntry::Instance(Box::new(NewInstance {
            record: InstanceRecord::for_test(study, &format!("{study}.1"), sop),
            study: StudyTags::default(),
        }))
    }

    #[test]
    fn a_study_is_told_stable_once_per_quiet_spell_with_rising_versions() {
        let dir = tempfile::tempdir().unwrap();
        let study = Uid::parse("1.2.3").unwrap();
        let changed = {
            let index = Index::open(dir.path()).unwrap();
            index.put_batch(&[instance("1.2.3", "1.2.3.1.1")]).unwrap();
            let unstable = index.unstable_studies().unwrap();
            assert_eq!(unstable.len(), 1);
            unstable[0].1
        };
        // Across a restart.
        let index = crate::index::tests::reopen(dir.path());
        let unstable = index.unstable_studies().unwrap();
        assert_eq!(unstable, vec![(study.clone(), changed)]);
        assert_eq!(
            index.fire_stable(&study, changed - 1, 0, &[]).unwrap(),
            StableOutcome::Changed
        );
        assert_eq!(
            index.fire_stable(&study, changed, 0, &[]).unwrap(),
            StableOutcome::Fired {
                version: 1,
                queued: 0
            }
        );
        assert!(index.unstable_studies().unwrap().is_empty());
        assert_eq!(
            index.fire_stable(&study, changed, 0, &[]).unwrap(),
            StableOutcome::Changed,
            "told once"
        );
        index.put_batch(&[instance("1.2.3", "1.2.3.1.2")]).unwrap();
        let (_, again) = index.unstable_studies().unwrap()[0].clone();
        assert!(matches!(
            index.fire_stable(&study, again, 0, &[]).unwrap(),
            StableOutcome::Fired { version: 2, .. }
        ));

        index.put_batch(&[instance("1.2.3", "1.2.3.1.3")]).unwrap();
        let (_, third) = index.unstable_studies().unwrap()[0].clone();
        assert!(index.forget_unstable(&study, third).unwrap());
        assert!(index.unstable_studies().unwrap().is_empty());
    }
}
