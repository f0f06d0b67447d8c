//! Name resolution for `dns:` bootstrap, behind a trait so tests can inject their own answers.
//!
//! In Kubernetes the DaemonSet's headless Service name resolves to one A/AAAA record per pod;
//! every node resolves it periodically and dials what it finds.

use std::fmt;
use std::net::SocketAddr;

use futures::future::BoxFuture;
use hickory_resolver::TokioResolver;

use crate::error::ResolveError;

/// Resolves a bootstrap name to the socket addresses of p2p endpoints.
///
/// `port` is the port given in `dns:<name>[:port]`; an implementation returning plain A/AAAA
/// answers pairs each address with it. An empty answer ("no such name", "no records") is
/// `Ok(vec![])`, not an error: a headless Service with no ready pod yet is a normal state.
pub trait Resolver: Send + Sync + fmt::Debug + 'static {
    fn resolve<'a>(
        &'a self,
        name: &'a str,
        port: u16,
    ) -> BoxFuture<'a, Result<Vec<SocketAddr>, ResolveError>>;
}

/// The system resolver (`/etc/resolv.conf`), through hickory.
pub struct SystemResolver {
    inner: TokioResolver,
}

impl fmt::Debug for SystemResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SystemResolver")
    }
}

impl SystemResolver {
    pub fn new() -> Result<Self, ResolveError> {
        let builder = TokioResolver::builder_tokio().map_err(|e| ResolveError {
            name: "/etc/resolv.conf".into(),
            reason: e.to_string(),
        })?;
        let inner = builder.build().map_err(|e| ResolveError {
            name: "/etc/resolv.conf".into(),
            reason: e.to_string(),
        })?;
        Ok(SystemResolver { inner })
    }
}

impl Resolver for SystemResolver {
    fn resolve<'a>(
        &'a self,
        name: &'a str,
        port: u16,
    ) -> BoxFuture<'a, Result<Vec<SocketAddr>, ResolveError>> {
        Box::pin(async move {
            match self.inner.lookup_ip(name).await {
                Ok(ips) => Ok(ips.iter().map(|ip| SocketAddr::new(ip, port)).collect()),
                Err(e) if e.is_no_records_found() => Ok(Vec::new()),
                Err(e) => Err(ResolveError {
                    name: name.to_owned(),
                    reason: e.to_string(),
                }),
            }
        })
    }
}
