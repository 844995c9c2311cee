//! Integration tests: the real gateway binary, driven by real peers.

mod common;

mod dimse;
mod durability;
mod files;
mod hostile_dicom;
mod http_api;
mod lifecycle;
mod maintenance;
mod peers;
mod s3;
mod webhook;
