//! Reading an instance's header from the store without its pixel data: a
//! ranged read of the first bytes, and only when the header is longer than
//! that, a streamed read that stops at the pixel data.

use futures::TryStreamExt;
use object_store::{ObjectMeta, ObjectStoreExt};
use tokio_util::io::{StreamReader, SyncIoBridge};

use super::reindex::SkipReason;
use crate::ingest::header::{self, Header};
use crate::store::BlobStore;

/// The first read of an instance. Headers are a few KB; a longer one is read
/// by streaming the object until the pixel data.
const FIRST_READ: u64 = 64 << 10;

/// Reads an instance's header: first from a ranged read of its first bytes,
/// then, if the header is longer than that, by streaming the object until
/// the parse reaches the pixel data (never more than a buffer in memory).
pub async fn read_header(store: &BlobStore, meta: &ObjectMeta) -> Result<Header, SkipReason> {
    if meta.size == 0 {
        return Err(SkipReason::NotDicom("empty object".into()));
    }
    let objects = store.object_store();
    let len = meta.size.min(FIRST_READ);
    let prefix = objects
        .get_range(&meta.location, 0..len)
        .await
        .map_err(unreadable)?;
    let complete = len == meta.size;
    let parsed = tokio::task::spawn_blocking(move || parse_prefix(&prefix, complete))
        .await
        .map_err(parser_failed)?;
    match parsed {
        Parsed::Header(header) => return Ok(*header),
        Parsed::Invalid(e) => return Err(SkipReason::NotDicom(e.to_string())),
        Parsed::NeedMore => {}
    }
    let stream = objects
        .get(&meta.location)
        .await
        .map_err(unreadable)?
        .into_stream()
        .map_err(std::io::Error::other);
    let reader = SyncIoBridge::new(StreamReader::new(stream));
    tokio::task::spawn_blocking(move || header::read_header_from(reader))
        .await
        .map_err(parser_failed)?
        .map_err(|e| SkipReason::NotDicom(e.to_string()))
}

fn unreadable(e: object_store::Error) -> SkipReason {
    SkipReason::Unreadable(crate::store::redacted(&e))
}

/// dicom-rs's parser is not hardened against every malformed input; a panic
/// is one more way for an object not to be DICOM.
fn parser_failed(e: tokio::task::JoinError) -> SkipReason {
    SkipReason::NotDicom(format!("the parser failed: {e}"))
}

/// What a prefix of an object says about its header.
#[derive(Debug)]
enum Parsed {
    Header(Box<Header>),
    /// The parse needed bytes past the prefix: a longer read may succeed.
    NeedMore,
    /// The prefix is enough to tell: no header.
    Invalid(header::Error),
}

/// Parses a header from the first bytes of an object (`complete`: all of
/// it). A parse that asked for bytes past the end of an incomplete prefix is
/// not trusted either way: an error may be the cut, and a success may be a
/// cut that fell between two elements and looked like the end of the data
/// set (with the tags after it missing).
fn parse_prefix(prefix: &[u8], complete: bool) -> Parsed {
    let mut reader = Prefix {
        bytes: prefix,
        hit_end: false,
    };
    let result = header::read_header_from(&mut reader);
    if reader.hit_end && !complete {
        return Parsed::NeedMore;
    }
    match result {
        Ok(header) => Parsed::Header(Box::new(header)),
        Err(e) => Parsed::Invalid(e),
    }
}

/// A reader over a byte slice that remembers whether it was asked for more
/// than it had.
struct Prefix<'a> {
    bytes: &'a [u8],
    hit_end: bool,
}

impl std::io::Read for Prefix<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.bytes.is_empty() && !buf.is_empty() {
            self.hit_end = true;
        }
        self.bytes.read(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maintenance::tests::instance;

    /// Every cut of an object either asks for more or gives the header the
    /// whole object gives: never a wrong header (a cut between two elements
    /// looks like the end of the data set), never a refusal.
    fn assert_every_prefix_is_safe(bytes: &[u8]) {
        let Parsed::Header(full) = parse_prefix(bytes, true) else {
            panic!("the whole object does not parse");
        };
        let mut first_complete = None;
        for cut in 0..bytes.len() {
            match parse_prefix(&bytes[..cut], false) {
                Parsed::NeedMore => {}
                Parsed::Header(h) => {
                    assert_eq!(h, full, "cut at {cut}");
                    first_complete.get_or_insert(cut);
                }
                Parsed::Invalid(e) => panic!("cut at {cut}: {e}"),
            }
        }
        // A prefix that reaches the pixel data is enough.
        let enough = first_complete.expect("no prefix was enough");
        assert!(enough < bytes.len(), "{enough}");
    }

    #[test]
    fn a_prefix_that_ends_before_the_pixel_data_asks_for_more() {
        let bytes = instance("1.2.3", "1.2.3.1", "1.2.3.1.1", 100);
        assert_every_prefix_is_safe(&bytes);
        let Parsed::Header(h) = parse_prefix(&bytes, true) else {
            panic!()
        };
        assert_eq!(h.source_ae.as_deref(), Some("MODALITY1"));
        assert_eq!((h.instance.rows, h.instance.columns), (Some(2), Some(3)));

        let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("testdata/fixtures/study1/series1/ct1.dcm");
        assert_every_prefix_is_safe(&std::fs::read(fixture).unwrap());
    }

    #[test]
    fn what_is_not_dicom_is_invalid_once_the_prefix_shows_it() {
        let junk = vec![b'x'; 4096];
        assert!(matches!(parse_prefix(&junk, false), Parsed::Invalid(_)));
        assert!(matches!(
            parse_prefix(&junk[..10], true),
            Parsed::Invalid(_)
        ));
        assert!(matches!(parse_prefix(&junk[..10], false), Parsed::NeedMore));
    }
}
