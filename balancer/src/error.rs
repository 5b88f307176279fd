//! The crate's one error type.

/// What can go wrong building a [`crate::Balancer`]; requests themselves fail with a `tonic::Status`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is invalid: names the source (file or flag), the field and what was expected.
    #[error("invalid configuration in {source_name}: field `{field}`: {expected}")]
    Config {
        /// File path or "flag --x" / "env LATERAL_X".
        source_name: String,
        /// Dotted path of the offending field.
        field: String,
        /// What was expected, and what was found.
        expected: String,
    },
}

impl From<Error> for tonic::Status {
    fn from(error: Error) -> Self {
        tonic::Status::failed_precondition(error.to_string())
    }
}
