//! The gRPC metadata Lateral's parts put on requests and responses for each other: one definition of each
//! name, for the agent (which reads and writes them) and the balancer.

/// Request header: an id that stays the same across a request's attempts, so the agent can drop a
/// duplicate (`<client id>-<counter>`).
pub const REQUEST_ID_HEADER: &str = "x-lateral-request-id";

/// Response header of an agent's refusal, on a trailers-only `UNAVAILABLE` answer: the request was refused
/// *before* the backend saw it, so it may be sent elsewhere whatever the method (nothing was processed).
/// Its value says why: [`REFUSED_OVERLOADED`].
pub const REFUSED_HEADER: &str = "x-lateral-refused";

/// [`REFUSED_HEADER`]'s value for overload shedding.
pub const REFUSED_OVERLOADED: &str = "overloaded";
