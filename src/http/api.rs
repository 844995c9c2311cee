//! The operator API: what the gateway holds, from the index.

use axum::Json;
use axum::extract::{Path, State};
use serde::Serialize;

use super::error::ApiError;
use crate::app::App;
use crate::index::{InstanceRecord, StudyRecord, in_viewing_order};
use crate::uid::Uid;

pub async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

pub async fn list_studies(State(app): State<App>) -> Result<Json<Vec<StudyRecord>>, ApiError> {
    let index = app.index.clone();
    let studies = tokio::task::spawn_blocking(move || index.studies())
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    Ok(Json(studies))
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StudyDetail {
    #[serde(flatten)]
    pub study: StudyRecord,
    pub series: Vec<SeriesDetail>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SeriesDetail {
    pub series_instance_uid: Uid,
    pub modality: Option<String>,
    pub series_description: Option<String>,
    pub series_number: Option<i64>,
    pub instance_count: usize,
    pub instances: Vec<InstanceRecord>,
}

pub async fn get_study(
    State(app): State<App>,
    Path(uid): Path<String>,
) -> Result<Json<StudyDetail>, ApiError> {
    let uid = Uid::parse(&uid).map_err(|e| ApiError::BadRequest {
        what: "Study Instance UID",
        reason: e.to_string(),
    })?;
    let index = app.index.clone();
    let lookup = uid.clone();
    let (study, instances) = tokio::task::spawn_blocking(move || {
        let study = index.study(&lookup)?;
        let instances = index.instances_of_study(&lookup)?;
        Ok::<_, crate::index::Error>((study, instances))
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(ApiError::internal)?;
    let study = study.ok_or_else(|| ApiError::NotFound(format!("study {uid}")))?;
    Ok(Json(StudyDetail {
        study,
        series: group_by_series(instances),
    }))
}

/// The study's series in viewing order, each with its instances.
fn group_by_series(instances: Vec<InstanceRecord>) -> Vec<SeriesDetail> {
    in_viewing_order(instances)
        .into_iter()
        .map(|(uid, instances)| {
            let first = &instances[0].tags;
            SeriesDetail {
                series_instance_uid: uid,
                modality: first.modality.clone(),
                series_description: first.series_description.clone(),
                series_number: first.series_number,
                instance_count: instances.len(),
                instances,
            }
        })
        .collect()
}
