//! Draining: stop taking traffic gracefully, then exit.
//!
//! A drain starts on SIGTERM, SIGINT (Ctrl-C), an admin request (`POST /drain` on the loopback admin
//! endpoint, see [`admin`]) or a call to [`DrainSwitch::drain`]. Then, in order:
//! 1. the measuring side is marked not-accepting ([`Drainable::set_accepting`]`(false)`), so ORCA trailers
//!    and any heartbeat taken from now on say so;
//! 2. every subscribed coordinator gets `Goodbye { reason, drain_grace_ms }` and its stream is finished
//!    (coordinators stop routing new requests here at once);
//! 3. the agent waits the grace period, so requests already routed here can finish;
//! 4. every QUIC connection is closed with [`close_code::DRAINED`] and [`Drainer::run`] returns; the binary
//!    exits 0.
//!
//! However it started, the drain shows in [`DrainSwitch::is_draining`] (and so in the admin endpoint's
//! `GET /healthz`). A second signal during the grace period cuts it short (the connections are still closed
//! cleanly); the first signal after an admin-requested drain does not — an orchestrator that calls
//! `POST /drain` and then sends SIGTERM (a Kubernetes preStop hook, say) gets the whole grace period.
//!
//! [`close_code::DRAINED`]: crate::reporter::close_code::DRAINED

pub mod admin;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::Error;
use crate::reporter::ReporterHandle;

/// The measuring side's accepting flag, as the drain sees it.
///
/// Implemented for any `Fn(bool) + Send + Sync`, so a caller passes e.g.
/// `move |accepting| recorder.set_accepting(accepting)` without this module depending on the recorder.
pub trait Drainable: Send + Sync + 'static {
    /// Sets whether the backend accepts new requests.
    fn set_accepting(&self, accepting: bool);
}

impl<F: Fn(bool) + Send + Sync + 'static> Drainable for F {
    fn set_accepting(&self, accepting: bool) {
        self(accepting)
    }
}

/// Requests a drain from anywhere (admin endpoint, tests, an embedding application). Cheap to clone.
#[derive(Debug, Clone)]
pub struct DrainSwitch {
    tx: Arc<watch::Sender<Option<String>>>,
}

impl DrainSwitch {
    /// Starts draining with `reason` (sent in `Goodbye`). Only the first request counts; returns whether
    /// this call started the drain.
    pub fn drain(&self, reason: impl Into<String>) -> bool {
        let reason = reason.into();
        self.tx.send_if_modified(|current| {
            if current.is_some() {
                return false;
            }
            *current = Some(reason);
            true
        })
    }

    /// Whether a drain has been requested.
    pub fn is_draining(&self) -> bool {
        self.tx.borrow().is_some()
    }
}

/// How a drain went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrainOutcome {
    /// What started it ("SIGTERM", "SIGINT", "admin request", or the caller's reason).
    pub reason: String,
    /// Whether a second signal cut the grace period short.
    pub interrupted: bool,
}

/// Waits for a drain trigger and carries the drain out. See the [module docs](self).
pub struct Drainer {
    reporter: ReporterHandle,
    target: Arc<dyn Drainable>,
    grace: Duration,
    rx: watch::Receiver<Option<String>>,
    switch: DrainSwitch,
    signals: bool,
    /// Signals from the application instead of the process's (see [`Drainer::with_signals_from`]).
    injected: Option<tokio::sync::mpsc::Receiver<&'static str>>,
}

impl std::fmt::Debug for Drainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Drainer")
            .field("reporter", &self.reporter)
            .field("grace", &self.grace)
            .field("signals", &self.signals)
            .finish_non_exhaustive()
    }
}

impl Drainer {
    /// A drainer for `reporter` that marks `target` not-accepting and waits `grace`. It listens to SIGTERM and
    /// SIGINT unless [`Drainer::without_signals`] is called. Returns the switch that also triggers it.
    pub fn new(
        reporter: ReporterHandle,
        target: Arc<dyn Drainable>,
        grace: Duration,
    ) -> (Self, DrainSwitch) {
        let (tx, rx) = watch::channel(None);
        let switch = DrainSwitch { tx: Arc::new(tx) };
        (
            Self {
                reporter,
                target,
                grace,
                rx,
                switch: switch.clone(),
                signals: true,
                injected: None,
            },
            switch,
        )
    }

    /// Does not install signal handlers (for tests and applications that handle signals themselves).
    pub fn without_signals(mut self) -> Self {
        self.signals = false;
        self
    }

    /// Takes signals (their names, e.g. "SIGTERM") from `rx` instead of installing handlers: for
    /// applications that route signals themselves, and tests.
    pub fn with_signals_from(mut self, rx: tokio::sync::mpsc::Receiver<&'static str>) -> Self {
        self.signals = false;
        self.injected = Some(rx);
        self
    }

    /// Waits for a trigger, then drains and closes the reporter. Returns when the agent may exit.
    pub async fn run(mut self) -> Result<DrainOutcome, Error> {
        let mut signals = Signals::new(self.signals)?;
        signals.injected = self.injected.take();
        let (reason, by_signal) = tokio::select! {
            name = signals.next() => (name.to_owned(), true),
            reason = wait_requested(&mut self.rx) => (reason, false),
        };
        // Make a signal-started drain visible to `is_draining` (health checks) like a requested one.
        self.switch.drain(reason.clone());
        tracing::warn!(
            %reason,
            grace_ms = self.grace.as_millis() as u64,
            "draining: reporting not-accepting, sending Goodbye, then waiting the grace period \
             (send the signal again to stop at once)"
        );
        self.target.set_accepting(false);
        self.reporter.goodbye(&reason, self.grace)?;
        let deadline = tokio::time::Instant::now() + self.grace;
        let mut signalled = by_signal;
        let interrupted = loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break false,
                name = signals.next() => {
                    if signalled {
                        tracing::warn!(signal = name, "second signal: cutting the drain grace period short");
                        break true;
                    }
                    tracing::info!(signal = name, "signal during a requested drain: finishing the grace period (send it again to stop at once)");
                    signalled = true;
                }
            }
        };
        self.reporter.close_drained().await;
        tracing::info!(%reason, interrupted, "drained");
        Ok(DrainOutcome {
            reason,
            interrupted,
        })
    }
}

async fn wait_requested(rx: &mut watch::Receiver<Option<String>>) -> String {
    loop {
        if let Some(reason) = rx.borrow_and_update().clone() {
            return reason;
        }
        if rx.changed().await.is_err() {
            // Every switch is gone: no request can come any more; wait for signals only.
            std::future::pending::<()>().await;
        }
    }
}

/// SIGTERM and SIGINT, or nothing.
struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
    #[cfg(not(unix))]
    enabled: bool,
    /// Signals from the application instead (then `term`/`int` are off).
    injected: Option<tokio::sync::mpsc::Receiver<&'static str>>,
}

impl Signals {
    #[cfg(unix)]
    fn new(enabled: bool) -> Result<Self, Error> {
        use tokio::signal::unix::{SignalKind, signal};
        if !enabled {
            return Ok(Self {
                term: None,
                int: None,
                injected: None,
            });
        }
        Ok(Self {
            term: Some(signal(SignalKind::terminate())?),
            int: Some(signal(SignalKind::interrupt())?),
            injected: None,
        })
    }

    #[cfg(not(unix))]
    fn new(enabled: bool) -> Result<Self, Error> {
        Ok(Self {
            enabled,
            injected: None,
        })
    }

    /// The name of the next signal received; pending forever when disabled.
    #[cfg(unix)]
    async fn next(&mut self) -> &'static str {
        if let Some(rx) = &mut self.injected {
            return match rx.recv().await {
                Some(name) => name,
                None => std::future::pending().await,
            };
        }
        match (&mut self.term, &mut self.int) {
            (Some(term), Some(int)) => tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            },
            _ => std::future::pending().await,
        }
    }

    #[cfg(not(unix))]
    async fn next(&mut self) -> &'static str {
        if let Some(rx) = &mut self.injected {
            return match rx.recv().await {
                Some(name) => name,
                None => std::future::pending().await,
            };
        }
        if self.enabled {
            let _ = tokio::signal::ctrl_c().await;
            "Ctrl-C"
        } else {
            std::future::pending().await
        }
    }
}
