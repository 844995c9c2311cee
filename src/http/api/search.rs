//! Study search for the operator page: `GET /api/studies?q=…&limit=…`.
//!
//! A scan over the index's studies, one record at a time, keeping only the
//! `limit` most recently received matches (a bounded heap): memory is set by
//! `limit`, not by the size of the index. Every parameter is bounded in
//! length before it is used, and matching is plain case-insensitive
//! substring or prefix comparison, so a query costs linear time and nothing
//! more.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use serde::Deserialize;

use crate::index::StudyRecord;

/// Matches answered when no `limit` is given.
pub const DEFAULT_LIMIT: usize = 100;
/// The most a search answers at once.
pub const MAX_LIMIT: usize = 1000;
/// Longest parameter value accepted (a UID is 64; names are shorter).
const MAX_PARAM: usize = 128;
/// Words of `q` that each must match.
const MAX_WORDS: usize = 8;

/// The query string, as sent.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Params {
    /// Words that must each appear in the patient name, patient ID,
    /// accession number or study description, or start the Study UID.
    pub q: Option<String>,
    pub patient_name: Option<String>,
    pub patient_id: Option<String>,
    pub accession: Option<String>,
    /// The Study Instance UID, or its beginning.
    pub uid: Option<String>,
    /// Study date, `YYYYMMDD` or `YYYY-MM-DD`.
    pub date: Option<String>,
    /// First study date included.
    pub from: Option<String>,
    /// Last study date included.
    pub to: Option<String>,
    pub limit: Option<usize>,
}

impl Params {
    /// No parameter at all: the listing as it always was (every study, in
    /// UID order).
    pub fn is_empty(&self) -> bool {
        let Params {
            q,
            patient_name,
            patient_id,
            accession,
            uid,
            date,
            from,
            to,
            limit,
        } = self;
        [q, patient_name, patient_id, accession, uid, date, from, to]
            .iter()
            .all(|p| p.is_none())
            && limit.is_none()
    }
}

/// Why a query was refused: the parameter and what is wrong with it.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {reason}")]
pub struct Invalid {
    pub what: &'static str,
    pub reason: &'static str,
}

/// A checked query.
#[derive(Debug, Default)]
pub struct Filter {
    words: Vec<String>,
    patient_name: Option<String>,
    patient_id: Option<String>,
    accession: Option<String>,
    uid: Option<String>,
    from: Option<String>,
    to: Option<String>,
    pub limit: usize,
}

impl Filter {
    pub fn parse(p: &Params) -> Result<Filter, Invalid> {
        let text = |what: &'static str, v: &Option<String>| -> Result<Option<String>, Invalid> {
            match v.as_deref().map(str::trim) {
                None | Some("") => Ok(None),
                Some(v) if v.chars().count() > MAX_PARAM => Err(Invalid {
                    what,
                    reason: "longer than 128 characters",
                }),
                Some(v) => Ok(Some(fold(v))),
            }
        };
        let words: Vec<String> = text("q", &p.q)?
            .map(|q| q.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default();
        if words.len() > MAX_WORDS {
            return Err(Invalid {
                what: "q",
                reason: "more than 8 words",
            });
        }
        let date = |what: &'static str, v: &Option<String>| -> Result<Option<String>, Invalid> {
            let Some(v) = text(what, v)? else {
                return Ok(None);
            };
            let digits: String = v.chars().filter(|c| *c != '-').collect();
            if digits.len() == 8 && digits.bytes().all(|b| b.is_ascii_digit()) {
                Ok(Some(digits))
            } else {
                Err(Invalid {
                    what,
                    reason: "a date is YYYYMMDD or YYYY-MM-DD",
                })
            }
        };
        let exact = date("date", &p.date)?;
        let limit = p.limit.unwrap_or(DEFAULT_LIMIT);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(Invalid {
                what: "limit",
                reason: "1 to 1000",
            });
        }
        Ok(Filter {
            words,
            patient_name: text("patientName", &p.patient_name)?,
            patient_id: text("patientId", &p.patient_id)?,
            accession: text("accession", &p.accession)?,
            uid: text("uid", &p.uid)?,
            from: exact.clone().or(date("from", &p.from)?),
            to: exact.or(date("to", &p.to)?),
            limit,
        })
    }

    pub fn matches(&self, s: &StudyRecord) -> bool {
        let t = &s.tags;
        let folded = |v: &Option<String>| v.as_deref().map(fold).unwrap_or_default();
        let (name, id, accession) = (
            folded(&t.patient_name),
            folded(&t.patient_id),
            folded(&t.accession_number),
        );
        let uid = s.study_instance_uid.as_str();
        let contains =
            |have: &str, want: &Option<String>| want.as_deref().is_none_or(|w| have.contains(w));
        let date = t.study_date.as_deref().unwrap_or("");
        let in_range = |bound: &Option<String>, ok: fn(&str, &str) -> bool| {
            bound
                .as_deref()
                .is_none_or(|b| !date.is_empty() && ok(date, b))
        };
        if !(contains(&name, &self.patient_name)
            && contains(&id, &self.patient_id)
            && contains(&accession, &self.accession)
            && self.uid.as_deref().is_none_or(|u| uid.starts_with(u))
            && in_range(&self.from, |d, b| d >= b)
            && in_range(&self.to, |d, b| d <= b))
        {
            return false;
        }
        if self.words.is_empty() {
            return true;
        }
        let description = folded(&t.study_description);
        self.words.iter().all(|w| {
            name.contains(w.as_str())
                || id.contains(w.as_str())
                || accession.contains(w.as_str())
                || description.contains(w.as_str())
                || uid.starts_with(w.as_str())
        })
    }
}

/// Keeps the `limit` most recently received matches, newest first, and
/// counts them all.
pub struct Best {
    limit: usize,
    /// Min-heap on (last received, UID): the top is the first to go.
    heap: BinaryHeap<Reverse<Ranked>>,
    pub matched: u64,
}

struct Ranked(StudyRecord);

impl Ranked {
    fn key(&self) -> (&str, &str) {
        (&self.0.last_received, self.0.study_instance_uid.as_str())
    }
}

impl PartialEq for Ranked {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}
impl Eq for Ranked {}
impl PartialOrd for Ranked {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Ranked {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key().cmp(&other.key())
    }
}

impl Best {
    pub fn new(limit: usize) -> Best {
        Best {
            limit,
            heap: BinaryHeap::with_capacity(limit.saturating_add(1)),
            matched: 0,
        }
    }

    pub fn offer(&mut self, study: StudyRecord) {
        self.matched = self.matched.saturating_add(1);
        self.heap.push(Reverse(Ranked(study)));
        if self.heap.len() > self.limit {
            self.heap.pop();
        }
    }

    /// Newest first.
    pub fn into_sorted(self) -> Vec<StudyRecord> {
        // Ascending on Reverse is descending on the key.
        self.heap
            .into_sorted_vec()
            .into_iter()
            .map(|Reverse(Ranked(s))| s)
            .collect()
    }
}

/// Lower case, with DICOM's `^` name separators as spaces, so "doe john"
/// finds `DOE^JOHN`.
fn fold(s: &str) -> String {
    s.chars()
        .map(|c| if c == '^' { ' ' } else { c })
        .flat_map(char::to_lowercase)
        .collect()
}

#[cfg(test)]
mod tests;
