//! The control file: two 4 KiB slots, each naming a checkpoint. A write
//! goes to the slot `generation % 2` and is `fdatasync`ed; a reader takes
//! the valid slot with the higher generation, so a write torn by a power
//! cut leaves the older checkpoint readable.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use thiserror::Error;

use super::format::{CONTROL_SLOT, ControlSlot};

#[derive(Debug, Error)]
pub enum Error {
    #[error("journal control file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "journal control file {0} holds no valid checkpoint: the journal is damaged; \
         the gateway does not guess (move the journal directory aside after a look)"
    )]
    Damaged(PathBuf),
}

pub struct Control {
    file: File,
    path: PathBuf,
    last: ControlSlot,
}

impl Control {
    /// Opens the control file in `dir`; `None` when there is none (a new
    /// journal).
    pub fn open(dir: &Path) -> Result<Option<Control>, Error> {
        let path = dir.join("control");
        let io = |source| Error::Io {
            path: path.clone(),
            source,
        };
        let file = match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(e)),
        };
        // Two slots and nothing more are read, whatever the file's size.
        let mut buf = vec![0u8; 2 * CONTROL_SLOT];
        let mut read = 0;
        while read < buf.len() {
            match file.read_at(&mut buf[read..], read as u64).map_err(io)? {
                0 => break,
                n => read += n,
            }
        }
        let last = ControlSlot::newest(&buf[..read]).ok_or(Error::Damaged(path.clone()))?;
        Ok(Some(Control { file, path, last }))
    }

    /// Creates the control file of a new journal, with its first checkpoint
    /// at `checkpoint`, durably (file and directory).
    pub fn create(dir: &Path, first: ControlSlot) -> Result<Control, Error> {
        let path = dir.join("control");
        let io = |source| Error::Io {
            path: path.clone(),
            source,
        };
        let tmp = dir.join("control.tmp");
        let file = File::create(&tmp).map_err(io)?;
        file.write_all_at(&first.encode(), slot_offset(first.generation))
            .map_err(io)?;
        file.set_len(2 * CONTROL_SLOT as u64).map_err(io)?;
        file.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)?;
        File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io)?;
        Ok(Control {
            file,
            path,
            last: first,
        })
    }

    pub fn last(&self) -> ControlSlot {
        self.last
    }

    /// Records a new checkpoint durably.
    pub fn write(&mut self, checkpoint: u64) -> Result<(), Error> {
        let slot = ControlSlot {
            generation: self.last.generation + 1,
            checkpoint,
            ..self.last
        };
        let io = |source| Error::Io {
            path: self.path.clone(),
            source,
        };
        self.file
            .write_all_at(&slot.encode(), slot_offset(slot.generation))
            .map_err(io)?;
        self.file.sync_data().map_err(io)?;
        self.last = slot;
        Ok(())
    }
}

fn slot_offset(generation: u64) -> u64 {
    (generation % 2) * CONTROL_SLOT as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_alternate_slots_and_survive_a_torn_one() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Control::open(dir.path()).unwrap().is_none());
        let first = ControlSlot {
            generation: 1,
            checkpoint: 0,
            journal_id: [3; 16],
            segment_size: 1 << 20,
        };
        let mut c = Control::create(dir.path(), first).unwrap();
        c.write(8192).unwrap();
        c.write(12288).unwrap();
        let c = Control::open(dir.path()).unwrap().unwrap();
        assert_eq!(c.last().checkpoint, 12288);
        assert_eq!(c.last().generation, 3);
        // Tear the newest slot (generation 3, slot 1): the older one counts.
        let f = OpenOptions::new()
            .write(true)
            .open(dir.path().join("control"))
            .unwrap();
        f.write_all_at(&[0xEE; 16], CONTROL_SLOT as u64 + 8)
            .unwrap();
        let c = Control::open(dir.path()).unwrap().unwrap();
        assert_eq!(c.last().checkpoint, 8192);
        // Both torn: damage, not a guess.
        f.write_all_at(&[0xEE; 16], 8).unwrap();
        assert!(matches!(Control::open(dir.path()), Err(Error::Damaged(_))));
    }
}
