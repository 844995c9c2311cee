//! Object keys. Self-describing, so the index can be rebuilt from the store:
//! `studies/<StudyUID>/<SeriesUID>/<SOPInstanceUID>.dcm`. Built only from
//! validated [`Uid`]s, so a key can never leave the store's root.

use crate::uid::Uid;

#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct ObjectKey(String);

impl ObjectKey {
    pub fn instance(study: &Uid, series: &Uid, sop: &Uid) -> ObjectKey {
        ObjectKey(format!("studies/{study}/{series}/{sop}.dcm"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn to_path(&self) -> object_store::path::Path {
        object_store::path::Path::from(self.0.as_str())
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_keys_are_self_describing() {
        let key = ObjectKey::instance(
            &Uid::parse("1.2.3").unwrap(),
            &Uid::parse("1.2.3.4").unwrap(),
            &Uid::parse("1.2.3.4.5").unwrap(),
        );
        assert_eq!(key.as_str(), "studies/1.2.3/1.2.3.4/1.2.3.4.5.dcm");
        assert_eq!(key.to_path().as_ref(), key.as_str());
    }
}
