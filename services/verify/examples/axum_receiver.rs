//! A webhook endpoint on axum that takes Herald's requests through [`Inbox`].
//!
//! ```sh
//! HERALD_WEBHOOK_SECRET=whsec_... cargo run -p herald-verify --example axum_receiver
//! ```

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::routing::post;

use herald_verify::{Inbox, Secret, Verifier};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let secret = Secret::parse(&std::env::var("HERALD_WEBHOOK_SECRET")?)?;
    let inbox = Arc::new(Inbox::new(Verifier::new(vec![secret])?));
    let app = Router::new()
        .route("/webhooks", post(webhook))
        .with_state(inbox);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:8091").await?;
    println!("listening on http://{}/webhooks", listener.local_addr()?);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    Ok(())
}

/// Takes the body as raw bytes: the signature covers them exactly, so parse only afterwards.
async fn webhook(
    State(inbox): State<Arc<Inbox>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    match inbox.receive(&method, &headers, &body, Some(peer.ip())) {
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
    }
}
