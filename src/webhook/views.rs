//! What access to a study hands out, derived from the index and cached per
//! study until the study changes: the object keys in viewing order and the
//! viewer's manifest, already serialised. A cached study costs an access
//! request only the URL signatures.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde_json::value::RawValue;

use crate::index::{Index, InstanceRecord, Series, in_viewing_order};
use crate::store::ObjectKey;
use crate::uid::Uid;

/// One study as the viewer sees it.
#[derive(Debug)]
pub struct StudyView {
    /// Every instance, series by series, in viewing order.
    pub keys: Vec<ObjectKey>,
    pub manifest: Box<RawValue>,
}

/// A bounded cache of [`StudyView`]s, checked against the index's change
/// stamp on every use.
#[derive(Debug)]
pub struct StudyViews {
    capacity: usize,
    cached: Mutex<Cached>,
}

#[derive(Debug, Default)]
struct Cached {
    views: HashMap<Uid, (u64, Arc<StudyView>)>,
    /// Insertion order, for eviction.
    order: VecDeque<Uid>,
}

impl StudyViews {
    pub fn new(capacity: usize) -> StudyViews {
        StudyViews {
            capacity: capacity.max(1),
            cached: Mutex::default(),
        }
    }

    /// The study's view; `None` when it has no instance here. Blocking.
    pub fn get(
        &self,
        index: &Index,
        study: &Uid,
    ) -> Result<Option<Arc<StudyView>>, crate::index::Error> {
        // Read before the scan: a commit in between leaves a newer stamp
        // behind, so what is built here is not reused after it.
        let stamp = index.study_stamp(study);
        if let Some((at, view)) = self.lock().views.get(study) {
            if *at == stamp {
                return Ok(Some(Arc::clone(view)));
            }
        }
        let instances = index.instances_of_study(study)?;
        if instances.is_empty() {
            return Ok(None);
        }
        let ordered = in_viewing_order(instances);
        let view = Arc::new(StudyView {
            keys: ordered
                .iter()
                .flat_map(|(_, series)| series.iter().map(|i| i.object_key.clone()))
                .collect(),
            manifest: serde_json::value::to_raw_value(&Manifest::of(study, &ordered))
                .expect("manifests serialise"),
        });
        let mut cached = self.lock();
        if cached
            .views
            .insert(study.clone(), (stamp, Arc::clone(&view)))
            .is_none()
        {
            cached.order.push_back(study.clone());
            while cached.order.len() > self.capacity {
                if let Some(old) = cached.order.pop_front() {
                    cached.views.remove(&old);
                }
            }
        }
        Ok(Some(view))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cached> {
        self.cached.lock().expect("study views lock")
    }
}

/// The viewer's manifest: image SOPs need their five geometry fields, SR /
/// PR / KO only their UIDs; anything else, and series left empty, are
/// omitted (their URLs are still in `urls`).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Manifest<'a> {
    #[serde(rename = "studyInstanceUID")]
    study_instance_uid: &'a Uid,
    series: Vec<ManifestSeries<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ManifestSeries<'a> {
    #[serde(rename = "seriesInstanceUID")]
    series_instance_uid: &'a Uid,
    #[serde(skip_serializing_if = "Option::is_none")]
    modality: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    series_description: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    series_number: Option<i64>,
    sops: Vec<Sop<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Sop<'a> {
    #[serde(rename = "sopClassUID")]
    sop_class_uid: &'a Uid,
    #[serde(rename = "sopInstanceUID")]
    sop_instance_uid: &'a Uid,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    image: Option<Image<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Image<'a> {
    rows: u32,
    columns: u32,
    bits_allocated: u32,
    photometric_interpretation: &'a str,
    samples_per_pixel: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    bits_stored: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    high_bit: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pixel_representation: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    instance_number: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    number_of_frames: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rescale_slope: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rescale_intercept: Option<f64>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    is_float_pixel_data: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    is_double_float_pixel_data: bool,
}

impl<'a> Manifest<'a> {
    fn of(study: &'a Uid, series: &'a [Series]) -> Manifest<'a> {
        let series = series
            .iter()
            .filter_map(|(uid, instances)| {
                let sops: Vec<Sop> = instances.iter().filter_map(Sop::of).collect();
                if sops.is_empty() {
                    return None;
                }
                let first = &instances[0].tags;
                Some(ManifestSeries {
                    series_instance_uid: uid,
                    modality: first.modality.as_deref(),
                    series_description: first.series_description.as_deref(),
                    series_number: first.series_number,
                    sops,
                })
            })
            .collect();
        Manifest {
            study_instance_uid: study,
            series,
        }
    }
}

impl<'a> Sop<'a> {
    fn of(i: &'a InstanceRecord) -> Option<Sop<'a>> {
        let t = &i.tags;
        let image = match (
            t.rows,
            t.columns,
            t.bits_allocated,
            &t.photometric_interpretation,
            t.samples_per_pixel,
        ) {
            (Some(rows), Some(columns), Some(bits_allocated), Some(photometric), Some(samples)) => {
                Some(Image {
                    rows,
                    columns,
                    bits_allocated,
                    photometric_interpretation: photometric,
                    samples_per_pixel: samples,
                    bits_stored: t.bits_stored,
                    high_bit: t.high_bit,
                    pixel_representation: t.pixel_representation,
                    instance_number: t.instance_number,
                    number_of_frames: t.number_of_frames,
                    rescale_slope: t.rescale_slope,
                    rescale_intercept: t.rescale_intercept,
                    is_float_pixel_data: t.is_float_pixel_data,
                    is_double_float_pixel_data: t.is_double_float_pixel_data,
                })
            }
            // Structured reports, presentation states and key object
            // selections: the viewer needs only their UIDs.
            _ if matches!(t.modality.as_deref(), Some("SR" | "PR" | "KO")) => None,
            _ => return None,
        };
        Some(Sop {
            sop_class_uid: &i.sop_class_uid,
            sop_instance_uid: &i.sop_instance_uid,
            image,
        })
    }
}
