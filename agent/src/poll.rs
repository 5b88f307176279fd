//! The JSON load-endpoint poller (in progress).
