//! The client channel (placeholder, being written).
