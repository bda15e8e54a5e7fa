//! Interop with libcoap's `coap-client-notls`, a CoAP client nobody here wrote.

use grove_proto::coap::driver::Router;
use grove_proto::coap::{Code, Config, Method, Response};
use grove_tests::{pattern, run, serve, tool};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(30);

async fn grove_test_server(secure_hits: Arc<AtomicUsize>) -> grove_proto::coap::driver::Handle {
    let router = Router::new()
        .open_route(Method::Get, "/test/hello", false, |_| async {
            Response::content(b"hello from grove".to_vec(), Some(0))
        })
        .open_route(Method::Get, "/test/big", false, |_| async {
            Response::content(pattern(5000), Some(0))
        })
        .open_route(Method::Get, "/test/counter", true, |_| async {
            Response::content(b"0".to_vec(), Some(0))
        })
        .route(Method::Get, "/secure", move |_| {
            let hits = secure_hits.clone();
            async move {
                hits.fetch_add(1, Ordering::SeqCst);
                Response::content(b"secret".to_vec(), Some(0))
            }
        });
    serve(router, Config::default()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libcoap_discovers_grove_resources() {
    let Some(client) = tool("coap-client-notls") else {
        return;
    };
    let server = grove_test_server(Arc::default()).await;
    let uri = format!("coap://{}/.well-known/core", server.local_addr());
    let out = run(&client, &["-m", "get", &uri], LIMIT).await;
    assert!(out.success, "{out:?}");
    for link in [
        "</test/hello>",
        "</test/big>",
        "</test/counter>;obs",
        "</secure>",
    ] {
        assert!(
            out.stdout.contains(link),
            "{link} missing from {:?}",
            out.stdout
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libcoap_gets_a_block_wise_body_intact() {
    let Some(client) = tool("coap-client-notls") else {
        return;
    };
    let server = grove_test_server(Arc::default()).await;
    let dir = std::env::temp_dir().join(format!("grove-libcoap-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("big.out");
    let uri = format!("coap://{}/test/big", server.local_addr());
    // Ask for 64-byte blocks: 79 blocks, each a separate exchange.
    let out = run(
        &client,
        &["-m", "get", "-b", "64", "-o", file.to_str().unwrap(), &uri],
        LIMIT,
    )
    .await;
    assert!(out.success, "{out:?}");
    let got = std::fs::read(&file).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(got.len(), 5000);
    assert!(got == pattern(5000), "body differs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libcoap_observes_a_grove_resource() {
    let Some(client) = tool("coap-client-notls") else {
        return;
    };
    let server = grove_test_server(Arc::default()).await;
    let uri = format!("coap://{}/test/counter", server.local_addr());
    let observer = {
        let client = client.clone();
        tokio::spawn(async move { run(&client, &["-m", "get", "-s", "4", &uri], LIMIT).await })
    };
    // Wait until libcoap registered, then publish five values.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut n = 1;
    while tokio::time::Instant::now() < deadline && n <= 5 {
        if server
            .notify(
                "/test/counter",
                Response::content(format!("value-{n}").into_bytes(), Some(0)),
            )
            .await
            > 0
        {
            n += 1;
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert_eq!(n, 6, "libcoap never registered as an observer");
    let out = observer.await.unwrap();
    assert!(out.success, "{out:?}");
    let positions: Vec<usize> = (1..=5)
        .map(|i| {
            out.stdout
                .find(&format!("value-{i}"))
                .unwrap_or_else(|| panic!("value-{i} not seen: {:?}", out.stdout))
        })
        .collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "notifications out of order: {:?}",
        out.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libcoap_without_oscore_gets_4_01_for_a_protected_resource() {
    let Some(client) = tool("coap-client-notls") else {
        return;
    };
    let hits = Arc::new(AtomicUsize::new(0));
    let server = grove_test_server(hits.clone()).await;
    let uri = format!("coap://{}/secure", server.local_addr());
    let out = run(&client, &["-m", "get", &uri], LIMIT).await;
    let text = format!("{}{}", out.stdout, out.stderr);
    assert!(text.contains("4.01"), "no 4.01 in {text:?}");
    assert!(!text.contains("secret"));
    assert_eq!(hits.load(Ordering::SeqCst), 0, "the handler ran");
    assert!(server.stats().await.oscore_rejected >= 1);
    let _ = Code::UNAUTHORIZED;
}
