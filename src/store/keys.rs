//! Object keys. Self-describing, so the index can be rebuilt from the store:
//! `studies/<StudyUID>/<SeriesUID>/<SOPInstanceUID>.dcm` for instances,
//! `studies/<StudyUID>/media/<file name>` for media (PDFs, images, videos),
//! `studies/<StudyUID>/media-meta/<file name>.json` for their sidecars.
//! Built only from validated UIDs and file names, so a key can never leave
//! the store's root.

use crate::uid::Uid;

#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct ObjectKey(String);

/// The folder of a study that holds its media sidecars.
pub const MEDIA_SIDECARS: &str = "media-meta";

impl ObjectKey {
    pub fn instance(study: &Uid, series: &Uid, sop: &Uid) -> ObjectKey {
        ObjectKey(format!("studies/{study}/{series}/{sop}.dcm"))
    }

    /// A media file of a study; `name` must satisfy [`valid_media_name`].
    pub fn media(study: &Uid, name: &str) -> ObjectKey {
        debug_assert!(valid_media_name(name));
        ObjectKey(format!("studies/{study}/media/{name}"))
    }

    /// The sidecar of a media file: its index record as JSON, kept in the
    /// store so `reindex` can restore it. Not a key [`ObjectKey::parse`]
    /// accepts (never served).
    pub fn media_sidecar(study: &Uid, name: &str) -> ObjectKey {
        debug_assert!(valid_media_name(name));
        ObjectKey(format!("studies/{study}/{MEDIA_SIDECARS}/{name}.json"))
    }

    /// The media key a sidecar key (`studies/<study>/media-meta/<name>.json`)
    /// describes.
    pub fn parse_sidecar(raw: &str) -> Option<ObjectKey> {
        let rest = raw.strip_prefix("studies/")?;
        let (study, file) = rest.split_once('/')?;
        let name = file
            .strip_prefix(MEDIA_SIDECARS)?
            .strip_prefix('/')?
            .strip_suffix(".json")?;
        if !valid_media_name(name) {
            return None;
        }
        // Uid::parse drops padding: only the exact spelling is ours.
        let study = Uid::parse(study).ok()?;
        (ObjectKey::media_sidecar(&study, name).as_str() == raw)
            .then(|| ObjectKey::media(&study, name))
    }

    /// The study and file name of a media key.
    pub fn as_media(&self) -> Option<(Uid, &str)> {
        let rest = self.0.strip_prefix("studies/")?;
        let (study, name) = rest.split_once("/media/")?;
        Some((Uid::parse(study).ok()?, name))
    }

    /// The study a key belongs to.
    pub fn study(&self) -> Option<Uid> {
        let rest = self.0.strip_prefix("studies/")?;
        Uid::parse(rest.split('/').next()?).ok()
    }

    /// A key named by a request, if it is one of ours (an instance key with
    /// valid UIDs, or a media key with a valid name), so it cannot point
    /// anywhere else.
    pub fn parse(raw: &str) -> Option<ObjectKey> {
        let rest = raw.strip_prefix("studies/")?;
        let mut parts = rest.split('/');
        let (study, series, file) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        if series == "media" {
            let study = Uid::parse(study).ok()?;
            return valid_media_name(file).then(|| ObjectKey::media(&study, file));
        }
        let sop = file.strip_suffix(".dcm")?;
        let (study, series, sop) = (
            Uid::parse(study).ok()?,
            Uid::parse(series).ok()?,
            Uid::parse(sop).ok()?,
        );
        Some(ObjectKey::instance(&study, &series, &sop))
    }

    /// The last path segment, for Content-Disposition.
    pub fn file_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }

    /// `Content-Disposition` for a download of this object.
    pub fn content_disposition(&self) -> String {
        format!("attachment; filename=\"{}\"", self.file_name())
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

/// Media file names: 1–128 of `A–Z a–z 0–9 . _ -`, not starting with a dot.
pub fn valid_media_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
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
        assert_eq!(ObjectKey::parse(key.as_str()), Some(key.clone()));
        assert_eq!(key.file_name(), "1.2.3.4.5.dcm");
        let media = ObjectKey::parse("studies/1.2.3/media/report-1.pdf").unwrap();
        assert_eq!(
            media.as_media(),
            Some((Uid::parse("1.2.3").unwrap(), "report-1.pdf"))
        );
        assert_eq!(key.as_media(), None);
        let sidecar = ObjectKey::media_sidecar(&Uid::parse("1.2.3").unwrap(), "report-1.pdf");
        assert_eq!(
            sidecar.as_str(),
            "studies/1.2.3/media-meta/report-1.pdf.json"
        );
        assert_eq!(ObjectKey::parse_sidecar(sidecar.as_str()), Some(media));
        assert_eq!(ObjectKey::parse(sidecar.as_str()), None);
        for bad in [
            "studies/1.2.3/media-meta/report-1.pdf",
            "studies/1.2.3/media-meta/.x.json",
            "studies/1.2.3/media-meta/a/b.json",
            "studies/1.2.3 /media-meta/a.json",
            "studies/1.2.3/media/a.json",
        ] {
            assert_eq!(ObjectKey::parse_sidecar(bad), None, "{bad}");
        }
    }

    #[test]
    fn parse_refuses_anything_that_is_not_an_instance_key() {
        for bad in [
            "studies/1.2/1.3/../../etc/passwd",
            "studies/1.2/1.3/1.4.dcm/x",
            "studies/1.2/1.3/1.4",
            "/studies/1.2/1.3/1.4.dcm",
            "spool/1.2/1.3/1.4.dcm",
            "studies/1.2/1.3/1 4.dcm",
            "studies/../1.3/1.4.dcm",
            "url-signing-keys",
            "studies/1.2/media/.hidden",
            "studies/1.2/media/a b.pdf",
            "studies/x y/media/report.pdf",
        ] {
            assert_eq!(ObjectKey::parse(bad), None, "{bad}");
        }
    }
}
