//! The h2c reverse proxy (in progress).
