//! The DICOM side: an SCP for C-ECHO and C-STORE on dicom-ul's async server,
//! with the gateway's own small DIMSE layer; storage commitment requests
//! (N-ACTION, N-EVENT-REPORT) are handed to `crate::commitment`.

mod access;
mod association;
pub mod dimse;
mod listener;
mod pending;
pub mod sop_classes;
mod wire;

pub use listener::DicomServer;
