//! The address guard: webhook URLs are chosen by outsiders, so the sender must never become a way
//! into the network it runs in. Every connection goes to an address that was checked:
//! - a host given as an IP address is checked before connecting;
//! - a host name is resolved here, every address it resolves to is checked, and the connection
//!   goes only to those checked addresses. A DNS answer that changes between two attempts is
//!   therefore checked again, and no second lookup happens between the check and the connection.
//!
//! [`herald_core::address`] defines the ranges refused unless `sender.allowed_networks` lists
//! them.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Uri;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use herald_core::address::{AddressGuard, BlockedAddress};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Resolves host names and keeps only the addresses the guard allows.
#[derive(Clone)]
pub struct GuardedResolver {
    guard: Arc<AddressGuard>,
}

impl tower_service::Service<Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let guard = Arc::clone(&self.guard);
        Box::pin(async move {
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((name.as_str(), 0)).await?.collect();
            let mut first_blocked = None;
            let allowed: Vec<SocketAddr> = resolved
                .into_iter()
                .filter(|address| match guard.check(address.ip()) {
                    Ok(()) => true,
                    Err(refusal) => {
                        first_blocked.get_or_insert(refusal);
                        false
                    }
                })
                .collect();
            match (allowed.is_empty(), first_blocked) {
                (true, Some(refusal)) => Err(refusal.into()),
                _ => Ok(allowed.into_iter()),
            }
        })
    }
}

/// An HTTP connector that connects only to addresses the guard allows.
#[derive(Clone)]
pub struct GuardedConnector {
    inner: HttpConnector<GuardedResolver>,
    guard: Arc<AddressGuard>,
}

impl GuardedConnector {
    /// Wraps a TCP connector set up by `configure` (timeouts, no-delay) around the guard.
    pub fn new(
        guard: Arc<AddressGuard>,
        configure: impl FnOnce(&mut HttpConnector<GuardedResolver>),
    ) -> Self {
        let mut inner = HttpConnector::new_with_resolver(GuardedResolver {
            guard: Arc::clone(&guard),
        });
        configure(&mut inner);
        Self { inner, guard }
    }
}

impl tower_service::Service<Uri> for GuardedConnector {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(context).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        // The TCP connector skips resolution for an IP address, so that case is checked here.
        let literal = uri
            .host()
            .map(|host| host.trim_start_matches('[').trim_end_matches(']'))
            .and_then(|host| host.parse::<IpAddr>().ok());
        if let Some(address) = literal
            && let Err(refusal) = self.guard.check(address)
        {
            return Box::pin(async move { Err(refusal.into()) });
        }
        let connecting = self.inner.call(uri);
        Box::pin(async move { connecting.await.map_err(Into::into) })
    }
}

/// Finds the guard's refusal among the sources of a client error.
pub fn blocked_address<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a BlockedAddress> {
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(refusal) = error.downcast_ref::<BlockedAddress>() {
            return Some(refusal);
        }
        current = error.source();
    }
    None
}
