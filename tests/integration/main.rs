//! Integration tests: the real gateway binary, driven by real peers.

mod common;

mod crash;
mod dimse;
mod disk_full;
mod durability;
mod files;
mod fsync_order;
mod http_api;
mod lifecycle;
mod maintenance;
mod peers;
mod s3;
mod webhook;
