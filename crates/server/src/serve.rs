//! The one address: accepts connections, speaks HTTP/1.1 and HTTP/2 on each (gRPC clients
//! use HTTP/2 with prior knowledge), and hands gRPC requests straight to the tonic service
//! and everything else to the axum router.
//!
//! This replaces `axum::serve` because the server needs what it does not offer: `TCP_NODELAY`
//! on accepted sockets (small gRPC answers must not wait for Nagle's algorithm), gRPC that
//! skips the REST router, and TLS (`[tls]`): gRPC and HTTP over TLS on the same address,
//! HTTP/2 or HTTP/1.1 by ALPN.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, Response, header};
use hodei_modules::Credentials;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::auth::{self, Refusal};
use crate::error::{ApiError, Code};

/// The gRPC side: `hodei.v1.SchedulerService` and `hodei.v1.JobService`, each behind the
/// bearer-token check; any other gRPC path answers `UNIMPLEMENTED`.
pub(crate) type Grpc = tonic::service::Routes;

/// The client's address, in every request's extensions.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RemoteAddr(pub SocketAddr);

/// What the address serves: gRPC and the HTTP router, behind one credential check.
#[derive(Clone)]
pub(crate) struct App {
    pub grpc: Grpc,
    pub http: axum::Router,
    pub credentials: Credentials,
    /// A follower replica's refusal (`true`: for a gRPC call): every gRPC call and every
    /// HTTP request but a read gets it before any credential check, so a client or agent
    /// whose credential is newer than the follower's copy is still pointed at the leader.
    pub refuse_writes: Option<Refuse>,
}

/// A response for a request this address does not serve.
pub(crate) type Refuse = Arc<dyn Fn(bool) -> Response<Body> + Send + Sync>;

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App").finish_non_exhaustive()
    }
}

/// gRPC is recognised by its content type (`application/grpc`, `application/grpc+proto`,
/// ...), as the gRPC over HTTP/2 specification defines it.
fn is_grpc<B>(request: &Request<B>) -> bool {
    request
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"application/grpc"))
}

impl App {
    async fn handle(
        self,
        remote: SocketAddr,
        mut request: Request<Guarded<Incoming>>,
    ) -> Result<Response<Body>, Infallible> {
        let grpc = is_grpc(&request);
        if let Some(refuse) = &self.refuse_writes {
            let read = request.method() == axum::http::Method::GET
                || request.method() == axum::http::Method::HEAD;
            if grpc || !read {
                return Ok(refuse(grpc));
            }
        }
        let operation = if grpc {
            Some(auth::grpc_operation(request.uri().path()))
        } else {
            auth::http_operation(request.method(), request.uri().path())
        };
        // Handlers that refuse on their own (a worker session) log who asked.
        request.extensions_mut().insert(RemoteAddr(remote));
        if let Some(operation) = operation {
            match auth::authorize(&self.credentials, request.headers(), operation) {
                Ok(principal) => {
                    request.extensions_mut().insert(principal);
                }
                Err(refusal) => {
                    tracing::warn!(%remote, path = %request.uri().path(), ?refusal, "refused a request");
                    return Ok(refuse(grpc, refusal));
                }
            }
        }
        if grpc {
            let response = self.grpc.oneshot(request).await?;
            Ok(decode_errors_are_invalid_arguments(response).map(Body::new))
        } else {
            self.http.oneshot(request.map(Body::new)).await
        }
    }
}

fn refuse(grpc: bool, refusal: Refusal) -> Response<Body> {
    let error = match refusal {
        Refusal::Unauthenticated(message) => ApiError::new(Code::Unauthenticated, message),
        Refusal::PermissionDenied(message) => ApiError::new(Code::PermissionDenied, message),
        Refusal::BadHeader(message) => {
            ApiError::from(hodei_core::ValidationError::new("authorization", message))
        }
    };
    if grpc {
        tonic::Status::from(error).into_http::<Body>()
    } else {
        axum::response::IntoResponse::into_response(error)
    }
}

/// tonic answers a request it cannot decode (bad or truncated protobuf) with `INTERNAL`;
/// that is the client's error, so it becomes `INVALID_ARGUMENT`. Such an error is a
/// trailers-only response, whose status travels in the headers.
fn decode_errors_are_invalid_arguments<B>(mut response: Response<B>) -> Response<B> {
    let headers = response.headers_mut();
    let internal = headers
        .get("grpc-status")
        .is_some_and(|status| status.as_bytes() == b"13");
    let decode = headers.get("grpc-message").is_some_and(|message| {
        let message = message.as_bytes();
        message.starts_with(b"failed%20to%20decode%20Protobuf")
            || message.starts_with(b"failed to decode Protobuf")
            || message.starts_with(b"Unexpected%20EOF%20decoding")
            || message.starts_with(b"Unexpected EOF decoding")
    });
    if internal && decode {
        headers.insert("grpc-status", axum::http::HeaderValue::from_static("3"));
    }
    response
}

/// What one client may hold, and how many clients at once.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Connections open at once; past it, a new connection is closed as soon as accepted.
    pub max_connections: usize,
    /// Time to finish a TLS handshake and, on HTTP/1.1, to send a request's headers.
    pub header_read_timeout: Duration,
    /// A connection with nothing in flight for this long is closed.
    pub idle_timeout: Duration,
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
}

/// What one connection is doing: requests (with their bodies) in flight, and when it last
/// had one.
#[derive(Debug, Clone)]
struct Activity {
    in_flight: Arc<AtomicUsize>,
    last: Arc<Mutex<tokio::time::Instant>>,
}

impl Activity {
    fn new() -> Self {
        Self {
            in_flight: Arc::new(AtomicUsize::new(0)),
            last: Arc::new(Mutex::new(tokio::time::Instant::now())),
        }
    }

    fn busy(&self) -> Busy {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        Busy(self.clone())
    }

    /// Completes once the connection has had nothing in flight for `limit`.
    async fn idle_for(&self, limit: Duration) {
        loop {
            let last = *self.last.lock().unwrap_or_else(|p| p.into_inner());
            let quiet_until = last + limit;
            if self.in_flight.load(Ordering::SeqCst) == 0
                && tokio::time::Instant::now() >= quiet_until
            {
                return;
            }
            let next = if self.in_flight.load(Ordering::SeqCst) == 0 {
                quiet_until
            } else {
                tokio::time::Instant::now() + limit
            };
            tokio::time::sleep_until(next).await;
        }
    }
}

/// Something in flight on a connection; it ends when dropped.
#[derive(Debug)]
struct Busy(Activity);

impl Drop for Busy {
    fn drop(&mut self) {
        *self.0.last.lock().unwrap_or_else(|p| p.into_inner()) = tokio::time::Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A body that keeps its connection busy while it lives (a streaming request or
/// response, such as an agent's session, is not idle).
#[derive(Debug)]
struct Guarded<B> {
    inner: B,
    _busy: Busy,
}

impl<B: http_body::Body + Unpin> http_body::Body for Guarded<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Serves `app` on `listener` until `shutdown` is cancelled, then stops accepting, asks every
/// connection to finish its in-flight requests, and returns when all have closed. With
/// `tls`, every connection must open with a TLS handshake; plaintext ones are dropped.
///
/// Connections are bounded: at most `limits.max_connections` at once (more are closed at
/// once, so they cost nothing while existing clients, `/healthz` included, keep working),
/// a header-read timeout for slow or half-sent requests, HTTP/2 keepalive pings for dead
/// peers, and an idle timeout for connections that hold nothing in flight.
pub(crate) async fn serve(
    listener: TcpListener,
    app: App,
    tls: Option<TlsAcceptor>,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(limits.keepalive_interval))
        .keep_alive_timeout(limits.keepalive_timeout);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut refused: u64 = 0;
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    accept_failed(error).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            refused += 1;
            if refused.is_power_of_two() {
                tracing::warn!(%remote, refused, max = limits.max_connections, "too many connections, refusing new ones");
            }
            drop(stream);
            continue;
        };
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%remote, %error, "cannot set TCP_NODELAY");
        }
        let activity = Activity::new();
        let app = app.clone();
        let on_request = activity.clone();
        let service = hyper::service::service_fn(move |request: Request<Incoming>| {
            let busy = on_request.busy();
            let body_busy = on_request.busy();
            let response_busy = on_request.busy();
            let request = request.map(|inner| Guarded {
                inner,
                _busy: body_busy,
            });
            let app = app.clone();
            async move {
                let response = app.handle(remote, request).await;
                drop(busy);
                response.map(|response| {
                    response.map(|inner| {
                        Body::new(Guarded {
                            inner,
                            _busy: response_busy,
                        })
                    })
                })
            }
        });
        let builder = builder.clone();
        let tls = tls.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _slot = slot;
            match tls {
                None => {
                    let connection = builder.serve_connection(TokioIo::new(stream), service);
                    drive(connection, &activity, limits, &shutdown, remote).await;
                }
                Some(tls) => {
                    // The handshake runs in the connection's task so a slow client cannot
                    // hold up the accept loop.
                    let stream =
                        match tokio::time::timeout(limits.header_read_timeout, tls.accept(stream))
                            .await
                        {
                            Ok(Ok(stream)) => stream,
                            Ok(Err(error)) => {
                                tracing::debug!(%remote, %error, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!(%remote, "TLS handshake timed out");
                                return;
                            }
                        };
                    let connection = builder.serve_connection(TokioIo::new(stream), service);
                    drive(connection, &activity, limits, &shutdown, remote).await;
                }
            }
        });
    }
    drop(listener);
    // Every connection holds a slot until it ends: all slots back means all closed.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let _ = slots.acquire_many(all).await;
}

/// Runs one connection to its end, shutting it down gracefully when it idles too long or
/// the server stops.
async fn drive<I, S, E>(
    connection: auto::Connection<'_, I, S, E>,
    activity: &Activity,
    limits: Limits,
    shutdown: &CancellationToken,
    remote: SocketAddr,
) where
    auto::Connection<'static, I, S, E>: Sized,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::Service<Request<Incoming>, Response = Response<Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: hyper_util::server::conn::auto::HttpServerConnExec<S::Future, Body> + Clone + Send + 'static,
{
    let mut connection = std::pin::pin!(connection);
    let mut closing = false;
    let result = loop {
        tokio::select! {
            result = connection.as_mut() => break result,
            () = activity.idle_for(limits.idle_timeout), if !closing => {
                tracing::debug!(%remote, "closing an idle connection");
                connection.as_mut().graceful_shutdown();
                closing = true;
            }
            () = shutdown.cancelled(), if !closing => {
                connection.as_mut().graceful_shutdown();
                closing = true;
            }
        }
    };
    if let Err(error) = result {
        tracing::debug!(%remote, %error, "connection ended with an error");
    }
}

/// Accept errors are per connection (the peer gave up) or about resources (out of file
/// descriptors); neither should stop the server, but the latter must not spin.
async fn accept_failed(error: std::io::Error) {
    use std::io::ErrorKind;
    match error.kind() {
        ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset | ErrorKind::Interrupted => {
            tracing::debug!(%error, "accept failed");
        }
        _ => {
            tracing::error!(%error, "accept failed, pausing for a second");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_connection_is_idle_only_with_nothing_in_flight() {
        let activity = Activity::new();
        let limit = Duration::from_secs(10);
        let busy = activity.busy();
        let idle = activity.idle_for(limit);
        tokio::pin!(idle);
        // Busy for a minute: never idle.
        assert!(
            tokio::time::timeout(Duration::from_secs(60), &mut idle)
                .await
                .is_err()
        );
        drop(busy);
        let released = tokio::time::Instant::now();
        idle.await;
        assert!(
            released.elapsed() >= limit,
            "idle counts from the last request's end"
        );
    }
}
