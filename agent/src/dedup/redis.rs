//! The shared [`DedupStore`] on Redis, [`RedisDedup`]: its key layout, its one command, the bounds around
//! it, and a [`RedisUrl`] that does not show credentials. Details on [`RedisDedup`].

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::breaker::{Admit, Breaker, Transition};
use super::{DedupFuture, DedupStore, Verdict};
use crate::Error;

/// Ids longer than this many bytes are stored under their hash instead of verbatim.
pub const MAX_VERBATIM_ID: usize = 128;
/// At most this many bytes of key prefix (keys stay bounded: prefix + 2 + at most 128 bytes).
pub const MAX_KEY_PREFIX: usize = 256;
/// The longest window accepted. Far beyond any retry horizon; Redis adds the window to its clock.
pub const MAX_WINDOW: Duration = Duration::from_secs(30 * 24 * 3600);
/// The key prefix [`RedisDedupOptions::new`] uses.
pub const DEFAULT_KEY_PREFIX: &str = "lateral:dedup:";
/// The bound on one check that [`RedisDedupOptions::new`] uses.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(50);
/// The bound on the first connection that [`RedisDedupOptions::new`] uses.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Connection attempts after the first one, when connecting or reconnecting. Few, because a request never
/// waits longer than the call timeout anyway, and a failed reconnect is retried on the next request.
const CONNECT_RETRIES: usize = 2;

/// How [`RedisDedup`] behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisDedupOptions {
    /// How long an id is remembered (`PX`); at least 1 ms, at most [`MAX_WINDOW`].
    pub window: Duration,
    /// Prepended to every key; agents that must share a window use the same prefix. At most
    /// [`MAX_KEY_PREFIX`] bytes.
    pub key_prefix: String,
    /// Bound on one check, from the call to the reply (default [`DEFAULT_TIMEOUT`]); not zero.
    pub timeout: Duration,
    /// Bound on the first connection (default [`DEFAULT_CONNECT_TIMEOUT`]); not zero.
    pub connect_timeout: Duration,
    /// After a failed check, skip Redis this long before probing it again (doubling while probes fail, up
    /// to [`breaker::MAX_COOLDOWN`](super::breaker::MAX_COOLDOWN)); default
    /// [`breaker::BASE_COOLDOWN`](super::breaker::BASE_COOLDOWN).
    pub skip_after_failure: Duration,
}

impl RedisDedupOptions {
    /// Options with `window` and the defaults for the rest.
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            key_prefix: DEFAULT_KEY_PREFIX.to_owned(),
            timeout: DEFAULT_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            skip_after_failure: super::breaker::BASE_COOLDOWN,
        }
    }

    /// Checks the bounds documented on each field; the error names the agent flag that sets it.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |field: &str, expected: String| {
            Err(Error::Config {
                field: field.to_owned(),
                expected,
            })
        };
        if self.window < Duration::from_millis(1) || self.window > MAX_WINDOW {
            return bad(
                "--dedup-window-ms",
                format!(
                    "a dedup window between 1 ms and {} days, found {:?}",
                    MAX_WINDOW.as_secs() / 86_400,
                    self.window
                ),
            );
        }
        if self.key_prefix.len() > MAX_KEY_PREFIX {
            return bad(
                "--dedup-redis-prefix",
                format!(
                    "a key prefix of at most {MAX_KEY_PREFIX} bytes, found {} bytes",
                    self.key_prefix.len()
                ),
            );
        }
        if self.timeout.is_zero() {
            return bad(
                "--dedup-redis-timeout-ms",
                "a non-zero bound on one Redis check".to_owned(),
            );
        }
        if self.connect_timeout.is_zero() {
            return bad(
                "RedisDedupOptions::connect_timeout",
                "a non-zero bound on the first Redis connection".to_owned(),
            );
        }
        Ok(())
    }
}

/// A validated Redis URL that never shows its credentials: `Debug` and `Display` print
/// [`redacted`](Self::redacted).
#[derive(Clone)]
pub struct RedisUrl {
    raw: String,
    redacted: Arc<str>,
}

impl RedisUrl {
    /// Checks `url` without connecting: `redis://[user:password@]host[:port][/db]` or
    /// `redis+unix:///path[?db=N]` (also `valkey://`, `unix://`). `rediss://` (TLS) is refused.
    pub fn parse(url: &str) -> Result<Self, Error> {
        let redacted = redact(url);
        let bad = |why: &str| Error::Config {
            field: "--dedup-redis".to_owned(),
            expected: format!(
                "a Redis URL like redis://127.0.0.1:6379/0 (redis://[user:password@]host[:port][/db] or \
                 redis+unix:///path/to/redis.sock), found {redacted}: {why}"
            ),
        };
        let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
        match scheme.as_deref() {
            Some("redis" | "valkey" | "redis+unix" | "valkey+unix" | "unix") => {}
            Some("rediss" | "valkeys") => {
                return Err(bad(
                    "TLS (rediss://) is not built into lateral-agent; reach Redis over loopback or a \
                     private network with redis://",
                ));
            }
            _ => return Err(bad("the scheme must be redis:// or redis+unix://")),
        }
        // Parsing only: `Client::open` does no I/O. Its message never repeats the URL.
        redis::Client::open(url).map_err(|e| bad(&e.to_string()))?;
        Ok(Self {
            raw: url.to_owned(),
            redacted: Arc::from(redacted),
        })
    }

    /// The URL with its user info and query replaced by `***`.
    pub fn redacted(&self) -> &str {
        &self.redacted
    }
}

impl std::fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("RedisUrl").field(&self.redacted).finish()
    }
}

impl std::fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted)
    }
}

impl std::str::FromStr for RedisUrl {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        Self::parse(s)
    }
}

/// `url` with what may be secret replaced by `***`: everything between `://` and the last `@` (user
/// and password, even if the password holds `/`, `?` or `@`), and the query and fragment after it. A string
/// without `://` is shown as is unless it holds an `@`.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return if url.contains('@') {
            "***".to_owned()
        } else {
            url.to_owned()
        };
    };
    let (userinfo, host_and_path) = match rest.rfind('@') {
        Some(at) => (true, &rest[at + 1..]),
        None => (false, rest),
    };
    let (location, query) = match host_and_path.find(['?', '#']) {
        Some(q) => (&host_and_path[..q], true),
        None => (host_and_path, false),
    };
    format!(
        "{scheme}://{}{location}{}",
        if userinfo { "***@" } else { "" },
        if query { "?***" } else { "" }
    )
}

/// 128-bit FNV-1a (Fowler–Noll–Vo, draft-eastlake-fnv): the standard offset basis and prime, so every
/// process computes the same value for the same bytes.
pub fn fnv1a_128(bytes: &[u8]) -> u128 {
    const OFFSET_BASIS: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    const PRIME: u128 = 0x0000_0000_0100_0000_0000_0000_0000_013b;
    bytes.iter().fold(OFFSET_BASIS, |hash, &b| {
        (hash ^ u128::from(b)).wrapping_mul(PRIME)
    })
}

/// The Redis key for `id`; see [`RedisDedup`].
pub fn key_for(prefix: &[u8], id: &str) -> Vec<u8> {
    let id = id.as_bytes();
    let mut key = Vec::with_capacity(prefix.len() + 2 + id.len().min(MAX_VERBATIM_ID));
    key.extend_from_slice(prefix);
    if id.len() <= MAX_VERBATIM_ID {
        key.extend_from_slice(b"i:");
        key.extend_from_slice(id);
    } else {
        key.extend_from_slice(b"h:");
        key.extend_from_slice(format!("{:032x}", fnv1a_128(id)).as_bytes());
    }
    key
}

/// The verdict a reply to `SET .. NX` says.
fn verdict_of(reply: &redis::Value) -> Result<Verdict, Error> {
    match reply {
        redis::Value::Okay => Ok(Verdict::Fresh),
        redis::Value::SimpleString(s) if s == "OK" => Ok(Verdict::Fresh),
        redis::Value::Nil => Ok(Verdict::Duplicate),
        other => Err(Error::Dedup(format!(
            "unexpected reply to SET NX: {other:?}"
        ))),
    }
}

/// The shared [`DedupStore`]: one Redis holds the window for every agent that points at it.
///
/// Use it when a retry can land on a different agent than the first attempt — several proxies in front of
/// one backend, or the endpoints of one service each behind their own agent — so the window must be shared
/// across processes. [`InMemoryDedup`](super::InMemoryDedup) only sees its own process.
///
/// How it works:
/// - **Command:** `SET <key> 1 NX PX <window ms>`. `OK` is [`Verdict::Fresh`], a nil reply
///   [`Verdict::Duplicate`]. The check and the insert are one command, so of two agents (or tasks) racing on
///   the same id exactly one is fresh. Redis holds the clock and expires the key; no time is read here.
/// - **Keys:** `<prefix>i:<id>` for ids of at most [`MAX_VERBATIM_ID`] bytes (readable in `redis-cli`);
///   `<prefix>h:<32 hex digits>` for longer ones, the 128-bit FNV-1a hash of the id (fixed offset basis and
///   prime, see [`fnv1a_128`]) — the same in every process, so agents agree on the key, and bounded whatever
///   the header length. The `i:`/`h:` tags keep the two forms apart. FNV is not a cryptographic hash: an
///   attacker who already knows another client's long id could craft a colliding one and get that client's
///   request rejected. Ids Lateral's balancer stamps (`<client id>-<hex counter>`) stay verbatim unless the
///   client id itself is longer than about 110 bytes.
///   Keys are binary-safe, so any id bytes are fine.
/// - **Bounds:** every call is bounded by [`RedisDedupOptions::timeout`] (default 50 ms). A timeout, a lost
///   connection or an unexpected reply is an [`Error::Dedup`]; the layer lets the request through (fail
///   open). After a failure a [circuit breaker](super::breaker) skips Redis for 1 s (doubling to 30 s while
///   probes keep failing), so during an outage requests go through unchecked at once instead of each
///   waiting for the timeout; the outage and the recovery are logged once each.
/// - **Connection:** a [`ConnectionManager`] (one multiplexed connection, reconnected in the background
///   after an I/O error). [`RedisDedup::connect`] fails if the first connection cannot be made within
///   [`RedisDedupOptions::connect_timeout`], so a wrong URL is found at start-up rather than on requests.
/// - **Credentials:** [`RedisUrl`]'s `Debug` and `Display`, and every error message, show the URL with its
///   user info and query (where `redis+unix` URLs carry `pass=`) replaced by `***`.
///
/// It does not speak TLS (`rediss://` is refused): the agent's Redis is expected on loopback or a private
/// network.
///
/// Cheap to clone: clones share the connection.
#[derive(Clone)]
pub struct RedisDedup {
    conn: ConnectionManager,
    url: RedisUrl,
    prefix: Arc<[u8]>,
    window_ms: u64,
    timeout: Duration,
    breaker: Arc<Mutex<Breaker>>,
}

impl std::fmt::Debug for RedisDedup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisDedup")
            .field("url", &self.url)
            .field("key_prefix", &String::from_utf8_lossy(&self.prefix))
            .field("window_ms", &self.window_ms)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl RedisDedup {
    /// Connects to `url` with a `window`, `key_prefix` and the default timeouts
    /// ([`RedisDedupOptions::new`]).
    ///
    /// Fails with [`Error::Config`] for a bad URL or window, and with [`Error::Dedup`] if Redis cannot be
    /// reached (or refuses the credentials) within the connect timeout.
    pub async fn connect(url: &str, window: Duration, key_prefix: &str) -> Result<Self, Error> {
        let options = RedisDedupOptions {
            key_prefix: key_prefix.to_owned(),
            ..RedisDedupOptions::new(window)
        };
        Self::connect_with(RedisUrl::parse(url)?, options).await
    }

    /// Like [`connect`](Self::connect), with every option.
    pub async fn connect_with(url: RedisUrl, options: RedisDedupOptions) -> Result<Self, Error> {
        options.validate()?;
        let window_ms = u64::try_from(options.window.as_millis()).unwrap_or(u64::MAX);
        let client = redis::Client::open(url.raw.as_str()).map_err(|e| Error::Config {
            field: "--dedup-redis".to_owned(),
            expected: format!("a Redis URL, found {url}: {e}"),
        })?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(options.connect_timeout))
            .set_number_of_retries(CONNECT_RETRIES)
            .set_max_delay(Duration::from_secs(1));
        let cannot =
            |why: String| Error::Dedup(format!("cannot connect to {url} (--dedup-redis): {why}"));
        let conn = tokio::time::timeout(
            options.connect_timeout,
            ConnectionManager::new_with_config(client, config),
        )
        .await
        .map_err(|_| cannot(format!("no answer within {:?}", options.connect_timeout)))?
        .map_err(|e| cannot(e.to_string()))?;
        Ok(Self {
            conn,
            prefix: Arc::from(options.key_prefix.as_bytes()),
            url,
            window_ms,
            timeout: options.timeout,
            breaker: Arc::new(Mutex::new(Breaker::new(options.skip_after_failure))),
        })
    }

    /// The URL, redacted.
    pub fn url(&self) -> &RedisUrl {
        &self.url
    }
}

impl DedupStore for RedisDedup {
    fn check_and_insert(&self, id: &str) -> DedupFuture {
        let mut cmd = redis::cmd("SET");
        cmd.arg(key_for(&self.prefix, id))
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(self.window_ms);
        let mut conn = self.conn.clone();
        let timeout = self.timeout;
        let url = self.url.redacted.clone();
        let breaker = Arc::clone(&self.breaker);
        let now = tokio::time::Instant::now();
        if let Admit::Skip { until } = lock(&breaker).admit(now) {
            let wait = until.saturating_duration_since(now);
            return Box::pin(std::future::ready(Err(Error::Dedup(format!(
                "{url} skipped after a failure (next try in {wait:?})"
            )))));
        }
        Box::pin(async move {
            let outcome =
                match tokio::time::timeout(timeout, cmd.query_async::<redis::Value>(&mut conn))
                    .await
                {
                    Ok(Ok(reply)) => verdict_of(&reply),
                    Ok(Err(e)) => Err(Error::Dedup(format!("SET NX on {url}: {e}"))),
                    Err(_) => Err(Error::Dedup(format!(
                        "no answer from {url} within {timeout:?}"
                    ))),
                };
            match &outcome {
                Ok(_) => {
                    if lock(&breaker).on_success() == Transition::Closed {
                        tracing::info!(%url, "Redis dedup store answers again; checking request ids again");
                    }
                }
                Err(e) => {
                    let transition = lock(&breaker).on_failure(tokio::time::Instant::now());
                    if let Transition::Opened { cooldown } = transition {
                        tracing::warn!(%url, error = %e, ?cooldown, "Redis dedup store failed; requests go through unchecked until it answers a probe");
                    }
                }
            }
            outcome
        })
    }
}

fn lock(breaker: &Mutex<Breaker>) -> std::sync::MutexGuard<'_, Breaker> {
    breaker.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_128_matches_the_reference_vectors() {
        assert_eq!(fnv1a_128(b""), 0x6c62272e07bb014262b821756295c58d);
        assert_eq!(fnv1a_128(b"a"), 0xd228cb696f1a8caf78912b704e4a8964);
        assert_eq!(fnv1a_128(b"foobar"), 0x343e1662793c64bf6f0d3597ba446f18);
    }

    #[test]
    fn short_ids_are_verbatim_long_ones_hashed_and_bounded() {
        assert_eq!(key_for(b"p:", "client-1f"), b"p:i:client-1f");
        let at_limit = "x".repeat(MAX_VERBATIM_ID);
        assert_eq!(
            key_for(b"p:", &at_limit),
            [b"p:i:".as_slice(), at_limit.as_bytes()].concat()
        );
        let long = "y".repeat(10_000);
        let key = key_for(b"p:", &long);
        assert_eq!(key.len(), 2 + 2 + 32);
        assert!(
            key.starts_with(b"p:h:"),
            "{}",
            String::from_utf8_lossy(&key)
        );
        assert_eq!(key, key_for(b"p:", &long), "stable");
        assert_ne!(key, key_for(b"p:", &"y".repeat(10_001)));
        // A short id that spells a hashed key still gets its own key.
        let spelled = String::from_utf8_lossy(&key[4..]).into_owned();
        assert_ne!(key_for(b"p:", &format!("h:{spelled}")), key);
        // Odd bytes go in as they are.
        assert_eq!(key_for(b"", "a\u{0}\r\n b"), b"i:a\0\r\n b");
    }

    #[test]
    fn replies_map_to_verdicts() {
        assert_eq!(verdict_of(&redis::Value::Okay).unwrap(), Verdict::Fresh);
        assert_eq!(
            verdict_of(&redis::Value::SimpleString("OK".into())).unwrap(),
            Verdict::Fresh
        );
        assert_eq!(verdict_of(&redis::Value::Nil).unwrap(), Verdict::Duplicate);
        assert!(matches!(
            verdict_of(&redis::Value::Int(1)),
            Err(Error::Dedup(_))
        ));
    }

    #[test]
    fn redaction_hides_user_info_and_query() {
        assert_eq!(
            redact("redis://127.0.0.1:6379/0"),
            "redis://127.0.0.1:6379/0"
        );
        assert_eq!(
            redact("redis://user:hunter2@10.0.0.5:6379/1"),
            "redis://***@10.0.0.5:6379/1"
        );
        assert_eq!(redact("redis://:p/a?s@s@h:1"), "redis://***@h:1");
        assert_eq!(
            redact("redis+unix:///run/redis.sock?db=1&pass=hunter2"),
            "redis+unix:///run/redis.sock?***"
        );
        assert_eq!(redact("localhost:6379"), "localhost:6379");
        assert_eq!(redact("hunter2@localhost"), "***");
    }

    #[test]
    fn urls_are_checked_without_connecting() {
        for ok in [
            "redis://127.0.0.1:6379/0",
            "redis://:pw@localhost",
            "redis+unix:///run/redis.sock?db=2",
        ] {
            assert!(RedisUrl::parse(ok).is_ok(), "{ok}");
        }
        for (bad, says) in [
            ("http://127.0.0.1:6379", "redis://"),
            ("127.0.0.1:6379", "redis://"),
            ("rediss://127.0.0.1:6379", "TLS"),
            ("redis://", "redis://"),
            ("redis://127.0.0.1:6379/notadb", "redis://"),
        ] {
            let err = RedisUrl::parse(bad).unwrap_err().to_string();
            assert!(
                err.contains("--dedup-redis") && err.contains(says),
                "{bad}: {err}"
            );
        }
        let err = RedisUrl::parse("redis://u:hunter2@h:1/x").unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let url = RedisUrl::parse("redis://u:hunter2@h:1/0").unwrap();
        assert!(!format!("{url:?} {url}").contains("hunter2"));
    }

    #[test]
    fn options_are_bounded() {
        let ok = RedisDedupOptions::new(Duration::from_secs(60));
        assert!(ok.validate().is_ok());
        let with = |f: fn(&mut RedisDedupOptions)| {
            let mut o = ok.clone();
            f(&mut o);
            o.validate().unwrap_err().to_string()
        };
        assert!(with(|o| o.window = Duration::ZERO).contains("--dedup-window-ms"));
        assert!(with(|o| o.window = Duration::from_micros(999)).contains("--dedup-window-ms"));
        assert!(with(|o| o.window = MAX_WINDOW * 2).contains("--dedup-window-ms"));
        assert!(with(|o| o.timeout = Duration::ZERO).contains("--dedup-redis-timeout-ms"));
        assert!(with(|o| o.key_prefix = "k".repeat(300)).contains("--dedup-redis-prefix"));
    }
}
