//! A webhook endpoint on hyper that takes Herald's requests through [`Inbox`].
//!
//! ```sh
//! HERALD_WEBHOOK_SECRET=whsec_... cargo run -p herald-verify --example hyper_receiver
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use herald_verify::{Inbox, Secret, Verifier};

/// The largest body read; Herald's events are below 1 MB.
const MAX_BODY_BYTES: usize = 1024 * 1024;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let secret = Secret::parse(&std::env::var("HERALD_WEBHOOK_SECRET")?)?;
    let inbox = Arc::new(Inbox::new(Verifier::new(vec![secret])?));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:8090").await?;
    println!("listening on http://{}/webhooks", listener.local_addr()?);
    loop {
        let (stream, peer) = listener.accept().await?;
        let inbox = Arc::clone(&inbox);
        tokio::spawn(async move {
            let service = service_fn(move |request| handle(Arc::clone(&inbox), request, peer));
            let served = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(error) = served {
                eprintln!("connection from {peer} failed: {error}");
            }
        });
    }
}

async fn handle(
    inbox: Arc<Inbox>,
    request: Request<Incoming>,
    peer: SocketAddr,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = request.into_parts();
    // The signature covers the raw bytes, so read them before any parsing.
    let Ok(body) = Limited::new(body, MAX_BODY_BYTES).collect().await else {
        return Ok(answer(StatusCode::PAYLOAD_TOO_LARGE));
    };
    let body = body.to_bytes();
    let status = match inbox.receive(&parts.method, &parts.headers, &body, Some(peer.ip())) {
        Ok(accepted) => {
            if accepted.first_time {
                println!(
                    "event {}: {}",
                    accepted.verified.id,
                    String::from_utf8_lossy(&body)
                );
            } else {
                println!(
                    "event {}: a repeat, acknowledged again",
                    accepted.verified.id
                );
            }
            // A repeat was processed before: acknowledge it so Herald stops retrying.
            StatusCode::NO_CONTENT
        }
        Err(rejection) => {
            eprintln!("rejected a request from {peer}: {rejection}");
            rejection.status()
        }
    };
    Ok(answer(status))
}

fn answer(status: StatusCode) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    response
}
