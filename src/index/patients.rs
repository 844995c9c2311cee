//! `v1/patients`: which studies belong to a patient, so prior studies are one
//! prefix scan rather than a read of every study.
//!
//! A patient is the pair (Issuer of Patient ID, Patient ID): the same ID
//! issued by two hospitals is two people, so an absent issuer matches only
//! an absent issuer. Key: `<issuer> 0x00 <patient id> 0x00 <study>` (an
//! absent issuer is empty). Values are never stored with a NUL inside (the
//! key could then be read two ways): such a study is simply not listed,
//! which can only hide a prior, never show a stranger's.

use super::{Index, Kv, Result, StudyRecord, TxResult, db_err, decode, tx_decode};
use crate::uid::Uid;

/// Marks a tree that was filled from the study records (indexes from
/// before this tree existed). No key made from UTF-8 text starts with 0xFF.
const BACKFILLED: &[u8] = &[0xff];

/// `<issuer> 0x00 <patient id> 0x00`, the prefix of a patient's studies;
/// `None` when there is no patient ID to match on.
fn patient_prefix(issuer: Option<&str>, patient_id: Option<&str>) -> Option<Vec<u8>> {
    let id = patient_id.map(str::trim).filter(|s| !s.is_empty())?;
    let issuer = issuer.map(str::trim).unwrap_or("");
    if id.contains('\0') || issuer.contains('\0') {
        return None;
    }
    let mut key = Vec::with_capacity(issuer.len() + id.len() + 2);
    key.extend_from_slice(issuer.as_bytes());
    key.push(0);
    key.extend_from_slice(id.as_bytes());
    key.push(0);
    Some(key)
}

fn study_key(study: &StudyRecord) -> Option<Vec<u8>> {
    let t = &study.tags;
    let mut key = patient_prefix(t.issuer_of_patient_id.as_deref(), t.patient_id.as_deref())?;
    key.extend_from_slice(study.study_instance_uid.as_str().as_bytes());
    Some(key)
}

/// Keeps the tree in step with one study record, in the transaction that
/// writes it: `previous` is the record's old encoding (if any), `now` the
/// record written (`None` when it was removed).
pub(super) fn track(
    patients: &impl Kv,
    previous: Option<&[u8]>,
    now: Option<&StudyRecord>,
) -> TxResult<()> {
    let old = match previous {
        Some(bytes) => study_key(&tx_decode::<StudyRecord>(b"study", bytes)?),
        None => None,
    };
    let new = now.and_then(study_key);
    if old != new {
        if let Some(old) = old {
            patients.remove(&old)?;
        }
        if let Some(new) = &new {
            patients.insert(new.as_slice(), &[] as &[u8])?;
        }
    }
    Ok(())
}

impl Index {
    /// The studies of the patient with this Patient ID and Issuer of Patient
    /// ID (an absent issuer matches only an absent issuer), by UID.
    pub fn studies_of_patient(&self, issuer: Option<&str>, patient_id: &str) -> Result<Vec<Uid>> {
        let Some(prefix) = patient_prefix(issuer, Some(patient_id)) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for kv in self.patients.scan_prefix(&prefix) {
            let (key, _) = kv.map_err(db_err("scan patients"))?;
            let study = std::str::from_utf8(&key[prefix.len()..])
                .ok()
                .and_then(|s| Uid::parse(s).ok());
            if let Some(uid) = study {
                out.push(uid);
            }
        }
        Ok(out)
    }

    /// Fills the tree from the study records once, for an index written
    /// before the tree existed (or cleared for a rebuild). Blocking; at open.
    pub(super) fn backfill_patients(&self) -> Result<()> {
        let marked = self
            .patients
            .contains_key(BACKFILLED)
            .map_err(db_err("read patients"))?;
        if marked {
            return Ok(());
        }
        for kv in self.studies.iter() {
            let (k, v) = kv.map_err(db_err("list studies"))?;
            if let Some(key) = study_key(&decode::<StudyRecord>(&k, &v)?) {
                self.patients
                    .insert(key, &[] as &[u8])
                    .map_err(db_err("write patients"))?;
            }
        }
        self.patients
            .insert(BACKFILLED, &[] as &[u8])
            .map_err(db_err("write patients"))?;
        self.flush()
    }
}

#[cfg(test)]
mod tests;
