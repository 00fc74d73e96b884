//! Native TLS on the main listener: `wss://` and `https://` without a proxy,
//! a certificate generated at test time, and the failures an operator meets.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use fanout_gateway::Server;
use fanout_gateway::config::TlsConfig;
use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use crate::redis_support::TempDir;
use crate::support::{TestServer, TokenSpec, WAIT, test_config};

/// A self-signed certificate for `localhost` and 127.0.0.1, written as PEM.
pub struct TestCert {
    pub dir: TempDir,
    der: CertificateDer<'static>,
}

impl TestCert {
    pub fn new() -> Self {
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let key = rcgen::generate_simple_self_signed(names).expect("generate certificate");
        let dir = TempDir::new("tls");
        std::fs::write(dir.path().join("cert.pem"), key.cert.pem()).expect("write cert");
        std::fs::write(dir.path().join("key.pem"), key.key_pair.serialize_pem())
            .expect("write key");
        Self {
            der: key.cert.der().clone(),
            dir,
        }
    }

    pub fn config(&self) -> TlsConfig {
        TlsConfig {
            cert_file: self.dir.path().join("cert.pem"),
            key_file: self.dir.path().join("key.pem"),
        }
    }

    /// A client configuration trusting only this certificate.
    pub fn client(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(self.der.clone())
            .expect("trust the test certificate");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Arc::new(
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("protocol versions")
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    }
}

type Wss = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn wss_connect(server: &TestServer, cert: &TestCert, spec: &TokenSpec) -> Wss {
    let url = format!("wss://localhost:{}/ws", server.addr.port());
    let mut request = url.into_client_request().expect("request");
    let bearer = format!("Bearer {}", spec.mint());
    request
        .headers_mut()
        .insert("Authorization", bearer.parse().expect("header"));
    let (ws, _) = tokio::time::timeout(
        WAIT,
        tokio_tungstenite::connect_async_tls_with_config(
            request,
            None,
            false,
            Some(Connector::Rustls(cert.client())),
        ),
    )
    .await
    .expect("wss handshake in time")
    .expect("wss handshake");
    ws
}

async fn next_frame(ws: &mut Wss) -> Value {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a frame in time")
            .expect("open")
            .expect("frame");
        if let Message::Text(t) = msg {
            return serde_json::from_str(&t).expect("json");
        }
    }
}

async fn next_of_type(ws: &mut Wss, kind: &str) -> Value {
    loop {
        let v = next_frame(ws).await;
        if v["type"] == kind {
            return v;
        }
    }
}

#[tokio::test]
async fn wss_clients_subscribe_and_receive_over_native_tls() {
    let cert = TestCert::new();
    let server = TestServer::spawn_with(|c| c.tls = Some(cert.config())).await;

    let mut reader = wss_connect(&server, &cert, &TokenSpec::new("u1", "acme", &["lobby"])).await;
    assert_eq!(next_frame(&mut reader).await["type"], "welcome");
    reader
        .send(Message::text(
            json!({"type":"subscribe","id":1,"room":"lobby"}).to_string(),
        ))
        .await
        .expect("send");
    assert_eq!(next_of_type(&mut reader, "ack").await["id"], 1);

    let mut writer = wss_connect(&server, &cert, &TokenSpec::new("u2", "acme", &["lobby"])).await;
    assert_eq!(next_frame(&mut writer).await["type"], "welcome");
    let publish = json!({"type":"publish","id":7,"room":"lobby","event":"chat","data":{"n":1}});
    writer
        .send(Message::text(publish.to_string()))
        .await
        .expect("send");
    assert_eq!(next_of_type(&mut writer, "ack").await["id"], 7);

    let got = next_of_type(&mut reader, "message").await;
    assert_eq!(got["room"], "lobby", "{got}");
    assert_eq!(got["data"], json!({"n": 1}), "{got}");
}

#[tokio::test]
async fn the_http_endpoints_answer_over_https_and_plaintext_is_not_served() {
    let cert = TestCert::new();
    let server = TestServer::spawn_with(|c| c.tls = Some(cert.config())).await;

    let tcp = TcpStream::connect(server.addr).await.expect("connect");
    let connector = tokio_rustls::TlsConnector::from(cert.client());
    let mut tls = connector
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .expect("TLS handshake");
    tls.write_all(b"GET /readyz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut reply = String::new();
    tokio::time::timeout(WAIT, tls.read_to_string(&mut reply))
        .await
        .expect("reply in time")
        .expect("read");
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");

    // A plaintext HTTP request gets no HTTP answer at all from a TLS listener.
    let plaintext = reqwest::get(server.url("/readyz")).await;
    assert!(
        plaintext.is_err(),
        "plaintext answered on the TLS port: {:?}",
        plaintext.map(|r| r.status())
    );
}

#[tokio::test]
async fn a_client_that_never_handshakes_does_not_hold_up_others() {
    let cert = TestCert::new();
    let server = TestServer::spawn_with(|c| c.tls = Some(cert.config())).await;
    // Connected at the TCP level, silent: the handshake runs in its own
    // connection task, not in the accept loop.
    let _silent: Vec<TcpStream> = futures_util::future::join_all(
        (0..5).map(|_| async { TcpStream::connect(server.addr).await.expect("connect") }),
    )
    .await;
    let started = std::time::Instant::now();
    let mut ws = wss_connect(&server, &cert, &TokenSpec::new("u1", "acme", &[])).await;
    assert_eq!(next_frame(&mut ws).await["type"], "welcome");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "a wss connect behind silent sockets took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn unreadable_or_empty_pem_files_stop_the_start_with_the_field_named() {
    let cert = TestCert::new();
    let mut missing = test_config();
    missing.tls = Some(TlsConfig {
        key_file: PathBuf::from("/nonexistent/key.pem"),
        ..cert.config()
    });
    let err = Server::bind(missing)
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.contains("tls.key_file") && err.contains("/nonexistent/key.pem"),
        "{err}"
    );

    let empty = cert.dir.path().join("empty.pem");
    std::fs::write(&empty, "not a certificate\n").expect("write");
    let mut no_cert = test_config();
    no_cert.tls = Some(TlsConfig {
        cert_file: empty,
        ..cert.config()
    });
    let err = Server::bind(no_cert)
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.contains("tls.cert_file") && err.contains("no certificate"),
        "{err}"
    );
}
