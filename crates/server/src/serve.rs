//! The one address: accepts connections, speaks HTTP/1.1 and HTTP/2 on each (gRPC clients
//! use HTTP/2 with prior knowledge), and hands gRPC requests straight to the tonic service
//! and everything else to the axum router.
//!
//! This replaces `axum::serve` because the server needs what it does not offer: `TCP_NODELAY`
//! on accepted sockets (small gRPC answers must not wait for Nagle's algorithm), gRPC that
//! skips the REST router, and TLS (`[tls]`): gRPC and HTTP over TLS on the same address,
//! HTTP/2 or HTTP/1.1 by ALPN.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, Response, header};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// The gRPC side: `hodei.v1.SchedulerService` and `hodei.v1.JobService`, each behind the
/// bearer-token check; any other gRPC path answers `UNIMPLEMENTED`.
pub(crate) type Grpc = tonic::service::Routes;

/// What the address serves: gRPC and the HTTP router.
#[derive(Clone)]
pub(crate) struct App {
    pub grpc: Grpc,
    pub http: axum::Router,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App").finish_non_exhaustive()
    }
}

/// gRPC is recognised by its content type (`application/grpc`, `application/grpc+proto`,
/// ...), as the gRPC over HTTP/2 specification defines it.
fn is_grpc(request: &Request<Incoming>) -> bool {
    request
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"application/grpc"))
}

impl App {
    async fn handle(self, request: Request<Incoming>) -> Result<Response<Body>, Infallible> {
        if is_grpc(&request) {
            let response = self.grpc.oneshot(request).await?;
            Ok(response.map(Body::new))
        } else {
            self.http.oneshot(request.map(Body::new)).await
        }
    }
}

/// How long a client has to complete its TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `app` on `listener` until `shutdown` is cancelled, then stops accepting, asks every
/// connection to finish its in-flight requests, and returns when all have closed. With
/// `tls`, every connection must open with a TLS handshake; plaintext ones are dropped.
pub(crate) async fn serve(
    listener: TcpListener,
    app: App,
    tls: Option<TlsAcceptor>,
    shutdown: CancellationToken,
) {
    let builder = auto::Builder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
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
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%remote, %error, "cannot set TCP_NODELAY");
        }
        let app = app.clone();
        let service = hyper::service::service_fn(move |request| app.clone().handle(request));
        match &tls {
            None => {
                let connection = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .into_owned();
                let connection = graceful.watch(connection);
                tokio::spawn(async move {
                    if let Err(error) = connection.await {
                        tracing::debug!(%remote, %error, "connection ended with an error");
                    }
                });
            }
            Some(tls) => {
                // The handshake runs in the connection's task so a slow client cannot hold
                // up the accept loop.
                let tls = tls.clone();
                let builder = builder.clone();
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    let stream =
                        match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, tls.accept(stream)).await
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
                    let connection = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .into_owned();
                    if let Err(error) = watcher.watch(connection).await {
                        tracing::debug!(%remote, %error, "connection ended with an error");
                    }
                });
            }
        }
    }
    drop(listener);
    graceful.shutdown().await;
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
