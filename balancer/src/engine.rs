//! The weight engine (placeholder, being written).
