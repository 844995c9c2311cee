//! Integration tests: the real gateway binary, driven by real peers.

mod common;

mod backlog;
mod commitment;
mod crash;
mod dimse;
mod disk_full;
mod docker;
mod duplicates;
mod durability;
mod files;
mod forward;
mod forward_api;
mod fsync_order;
mod hostile_dicom;
mod hostile_http;
mod hostile_network;
mod hostile_reports;
mod http_api;
mod journal;
mod lifecycle;
mod maintenance;
mod metrics;
mod outbound;
mod panics;
mod peers;
mod s3;
mod s3_cluster;
mod s3_journal;
mod subscriptions;
mod tls;
mod ui;
mod uids;
mod webhook;
