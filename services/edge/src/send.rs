//! Outbound HTTP for components: HTTP/1.1 by default, HTTP/2 with prior knowledge (h2c) to the
//! configured cleartext authorities, and HTTP/2 over TLS when the server selects `h2` by ALPN.
//! Response trailers are passed through to the guest (gRPC's `grpc-status` lives there).
//!
//! This replaces wasmtime-wasi-http's default sender, which speaks HTTP/1.1 only. It mirrors
//! Spin's outbound HTTP (same h2c rule, same ALPN offer, `Host` removed on HTTP/2) except that
//! connections are not pooled: every request opens its own connection.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::uri::Scheme;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody};

use crate::outbound::H2cPriorKnowledge;

/// Default first-byte and between-bytes timeouts (wasmtime's defaults).
const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(600);

/// Shared outbound settings (one per runtime).
pub struct OutboundClient {
    h2c: H2cPriorKnowledge,
    tls: Arc<rustls::ClientConfig>,
    connect_timeout: Duration,
}

/// The future the guest's `future-incoming-response` resolves from.
pub type SendFuture = Pin<
    Box<
        dyn Future<
                Output = Result<
                    (
                        http::Response<WasiBody>,
                        Box<dyn Future<Output = Result<(), Error>> + Send>,
                    ),
                    Error,
                >,
            > + Send,
    >,
>;

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("cannot configure TLS for outbound requests: {0}")]
    Rustls(#[from] rustls::Error),
}

impl OutboundClient {
    /// A client trusting the Mozilla root certificates (`webpki-roots`), as Spin does.
    pub fn new(h2c: H2cPriorKnowledge, connect_timeout: Duration) -> Result<Self, TlsSetupError> {
        let roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        Self::with_roots(h2c, connect_timeout, roots)
    }

    /// A client trusting exactly `roots` (tests, private CAs).
    pub fn with_roots(
        h2c: H2cPriorKnowledge,
        connect_timeout: Duration,
        roots: rustls::RootCertStore,
    ) -> Result<Self, TlsSetupError> {
        let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Self {
            h2c,
            tls: Arc::new(tls),
            connect_timeout,
        })
    }

    pub fn h2c(&self) -> &H2cPriorKnowledge {
        &self.h2c
    }

    /// Sends `request` (absolute URI, already permitted by the caller).
    pub fn send(
        self: Arc<Self>,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
    ) -> SendFuture {
        Box::pin(async move { self.send_inner(request, options).await })
    }

    async fn send_inner(
        &self,
        mut request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
    ) -> Result<
        (
            http::Response<WasiBody>,
            Box<dyn Future<Output = Result<(), Error>> + Send>,
        ),
        Error,
    > {
        let connect_timeout = options
            .and_then(|o| o.connect_timeout)
            .unwrap_or(self.connect_timeout);
        let first_byte_timeout = options
            .and_then(|o| o.first_byte_timeout)
            .unwrap_or(DEFAULT_READ_TIMEOUT);
        let between_bytes_timeout = options
            .and_then(|o| o.between_bytes_timeout)
            .unwrap_or(DEFAULT_READ_TIMEOUT)
            .max(Duration::from_nanos(1));

        let uri = request.uri().clone();
        let authority = uri.authority().ok_or(Error::HttpRequestUriInvalid)?;
        let use_tls = uri.scheme() == Some(&Scheme::HTTPS);
        let host = authority.host();
        let port = authority
            .port_u16()
            .unwrap_or(if use_tls { 443 } else { 80 });
        let host_for_lookup = host.trim_start_matches('[').trim_end_matches(']');

        let addrs: Vec<_> = tokio::time::timeout(
            connect_timeout,
            tokio::net::lookup_host((host_for_lookup, port)),
        )
        .await
        .map_err(|_| Error::DnsTimeout)?
        .map_err(|error| Error::DnsError {
            rcode: Some(error.to_string()),
            info_code: None,
        })?
        .collect();
        if addrs.is_empty() {
            return Err(Error::DestinationNotFound);
        }
        let tcp = tokio::time::timeout(connect_timeout, TcpStream::connect(addrs.as_slice()))
            .await
            .map_err(|_| Error::ConnectionTimeout)?
            .map_err(|error| match error.kind() {
                std::io::ErrorKind::ConnectionRefused => Error::ConnectionRefused,
                std::io::ErrorKind::TimedOut => Error::ConnectionTimeout,
                _ => Error::Connect(error),
            })?;
        let _ = tcp.set_nodelay(true);

        let (sender, worker) = if use_tls {
            let server_name = rustls::pki_types::ServerName::try_from(host_for_lookup.to_owned())
                .map_err(|error| Error::DnsError {
                rcode: Some(format!("invalid DNS name: {error}")),
                info_code: None,
            })?;
            let connector = tokio_rustls::TlsConnector::from(self.tls.clone());
            let stream = tokio::time::timeout(connect_timeout, connector.connect(server_name, tcp))
                .await
                .map_err(|_| Error::ConnectionTimeout)?
                .map_err(Error::Tls)?;
            let http2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
            handshake(TokioIo::new(stream), http2, connect_timeout).await?
        } else {
            let http2 = self.h2c.contains(authority.as_str());
            handshake(TokioIo::new(tcp), http2, connect_timeout).await?
        };

        let mut sender = sender;
        if sender.is_http2() {
            // HTTP/2 carries the authority in `:authority`; some servers refuse a `host` too.
            request.headers_mut().remove(http::header::HOST);
        } else {
            // HTTP/1.1 origin-form: the request line carries only the path and query.
            let path = uri
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/")
                .to_owned();
            *request.uri_mut() = http::Uri::builder()
                .path_and_query(path)
                .build()
                .map_err(|_| Error::HttpRequestUriInvalid)?;
        }

        let response = tokio::time::timeout(first_byte_timeout, sender.send(request))
            .await
            .map_err(|_| Error::ConnectionReadTimeout)?
            .map_err(hyper_error)?;
        let response = response.map(|incoming| {
            TimedBody {
                incoming,
                between_bytes: between_bytes_timeout,
                sleep: None,
            }
            .boxed_unsync()
        });
        // The connection task stays alive as long as the guest holds the response body.
        let io = async move {
            drop(sender);
            match worker.await {
                Ok(()) => Ok(()),
                Err(error) => Err(hyper_error(error)),
            }
        };
        Ok((response, Box::new(io)))
    }
}

enum Sender {
    Http1(hyper::client::conn::http1::SendRequest<WasiBody>),
    Http2(hyper::client::conn::http2::SendRequest<WasiBody>),
}

impl Sender {
    fn is_http2(&self) -> bool {
        matches!(self, Sender::Http2(_))
    }

    async fn send(
        &mut self,
        request: http::Request<WasiBody>,
    ) -> Result<http::Response<hyper::body::Incoming>, hyper::Error> {
        match self {
            Sender::Http1(sender) => sender.send_request(request).await,
            Sender::Http2(sender) => sender.send_request(request).await,
        }
    }
}

type Worker = wasmtime_wasi::runtime::AbortOnDropJoinHandle<Result<(), hyper::Error>>;

async fn handshake<IO>(io: IO, http2: bool, timeout: Duration) -> Result<(Sender, Worker), Error>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    if http2 {
        let (sender, connection) = tokio::time::timeout(
            timeout,
            hyper::client::conn::http2::Builder::new(TokioExecutor::new()).handshake(io),
        )
        .await
        .map_err(|_| Error::ConnectionTimeout)?
        .map_err(hyper_error)?;
        let worker = wasmtime_wasi::runtime::spawn(connection);
        Ok((Sender::Http2(sender), worker))
    } else {
        let (sender, connection) =
            tokio::time::timeout(timeout, hyper::client::conn::http1::handshake(io))
                .await
                .map_err(|_| Error::ConnectionTimeout)?
                .map_err(hyper_error)?;
        let worker = wasmtime_wasi::runtime::spawn(connection);
        Ok((Sender::Http1(sender), worker))
    }
}

fn hyper_error(error: hyper::Error) -> Error {
    if error.is_timeout() {
        return Error::HttpResponseTimeout;
    }
    tracing::debug!(%error, "outbound HTTP error");
    Error::Hyper(error)
}

/// The response body, failing when no frame arrives within the between-bytes timeout.
struct TimedBody {
    incoming: hyper::body::Incoming,
    between_bytes: Duration,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Body for TimedBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        match Pin::new(&mut self.incoming).poll_frame(cx) {
            Poll::Ready(frame) => {
                self.sleep = None;
                Poll::Ready(frame.map(|frame| frame.map_err(hyper_error)))
            }
            Poll::Pending => {
                let between_bytes = self.between_bytes;
                let sleep = self
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(between_bytes)));
                ready!(sleep.as_mut().poll(cx));
                Poll::Ready(Some(Err(Error::ConnectionReadTimeout)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.incoming.size_hint()
    }
}
