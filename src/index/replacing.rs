//! Keys whose object is being replaced in place: noted durably before the
//! object is overwritten, forgotten once the index describes the new one
//! (see `ingest::duplicates`).

use super::{Index, Result, db_err};
use crate::store::ObjectKey;

const TREE: &str = "v1/replacing";

impl Index {
    fn replacing_tree(&self) -> Result<sled::Tree> {
        self.db.open_tree(TREE).map_err(db_err("open replacing"))
    }

    /// Notes that `key`'s object is about to be overwritten, and flushes.
    /// Blocking.
    pub fn note_replacing(&self, key: &ObjectKey) -> Result<()> {
        self.replacing_tree()?
            .insert(key.as_str().as_bytes(), &[])
            .map_err(db_err("note replacing"))?;
        self.flush()
    }

    /// Forgets the note on `key` (made durable by the next flush; a note
    /// that outlives its replacement is harmless: it is described again).
    pub fn replacing_done(&self, key: &ObjectKey) -> Result<()> {
        self.replacing_tree()?
            .remove(key.as_str().as_bytes())
            .map_err(db_err("forget replacing"))?;
        Ok(())
    }

    /// The keys noted and not forgotten.
    pub fn replacing(&self) -> Result<Vec<ObjectKey>> {
        let mut keys = Vec::new();
        for entry in self.replacing_tree()?.iter() {
            let (key, _) = entry.map_err(db_err("list replacing"))?;
            match std::str::from_utf8(&key).ok().and_then(ObjectKey::parse) {
                Some(key) => keys.push(key),
                None => tracing::warn!(?key, "ignoring an unreadable replacement note"),
            }
        }
        Ok(keys)
    }
}
