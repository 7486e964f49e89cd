//! A webhook receiver for tests: an HTTP server on a port from the OS that records every
//! request (headers, body, time) and answers as told: a status, a `Retry-After`, a status
//! for bodies containing a marker (a poison event), and a delay.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

#[derive(Clone, Debug)]
pub struct Recorded {
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
    /// When the request arrived (its body read).
    pub started: Instant,
    /// When it was answered.
    pub at: Instant,
    pub status: u16,
}

#[derive(Clone, Debug)]
pub struct Behaviour {
    pub status: u16,
    pub retry_after: Option<String>,
    /// Bodies containing this string get this status.
    pub poison: Option<(String, u16)>,
    pub delay: Duration,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour { status: 200, retry_after: None, poison: None, delay: Duration::ZERO }
    }
}

#[derive(Default)]
struct State {
    behaviour: Behaviour,
    recorded: Vec<Recorded>,
    /// Requests being answered now (a request whose client went away is dropped by hyper).
    in_flight: usize,
}

/// Counts a request as in flight until it is answered or dropped.
struct InFlight(Arc<Mutex<State>>);

impl InFlight {
    fn new(state: &Arc<Mutex<State>>) -> InFlight {
        state.lock().unwrap().in_flight += 1;
        InFlight(state.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.lock().unwrap().in_flight -= 1;
    }
}

pub struct Receiver {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver {
    pub async fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state: Arc<Mutex<State>> = Arc::default();
        let shared = state.clone();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let state = shared.clone();
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |req| handle(state.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Receiver { addr, state, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}/vod", self.addr)
    }

    pub fn set(&self, f: impl FnOnce(&mut Behaviour)) {
        f(&mut self.state.lock().unwrap().behaviour);
    }

    pub fn recorded(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().recorded.clone()
    }

    /// Requests being answered now.
    pub fn in_flight(&self) -> usize {
        self.state.lock().unwrap().in_flight
    }

    /// Requests answered 2xx.
    pub fn accepted(&self) -> Vec<Recorded> {
        self.recorded().into_iter().filter(|r| (200..300).contains(&r.status)).collect()
    }
}

async fn handle(
    state: Arc<Mutex<State>>,
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<Full<Bytes>>, std::convert::Infallible> {
    let headers =
        req.headers().iter().map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string())).collect();
    let body = req.into_body().collect().await.map(|b| b.to_bytes().to_vec()).unwrap_or_default();
    let started = Instant::now();
    let _in_flight = InFlight::new(&state);
    let behaviour = state.lock().unwrap().behaviour.clone();
    tokio::time::sleep(behaviour.delay).await;
    let status = match &behaviour.poison {
        Some((marker, status)) if String::from_utf8_lossy(&body).contains(marker.as_str()) => *status,
        _ => behaviour.status,
    };
    state.lock().unwrap().recorded.push(Recorded { headers, body, started, at: Instant::now(), status });
    let mut response = hyper::Response::builder().status(status);
    if let Some(retry_after) = &behaviour.retry_after {
        response = response.header("retry-after", retry_after);
    }
    Ok(response.body(Full::new(Bytes::from(format!("receiver says {status}")))).unwrap())
}
