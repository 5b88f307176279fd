//! A bounded in-memory log of decision records and alerts, for `GetDecisions` and dashboards.

use std::collections::VecDeque;
use std::sync::Mutex;

use lateral_proto::coordinator::{Alert, Decision};

/// Keeps the newest `capacity` decisions and alerts; older ones fall off the front.
#[derive(Debug)]
pub struct DecisionLog {
    capacity: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    next_sequence: u64,
    decisions: VecDeque<Decision>,
    alerts: VecDeque<Alert>,
}

impl DecisionLog {
    /// A log holding at most `capacity` decisions and as many alerts.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the log inconsistent (push/pop only): keep going.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Appends a decision, assigning its sequence number; returns that number.
    pub fn push_decision(&self, mut decision: Decision) -> u64 {
        let mut inner = self.lock();
        inner.next_sequence += 1;
        decision.sequence = inner.next_sequence;
        if inner.decisions.len() == self.capacity {
            inner.decisions.pop_front();
        }
        inner.decisions.push_back(decision);
        inner.next_sequence
    }

    /// Appends an alert.
    pub fn push_alert(&self, alert: Alert) {
        let mut inner = self.lock();
        if inner.alerts.len() == self.capacity {
            inner.alerts.pop_front();
        }
        inner.alerts.push_back(alert);
    }

    /// The newest `limit` decisions matching the filters (oldest first), and the newest `limit` alerts.
    pub fn query(
        &self,
        service: &str,
        endpoint: &str,
        after_sequence: u64,
        limit: usize,
    ) -> (Vec<Decision>, Vec<Alert>) {
        let inner = self.lock();
        let matches = |s: &str, e: &str| {
            (service.is_empty() || s == service) && (endpoint.is_empty() || e == endpoint)
        };
        let mut decisions: Vec<Decision> = inner
            .decisions
            .iter()
            .rev()
            .filter(|d| d.sequence > after_sequence && matches(&d.service, &d.endpoint))
            .take(limit)
            .cloned()
            .collect();
        decisions.reverse();
        let mut alerts: Vec<Alert> = inner
            .alerts
            .iter()
            .rev()
            .filter(|a| {
                matches(
                    &a.service,
                    if endpoint.is_empty() { "" } else { &a.endpoint },
                )
            })
            .take(limit)
            .cloned()
            .collect();
        alerts.reverse();
        (decisions, alerts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision(service: &str, endpoint: &str) -> Decision {
        Decision {
            service: service.into(),
            endpoint: endpoint.into(),
            ..Default::default()
        }
    }

    #[test]
    fn keeps_the_newest_and_filters() {
        let log = DecisionLog::new(3);
        for i in 0..5 {
            log.push_decision(decision("greeter", if i % 2 == 0 { "a" } else { "b" }));
        }
        let (all, _) = log.query("", "", 0, 100);
        assert_eq!(
            all.iter().map(|d| d.sequence).collect::<Vec<_>>(),
            vec![3, 4, 5]
        );
        let (only_a, _) = log.query("greeter", "a", 0, 100);
        assert_eq!(
            only_a.iter().map(|d| d.sequence).collect::<Vec<_>>(),
            vec![3, 5]
        );
        let (after, _) = log.query("", "", 4, 100);
        assert_eq!(after.len(), 1);
        let (limited, _) = log.query("", "", 0, 1);
        assert_eq!(limited[0].sequence, 5);
    }
}
