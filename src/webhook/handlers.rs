//! One function per event: pure over the index and the signer, answering
//! from the index alone (no blob is read).

use std::time::SystemTime;

use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};

use super::events::{EphemeralAccess, SecondaryCaptureAccess, StudyAccess, StudyRef};
use super::views::StudyView;
use crate::app::App;
use crate::store::{ObjectKey, Presign};

/// What can go wrong answering an event (the event itself is never an
/// error: a bad one gets a refusal in the answer).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Index(#[from] crate::index::Error),
    #[error("signing a download URL: {0}")]
    Store(#[from] crate::store::Error),
}
use crate::store::signer::UploadBinding;
use crate::uid::Uid;

/// `study.access_requested`: a signed GET URL for every instance, the
/// study's media, and the manifest, serialised. Blocking (index reads).
pub fn study_access(app: &App, event: &StudyAccess, now: SystemTime) -> Result<Vec<u8>, Error> {
    let refuse =
        |error: String| json_bytes(&json!({ "authorized": false, "urls": [], "error": error }));
    let uid = match Uid::parse(&event.study_instance_uid) {
        Ok(uid) => uid,
        Err(e) => return Ok(refuse(format!("studyInstanceUid is not a DICOM UID: {e}"))),
    };
    app.discovery.refresh(app, &uid);
    let Some(view) = app.views.get(&app.index, &uid)? else {
        return Ok(refuse(format!("study {uid} is not on this gateway")));
    };
    if let Some(study_id) = &event.study_id {
        app.index.pair_avara_study(study_id, &uid)?;
    }
    let mut access = Access::default();
    access.add(app, &uid, &view, now)?;
    access.manifest = Some(&view.manifest);
    Ok(json_bytes(&access))
}

/// `ephemeral.access_requested`: study access for every study named in
/// `options.studyInstanceUids`, one manifest per study. Blocking.
pub fn ephemeral_access(
    app: &App,
    event: &EphemeralAccess,
    now: SystemTime,
) -> Result<Vec<u8>, Error> {
    let refuse =
        |error: &str| json_bytes(&json!({ "authorized": false, "urls": [], "error": error }));
    let named = event.study_instance_uids();
    if named.is_empty() {
        return Ok(refuse(
            "no study named: options.studyInstanceUids is empty or missing",
        ));
    }
    let mut found = Vec::new();
    let mut unknown = Vec::new();
    for raw in named {
        let view = match Uid::parse(&raw) {
            Ok(uid) => {
                app.discovery.refresh(app, &uid);
                app.views.get(&app.index, &uid)?.map(|v| (uid, v))
            }
            Err(_) => None,
        };
        match view {
            Some(view) => found.push(view),
            None => unknown.push(raw),
        }
    }
    if found.is_empty() {
        return Ok(refuse("none of the named studies is on this gateway"));
    }
    let mut access = Access::default();
    for (uid, view) in &found {
        access.add(app, uid, view, now)?;
        access.manifests.push(&view.manifest);
    }
    if !unknown.is_empty() {
        access.error = Some(format!("not on this gateway: {}", unknown.join(", ")));
    }
    Ok(json_bytes(&access))
}

/// The answer to an access event.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Access<'a> {
    authorized: bool,
    urls: Vec<String>,
    media_urls: Vec<MediaUrl>,
    #[serde(skip_serializing_if = "Option::is_none")]
    manifest: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    manifests: Vec<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

impl Default for Access<'_> {
    fn default() -> Self {
        Access {
            authorized: true,
            urls: Vec::new(),
            media_urls: Vec::new(),
            manifest: None,
            manifests: Vec::new(),
            error: None,
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct MediaUrl {
    mime_type: String,
    url: String,
    file_name: String,
}

impl Access<'_> {
    /// Adds a study's instance and media URLs.
    fn add(
        &mut self,
        app: &App,
        study: &Uid,
        view: &StudyView,
        now: SystemTime,
    ) -> Result<(), Error> {
        let ttl = app.cfg.url_ttl();
        let media = app.index.media_of_study(study)?;
        self.urls.reserve(view.keys.len());
        if app.store.is_local() {
            self.urls
                .extend(view.keys.iter().map(|k| app.signer.file_url(k, ttl, now)));
            self.media_urls.extend(media.into_iter().map(|m| MediaUrl {
                url: app.signer.file_url(&m.object_key, ttl, now),
                mime_type: m.mime_type,
                file_name: m.file_name,
            }));
            return Ok(());
        }
        // Presigned by the store, on this blocking thread: signing itself
        // makes no request (with static credentials; without them the first
        // signature fetches credentials from the instance metadata service).
        // An instance acknowledged but not yet uploaded (storage.ack =
        // "journal") is served by the gateway's own file route, which keeps
        // serving the URL after the upload (by redirecting to the store).
        let pending = |key: &ObjectKey| {
            app.backlog
                .as_ref()
                .is_some_and(|b| b.pending(key).is_some())
        };
        let presign = |key: &ObjectKey, mime: &str| {
            if pending(key) {
                return Ok(app.signer.file_url(key, ttl, now));
            }
            let disposition = key.content_disposition();
            let p = Presign {
                content_type: mime,
                disposition: &disposition,
                expires_at: now + ttl.min(crate::store::signer::MAX_TTL),
                head: false,
            };
            let signed =
                tokio::runtime::Handle::current().block_on(app.store.download_url(key, &p));
            signed
                .map_err(Error::from)
                .map(|url| url.expect("a remote store signs"))
        };
        for key in &view.keys {
            self.urls.push(presign(key, "application/dicom")?);
        }
        for m in media {
            self.media_urls.push(MediaUrl {
                url: presign(&m.object_key, &m.mime_type)?,
                mime_type: m.mime_type,
                file_name: m.file_name,
            });
        }
        Ok(())
    }
}

fn json_bytes<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("answers serialise")
}

/// `patient_study.enrichment_requested`: what the indexed DICOM header says
/// about the patient and the study, in the contract's formats; `{}` when the
/// study is unknown. Blocking.
pub fn patient_study_enrichment(app: &App, event: &StudyRef) -> Result<Value, Error> {
    let Ok(uid) = Uid::parse(&event.study_instance_uid) else {
        return Ok(json!({}));
    };
    app.discovery.refresh(app, &uid);
    let Some(study) = app.index.study(&uid)? else {
        return Ok(json!({}));
    };
    let t = &study.tags;
    let mut out = json!({});
    put(
        &mut out,
        "patientName",
        t.patient_name.as_ref().map(|v| json!(v)),
    );
    put(&mut out, "mrn", t.patient_id.as_ref().map(|v| json!(v)));
    put(
        &mut out,
        "dateOfBirth",
        t.patient_birth_date
            .as_deref()
            .and_then(iso_date)
            .map(|v| json!(v)),
    );
    put(
        &mut out,
        "sex",
        t.patient_sex.as_deref().and_then(sex).map(|v| json!(v)),
    );
    put(
        &mut out,
        "height",
        t.patient_size
            .filter(|m| *m > 0.0)
            .map(|m| json!({ "unit": "cm", "value": (m * 1000.0).round() / 10.0 })),
    );
    put(
        &mut out,
        "weight",
        t.patient_weight
            .filter(|k| *k > 0.0)
            .map(|k| json!({ "unit": "kg", "value": k })),
    );
    put(
        &mut out,
        "studyDate",
        t.study_date.as_deref().and_then(iso_date).map(|v| json!(v)),
    );
    put(
        &mut out,
        "studyTime",
        t.study_time.as_deref().and_then(iso_time).map(|v| json!(v)),
    );
    put(
        &mut out,
        "studyDescription",
        t.study_description.as_ref().map(|v| json!(v)),
    );
    put(
        &mut out,
        "facilityName",
        t.institution_name.as_ref().map(|v| json!(v)),
    );
    put(
        &mut out,
        "referringPhysicianName",
        t.referring_physician_name.as_ref().map(|v| json!(v)),
    );
    Ok(out)
}

/// `clinical_context.enrichment_requested`: the report texts Avara delivered
/// for the same patient's other studies, as `priorReports`; `{}` when there
/// are none. The patient is Patient ID *and* Issuer of Patient ID: the same
/// ID from another issuer is another person, and a study without an issuer
/// matches only studies without one. When the study is not here, the
/// event's `mrn` is taken as an ID without an issuer. Found through the
/// index's patient tree, not a scan of every study. Blocking.
pub fn clinical_context(app: &App, event: &StudyRef) -> Result<Value, Error> {
    let current = Uid::parse(&event.study_instance_uid).ok();
    let known = match &current {
        Some(uid) => app.index.study(uid)?,
        None => None,
    };
    let (issuer, patient) = match known {
        Some(study) => (study.tags.issuer_of_patient_id, study.tags.patient_id),
        None => (None, event.mrn.clone()),
    };
    let Some(patient) = patient.filter(|p| !p.trim().is_empty()) else {
        return Ok(json!({}));
    };
    let same = |v: &Option<String>, want: &Option<String>| {
        let norm = |o: &Option<String>| {
            o.as_deref()
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        norm(v) == norm(want)
    };
    let mut prior = Vec::new();
    for uid in app.index.studies_of_patient(issuer.as_deref(), &patient)? {
        if Some(&uid) == current.as_ref() {
            continue;
        }
        // The tree follows the study records; checked again all the same,
        // since a stranger's report must never be shown.
        let Some(study) = app.index.study(&uid)? else {
            continue;
        };
        if !same(&study.tags.patient_id, &Some(patient.clone()))
            || !same(&study.tags.issuer_of_patient_id, &issuer)
        {
            continue;
        }
        for media in app.index.media_of_study(&study.study_instance_uid)? {
            let Some(text) = media
                .report
                .and_then(|r| r.plain_text)
                .filter(|t| !t.is_empty())
            else {
                continue;
            };
            let mut entry =
                json!({ "reportText": text, "externalStudyId": study.study_instance_uid });
            put(
                &mut entry,
                "studyDate",
                study
                    .tags
                    .study_date
                    .as_deref()
                    .and_then(iso_date)
                    .map(|v| json!(v)),
            );
            put(
                &mut entry,
                "studyDescription",
                study.tags.study_description.as_ref().map(|v| json!(v)),
            );
            prior.push(entry);
        }
    }
    Ok(if prior.is_empty() {
        json!({})
    } else {
        json!({ "priorReports": prior })
    })
}

/// DICOM DA `YYYYMMDD` → `YYYY-MM-DD`.
fn iso_date(da: &str) -> Option<String> {
    let d = da.trim();
    (d.len() == 8 && d.bytes().all(|b| b.is_ascii_digit()))
        .then(|| format!("{}-{}-{}", &d[..4], &d[4..6], &d[6..]))
}

/// DICOM TM `HHMMSS[.frac]` (or `HHMM`) → `HH:MM[:SS]`.
fn iso_time(tm: &str) -> Option<String> {
    let t = tm.trim().split('.').next()?;
    if !t.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    match t.len() {
        4 => Some(format!("{}:{}", &t[..2], &t[2..4])),
        6 => Some(format!("{}:{}:{}", &t[..2], &t[2..4], &t[4..])),
        _ => None,
    }
}

fn sex(cs: &str) -> Option<&'static str> {
    match cs.trim() {
        "M" => Some("male"),
        "F" => Some("female"),
        "O" => Some("other"),
        _ => None,
    }
}

/// `secondary_capture.access_requested`: one signed PUT URL to the upload
/// route, bound to the study and, when the event names them, to the new
/// object's series and SOP Instance UIDs. Blocking (index reads).
pub fn secondary_capture_access(
    app: &App,
    event: &SecondaryCaptureAccess,
    now: SystemTime,
) -> Result<Value, Error> {
    let refuse = |error: String| json!({ "authorized": false, "uploadUrls": [], "error": error });
    let parse = |what: &str, raw: &str| {
        Uid::parse(raw).map_err(|e| format!("{what} is not a DICOM UID: {e}"))
    };
    let study = match parse("studyInstanceUid", &event.study_instance_uid) {
        Ok(uid) => uid,
        Err(e) => return Ok(refuse(e)),
    };
    app.discovery.refresh(app, &study);
    if app.index.study(&study)?.is_none() {
        return Ok(refuse(format!("study {study} is not on this gateway")));
    }
    let instance = match (&event.series_instance_uid, &event.sop_instance_uid) {
        (Some(series), Some(sop)) => match (
            parse("seriesInstanceUid", series),
            parse("sopInstanceUid", sop),
        ) {
            (Ok(series), Ok(sop)) => Some((series, sop)),
            (Err(e), _) | (_, Err(e)) => return Ok(refuse(e)),
        },
        _ => None,
    };
    if let Some(study_id) = &event.study_id {
        app.index.pair_avara_study(study_id, &study)?;
    }
    let binding = UploadBinding { study, instance };
    Ok(json!({
        "authorized": true,
        "uploadUrls": [app.signer.upload_url(&binding, app.cfg.url_ttl(), now)],
    }))
}

fn put(obj: &mut Value, name: &str, value: Option<Value>) {
    if let Some(v) = value {
        obj[name] = v;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dicom_dates_times_and_sexes_in_the_contract_formats() {
        assert_eq!(iso_date("19700102").as_deref(), Some("1970-01-02"));
        assert_eq!(iso_date("1970"), None);
        assert_eq!(iso_time("134501.123").as_deref(), Some("13:45:01"));
        assert_eq!(iso_time("1345").as_deref(), Some("13:45"));
        assert_eq!(iso_time("1:45"), None);
        assert_eq!(
            (sex("M"), sex("F"), sex("O"), sex("")),
            (Some("male"), Some("female"), Some("other"), None)
        );
    }
}
