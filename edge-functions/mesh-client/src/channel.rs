//! A tower `Service` that sends `http::Request`s over WASI 0.2 outgoing HTTP (the
//! `wasi:http/outgoing-handler` import every Spin host provides), streaming the request body in
//! and the response body out, and handing the response trailers (where gRPC puts `grpc-status`)
//! to the caller.
//!
//! Why not `spin_sdk::http::send`: it buffers or discards the response trailers. Why not the
//! `wasi-grpc` crate: it pins an older `spin-executor` and panics under spin-sdk 5.
//!
//! Rules of spin-sdk 5's executor this module follows:
//! - there is no `spawn`: the request body is pumped from inside the response future and the
//!   response body's `poll_frame`, whichever is being awaited;
//! - every `Poll::Pending` registers a WASI pollable with `spin_executor::push_waker_and_get_token`
//!   (the executor panics when a future is pending with nothing to poll), and re-registering
//!   cancels the previous registration so stale pollables do not pile up;
//! - WASI child resources are dropped before their parents (pollable before its stream, input
//!   stream before `IncomingBody::finish`), and the incoming response stays alive until its body
//!   and trailers were read (struct fields drop in declaration order, which encodes this).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http::{HeaderMap, HeaderName, HeaderValue};
use http_body::{Body, Frame};
use spin_executor::CancelOnDropToken;
use spin_sdk::wit::wasi::http0_2_0::{outgoing_handler, types};
use tonic::Status;
use wasi::clocks::monotonic_clock;
use wasi::io::poll::Pollable;
use wasi::io::streams::{InputStream, OutputStream, StreamError};

/// The error type of the transport: always a boxed [`tonic::Status`], which tonic unboxes.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Bytes asked for per read of the response body.
const READ_SIZE: u64 = 64 * 1024;

/// Where and how requests are sent.
#[derive(Debug, Clone)]
pub struct WasiHttpChannel {
    scheme: types::Scheme,
    authority: String,
    connect_timeout: Duration,
    /// Applied when a request carries no `grpc-timeout` of its own.
    default_timeout: Duration,
}

impl WasiHttpChannel {
    /// A channel to `base` (`http://host:port` or `https://host:port`; a path is ignored).
    pub fn new(
        base: &http::Uri,
        connect_timeout: Duration,
        default_timeout: Duration,
    ) -> Result<Self, String> {
        let scheme = match base.scheme_str() {
            Some("http") => types::Scheme::Http,
            Some("https") => types::Scheme::Https,
            other => return Err(format!("unsupported scheme {other:?} in {base}")),
        };
        let authority = base
            .authority()
            .ok_or_else(|| format!("{base} has no host"))?
            .to_string();
        Ok(Self {
            scheme,
            authority,
            connect_timeout,
            default_timeout,
        })
    }

    /// `host:port` requests go to.
    pub fn authority(&self) -> &str {
        &self.authority
    }
}

impl<B> tower_service::Service<http::Request<B>> for WasiHttpChannel
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = http::Response<WasiResponseBody>;
    type Error = BoxError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let timeout = request
            .headers()
            .get("grpc-timeout")
            .and_then(|value| parse_grpc_timeout(value.as_bytes()))
            .unwrap_or(self.default_timeout);
        let deadline = Deadline::after(timeout);
        match self.start(request) {
            Ok((future_response, pump)) => ResponseFuture {
                waiting: None,
                deadline_waiting: None,
                future_response: Some(future_response),
                pump: Arc::new(Mutex::new(Some(pump))),
                deadline,
                failure: None,
            },
            Err(status) => ResponseFuture {
                waiting: None,
                deadline_waiting: None,
                future_response: None,
                pump: Arc::new(Mutex::new(None)),
                deadline,
                failure: Some(status),
            },
        }
    }
}

impl WasiHttpChannel {
    fn start<B>(
        &self,
        request: http::Request<B>,
    ) -> Result<(types::FutureIncomingResponse, Box<dyn PumpRequest>), Status>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let (parts, body) = request.into_parts();
        let entries: Vec<(String, Vec<u8>)> = parts
            .headers
            .iter()
            .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
            .collect();
        let headers = types::Fields::from_list(&entries)
            .map_err(|error| Status::internal(format!("request headers refused: {error:?}")))?;
        let outgoing = types::OutgoingRequest::new(headers);
        let method = match parts.method.as_str() {
            "GET" => types::Method::Get,
            "POST" => types::Method::Post,
            "PUT" => types::Method::Put,
            "DELETE" => types::Method::Delete,
            other => types::Method::Other(other.to_owned()),
        };
        let path = parts
            .uri
            .path_and_query()
            .map_or("/", |path| path.as_str())
            .to_owned();
        outgoing
            .set_method(&method)
            .and_then(|()| outgoing.set_scheme(Some(&self.scheme)))
            .and_then(|()| outgoing.set_authority(Some(&self.authority)))
            .and_then(|()| outgoing.set_path_with_query(Some(&path)))
            .map_err(|()| Status::internal(format!("request {path} refused by the host")))?;
        let body_handle = outgoing
            .body()
            .map_err(|()| Status::internal("request body already taken"))?;
        let stream = body_handle
            .write()
            .map_err(|()| Status::internal("request body stream already taken"))?;
        let options = types::RequestOptions::new();
        // Only the connect timeout: a first-byte timeout would cut client-streaming calls, whose
        // answer comes after the whole upload. The call's deadline covers the rest.
        let _ = options.set_connect_timeout(Some(duration_nanos(self.connect_timeout)));
        let future_response = outgoing_handler::handle(outgoing, Some(options))
            .map_err(|error| error_code_status(&error))?;
        let pump = RequestPump {
            waiting: None,
            stream: Some(stream),
            body_handle: Some(body_handle),
            body: Box::pin(body),
            pending: Bytes::new(),
            flushing: false,
            body_ended: false,
        };
        Ok((future_response, Box::new(pump)))
    }
}

// ---- deadlines ------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
struct Deadline {
    /// `wasi:clocks/monotonic-clock` instant, nanoseconds.
    at: u64,
}

impl Deadline {
    fn after(timeout: Duration) -> Self {
        Self {
            at: monotonic_clock::now().saturating_add(duration_nanos(timeout)),
        }
    }

    fn expired(self) -> bool {
        monotonic_clock::now() >= self.at
    }

    fn pollable(self) -> Pollable {
        monotonic_clock::subscribe_instant(self.at)
    }
}

fn duration_nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// `grpc-timeout` (`<digits><unit>`, units H M S m u n) as a duration.
pub fn parse_grpc_timeout(value: &[u8]) -> Option<Duration> {
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let amount: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(amount.checked_mul(3600)?),
        b'M' => Duration::from_secs(amount.checked_mul(60)?),
        b'S' => Duration::from_secs(amount),
        b'm' => Duration::from_millis(amount),
        b'u' => Duration::from_micros(amount),
        b'n' => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// Registers `pollable` to wake the current task, cancelling what `slot` held before.
fn wait_on(slot: &mut Option<CancelOnDropToken>, pollable: Pollable, cx: &Context<'_>) {
    // Drop (cancel) the previous registration first: it may still sit in the executor's list.
    slot.take();
    *slot = Some(spin_executor::push_waker_and_get_token(pollable, cx.waker().clone()).into());
}

fn deadline_status() -> BoxError {
    Box::new(Status::deadline_exceeded(
        "deadline exceeded waiting for the mesh",
    ))
}

// ---- the request body -------------------------------------------------------------------------

/// Moves the request body into the outgoing WASI body, a little at each poll.
trait PumpRequest: Send {
    /// `Ready(Ok)` once the body was written and the outgoing body finished.
    fn poll_pump(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>>;
}

type SharedPump = Arc<Mutex<Option<Box<dyn PumpRequest>>>>;

/// Advances the pump if it still runs; a finished or failed pump is dropped. A failed pump only
/// ends the upload: the server may still answer (e.g. it refused the call early), and its
/// answer is what the caller needs.
fn drive(pump: &SharedPump, cx: &mut Context<'_>) {
    let Ok(mut guard) = pump.lock() else {
        return;
    };
    if let Some(running) = guard.as_mut() {
        match running.poll_pump(cx) {
            Poll::Pending => {}
            Poll::Ready(Ok(())) => *guard = None,
            Poll::Ready(Err(error)) => {
                eprintln!("mesh-client: request body stopped: {error}");
                *guard = None;
            }
        }
    }
}

struct RequestPump<B> {
    // Field order is drop order: the pollable before its stream, the stream before its body.
    waiting: Option<CancelOnDropToken>,
    stream: Option<OutputStream>,
    body_handle: Option<types::OutgoingBody>,
    body: Pin<Box<B>>,
    /// Bytes taken from `body` and not yet written.
    pending: Bytes,
    /// A flush was requested; `check_write` answers 0 until it is done.
    flushing: bool,
    body_ended: bool,
}

impl<B> RequestPump<B> {
    fn finish(&mut self) -> Result<(), BoxError> {
        self.waiting = None;
        self.stream = None;
        if let Some(body) = self.body_handle.take() {
            types::OutgoingBody::finish(body, None).map_err(|error| -> BoxError {
                Box::new(Status::internal(format!(
                    "finishing the request body: {error:?}"
                )))
            })?;
        }
        Ok(())
    }
}

fn stream_error(what: &str, error: StreamError) -> BoxError {
    let detail = match error {
        StreamError::Closed => "closed".to_owned(),
        StreamError::LastOperationFailed(error) => error.to_debug_string(),
    };
    Box::new(Status::unavailable(format!("{what}: {detail}")))
}

impl<B> PumpRequest for RequestPump<B>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    fn poll_pump(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        loop {
            let Some(stream) = self.stream.as_ref() else {
                return Poll::Ready(Ok(()));
            };
            if !self.pending.is_empty() || self.flushing {
                let permitted = match stream.check_write() {
                    Ok(0) => {
                        let pollable = stream.subscribe();
                        wait_on(&mut self.waiting, pollable, cx);
                        return Poll::Pending;
                    }
                    Ok(permitted) => permitted,
                    Err(error) => return Poll::Ready(Err(stream_error("request body", error))),
                };
                if self.flushing {
                    self.flushing = false;
                    continue;
                }
                let count = usize::try_from(permitted)
                    .unwrap_or(usize::MAX)
                    .min(self.pending.len());
                if let Err(error) = stream.write(&self.pending[..count]) {
                    return Poll::Ready(Err(stream_error("request body", error)));
                }
                self.pending.advance(count);
                if self.pending.is_empty() {
                    if let Err(error) = stream.flush() {
                        return Poll::Ready(Err(stream_error("request body", error)));
                    }
                    self.flushing = true;
                }
                continue;
            }
            if self.body_ended {
                return Poll::Ready(self.finish());
            }
            match self.body.as_mut().poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    // Request trailers are not used by gRPC clients; they are dropped.
                    if let Ok(data) = frame.into_data() {
                        self.pending = data;
                    }
                }
                Poll::Ready(Some(Err(error))) => {
                    let error: BoxError = error.into();
                    return Poll::Ready(Err(error));
                }
                Poll::Ready(None) => self.body_ended = true,
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

// ---- the response -----------------------------------------------------------------------------

/// Resolves to the response head once it arrived, pumping the request body meanwhile.
pub struct ResponseFuture {
    // Field order is drop order: registrations before the resources they watch.
    waiting: Option<CancelOnDropToken>,
    deadline_waiting: Option<CancelOnDropToken>,
    future_response: Option<types::FutureIncomingResponse>,
    pump: SharedPump,
    deadline: Deadline,
    /// The call could not start; reported on the first poll.
    failure: Option<Status>,
}

impl Future for ResponseFuture {
    type Output = Result<http::Response<WasiResponseBody>, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let Some(future_response) = this.future_response.as_ref() else {
            let status = this
                .failure
                .take()
                .unwrap_or_else(|| Status::internal("response polled after completion"));
            return Poll::Ready(Err(Box::new(status)));
        };
        drive(&this.pump, cx);
        if let Some(result) = future_response.get() {
            this.waiting = None;
            this.deadline_waiting = None;
            this.future_response = None;
            let response = match result {
                Ok(Ok(response)) => response,
                Ok(Err(error)) => return Poll::Ready(Err(Box::new(error_code_status(&error)))),
                Err(()) => {
                    return Poll::Ready(Err(Box::new(Status::internal("response already taken"))));
                }
            };
            return Poll::Ready(into_http_response(
                response,
                this.pump.clone(),
                this.deadline,
            ));
        }
        if this.deadline.expired() {
            return Poll::Ready(Err(deadline_status()));
        }
        let pollable = future_response.subscribe();
        wait_on(&mut this.waiting, pollable, cx);
        wait_on(&mut this.deadline_waiting, this.deadline.pollable(), cx);
        Poll::Pending
    }
}

fn header_map(entries: Vec<(String, Vec<u8>)>) -> HeaderMap {
    let mut map = HeaderMap::with_capacity(entries.len());
    for (name, value) in entries {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(&value),
        ) {
            map.append(name, value);
        }
    }
    map
}

fn into_http_response(
    response: types::IncomingResponse,
    pump: SharedPump,
    deadline: Deadline,
) -> Result<http::Response<WasiResponseBody>, BoxError> {
    let status = http::StatusCode::from_u16(response.status())
        .map_err(|_| -> BoxError { Box::new(Status::internal("invalid HTTP status")) })?;
    let headers = {
        let fields = response.headers();
        header_map(fields.entries())
    };
    let body = response
        .consume()
        .map_err(|()| -> BoxError { Box::new(Status::internal("response body already taken")) })?;
    let stream = body.stream().map_err(|()| -> BoxError {
        Box::new(Status::internal("response body stream already taken"))
    })?;
    let mut http_response = http::Response::new(WasiResponseBody {
        waiting: None,
        deadline_waiting: None,
        stream: Some(stream),
        body: Some(body),
        trailers: None,
        response: Some(response),
        pump,
        deadline,
    });
    *http_response.status_mut() = status;
    *http_response.headers_mut() = headers;
    Ok(http_response)
}

/// The response body: data frames as they arrive, then the trailers.
pub struct WasiResponseBody {
    // Field order is drop order: registrations, then the stream (a child of the body), the
    // body, the trailers future and last the response they all belong to.
    waiting: Option<CancelOnDropToken>,
    deadline_waiting: Option<CancelOnDropToken>,
    stream: Option<InputStream>,
    body: Option<types::IncomingBody>,
    trailers: Option<types::FutureTrailers>,
    response: Option<types::IncomingResponse>,
    pump: SharedPump,
    deadline: Deadline,
}

impl WasiResponseBody {
    fn end(&mut self) {
        self.waiting = None;
        self.deadline_waiting = None;
        self.stream = None;
        self.body = None;
        self.trailers = None;
        self.response = None;
    }

    fn pending(
        &mut self,
        pollable: Pollable,
        cx: &Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.deadline.expired() {
            self.end();
            return Poll::Ready(Some(Err(deadline_status())));
        }
        wait_on(&mut self.waiting, pollable, cx);
        wait_on(&mut self.deadline_waiting, self.deadline.pollable(), cx);
        Poll::Pending
    }
}

impl Body for WasiResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        drive(&this.pump, cx);
        if let Some(stream) = this.stream.as_ref() {
            match stream.read(READ_SIZE) {
                Ok(chunk) if !chunk.is_empty() => {
                    return Poll::Ready(Some(Ok(Frame::data(Bytes::from(chunk)))));
                }
                Ok(_) => {
                    let pollable = stream.subscribe();
                    return this.pending(pollable, cx);
                }
                Err(StreamError::Closed) => {
                    this.waiting = None;
                    this.stream = None;
                    if let Some(body) = this.body.take() {
                        this.trailers = Some(types::IncomingBody::finish(body));
                    }
                }
                Err(error) => {
                    this.end();
                    return Poll::Ready(Some(Err(stream_error("response body", error))));
                }
            }
        }
        let Some(trailers) = this.trailers.as_ref() else {
            this.end();
            return Poll::Ready(None);
        };
        match trailers.get() {
            None => {
                let pollable = trailers.subscribe();
                this.pending(pollable, cx)
            }
            Some(result) => {
                let frame = match result {
                    Ok(Ok(Some(fields))) => {
                        let map = header_map(fields.entries());
                        drop(fields);
                        Some(Ok(Frame::trailers(map)))
                    }
                    Ok(Ok(None)) => None,
                    Ok(Err(error)) => Some(Err::<_, BoxError>(Box::new(error_code_status(&error)))),
                    Err(()) => Some(Err::<_, BoxError>(Box::new(Status::internal(
                        "trailers already taken",
                    )))),
                };
                this.end();
                Poll::Ready(frame)
            }
        }
    }
}

/// A WASI HTTP error as the gRPC status a caller can act on.
fn error_code_status(error: &types::ErrorCode) -> Status {
    use types::ErrorCode as E;
    match error {
        E::ConnectionTimeout | E::ConnectionReadTimeout | E::ConnectionWriteTimeout => {
            Status::unavailable(format!("mesh connection timed out: {error:?}"))
        }
        E::HttpResponseTimeout => Status::deadline_exceeded(format!("mesh timed out: {error:?}")),
        E::HttpRequestDenied => Status::permission_denied(
            "outbound request to the gateway denied by the host (check allowed_outbound_hosts)",
        ),
        _ => Status::unavailable(format!("mesh unreachable: {error:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse() {
        assert_eq!(
            parse_grpc_timeout(b"250m"),
            Some(Duration::from_millis(250))
        );
        assert_eq!(parse_grpc_timeout(b"3S"), Some(Duration::from_secs(3)));
        assert_eq!(parse_grpc_timeout(b"1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout(b"S"), None);
        assert_eq!(parse_grpc_timeout(b"123456789S"), None);
        assert_eq!(parse_grpc_timeout(b"5x"), None);
    }
}
