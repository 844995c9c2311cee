//! One function per event: pure over the index and the signer, answering
//! from the index alone (no blob is read).

use std::time::SystemTime;

use serde_json::{Value, json};

use super::events::{SecondaryCaptureAccess, StudyAccess};
use crate::app::App;
use crate::index::{InstanceRecord, Series, in_viewing_order};
use crate::store::signer::UploadBinding;
use crate::uid::Uid;

/// `study.access_requested`: a signed GET URL for every instance, and the
/// manifest. Blocking (index reads).
pub fn study_access(
    app: &App,
    event: &StudyAccess,
    now: SystemTime,
) -> Result<Value, crate::index::Error> {
    let refuse = |error: String| json!({ "authorized": false, "urls": [], "error": error });
    let uid = match Uid::parse(&event.study_instance_uid) {
        Ok(uid) => uid,
        Err(e) => return Ok(refuse(format!("studyInstanceUid is not a DICOM UID: {e}"))),
    };
    let instances = app.index.instances_of_study(&uid)?;
    if instances.is_empty() {
        return Ok(refuse(format!("study {uid} is not on this gateway")));
    }
    if let Some(study_id) = &event.study_id {
        app.index.pair_avara_study(study_id, &uid)?;
    }
    let media: Vec<Value> = app
        .index
        .media_of_study(&uid)?
        .iter()
        .map(|m| {
            json!({
                "mimeType": m.mime_type,
                "url": app.signer.file_url(&m.object_key, app.cfg.url_ttl(), now),
                "fileName": m.file_name,
            })
        })
        .collect();
    let ordered = in_viewing_order(instances);
    let urls: Vec<String> = ordered
        .iter()
        .flat_map(|(_, series)| series.iter())
        .map(|i| app.signer.file_url(&i.object_key, app.cfg.url_ttl(), now))
        .collect();
    Ok(json!({
        "authorized": true,
        "urls": urls,
        "mediaUrls": media,
        "manifest": manifest(&uid, &ordered),
    }))
}

/// `secondary_capture.access_requested`: one signed PUT URL to the upload
/// route, bound to the study and, when the event names them, to the new
/// object's series and SOP Instance UIDs. Blocking (index reads).
pub fn secondary_capture_access(
    app: &App,
    event: &SecondaryCaptureAccess,
    now: SystemTime,
) -> Result<Value, crate::index::Error> {
    let refuse = |error: String| json!({ "authorized": false, "uploadUrls": [], "error": error });
    let parse = |what: &str, raw: &str| {
        Uid::parse(raw).map_err(|e| format!("{what} is not a DICOM UID: {e}"))
    };
    let study = match parse("studyInstanceUid", &event.study_instance_uid) {
        Ok(uid) => uid,
        Err(e) => return Ok(refuse(e)),
    };
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

/// The viewer's manifest: image SOPs need their five geometry fields, SR /
/// PR / KO only their UIDs; anything else, and series left empty, are
/// omitted (their URLs are still in `urls`).
fn manifest(study: &Uid, series: &[Series]) -> Value {
    let series: Vec<Value> = series
        .iter()
        .filter_map(|(uid, instances)| {
            let sops: Vec<Value> = instances.iter().filter_map(sop_entry).collect();
            if sops.is_empty() {
                return None;
            }
            let first = &instances[0].tags;
            let mut s = json!({ "seriesInstanceUID": uid, "sops": sops });
            put(
                &mut s,
                "modality",
                first.modality.as_ref().map(|m| json!(m)),
            );
            put(
                &mut s,
                "seriesDescription",
                first.series_description.as_ref().map(|d| json!(d)),
            );
            put(
                &mut s,
                "seriesNumber",
                first.series_number.map(|n| json!(n)),
            );
            Some(s)
        })
        .collect();
    json!({ "studyInstanceUID": study, "series": series })
}

fn sop_entry(i: &InstanceRecord) -> Option<Value> {
    let t = &i.tags;
    let mut sop = json!({ "sopClassUID": i.sop_class_uid, "sopInstanceUID": i.sop_instance_uid });
    match (
        t.rows,
        t.columns,
        t.bits_allocated,
        &t.photometric_interpretation,
        t.samples_per_pixel,
    ) {
        (Some(rows), Some(columns), Some(bits), Some(photometric), Some(samples)) => {
            let fields = [
                ("rows", Some(json!(rows))),
                ("columns", Some(json!(columns))),
                ("bitsAllocated", Some(json!(bits))),
                ("photometricInterpretation", Some(json!(photometric))),
                ("samplesPerPixel", Some(json!(samples))),
                ("bitsStored", t.bits_stored.map(|v| json!(v))),
                ("highBit", t.high_bit.map(|v| json!(v))),
                (
                    "pixelRepresentation",
                    t.pixel_representation.map(|v| json!(v)),
                ),
                ("instanceNumber", t.instance_number.map(|v| json!(v))),
                ("numberOfFrames", t.number_of_frames.map(|v| json!(v))),
                ("rescaleSlope", t.rescale_slope.map(|v| json!(v))),
                ("rescaleIntercept", t.rescale_intercept.map(|v| json!(v))),
                (
                    "isFloatPixelData",
                    t.is_float_pixel_data.then_some(json!(true)),
                ),
                (
                    "isDoubleFloatPixelData",
                    t.is_double_float_pixel_data.then_some(json!(true)),
                ),
            ];
            for (name, value) in fields {
                put(&mut sop, name, value);
            }
            Some(sop)
        }
        _ if is_document(i) => Some(sop),
        _ => None,
    }
}

/// Structured reports, presentation states and key object selections: the
/// viewer needs only their UIDs.
fn is_document(i: &InstanceRecord) -> bool {
    matches!(i.tags.modality.as_deref(), Some("SR" | "PR" | "KO"))
}

fn put(obj: &mut Value, name: &str, value: Option<Value>) {
    if let Some(v) = value {
        obj[name] = v;
    }
}
