//! The DICOM side: an SCP for C-ECHO and C-STORE on dicom-ul's async server,
//! with the gateway's own small DIMSE layer.

mod access;
mod association;
pub mod dimse;
mod listener;
mod pending;
pub mod sop_classes;

pub use listener::DicomServer;
