//! A simulator served on 127.0.0.1:0 for tests.

use super::*;

/// A running simulator on 127.0.0.1:0.
pub struct Running {
    pub sim: Simulator,
    pub base: String,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<std::io::Result<()>>,
    pub client: reqwest::Client,
}

impl Running {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }
}

pub async fn start(profile: FaultProfile) -> Running {
    start_with(profile, ServeOptions::default()).await
}

/// [`start`] with other serving options (TLS, HTTP/2 stream limit); the base URL is
/// `https://127.0.0.1:port` with TLS.
pub async fn start_with(profile: FaultProfile, opts: ServeOptions) -> Running {
    let scheme = if opts.tls.is_some() { "https" } else { "http" };
    let sim = Simulator::new(profile);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let shutdown = CancellationToken::new();
    let task = tokio::spawn({
        let sim = sim.clone();
        let shutdown = shutdown.clone();
        async move { sim.serve_with(listener, shutdown, opts).await }
    });
    Running {
        sim,
        base: format!("{scheme}://{addr}"),
        shutdown,
        task,
        client: reqwest::Client::new(),
    }
}
