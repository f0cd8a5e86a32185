//! Outbound HTTPS: HTTP/2 when the server selects `h2` by ALPN (trailers intact), HTTP/1.1
//! otherwise — against a real TLS server with a throwaway certificate for `localhost`.
#![allow(clippy::unwrap_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper_util::rt::{TokioExecutor, TokioIo};
use storemesh_edge::outbound::H2cPriorKnowledge;
use storemesh_edge::send::OutboundClient;

struct Certificate {
    der: rustls::pki_types::CertificateDer<'static>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
}

fn certificate() -> Certificate {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    Certificate {
        der: certified.cert.der().clone(),
        key: rustls::pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into()),
    }
}

/// A TLS server offering `alpn`; it answers with the HTTP version it saw, plus a trailer.
async fn tls_server(certificate: &Certificate, alpn: &[&[u8]]) -> SocketAddr {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![certificate.der.clone()], certificate.key.clone_key())
    .unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(stream).await else {
                    return;
                };
                let service = hyper::service::service_fn(
                    |request: http::Request<hyper::body::Incoming>| async move {
                        let mut trailers = http::HeaderMap::new();
                        trailers.insert("x-trailer", http::HeaderValue::from_static("intact"));
                        let frames = futures::stream::iter([
                            Ok::<_, Infallible>(http_body::Frame::data(Bytes::from(format!(
                                "{:?}",
                                request.version()
                            )))),
                            Ok(http_body::Frame::trailers(trailers)),
                        ]);
                        Ok::<_, Infallible>(http::Response::new(StreamBody::new(frames)))
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

async fn fetch(client: &Arc<OutboundClient>, url: &str) -> (http::Version, String, Option<String>) {
    let request = http::Request::get(url)
        .header(http::header::HOST, "localhost")
        .header("te", "trailers")
        .body(
            Empty::<Bytes>::new()
                .map_err(|never| match never {})
                .boxed_unsync(),
        )
        .unwrap();
    let (response, io) = client.clone().send(request, None).await.unwrap();
    tokio::spawn(Box::into_pin(io));
    let version = response.version();
    let collected = response.into_body().collect().await.unwrap();
    let trailer = collected
        .trailers()
        .and_then(|t| t.get("x-trailer"))
        .map(|v| v.to_str().unwrap().to_owned());
    let body = String::from_utf8(collected.to_bytes().to_vec()).unwrap();
    (version, body, trailer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_uses_http2_when_alpn_selects_h2_and_http1_otherwise() {
    let certificate = certificate();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(certificate.der.clone()).unwrap();
    let client = Arc::new(
        OutboundClient::with_roots(H2cPriorKnowledge::default(), Duration::from_secs(5), roots)
            .unwrap(),
    );

    let h2 = tls_server(&certificate, &[b"h2", b"http/1.1"]).await;
    let (version, body, trailer) =
        fetch(&client, &format!("https://localhost:{}/", h2.port())).await;
    assert_eq!(version, http::Version::HTTP_2);
    assert_eq!(body, "HTTP/2.0");
    assert_eq!(trailer.as_deref(), Some("intact"));

    let h1 = tls_server(&certificate, &[b"http/1.1"]).await;
    let (version, body, _) = fetch(&client, &format!("https://localhost:{}/", h1.port())).await;
    assert_eq!(version, http::Version::HTTP_11);
    assert_eq!(body, "HTTP/1.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_refuses_an_untrusted_certificate() {
    let certificate = certificate();
    let client = Arc::new(
        OutboundClient::new(H2cPriorKnowledge::default(), Duration::from_secs(5)).unwrap(),
    );
    let server = tls_server(&certificate, &[b"h2"]).await;
    let request = http::Request::get(format!("https://localhost:{}/", server.port()))
        .body(
            Empty::<Bytes>::new()
                .map_err(|never| match never {})
                .boxed_unsync(),
        )
        .unwrap();
    let error = client.send(request, None).await.err().unwrap();
    assert!(
        matches!(error, wasmtime_wasi_http::Error::Tls(_)),
        "{error}"
    );
}
