//! One event on its way to one subscription: its attempts so far and what
//! comes next, decided here without I/O so the retry rules can be tested on
//! their own.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::event::{Event, rfc3339_ms};

/// The Standard Webhooks retry schedule: the wait before each attempt, the
/// first immediate; after the last one fails the message is failed.
pub const DEFAULT_SCHEDULE: [Duration; 8] = [
    Duration::ZERO,
    Duration::from_secs(5),
    Duration::from_secs(5 * 60),
    Duration::from_secs(30 * 60),
    Duration::from_secs(2 * 60 * 60),
    Duration::from_secs(5 * 60 * 60),
    Duration::from_secs(10 * 60 * 60),
    Duration::from_secs(10 * 60 * 60),
];

/// Attempts remembered per message for the operator view.
const KEPT_ATTEMPTS: usize = 10;
/// Longest error text kept per attempt.
const MAX_ERROR_LEN: usize = 300;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Waiting for its next attempt (or for an earlier message of its study).
    Pending,
    /// Answered 2xx.
    Delivered,
    /// Every attempt of the schedule failed, or its subscription was
    /// deactivated; the operator can redeliver it.
    Failed,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attempt {
    /// Unix milliseconds.
    pub at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub duration_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Message {
    pub event: Event,
    pub state: State,
    /// Attempts made, redeliveries included.
    pub attempts: u32,
    /// Attempts made in the current run of the schedule (a redelivery
    /// starts a new run).
    pub run: u32,
    /// Unix milliseconds of the next attempt (while pending).
    pub next_at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_ms: Option<u64>,
    /// The latest attempts, oldest first.
    #[serde(default)]
    pub history: Vec<Attempt>,
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// An HTTP answer.
    Status(u16),
    /// No HTTP answer: connection refused, time-out, refused address.
    Error(String),
}

impl Outcome {
    pub fn succeeded(&self) -> bool {
        matches!(self, Outcome::Status(s) if (200..300).contains(s))
    }

    /// 410 Gone: the receiver asks not to be sent anything any more.
    pub fn gone(&self) -> bool {
        matches!(self, Outcome::Status(410))
    }
}

impl Message {
    /// A message for a new event, due at once.
    pub fn new(event: Event) -> Message {
        let at = event.at_ms;
        Message {
            event,
            state: State::Pending,
            attempts: 0,
            run: 0,
            next_at_ms: at,
            finished_ms: None,
            history: Vec::new(),
        }
    }

    /// Records an attempt made at `at_ms` that took `took`, and decides what
    /// comes next from `schedule`.
    pub fn record(&mut self, at_ms: u64, took: Duration, outcome: &Outcome, schedule: &[Duration]) {
        self.attempts = self.attempts.saturating_add(1);
        self.run = self.run.saturating_add(1);
        let (status, error) = match outcome {
            Outcome::Status(s) => (Some(*s), None),
            Outcome::Error(e) => (None, Some(truncate(e))),
        };
        self.history.push(Attempt {
            at_ms,
            status,
            error,
            duration_ms: u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
        });
        let excess = self.history.len().saturating_sub(KEPT_ATTEMPTS);
        self.history.drain(..excess);
        let done_at = at_ms.saturating_add(u64::try_from(took.as_millis()).unwrap_or(0));
        if outcome.succeeded() {
            self.finish(State::Delivered, done_at);
            return;
        }
        match schedule.get(self.run as usize) {
            Some(wait) => {
                let wait = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
                self.next_at_ms = done_at.saturating_add(wait);
            }
            None => self.finish(State::Failed, done_at),
        }
    }

    pub fn finish(&mut self, state: State, at_ms: u64) {
        self.state = state;
        self.finished_ms = Some(at_ms);
    }

    /// Queues the message again for a new run of the schedule, same id.
    pub fn redeliver(&mut self, now_ms: u64) {
        self.state = State::Pending;
        self.run = 0;
        self.next_at_ms = now_ms;
        self.finished_ms = None;
    }

    pub fn view(&self) -> MessageView {
        let last = self.history.last();
        MessageView {
            id: self.event.id.clone(),
            kind: self.event.kind.as_str(),
            study_instance_uid: self.event.study.clone(),
            created_at: rfc3339_ms(self.event.at_ms),
            state: self.state,
            attempts: self.attempts,
            last_status: last.and_then(|a| a.status),
            last_error: last.and_then(|a| a.error.clone()),
            last_attempt_at: last.map(|a| rfc3339_ms(a.at_ms)),
            next_attempt_at: (self.state == State::Pending).then(|| rfc3339_ms(self.next_at_ms)),
            finished_at: self.finished_ms.map(rfc3339_ms),
        }
    }
}

/// What the operator API shows of a message.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageView {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub study_instance_uid: Option<String>,
    pub created_at: String,
    pub state: State,
    pub attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_attempt_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
}

fn truncate(text: &str) -> String {
    match text.char_indices().nth(MAX_ERROR_LEN) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::{InstanceRecord, StudyTags};

    fn message() -> Message {
        let rec = InstanceRecord::for_test("1.2.3", "1.2.3.4", "1.2.3.4.5");
        Message::new(Event::study_received(1_000, &rec, &StudyTags::default()))
    }

    #[test]
    fn the_schedule_is_followed_then_the_message_fails() {
        let schedule = [
            Duration::ZERO,
            Duration::from_secs(5),
            Duration::from_secs(300),
        ];
        let mut m = message();
        assert_eq!(m.next_at_ms, 1_000);
        let refused = Outcome::Error("connection refused".into());
        m.record(1_000, Duration::from_millis(2), &refused, &schedule);
        assert_eq!((m.state, m.next_at_ms), (State::Pending, 1_002 + 5_000));
        m.record(6_002, Duration::ZERO, &Outcome::Status(500), &schedule);
        assert_eq!((m.state, m.next_at_ms), (State::Pending, 6_002 + 300_000));
        m.record(306_002, Duration::ZERO, &Outcome::Status(503), &schedule);
        assert_eq!(m.state, State::Failed);
        assert_eq!(m.attempts, 3);
        let view = m.view();
        assert_eq!(view.last_status, Some(503));
        assert_eq!(view.next_attempt_at, None);

        m.redeliver(400_000);
        assert_eq!((m.state, m.run, m.next_at_ms), (State::Pending, 0, 400_000));
        m.record(400_000, Duration::ZERO, &Outcome::Status(204), &schedule);
        assert_eq!(m.state, State::Delivered);
        assert_eq!(m.attempts, 4);
    }

    #[test]
    fn only_2xx_succeeds_and_the_history_is_bounded() {
        let schedule = vec![Duration::ZERO; 100];
        let mut m = message();
        for status in [301, 400, 429, 500] {
            m.record(1, Duration::ZERO, &Outcome::Status(status), &schedule);
            assert_eq!(m.state, State::Pending, "{status}");
        }
        for _ in 0..20 {
            m.record(
                1,
                Duration::ZERO,
                &Outcome::Error("x".repeat(1000)),
                &schedule,
            );
        }
        assert_eq!(m.history.len(), KEPT_ATTEMPTS);
        assert!(m.history[0].error.as_ref().unwrap().chars().count() <= MAX_ERROR_LEN + 1);
        assert!(Outcome::Status(410).gone());
        assert!(!Outcome::Status(410).succeeded());
        m.record(1, Duration::ZERO, &Outcome::Status(299), &schedule);
        assert_eq!(m.state, State::Delivered);
    }
}
