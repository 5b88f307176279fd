//! What a retry sends again: the request head (method, URI, version, headers), kept beside the first
//! attempt, which gets the original parts themselves.
//!
//! No allocation for a usual gRPC head (up to [`INLINE_HEADERS`] header values are kept inline), instead of
//! a `Parts` clone per attempt (the header map's two tables and the extensions map with a box per extension). Extensions go with the first attempt only: nothing below
//! the balancer reads them (tonic's transport and hyper's HTTP/2 client look at none for a gRPC request).

use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Uri, Version};
use smallvec::SmallVec;

/// Header values kept without a heap allocation: a tonic unary call carries 3–6 (content-type, te,
/// grpc-timeout, the request id, a trace context, a user's metadata).
const INLINE_HEADERS: usize = 8;

/// A request head kept for a retry.
#[derive(Debug)]
pub(crate) struct RequestHead {
    method: Method,
    uri: Uri,
    version: Version,
    /// Every value in the map's iteration order (a name with several values appears once per value).
    headers: SmallVec<[(HeaderName, HeaderValue); INLINE_HEADERS]>,
}

impl RequestHead {
    /// Keeps what a retry of `parts` needs (header values are shared, not copied).
    pub(crate) fn keep(parts: &Parts) -> Self {
        let mut headers = SmallVec::with_capacity(parts.headers.len());
        headers.extend(
            parts
                .headers
                .iter()
                .map(|(name, value)| (name.clone(), value.clone())),
        );
        Self {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            version: parts.version,
            headers,
        }
    }

    /// The request's path (the gRPC method).
    pub(crate) fn path(&self) -> &str {
        self.uri.path()
    }

    /// The parts of a retry: the kept head, no extensions.
    pub(crate) fn parts(&self) -> Parts {
        let (mut parts, ()) = Request::new(()).into_parts();
        parts.method = self.method.clone();
        parts.uri = self.uri.clone();
        parts.version = self.version;
        let mut headers = HeaderMap::with_capacity(self.headers.len());
        for (name, value) in &self.headers {
            headers.append(name.clone(), value.clone());
        }
        parts.headers = headers;
        parts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parts_with(headers: &[(String, String)]) -> Parts {
        let mut request = Request::post("http://127.0.0.1:1/echo.Echo/Unary")
            .version(Version::HTTP_2)
            .body(())
            .unwrap_or_default();
        for (name, value) in headers {
            if let (Ok(name), Ok(value)) = (
                HeaderName::try_from(name.as_str()),
                HeaderValue::try_from(value.as_str()),
            ) {
                request.headers_mut().append(name, value);
            }
        }
        request.into_parts().0
    }

    proptest! {
        /// A retry's head is the original's, repeated names and their order included.
        #[test]
        fn a_retry_carries_the_same_head(
            headers in proptest::collection::vec(("[a-c]{1,2}", "[ -~]{0,8}"), 0..12)
        ) {
            let original = parts_with(&headers);
            let head = RequestHead::keep(&original);
            let again = head.parts();
            prop_assert_eq!(&again.method, &original.method);
            prop_assert_eq!(&again.uri, &original.uri);
            prop_assert_eq!(again.version, original.version);
            prop_assert_eq!(&again.headers, &original.headers);
            for name in original.headers.keys() {
                let first: Vec<_> = original.headers.get_all(name).iter().collect();
                let second: Vec<_> = again.headers.get_all(name).iter().collect();
                prop_assert_eq!(first, second);
            }
            prop_assert_eq!(head.path(), "/echo.Echo/Unary");
        }
    }
}
