//! The webhook client against a local HTTPS receiver whose certificates come from a test CA:
//! a trusted certificate over HTTP/2, an untrusted one, and mutual TLS.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, Version};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use herald_core::address::AddressGuard;
use herald_core::subscription::ClientIdentity;

use crate::attempt::AttemptError;
use crate::client::{ClientSettings, WebhookClient};

/// A certificate authority made for one test.
struct TestCa {
    params: CertificateParams,
    key: KeyPair,
    certificate: CertificateDer<'static>,
}

/// A certificate issued by a [`TestCa`], as DER and as PEM.
struct Issued {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    certificate_pem: String,
    key_pem: String,
}

impl TestCa {
    fn new(name: &str) -> Self {
        let key = KeyPair::generate().expect("a key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("parameters");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let certificate = params.self_signed(&key).expect("a CA certificate");
        Self {
            params,
            key,
            certificate: certificate.der().clone(),
        }
    }

    fn issue(&self, names: &[&str]) -> Issued {
        let key = KeyPair::generate().expect("a key");
        let names: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
        let params = CertificateParams::new(names).expect("parameters");
        let issuer = Issuer::from_params(&self.params, &self.key);
        let certificate = params.signed_by(&key, &issuer).expect("a certificate");
        Issued {
            chain: vec![certificate.der().clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            certificate_pem: certificate.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.certificate.clone()).expect("a root");
        roots
    }
}

/// Starts an HTTPS receiver on 127.0.0.1 that offers HTTP/2 and HTTP/1.1, responds 200, and
/// records the HTTP version of each request. With `client_roots`, it requires a client
/// certificate issued by them.
async fn start_receiver(
    server: Issued,
    client_roots: Option<RootCertStore>,
) -> (SocketAddr, Arc<Mutex<Vec<Version>>>) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .expect("protocol versions");
    let builder = match client_roots {
        Some(roots) => builder.with_client_cert_verifier(
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .expect("a client verifier"),
        ),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(server.chain, server.key)
        .expect("a server certificate");
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    let versions = Arc::new(Mutex::new(Vec::new()));
    let recorded = Arc::clone(&versions);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let recorded = Arc::clone(&recorded);
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let http2 = tls.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
                let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                    let recorded = Arc::clone(&recorded);
                    async move {
                        if let Ok(mut versions) = recorded.lock() {
                            versions.push(request.version());
                        }
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::new())))
                    }
                });
                let io = TokioIo::new(tls);
                if http2 {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(io, service)
                        .await;
                } else {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await;
                }
            });
        }
    });
    (address, versions)
}

fn client(extra_roots: Vec<CertificateDer<'static>>) -> WebhookClient {
    WebhookClient::new(ClientSettings {
        connect_timeout: Duration::from_secs(2),
        max_response_bytes: 1024,
        guard: AddressGuard::new(&["127.0.0.1".into()]).expect("valid network"),
        extra_roots,
    })
    .expect("a client")
}

fn request(address: SocketAddr) -> Request<Full<Bytes>> {
    Request::post(format!("https://localhost:{}/hook", address.port()))
        .body(Full::new(Bytes::from_static(b"{}")))
        .expect("valid request")
}

fn recorded(versions: &Mutex<Vec<Version>>) -> Vec<Version> {
    versions.lock().map(|v| v.clone()).unwrap_or_default()
}

#[tokio::test]
async fn trusted_certificate_is_used_over_http2() {
    let ca = TestCa::new("Herald test CA");
    let (address, versions) = start_receiver(ca.issue(&["localhost"]), None).await;
    let client = client(vec![ca.certificate.clone()]);
    let response = client
        .send(request(address), Duration::from_secs(5), None)
        .await
        .expect("delivered");
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(recorded(&versions), [Version::HTTP_2]);
}

#[tokio::test]
async fn untrusted_certificate_is_a_tls_failure() {
    let ca = TestCa::new("Unknown CA");
    let (address, versions) = start_receiver(ca.issue(&["localhost"]), None).await;
    let result = client(Vec::new())
        .send(request(address), Duration::from_secs(5), None)
        .await;
    match result {
        Err(AttemptError::Tls(detail)) => {
            assert!(detail.contains("certificate"), "{detail}");
        }
        other => panic!("expected a TLS failure, got {other:?}"),
    }
    assert!(recorded(&versions).is_empty());
}

#[tokio::test]
async fn mutual_tls_presents_the_subscription_certificate() {
    let ca = TestCa::new("Herald test CA");
    let (address, versions) = start_receiver(ca.issue(&["localhost"]), Some(ca.roots())).await;
    let client = client(vec![ca.certificate.clone()]);

    let rejected = client
        .send(request(address), Duration::from_secs(5), None)
        .await;
    assert!(rejected.is_err(), "no client certificate: {rejected:?}");
    assert!(recorded(&versions).is_empty());

    let issued = ca.issue(&["herald-sender"]);
    let identity =
        ClientIdentity::parse(&issued.certificate_pem, &issued.key_pem).expect("an identity");
    let response = client
        .send(request(address), Duration::from_secs(5), Some(&identity))
        .await
        .expect("delivered with a client certificate");
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(recorded(&versions).len(), 1);
}
