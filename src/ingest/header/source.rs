//! The byte source of a header scan: counts what was consumed, knows how much
//! can still follow (when the total is known), skips values through a fixed
//! scratch buffer, and inflates deflated data sets under a size and ratio cap.

use std::io::{ErrorKind, Read};

use flate2::read::DeflateDecoder;

use super::Error;

/// Skipped values pass through this much memory, whatever their length.
const SCRATCH: usize = 64 * 1024;

/// A deflated data set may expand this much over its compressed bytes (once
/// [`RATIO_GRACE`] bytes have come out): real headers deflate 3–20×, a
/// deflate bomb about 1000×.
pub const MAX_INFLATION_RATIO: u64 = 250;

/// Inflated bytes allowed before the ratio is enforced, so a tiny stream
/// with a short, highly compressible header is not refused.
const RATIO_GRACE: u64 = 4 << 20;

/// A limit hit while inflating, carried through `std::io::Error` to the scan.
#[derive(Debug)]
struct InflateLimit(String);

impl std::fmt::Display for InflateLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InflateLimit {}

/// Maps a read error to the scan's error: an inflate limit stays a limit.
pub fn io_error(e: std::io::Error) -> Error {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<InflateLimit>())
    {
        Some(limit) => Error::Limit(limit.0.clone()),
        None => Error::Parse(e.to_string()),
    }
}

/// Counts bytes read through it (the compressed side of an inflation).
pub struct Counted<R> {
    inner: R,
    count: u64,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count = self.count.saturating_add(n as u64);
        Ok(n)
    }
}

/// Raw deflate (PS3.5 §A.5: no zlib header) with a cap on the inflated size
/// and on the inflation ratio.
pub struct Inflate<R: Read> {
    decoder: DeflateDecoder<Counted<R>>,
    out: u64,
    max: u64,
}

impl<R: Read> Inflate<R> {
    pub fn new(compressed: R, max: u64) -> Inflate<R> {
        Inflate {
            decoder: DeflateDecoder::new(Counted {
                inner: compressed,
                count: 0,
            }),
            out: 0,
            max,
        }
    }
}

impl<R: Read> Read for Inflate<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.decoder.read(buf)?;
        self.out = self.out.saturating_add(n as u64);
        if self.out > self.max {
            return Err(std::io::Error::other(InflateLimit(format!(
                "deflated data set inflates past {} bytes",
                self.max
            ))));
        }
        let compressed = self.decoder.get_ref().count.max(1);
        if self.out > RATIO_GRACE && self.out / compressed > MAX_INFLATION_RATIO {
            return Err(std::io::Error::other(InflateLimit(format!(
                "deflated data set inflates over {MAX_INFLATION_RATIO}:1"
            ))));
        }
        Ok(n)
    }
}

/// The reader a scan walks, with its position and, when known, its end.
pub struct Source<'r> {
    inner: &'r mut dyn Read,
    pos: u64,
    end: Option<u64>,
    scratch: Vec<u8>,
}

impl<'r> Source<'r> {
    /// `len`: the number of bytes `inner` holds, if known.
    pub fn new(inner: &'r mut dyn Read, len: Option<u64>) -> Source<'r> {
        Source {
            inner,
            pos: 0,
            end: len,
            scratch: Vec::new(),
        }
    }

    pub fn pos(&self) -> u64 {
        self.pos
    }

    /// Bytes that can still follow, when the total is known.
    pub fn remaining(&self) -> Option<u64> {
        self.end.map(|end| end.saturating_sub(self.pos))
    }

    /// Fills `buf` completely; returns how many bytes were read before the
    /// end of the data (less than `buf.len()` only at the end).
    pub fn fill(&mut self, buf: &mut [u8]) -> Result<usize, Error> {
        let mut filled = 0;
        while filled < buf.len() {
            match self.inner.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(io_error(e)),
            }
        }
        self.pos = self.pos.saturating_add(filled as u64);
        Ok(filled)
    }

    /// Reads exactly `buf.len()` bytes; the end of the data first is an
    /// error naming `what`.
    pub fn exact(&mut self, buf: &mut [u8], what: &dyn Fn() -> String) -> Result<(), Error> {
        if self.fill(buf)? < buf.len() {
            return Err(Error::Parse(format!("data ends inside {}", what())));
        }
        Ok(())
    }

    /// Reads past `len` bytes without keeping them (through a fixed scratch
    /// buffer); the end of the data first is an error naming `what`.
    pub fn skip(&mut self, mut len: u64, what: &dyn Fn() -> String) -> Result<(), Error> {
        if self.scratch.is_empty() && len > 0 {
            self.scratch = vec![0; SCRATCH];
        }
        while len > 0 {
            let step = usize::try_from(len).unwrap_or(SCRATCH).min(SCRATCH);
            let mut scratch = std::mem::take(&mut self.scratch);
            let got = self.fill(&mut scratch[..step]);
            self.scratch = scratch;
            if got? < step {
                return Err(Error::Parse(format!("data ends inside {}", what())));
            }
            len -= step as u64;
        }
        Ok(())
    }
}
