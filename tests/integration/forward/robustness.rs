//! Forwarding under load and shutdown: a large instance streamed in
//! bounded memory, a graceful stop that finishes the send in flight.

use std::collections::BTreeMap;

use super::peers::received;
use super::{arrivals, one_storescp, settled, start, store_as, wait_for};
use crate::common::{Opts, dataset_bytes, fixture_study};

#[test]
fn a_large_instance_is_forwarded_in_bounded_memory() {
    let (_relay, peer, _tmp, cfg) = one_storescp("PACS", "");
    let gw = start(&cfg, Opts::default());
    let (_dir, big) = crate::common::send_big(&gw, 120);
    wait_for(&gw, "PACS", "delivered", |d| settled(d) && d["sent"] == 1);
    // Streamed in PDU-sized pieces: the gateway never held the instance.
    let peak = gw.peak_rss();
    assert!(peak < 100 << 20, "peak RSS {} MiB", peak >> 20);
    let got = received(peer.dir.path());
    assert_eq!(got.len(), 1);
    assert!(
        dataset_bytes(&got[0].0) == dataset_bytes(&big),
        "the 120 MiB data set arrived altered"
    );
}

#[test]
fn a_graceful_stop_finishes_the_send_in_flight_and_loses_or_repeats_nothing() {
    let (_relay, peer, _tmp, cfg) = one_storescp("PACS", "");
    // Slow sends, so the stop comes with most of the queue left.
    let mut gw = start(
        &cfg,
        Opts::default().env("FAILPOINTS", "forward::pace=return(300)"),
    );
    let study = fixture_study("study1/");
    store_as(&gw, "DCMTKSCU", &["-xe"], &study.files);
    wait_for(&gw, "PACS", "a first instance sent", |d| {
        d["sent"].as_u64() >= Some(1)
    });
    assert!(gw.stop().success(), "SIGTERM: a clean exit");
    assert!(peer.file_count() < 6, "everything was sent before the stop");

    gw.restart_without_env("FAILPOINTS");
    wait_for(&gw, "PACS", "the rest delivered", |d| {
        settled(d) && d["failedItems"] == 0
    });
    let arrived = arrivals(peer.dir.path());
    let expected: BTreeMap<String, usize> = study.sops.iter().map(|s| (s.clone(), 1)).collect();
    assert_eq!(arrived, expected, "each instance exactly once");
}
