//! Forwarding: per destination (AE titles of the configuration and of the
//! operator API, at most 256 of those, so the label set is bounded by the
//! operator), the queue, what was sent,
//! failed and retried, and whether the destination is reachable.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::Metrics;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct DestinationLabel {
    destination: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct QueueLabels {
    destination: String,
    state: &'static str,
}

#[derive(Default)]
pub(super) struct ForwardMetrics {
    queue: Family<QueueLabels, Gauge>,
    sent: Family<DestinationLabel, Counter>,
    failed: Family<DestinationLabel, Counter>,
    retries: Family<DestinationLabel, Counter>,
    up: Family<DestinationLabel, Gauge>,
}

impl ForwardMetrics {
    pub(super) fn register(&self, r: &mut Registry) {
        r.register(
            "forward_queue",
            "Instances queued for a forwarding destination, by state (pending, failed)",
            self.queue.clone(),
        );
        r.register(
            "forward_sent",
            "Instances forwarded and accepted by the destination",
            self.sent.clone(),
        );
        r.register(
            "forward_failed",
            "Forwarding items given up (refused by the destination, or too old)",
            self.failed.clone(),
        );
        r.register(
            "forward_retries",
            "Forwarding attempts that failed and will be retried",
            self.retries.clone(),
        );
        r.register(
            "forward_destination_up",
            "1 when the last association with the destination succeeded, 0 when it failed",
            self.up.clone(),
        );
    }
}

fn label(destination: &str) -> DestinationLabel {
    DestinationLabel {
        destination: destination.to_owned(),
    }
}

impl Metrics {
    pub fn forward_sent(&self, destination: &str) {
        self.forward.sent.get_or_create(&label(destination)).inc();
    }

    pub fn forward_failed(&self, destination: &str) {
        self.forward.failed.get_or_create(&label(destination)).inc();
    }

    pub fn forward_retry(&self, destination: &str) {
        self.forward
            .retries
            .get_or_create(&label(destination))
            .inc();
    }

    pub fn forward_up(&self, destination: &str, up: bool) {
        self.forward
            .up
            .get_or_create(&label(destination))
            .set(i64::from(up));
    }

    pub fn forward_depth(&self, destination: &str, pending: usize, failed: usize) {
        for (state, n) in [("pending", pending), ("failed", failed)] {
            self.forward
                .queue
                .get_or_create(&QueueLabels {
                    destination: destination.to_owned(),
                    state,
                })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// Creates a destination's series at zero (before its first event).
    pub fn forward_preset(&self, destination: &str) {
        drop(self.forward.sent.get_or_create(&label(destination)));
        drop(self.forward.failed.get_or_create(&label(destination)));
        drop(self.forward.retries.get_or_create(&label(destination)));
        self.forward_depth(destination, 0, 0);
    }
}
