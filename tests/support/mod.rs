//! Helpers for tests that run the k3rs binary (and real etcd) as processes.

#![allow(dead_code)]

pub mod api_server;
pub mod containers;
pub mod netns;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut};
use kine::proto::kv_client::KvClient;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;

const START_TIMEOUT: Duration = Duration::from_secs(20);

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A k3rs process with its own data directory, port and metrics port;
/// killed when dropped. Its log goes to `DATA_DIR/k3rs.log`.
pub struct K3rs {
    child: Option<Child>,
    pub port: u16,
    pub metrics_port: u16,
    log: PathBuf,
}

impl K3rs {
    /// Starts `k3rs kine` on fresh ports with `extra` flags.
    pub fn start(data_dir: &Path, extra: &[&str]) -> K3rs {
        std::fs::create_dir_all(data_dir).unwrap();
        let (port, metrics_port) = (free_port(), free_port());
        let log = data_dir.join("k3rs.log");
        let child = Command::new(env!("CARGO_BIN_EXE_k3rs"))
            .env("K3RS_CONTAINER_RUNTIME", "process")
            .arg("kine")
            .arg("--listen-address")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--metrics-bind-address")
            .arg(format!("127.0.0.1:{metrics_port}"))
            .arg("--data-dir")
            .arg(data_dir)
            .args(extra)
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("starting k3rs");
        K3rs {
            child: Some(child),
            port,
            metrics_port,
            log,
        }
    }

    /// Waits until the port accepts connections (for TLS listeners).
    pub fn wait_listening(&self) {
        let deadline = Instant::now() + START_TIMEOUT;
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "k3rs did not listen: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A plaintext channel, once the server answers.
    pub async fn channel(&self) -> Channel {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let endpoint = Channel::from_shared(format!("http://127.0.0.1:{}", self.port)).unwrap();
            if let Ok(c) = endpoint.connect().await {
                return c;
            }
            assert!(
                Instant::now() < deadline,
                "k3rs did not come up: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn kv(&self) -> KvClient<Channel> {
        KvClient::new(self.channel().await)
    }

    /// SIGTERM, then waits for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("already stopped");
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        child.wait().unwrap()
    }

    /// Stops the server cleanly.
    pub fn stop(&mut self) {
        let status = self.terminate();
        assert!(
            status.success(),
            "k3rs exited with {status}: {}",
            self.log()
        );
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for K3rs {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Asserts that every acknowledged `(key, revision)` reads back as the
/// key's current version, written at that revision.
pub async fn assert_acked_present(kv: &mut KvClient<Channel>, acked: &[(String, i64)]) {
    for (key, revision) in acked {
        let got = kv
            .range(kine::proto::RangeRequest {
                key: key.clone().into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(got.kvs.len(), 1, "{key} lost");
        assert_eq!(got.kvs[0].mod_revision, *revision, "{key}");
    }
}

/// Real etcd with its own data directory; killed when dropped.
pub struct Etcd {
    child: Child,
    pub port: u16,
}

impl Etcd {
    pub fn start(data_dir: &Path, extra: &[&str]) -> Etcd {
        let (port, peer) = (free_port(), free_port());
        let client = format!("http://127.0.0.1:{port}");
        let peer = format!("http://127.0.0.1:{peer}");
        let child = Command::new("/usr/bin/etcd")
            .arg("--name=default")
            .arg(format!("--data-dir={}", data_dir.display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=default={peer}"))
            .arg("--log-level=error")
            .arg("--logger=zap")
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting etcd (apt-get install etcd-server)");
        Etcd { child, port }
    }

    pub async fn channel(&self) -> Channel {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let endpoint = Channel::from_shared(format!("http://127.0.0.1:{}", self.port)).unwrap();
            if let Ok(c) = endpoint.connect().await {
                // etcd accepts before it has elected itself.
                let mut kv = KvClient::new(c.clone());
                if kv
                    .range(kine::proto::RangeRequest {
                        key: "x".into(),
                        ..Default::default()
                    })
                    .await
                    .is_ok()
                {
                    return c;
                }
            }
            assert!(Instant::now() < deadline, "etcd did not come up");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs etcdctl (API v3); `(success, stdout)` or `(false, stderr+stdout)`.
pub fn etcdctl(args: &[String]) -> (bool, String) {
    let out = Command::new("etcdctl")
        .args(args)
        .env("ETCDCTL_API", "3")
        .output()
        .expect("running etcdctl (apt-get install etcd-client)");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        (true, stdout)
    } else {
        (
            false,
            String::from_utf8_lossy(&out.stderr).into_owned() + &stdout,
        )
    }
}

/// A plain HTTP/1.1 GET: `(status, body)`.
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    (status, body)
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// Whether the server closes `s` (EOF or reset) within `within`.
async fn closed_within(s: &mut tokio::net::TcpStream, within: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

/// Opens `n` connections that never send a byte; how many the server closed.
pub async fn silent_connections(port: u16, n: usize) -> usize {
    let mut conns = Vec::new();
    for _ in 0..n {
        conns.push(
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap(),
        );
    }
    let mut closed = 0;
    for mut c in conns {
        if closed_within(&mut c, Duration::from_secs(10)).await {
            closed += 1;
        }
    }
    closed
}

/// Opens `n` connections that send the HTTP/2 preface a byte at a time,
/// slowly; how many the server closed.
pub async fn slow_loris(port: u16, n: usize) -> usize {
    use tokio::io::AsyncWriteExt;
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            tokio::spawn(async move {
                let mut c = tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .unwrap();
                let started = Instant::now();
                for b in preface {
                    if c.write_all(&[*b]).await.is_err() {
                        return true;
                    }
                    if closed_within(&mut c, Duration::from_millis(400)).await {
                        return true;
                    }
                    if started.elapsed() > Duration::from_secs(10) {
                        break;
                    }
                }
                closed_within(&mut c, Duration::from_secs(5)).await
            })
        })
        .collect();
    let mut closed = 0;
    for t in tasks {
        closed += t.await.unwrap() as usize;
    }
    closed
}

/// A tiny deterministic PRNG for garbage (xorshift64*).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// Opens `n` connections that send random bytes (some after a valid
/// preface); the server must close each of them.
pub async fn garbage_connections(port: u16, n: usize) {
    use tokio::io::AsyncWriteExt;
    let mut rng = Rng::new(7);
    for i in 0..n {
        let mut c = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        if i % 2 == 0 {
            c.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
                .await
                .unwrap();
        }
        let len = 30 + (rng.next() % 4000) as usize;
        let _ = c.write_all(&rng.bytes(len)).await;
        assert!(
            closed_within(&mut c, Duration::from_secs(10)).await,
            "a connection sending garbage stayed open"
        );
    }
}

/// Sends raw bytes as gRPC messages.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }
    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let mut v = vec![0; src.remaining()];
        src.copy_to_slice(&mut v);
        Ok(Some(v))
    }
}

/// Sends random and truncated protobuf to every unary method, and
/// oversized requests, until `for_how_long` passes; returns how many got
/// an answer. The server must never answer Unavailable or hang up.
pub async fn malformed_grpc(channel: Channel, for_how_long: Duration) -> usize {
    use kine::proto::PutRequest;
    use prost::Message;
    // Not DeleteRange, Txn or Alarm: random bytes that happen to decode
    // into a valid delete of everything, or a NOSPACE alarm, would be
    // obeyed, rightly. The fuzz tests cover those translations.
    const PATHS: &[&str] = &[
        "/etcdserverpb.KV/Range",
        "/etcdserverpb.KV/Put",
        "/etcdserverpb.KV/Compact",
        "/etcdserverpb.Lease/LeaseGrant",
        "/etcdserverpb.Lease/LeaseRevoke",
        "/etcdserverpb.Lease/LeaseTimeToLive",
        "/etcdserverpb.Maintenance/HashKV",
        "/etcdserverpb.Cluster/MemberList",
        "/etcdserverpb.KV/NoSuchMethod",
    ];
    let mut grpc = tonic::client::Grpc::new(channel);
    let mut rng = Rng::new(42);
    let started = Instant::now();
    let mut answered = 0;
    let valid_put = PutRequest {
        key: "/flood/k".into(),
        value: "v".into(),
        ..Default::default()
    }
    .encode_to_vec();
    while started.elapsed() < for_how_long {
        let path = PATHS[(rng.next() % PATHS.len() as u64) as usize];
        let body = match rng.next() % 4 {
            0 => {
                let len = (rng.next() % 200) as usize;
                rng.bytes(len)
            }
            // A valid message cut short or with bytes flipped.
            1 => valid_put[..(rng.next() as usize % valid_put.len())].to_vec(),
            2 => {
                let mut b = valid_put.clone();
                let i = rng.next() as usize % b.len();
                b[i] ^= rng.next() as u8 | 1;
                b
            }
            // Over the 1.5 MiB request limit, and over the 2 MiB decode limit.
            _ => vec![
                0x0a;
                if rng.next().is_multiple_of(2) {
                    1_700_000
                } else {
                    3_000_000
                }
            ],
        };
        grpc.ready().await.expect("the connection broke");
        let result = grpc
            .unary::<Vec<u8>, Vec<u8>, _>(
                tonic::Request::new(body),
                http::uri::PathAndQuery::from_static(path),
                RawCodec,
            )
            .await;
        if let Err(status) = &result {
            assert_ne!(
                status.code(),
                tonic::Code::Unavailable,
                "{path}: {status:?}"
            );
        }
        answered += 1;
    }
    answered
}

/// `k3rs server` as its users start it (its datastore on the unix socket
/// alone unless `extra` says otherwise), with the API on a free port and no
/// metrics listener; killed when dropped. Its log goes to `DATA_DIR/k3rs.log`.
pub struct K3rsServer {
    child: Option<Child>,
    pub https_port: u16,
    pub data_dir: PathBuf,
    log: PathBuf,
}

impl K3rsServer {
    /// Starts it and waits for the Kubernetes API.
    pub fn start(data_dir: &Path, extra: &[&str]) -> K3rsServer {
        let https_port = free_port();
        let port = https_port.to_string();
        let mut args = vec!["--https-listen-port", &port];
        args.extend_from_slice(extra);
        let (child, log) = api_server::spawn_server(data_dir, &args);
        K3rsServer {
            child: Some(child),
            https_port,
            data_dir: data_dir.to_path_buf(),
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("stopped").id()
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.data_dir.join("server/cred/admin.kubeconfig")
    }

    /// The datastore's socket.
    pub fn socket(&self) -> PathBuf {
        self.data_dir.join("server/kine.sock")
    }

    /// A plaintext channel to the datastore over its socket.
    pub async fn socket_channel(&self) -> Channel {
        tonic::transport::Endpoint::from_shared(format!("unix://{}", self.socket().display()))
            .unwrap()
            .connect()
            .await
            .unwrap_or_else(|e| panic!("the datastore's socket: {e}: {}", self.log()))
    }

    /// SIGKILL, then waits for the exit.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("already stopped");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// SIGTERM, then waits for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("already stopped");
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        child.wait().unwrap()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for K3rsServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs the k3rs binary with `args`, which must exit within 30 s:
/// `(success, stderr)`.
pub fn k3rs_to_exit(args: &[&str]) -> (bool, String) {
    let stderr = tempfile::NamedTempFile::new().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_k3rs"))
        .env("K3RS_CONTAINER_RUNTIME", "process")
        .args(args)
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(stderr.reopen().unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "k3rs {args:?} did not exit: {}",
                std::fs::read_to_string(stderr.path()).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (
        status.success(),
        std::fs::read_to_string(stderr.path()).unwrap_or_default(),
    )
}

/// The TCP ports process `pid` listens on (its socket inodes, looked up
/// in /proc/net/tcp and tcp6).
pub fn listening_tcp_ports(pid: u32) -> Vec<u16> {
    let inodes: std::collections::HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect();
    let mut ports = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        for line in std::fs::read_to_string(table)
            .unwrap_or_default()
            .lines()
            .skip(1)
        {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // local_address is field 1 (ADDR:PORT in hex), st field 3 (0A
            // = LISTEN), inode field 9.
            if fields.len() > 9 && fields[3] == "0A" && inodes.contains(fields[9]) {
                let port = fields[1].rsplit(':').next().unwrap();
                ports.push(u16::from_str_radix(port, 16).unwrap());
            }
        }
    }
    ports.sort_unstable();
    ports.dedup();
    ports
}
