//! The shared operator HTTP server, over real loopback sockets: a request is answered (with the peer's
//! address at hand), the connection limit closes the connection one past it and frees its place when a
//! connection ends, shutdown ends the server even with a response that never finishes, and drop stops it.
//! Real time, every wait bounded by a deadline.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::{Body, Bytes, Frame, Incoming};
use lateral_ops::http_server::{self, HttpServer, PeerAddr, ServerConfig};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// Upper bound of every wait in these tests (never reached when they pass).
const DEADLINE: Duration = Duration::from_secs(10);

fn loopback() -> std::net::SocketAddr {
    ([127, 0, 0, 1], 0).into()
}

/// Answers `GET /peer` with the client's address and anything else with `hello`.
async fn hello(req: Request<Incoming>) -> Response<String> {
    let body = match req.uri().path() {
        "/peer" => req
            .extensions()
            .get::<PeerAddr>()
            .map_or("none".to_string(), |p| p.0.to_string()),
        _ => "hello".to_string(),
    };
    Response::new(body)
}

/// Sends one request on `stream` (keep-alive) and reads until the response body `expect` arrived.
async fn request(stream: &mut TcpStream, path: &str, expect: &str) -> String {
    let head = format!("GET {path} HTTP/1.1\r\nhost: test\r\n\r\n");
    stream.write_all(head.as_bytes()).await.expect("write");
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    timeout(DEADLINE, async {
        while !String::from_utf8_lossy(&seen).ends_with(expect) {
            let n = stream.read(&mut buf).await.expect("read");
            assert!(
                n > 0,
                "closed before the response: {:?}",
                String::from_utf8_lossy(&seen)
            );
            seen.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("a response within the deadline");
    String::from_utf8_lossy(&seen).into_owned()
}

/// Whether the server closes `stream` (end of file or reset) without answering a request sent on it.
async fn closed_without_answer(stream: &mut TcpStream) -> bool {
    // The write may already fail if the server closed first.
    let _ = stream
        .write_all(b"GET / HTTP/1.1\r\nhost: test\r\n\r\n")
        .await;
    let mut buf = [0u8; 256];
    match timeout(DEADLINE, stream.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(_)) => false,
        Err(_) => panic!("neither answered nor closed within the deadline"),
    }
}

async fn refused(server_addr: std::net::SocketAddr) -> bool {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while tokio::time::Instant::now() < deadline {
        if TcpStream::connect(server_addr).await.is_err() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

#[tokio::test]
async fn a_request_is_answered_and_sees_its_peer() {
    let server = http_server::serve(loopback(), ServerConfig::new("test"), hello)
        .await
        .expect("bind");
    let mut stream = TcpStream::connect(server.local_addr())
        .await
        .expect("connect");
    let local = stream.local_addr().expect("local addr").to_string();
    let answer = request(&mut stream, "/", "hello").await;
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    // Same connection, kept alive: the handler saw this client's address.
    let answer = request(&mut stream, "/peer", &local).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
}

#[tokio::test]
async fn a_second_bind_of_a_used_address_is_an_error_naming_it() {
    let server = http_server::serve(loopback(), ServerConfig::new("test"), hello)
        .await
        .expect("bind");
    let error = http_server::serve(server.local_addr(), ServerConfig::new("test"), hello)
        .await
        .expect_err("the port is taken");
    assert!(
        error.to_string().contains(&server.local_addr().to_string()),
        "{error}"
    );
}

#[tokio::test]
async fn the_connection_limit_closes_one_more_and_frees_its_place() {
    let config = ServerConfig::new("test").max_connections(1);
    let server: HttpServer = http_server::serve(loopback(), config, hello)
        .await
        .expect("bind");
    let mut first = TcpStream::connect(server.local_addr())
        .await
        .expect("connect");
    // Answered, so the server holds its one place for this connection.
    request(&mut first, "/", "hello").await;
    let mut second = TcpStream::connect(server.local_addr())
        .await
        .expect("connect");
    assert!(closed_without_answer(&mut second).await);
    // The first connection is still served.
    request(&mut first, "/", "hello").await;
    drop(first);
    // Its place comes back once the server sees it close.
    let freed = timeout(DEADLINE, async {
        loop {
            let mut next = TcpStream::connect(server.local_addr())
                .await
                .expect("connect");
            if !closed_without_answer(&mut next).await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(
        freed.is_ok(),
        "no connection was served after the first ended"
    );
}

/// A body that never ends, like an open server-sent event stream.
struct Endless;

impl Body for Endless {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Pending
    }
}

#[tokio::test]
async fn shutdown_closes_idle_connections_and_ends_within_its_grace_despite_an_endless_response() {
    let config = ServerConfig::new("test").shutdown_grace(Duration::from_millis(200));
    let server = http_server::serve(loopback(), config, |req: Request<Incoming>| async move {
        match req.uri().path() {
            "/endless" => Response::new(http_body_util::Either::Left(Endless)),
            _ => Response::new(http_body_util::Either::Right("hello".to_string())),
        }
    })
    .await
    .expect("bind");
    let addr = server.local_addr();
    let mut idle = TcpStream::connect(addr).await.expect("connect");
    request(&mut idle, "/", "hello").await;
    let mut streaming = TcpStream::connect(addr).await.expect("connect");
    streaming
        .write_all(b"GET /endless HTTP/1.1\r\nhost: test\r\n\r\n")
        .await
        .expect("write");
    let mut buf = [0u8; 1024];
    let n = timeout(DEADLINE, streaming.read(&mut buf))
        .await
        .expect("response head within the deadline")
        .expect("read");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200 OK"));

    timeout(DEADLINE, server.shutdown())
        .await
        .expect("shutdown returns (bounded by its grace, far below the deadline)");
    // The idle keep-alive connection was closed gracefully, the endless one aborted, the port released.
    let mut rest = Vec::new();
    let idle_end = timeout(DEADLINE, idle.read_to_end(&mut rest)).await;
    assert!(matches!(idle_end, Ok(Ok(0)) | Ok(Err(_))), "{idle_end:?}");
    let streaming_end = timeout(DEADLINE, streaming.read_to_end(&mut rest)).await;
    assert!(streaming_end.is_ok(), "the endless response was not ended");
    assert!(refused(addr).await, "still accepting after shutdown");
}

#[tokio::test]
async fn dropping_the_server_stops_it() {
    let server = http_server::serve(loopback(), ServerConfig::new("test"), hello)
        .await
        .expect("bind");
    let addr = server.local_addr();
    let mut open = TcpStream::connect(addr).await.expect("connect");
    request(&mut open, "/", "hello").await;
    drop(server);
    let mut rest = Vec::new();
    let end = timeout(DEADLINE, open.read_to_end(&mut rest)).await;
    assert!(end.is_ok(), "the open connection outlived the server");
    assert!(refused(addr).await, "still accepting after drop");
}
