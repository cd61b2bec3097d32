//! Benchmark 17: a replica added behind a Service gets its share. Replicas of `keyhouse serve` on
//! one PostgreSQL database sit behind a small TCP proxy that picks a backend at random for each
//! new connection, as kube-proxy does; one tonic client with a few channels drives cached
//! VerifyKey through it. After a while a fourth backend joins the proxy's list. The proxy counts
//! the gRPC calls each backend receives (HTTP/2 HEADERS frames from the client), window by
//! window. Run once with `KEYHOUSE_MAX_CONNECTION_AGE_SECS` small and once without it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use keyhouse_proto::v1 as pb;
use keyhouse_proto::v1::user_key_service_client::UserKeyServiceClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tonic::transport::Channel;

use crate::Args;
use crate::setup;

const REPLICAS: usize = 4;
const KEYS: usize = 16;
/// The client's channels (each one HTTP/2 connection at a time).
const CHANNELS: usize = 8;
const IN_FLIGHT: usize = 32;
const AGE_SECS: u64 = 2;
const GRACE_SECS: u64 = 1;
/// Seconds per counted window.
const WINDOW: u64 = 2;
/// Windows before the fourth backend joins, and after.
const BEFORE: u64 = 2;
const AFTER: u64 = 20;

pub async fn run(args: &Args, rt: &tokio::runtime::Handle) -> anyhow::Result<()> {
    let url = setup::postgres_database(&args.postgres_url).await?;
    let mut outcome = Ok(());
    println!("## 17. A fourth replica's share of one client's calls\n");
    println!(
        "{REPLICAS} replicas on one PostgreSQL database behind a proxy that picks a backend at random \
         per new connection; one client, {CHANNELS} channels, {IN_FLIGHT} cached VerifyKey calls in \
         flight; the fourth backend joins after {} s. Calls per backend, counted by the proxy, per {WINDOW} s window.\n",
        BEFORE * WINDOW
    );
    for age in [AGE_SECS, 0] {
        outcome = outcome.and(measure(args, rt, &url, age).await);
    }
    setup::drop_postgres_database(&args.postgres_url, &url).await?;
    outcome
}

async fn measure(
    args: &Args,
    rt: &tokio::runtime::Handle,
    url: &str,
    age: u64,
) -> anyhow::Result<()> {
    let mut settings = setup::settings(url.to_owned(), args.bulk_bcrypt_cost);
    settings.max_connection_age_secs = age;
    settings.max_connection_age_grace_secs = GRACE_SECS;
    let mut servers = Vec::with_capacity(REPLICAS);
    for _ in 0..REPLICAS {
        servers.push(setup::start(settings.clone(), rt).await?);
    }
    let mut keys = Vec::with_capacity(KEYS);
    for i in 0..KEYS {
        let key = servers[0]
            .key(
                &format!("spread-{i}"),
                pb::CreateKeyRequest {
                    name: "spread".into(),
                    ..Default::default()
                },
            )
            .await?;
        keys.push(key.api_key);
    }
    let proxy = Proxy::start(servers.iter().take(REPLICAS - 1).map(|s| s.addr).collect()).await?;
    let mut channels = Vec::with_capacity(CHANNELS);
    for _ in 0..CHANNELS {
        channels.push(
            Channel::from_shared(format!("http://{}", proxy.addr))?
                .connect()
                .await?,
        );
    }
    let failures = Arc::new(AtomicU64::new(0));
    let answered = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reasons = Arc::new(Mutex::new(std::collections::BTreeMap::<String, u64>::new()));
    let workers: Vec<_> = (0..IN_FLIGHT)
        .map(|w| {
            let mut client = UserKeyServiceClient::new(channels[w % CHANNELS].clone());
            let (keys, failures, answered, stop, reasons) = (
                keys.clone(),
                failures.clone(),
                answered.clone(),
                stop.clone(),
                reasons.clone(),
            );
            tokio::spawn(async move {
                let mut i = w;
                while !stop.load(Ordering::Relaxed) {
                    let request = pb::VerifyKeyRequest {
                        api_key: keys[i % keys.len()].clone(),
                        ..Default::default()
                    };
                    match client.verify_key(request).await {
                        Ok(r) if r.get_ref().valid => {
                            answered.fetch_add(1, Ordering::Relaxed);
                        }
                        answer => {
                            failures.fetch_add(1, Ordering::Relaxed);
                            let why = answer.err().map_or("not valid".into(), |s| {
                                format!("{:?}: {}", s.code(), s.message())
                            });
                            *lock(&reasons).entry(why).or_default() += 1;
                        }
                    }
                    i += 1;
                }
            })
        })
        .collect();

    println!(
        "{}\n",
        if age > 0 {
            format!("With `KEYHOUSE_MAX_CONNECTION_AGE_SECS={age}` and a grace of {GRACE_SECS} s:")
        } else {
            "Without a maximum connection age:".to_owned()
        }
    );
    println!(
        "| window (s) | backends | calls to 1 | 2 | 3 | 4 | 4th / mean of 1-3 | client failures |\n|---|---|---|---|---|---|---|---|"
    );
    let mut last = proxy.counts();
    let mut last_failures = 0;
    let (mut settled, mut settled_fourth) = ([0u64; REPLICAS], 0u64);
    for window in 0..BEFORE + AFTER {
        if window == BEFORE {
            proxy.add(servers[REPLICAS - 1].addr);
        }
        tokio::time::sleep(Duration::from_secs(WINDOW)).await;
        let now = proxy.counts();
        let calls: Vec<u64> = now.iter().zip(&last).map(|(n, l)| n - l).collect();
        last = now;
        let failed = failures.load(Ordering::Relaxed);
        let mean = calls[..REPLICAS - 1].iter().sum::<u64>() as f64 / (REPLICAS - 1) as f64;
        // Windows wholly after the first connections aged out (age + grace past the join).
        if (window - BEFORE.min(window)) * WINDOW >= age + GRACE_SECS && window >= BEFORE {
            for (s, c) in settled.iter_mut().zip(&calls) {
                *s += c;
            }
            settled_fourth += 1;
        }
        println!(
            "| {}–{} | {} | {} | {} | {} | {} | {:.2} | {} |",
            window * WINDOW,
            (window + 1) * WINDOW,
            proxy.backends(),
            calls[0],
            calls[1],
            calls[2],
            calls[3],
            calls[3] as f64 / mean.max(1.0),
            failed - last_failures,
        );
        last_failures = failed;
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.await;
    }
    let mean = settled[..REPLICAS - 1].iter().sum::<u64>() as f64 / (REPLICAS - 1) as f64;
    println!(
        "\nOver the {settled_fourth} windows after the age passed: the fourth's calls / the mean of the others' **{:.2}** \
         ({} against {:.0}); answered {}, failed **{}**{}; connections the proxy opened: {}.\n",
        settled[REPLICAS - 1] as f64 / mean.max(1.0),
        settled[REPLICAS - 1],
        mean,
        answered.load(Ordering::Relaxed),
        failures.load(Ordering::Relaxed),
        lock(&reasons)
            .iter()
            .map(|(why, n)| format!(" ({n}× {why})"))
            .collect::<String>(),
        proxy.connections.load(Ordering::Relaxed),
    );
    drop(channels);
    proxy.stop();
    for server in servers {
        server.stop().await;
    }
    Ok(())
}

/// A TCP proxy: each new connection goes to a backend picked at random from the list, and the
/// client's HTTP/2 HEADERS frames (one per gRPC call) are counted per backend.
struct Proxy {
    addr: SocketAddr,
    backends: Arc<Mutex<Vec<SocketAddr>>>,
    calls: Arc<[AtomicU64; REPLICAS]>,
    connections: Arc<AtomicU64>,
    accepting: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(backends: Vec<SocketAddr>) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let backends = Arc::new(Mutex::new(backends));
        let calls: Arc<[AtomicU64; REPLICAS]> =
            Arc::new(std::array::from_fn(|_| AtomicU64::new(0)));
        let connections = Arc::new(AtomicU64::new(0));
        let accepting = tokio::spawn({
            let (backends, calls, connections) =
                (backends.clone(), calls.clone(), connections.clone());
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    let list = lock(&backends).clone();
                    let pick = (uuid::Uuid::new_v4().as_u128() % list.len() as u128) as usize;
                    connections.fetch_add(1, Ordering::Relaxed);
                    tokio::spawn(pipe(client, list[pick], calls.clone(), pick));
                }
            }
        });
        Ok(Self {
            addr,
            backends,
            calls,
            connections,
            accepting,
        })
    }

    fn add(&self, backend: SocketAddr) {
        lock(&self.backends).push(backend);
    }

    fn backends(&self) -> usize {
        lock(&self.backends).len()
    }

    fn counts(&self) -> Vec<u64> {
        self.calls
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect()
    }

    fn stop(self) {
        self.accepting.abort();
    }
}

/// Copies both ways; counts the HEADERS frames the client sends.
async fn pipe(client: TcpStream, backend: SocketAddr, calls: Arc<[AtomicU64; REPLICAS]>, n: usize) {
    let Ok(server) = TcpStream::connect(backend).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let upstream = async {
        let mut frames = Frames::default();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let read = match client_read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(read) => read,
            };
            calls[n].fetch_add(frames.headers_in(&buf[..read]), Ordering::Relaxed);
            if server_write.write_all(&buf[..read]).await.is_err() {
                break;
            }
        }
        let _ = server_write.shutdown().await;
    };
    let downstream = async {
        let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
        let _ = client_write.shutdown().await;
    };
    tokio::join!(upstream, downstream);
}

/// Follows the client's side of an HTTP/2 connection frame by frame: the 24-byte preface, then
/// frames of a 9-byte header (length, type, flags, stream) and a payload.
#[derive(Default)]
struct Frames {
    preface_seen: usize,
    header: Vec<u8>,
    skip: usize,
}

const PREFACE: usize = 24;
const HEADERS: u8 = 0x1;

impl Frames {
    /// The HEADERS frames that begin in `bytes`.
    fn headers_in(&mut self, mut bytes: &[u8]) -> u64 {
        let mut count = 0;
        while !bytes.is_empty() {
            if self.preface_seen < PREFACE {
                let take = (PREFACE - self.preface_seen).min(bytes.len());
                self.preface_seen += take;
                bytes = &bytes[take..];
            } else if self.skip > 0 {
                let take = self.skip.min(bytes.len());
                self.skip -= take;
                bytes = &bytes[take..];
            } else {
                let take = (9 - self.header.len()).min(bytes.len());
                self.header.extend_from_slice(&bytes[..take]);
                bytes = &bytes[take..];
                if self.header.len() == 9 {
                    let h = &self.header;
                    self.skip =
                        usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
                    count += u64::from(h[3] == HEADERS);
                    self.header.clear();
                }
            }
        }
        count
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
