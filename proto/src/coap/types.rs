//! The request-layer types an application sees, and the per-link parameters.

use crate::oscore::OscoreError;
use std::net::SocketAddr;
use std::time::Duration;

/// A CoAP code (`class << 5 | detail`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Code(pub u8);

impl Code {
    /// 2.01 Created.
    pub const CREATED: Code = Code(0x41);
    /// 2.02 Deleted.
    pub const DELETED: Code = Code(0x42);
    /// 2.04 Changed.
    pub const CHANGED: Code = Code(0x44);
    /// 2.05 Content.
    pub const CONTENT: Code = Code(0x45);
    /// 2.31 Continue.
    pub const CONTINUE: Code = Code(0x5F);
    /// 4.00 Bad Request.
    pub const BAD_REQUEST: Code = Code(0x80);
    /// 4.01 Unauthorized.
    pub const UNAUTHORIZED: Code = Code(0x81);
    /// 4.02 Bad Option.
    pub const BAD_OPTION: Code = Code(0x82);
    /// 4.03 Forbidden.
    pub const FORBIDDEN: Code = Code(0x83);
    /// 4.04 Not Found.
    pub const NOT_FOUND: Code = Code(0x84);
    /// 4.05 Method Not Allowed.
    pub const METHOD_NOT_ALLOWED: Code = Code(0x85);
    /// 4.06 Not Acceptable.
    pub const NOT_ACCEPTABLE: Code = Code(0x86);
    /// 4.08 Request Entity Incomplete.
    pub const REQUEST_ENTITY_INCOMPLETE: Code = Code(0x88);
    /// 4.09 Conflict.
    pub const CONFLICT: Code = Code(0x89);
    /// 4.13 Request Entity Too Large.
    pub const REQUEST_ENTITY_TOO_LARGE: Code = Code(0x8D);
    /// 5.00 Internal Server Error.
    pub const INTERNAL_SERVER_ERROR: Code = Code(0xA0);
    /// 5.03 Service Unavailable.
    pub const SERVICE_UNAVAILABLE: Code = Code(0xA3);
    /// 5.04 Gateway Timeout.
    pub const GATEWAY_TIMEOUT: Code = Code(0xA4);

    /// The class digit (2 for success, 4 client error, 5 server error).
    pub fn class(self) -> u8 {
        self.0 >> 5
    }
    /// 2.xx.
    pub fn is_success(self) -> bool {
        self.class() == 2
    }
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{:02}", self.0 >> 5, self.0 & 0x1f)
    }
}

impl std::fmt::Debug for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// A request method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    /// GET.
    Get,
    /// POST.
    Post,
    /// PUT.
    Put,
    /// DELETE.
    Delete,
    /// FETCH (RFC 8132).
    Fetch,
}

impl Method {
    /// The method's code.
    pub fn code(self) -> u8 {
        match self {
            Self::Get => 1,
            Self::Post => 2,
            Self::Put => 3,
            Self::Delete => 4,
            Self::Fetch => 5,
        }
    }
    /// The method for a request code.
    pub fn from_code(c: u8) -> Option<Self> {
        Some(match c {
            1 => Self::Get,
            2 => Self::Post,
            3 => Self::Put,
            4 => Self::Delete,
            5 => Self::Fetch,
            _ => return None,
        })
    }
}

/// A request as the application writes or sees it: whole body, no blocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Method.
    pub method: Method,
    /// Path, `/a/b`.
    pub path: String,
    /// Uri-Query values.
    pub query: Vec<String>,
    /// Content-Format of the body.
    pub content_format: Option<u16>,
    /// Accept.
    pub accept: Option<u16>,
    /// Body.
    pub payload: Vec<u8>,
    /// Observe: `Some(0)` registers, `Some(1)` deregisters.
    pub observe: Option<u32>,
}

impl Request {
    /// A request with no body.
    pub fn new(method: Method, path: &str) -> Self {
        Self {
            method,
            path: path.to_owned(),
            query: Vec::new(),
            content_format: None,
            accept: None,
            payload: Vec::new(),
            observe: None,
        }
    }
    /// GET `path`.
    pub fn get(path: &str) -> Self {
        Self::new(Method::Get, path)
    }
    /// POST `path` with a CBOR body.
    pub fn post_cbor(path: &str, body: Vec<u8>) -> Self {
        let mut r = Self::new(Method::Post, path);
        r.content_format = Some(crate::msg::CONTENT_FORMAT_CBOR);
        r.payload = body;
        r
    }
    /// GET `path` registering an observation.
    pub fn observe(path: &str) -> Self {
        let mut r = Self::get(path);
        r.observe = Some(0);
        r
    }
}

/// A response as the application writes or sees it: whole body, no blocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Code.
    pub code: Code,
    /// Content-Format of the body.
    pub content_format: Option<u16>,
    /// Body.
    pub payload: Vec<u8>,
    /// Observe sequence: set by the endpoint on notifications it sends or receives.
    pub observe: Option<u32>,
    /// Whether the server accepts an observation registration with this response.
    pub observable: bool,
}

impl Response {
    /// A response with a code and no body.
    pub fn new(code: Code) -> Self {
        Self {
            code,
            content_format: None,
            payload: Vec::new(),
            observe: None,
            observable: false,
        }
    }
    /// 2.05 with a body.
    pub fn content(payload: Vec<u8>, content_format: Option<u16>) -> Self {
        Self {
            content_format,
            payload,
            ..Self::new(Code::CONTENT)
        }
    }
    /// 2.05 with a CBOR body.
    pub fn cbor(payload: Vec<u8>) -> Self {
        Self::content(payload, Some(crate::msg::CONTENT_FORMAT_CBOR))
    }
    /// An error with a diagnostic payload (plain text, RFC 7252 §5.5.2).
    pub fn error(code: Code, diagnostic: &str) -> Self {
        Self {
            payload: crate::msg::diagnostic(diagnostic),
            ..Self::new(code)
        }
    }
    /// Mark the response as accepting an observation.
    pub fn observable(mut self) -> Self {
        self.observable = true;
        self
    }
}

/// Transmission parameters of one link (RFC 7252 §4.8); per peer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkParams {
    /// ACK_TIMEOUT.
    pub ack_timeout: Duration,
    /// ACK_RANDOM_FACTOR (≥ 1).
    pub ack_random_factor: f64,
    /// MAX_RETRANSMIT.
    pub max_retransmit: u32,
    /// NSTART: outstanding confirmable requests to one peer.
    pub nstart: usize,
}

impl Default for LinkParams {
    fn default() -> Self {
        Self {
            ack_timeout: Duration::from_secs(2),
            ack_random_factor: 1.5,
            max_retransmit: 4,
            nstart: 1,
        }
    }
}

impl LinkParams {
    /// MAX_TRANSMIT_SPAN: from the first transmission to the last retransmission.
    pub fn max_transmit_span(&self) -> Duration {
        let n = (1u64 << self.max_retransmit.min(20)) - 1;
        self.ack_timeout.mul_f64(n as f64 * self.ack_random_factor)
    }
    /// MAX_TRANSMIT_WAIT: from the first transmission to giving up.
    pub fn max_transmit_wait(&self) -> Duration {
        let n = (1u64 << (self.max_retransmit.min(20) + 1)) - 1;
        self.ack_timeout.mul_f64(n as f64 * self.ack_random_factor)
    }
    /// EXCHANGE_LIFETIME, with MAX_LATENCY of 100 s.
    pub fn exchange_lifetime(&self) -> Duration {
        self.max_transmit_span() + Duration::from_secs(200) + self.ack_timeout
    }
}

/// Endpoint configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Default link parameters (see [`crate::coap::Endpoint::set_link`] for per-peer).
    pub link: LinkParams,
    /// Bodies longer than this go block-wise; a power of two 16..=1024.
    pub block_size: usize,
    /// Largest body accepted in either direction.
    pub max_body: usize,
    /// How long a handler may take before a confirmable request gets an empty ACK and
    /// the response goes separately.
    pub ack_delay: Duration,
    /// How long a client waits for a response after an empty ACK or a NON request.
    pub response_timeout: Duration,
    /// How long message IDs are remembered for duplicate detection.
    pub dedup_lifetime: Duration,
    /// At most this many remembered message IDs (oldest dropped first).
    pub max_dedup: usize,
    /// Seed of the endpoint's PRNG (message IDs, tokens, jitter).
    pub seed: u64,
    /// Paths answered without OSCORE (always `/.well-known/core`).
    pub open_paths: Vec<String>,
    /// Refuse unprotected requests to other paths with 4.01.
    pub require_oscore: bool,
}

impl Default for Config {
    fn default() -> Self {
        let link = LinkParams::default();
        Self {
            link,
            block_size: 1024,
            max_body: 4 << 20,
            ack_delay: Duration::from_millis(500),
            response_timeout: Duration::from_secs(30),
            dedup_lifetime: link.exchange_lifetime(),
            max_dedup: 8192,
            seed: 0x6772_6f76_6521,
            open_paths: Vec::new(),
            require_oscore: true,
        }
    }
}

/// How a client request is sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SendOptions {
    /// Non-confirmable (no retransmission) when true.
    pub non_confirmable: bool,
    /// The OSCORE context to protect with; `None` sends in the clear.
    pub security: Option<ContextKey>,
}

impl SendOptions {
    /// Confirmable, protected with `key`.
    pub fn secure(key: ContextKey) -> Self {
        Self {
            non_confirmable: false,
            security: Some(key),
        }
    }
}

/// Names a security context in an endpoint: the peer's sender id (the kid it puts in
/// its requests) and the id context.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ContextKey {
    /// The id context.
    pub id_context: Option<Vec<u8>>,
    /// The peer's sender id.
    pub recipient_id: Vec<u8>,
}

/// A client exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestHandle(pub u64);

/// A request waiting for the application's response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServerRequestId(pub u64);

/// Why a client exchange ended without a response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExchangeError {
    /// No acknowledgement or response within the retransmission span or timeout.
    #[error("no response from the peer (timed out)")]
    Timeout,
    /// The peer answered with a Reset.
    #[error("the peer reset the exchange")]
    Reset,
    /// Protecting the request failed (no context, sequence numbers, persistence).
    #[error("OSCORE: {0}")]
    Protection(OscoreError),
    /// The response body exceeds the configured maximum.
    #[error("response body larger than {0} bytes")]
    TooLarge(usize),
    /// The endpoint or driver went away.
    #[error("the endpoint shut down")]
    Closed,
}

/// What the endpoint has for the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A request to handle; answer with [`crate::coap::Endpoint::respond`].
    Request {
        /// Pass back to `respond`.
        id: ServerRequestId,
        /// Who sent it.
        peer: SocketAddr,
        /// The whole request (block-wise bodies reassembled).
        request: Request,
        /// The OSCORE context that verified it, `None` for an unprotected request.
        security: Option<ContextKey>,
    },
    /// The (first) response to a client request.
    Response {
        /// The exchange.
        handle: RequestHandle,
        /// The whole response.
        response: Response,
    },
    /// A later notification of an observation, newer than any delivered before.
    Notification {
        /// The observation.
        handle: RequestHandle,
        /// The notification.
        response: Response,
    },
    /// A client exchange ended without a (further) response.
    Failed {
        /// The exchange.
        handle: RequestHandle,
        /// Why.
        error: ExchangeError,
    },
}

/// Counters, for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Datagrams handed in.
    pub datagrams_in: u64,
    /// Datagrams handed out (retransmissions included).
    pub datagrams_out: u64,
    /// Confirmable messages sent again after a timeout.
    pub retransmissions: u64,
    /// Datagrams dropped as malformed.
    pub malformed: u64,
    /// Duplicate messages recognized by message ID.
    pub duplicates: u64,
    /// Requests or responses refused by OSCORE (no context, bad tag, replay, none).
    pub oscore_rejected: u64,
    /// Confirmable messages given up after MAX_RETRANSMIT.
    pub gave_up: u64,
    /// Notifications dropped as older than one already delivered.
    pub stale_notifications: u64,
}

impl Stats {
    /// The datagram counters by kind, as metrics name them.
    pub fn by_kind(&self) -> [(&'static str, u64); 6] {
        [
            ("in", self.datagrams_in),
            ("out", self.datagrams_out),
            ("retransmitted", self.retransmissions),
            ("malformed", self.malformed),
            ("oscore_rejected", self.oscore_rejected),
            ("duplicate", self.duplicates),
        ]
    }
}
