//! The tokio driver on real loopback sockets.

use grove_proto::coap::driver::{self, Router};
use grove_proto::coap::{Code, Config, Endpoint, Method, Request, Response, SendOptions};
use std::time::Duration;

async fn start(router: Router) -> driver::Handle {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let cfg = Config {
        require_oscore: false,
        ..Config::default()
    };
    driver::spawn(sock, Endpoint::new(cfg), router).unwrap().0
}

#[tokio::test]
async fn routes_match_methods_and_path_parameters() {
    let server = start(
        Router::new().route(Method::Get, "/v1/nodes/{id}/status", |inc| async move {
            Response::content(inc.param("id").unwrap_or("?").as_bytes().to_vec(), None)
        }),
    )
    .await;
    let client = start(Router::new()).await;
    let at = server.local_addr();
    let r = client
        .request(
            at,
            Request::get("/v1/nodes/42/status"),
            SendOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!((r.code, r.payload.as_slice()), (Code::CONTENT, &b"42"[..]));
    let r = client
        .request(
            at,
            Request::new(Method::Delete, "/v1/nodes/42/status"),
            SendOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(r.code, Code::METHOD_NOT_ALLOWED);
    let r = client
        .request(at, Request::get("/nowhere"), SendOptions::default())
        .await
        .unwrap();
    assert_eq!(r.code, Code::NOT_FOUND);
}

#[tokio::test]
async fn a_panicking_handler_answers_5_00() {
    let server = start(Router::new().route(Method::Get, "/boom", |_| async {
        if true {
            panic!("handler bug");
        }
        Response::new(Code::CONTENT)
    }))
    .await;
    let client = start(Router::new()).await;
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        client.request(
            server.local_addr(),
            Request::get("/boom"),
            SendOptions::default(),
        ),
    )
    .await
    .expect("an answer")
    .unwrap();
    assert_eq!(r.code, Code::INTERNAL_SERVER_ERROR);
}

#[tokio::test]
async fn a_slow_handler_still_gets_its_response_through() {
    let server = start(Router::new().route(Method::Get, "/slow", |_| async {
        tokio::time::sleep(Duration::from_millis(1200)).await;
        Response::content(b"finally".to_vec(), None)
    }))
    .await;
    let client = start(Router::new()).await;
    let r = client
        .request(
            server.local_addr(),
            Request::get("/slow"),
            SendOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(r.payload, b"finally");
    // The empty ACK after 500 ms stopped the client's retransmissions.
    assert_eq!(client.stats().await.retransmissions, 0);
}
