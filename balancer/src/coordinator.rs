//! The coordinator (placeholder, being written).
