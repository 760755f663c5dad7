//! Watchers that fall behind are caught up from history: every event
//! exactly once, in order, while other watchers keep getting theirs.

use std::time::Duration;

use kine::backend::sqlite::SqliteConfig;
use kine::proto::kv_client::KvClient;
use kine::proto::watch_client::WatchClient;
use kine::proto::watch_request::RequestUnion;
use kine::proto::{CompactionRequest, PutRequest, WatchCreateRequest, WatchRequest, WatchResponse};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::transport::Channel;

async fn start() -> (tempfile::TempDir, Channel) {
    let (dir, addr) = start_server().await;
    (dir, connect(addr).await)
}

async fn connect(addr: std::net::SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

async fn start_server() -> (tempfile::TempDir, std::net::SocketAddr) {
    let dir = tempfile::tempdir().unwrap();
    let store = kine::open_sqlite(&SqliteConfig {
        path: dir.path().join("state.db"),
        durability: Default::default(),
    })
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(kine::serve(
        listener,
        store,
        kine::ServerConfig::default(),
        std::future::pending(),
    ));
    (dir, addr)
}

async fn open_watch(
    channel: &Channel,
    create: WatchCreateRequest,
) -> (mpsc::Sender<WatchRequest>, Streaming<WatchResponse>) {
    let (tx, rx) = mpsc::channel(16);
    tx.send(WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(create)),
    })
    .await
    .unwrap();
    let mut stream = WatchClient::new(channel.clone())
        .watch(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let created = stream.message().await.unwrap().unwrap();
    assert!(created.created && !created.canceled, "{created:?}");
    (tx, stream)
}

async fn put_many(channel: &Channel, key: &str, n: usize, value_size: usize) -> Vec<i64> {
    let mut kv = KvClient::new(channel.clone());
    let mut revs = Vec::new();
    for i in 0..n {
        let mut value = format!("{i}:").into_bytes();
        value.resize(value_size, b'x');
        let r = kv
            .put(PutRequest {
                key: key.as_bytes().to_vec().into(),
                value: value.into(),
                ..Default::default()
            })
            .await
            .unwrap();
        revs.push(r.into_inner().header.unwrap().revision);
    }
    revs
}

async fn collect_revisions(stream: &mut Streaming<WatchResponse>, n: usize) -> Vec<i64> {
    let mut seen = Vec::new();
    while seen.len() < n {
        let resp = tokio::time::timeout(Duration::from_secs(20), stream.message())
            .await
            .expect("events stopped coming")
            .unwrap()
            .unwrap();
        assert!(!resp.canceled, "{resp:?}");
        seen.extend(
            resp.events
                .iter()
                .map(|e| e.kv.as_ref().unwrap().mod_revision),
        );
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_watcher_is_caught_up_and_others_are_not_held_back() {
    let (_dir, addr) = start_server().await;
    let channel = connect(addr).await;
    // Separate connections: HTTP/2 flow control would otherwise let the
    // unread stream hold up the other one in the client itself.
    let (_slow_tx, mut slow) = open_watch(
        &connect(addr).await,
        WatchCreateRequest {
            key: "/a".into(),
            prev_kv: true,
            ..Default::default()
        },
    )
    .await;
    let (_fast_tx, mut fast) = open_watch(
        &connect(addr).await,
        WatchCreateRequest {
            key: "/a".into(),
            ..Default::default()
        },
    )
    .await;

    // The fast watcher reads as events come; the slow one reads nothing yet,
    // so its stream buffer fills and it falls back to catch-up.
    let fast_reader = tokio::spawn(async move { collect_revisions(&mut fast, 1500).await });
    let revs = put_many(&channel, "/a", 1500, 4096).await;
    assert_eq!(fast_reader.await.unwrap(), revs);
    assert_eq!(collect_revisions(&mut slow, 1500).await, revs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_from_a_compacted_revision_is_canceled_with_the_compact_revision() {
    let (_dir, channel) = start().await;
    let revs = put_many(&channel, "/c", 5, 10).await;
    KvClient::new(channel.clone())
        .compact(CompactionRequest {
            revision: revs[3],
            physical: true,
        })
        .await
        .unwrap();
    let (_tx, mut stream) = open_watch(
        &channel,
        WatchCreateRequest {
            key: "/c".into(),
            start_revision: revs[1],
            ..Default::default()
        },
    )
    .await;
    let canceled = stream.message().await.unwrap().unwrap();
    assert!(canceled.canceled, "{canceled:?}");
    assert_eq!(canceled.compact_revision, revs[3]);

    // From the compact revision itself, history is complete.
    let (_tx, mut stream) = open_watch(
        &channel,
        WatchCreateRequest {
            key: "/c".into(),
            start_revision: revs[3],
            ..Default::default()
        },
    )
    .await;
    assert_eq!(collect_revisions(&mut stream, 2).await, revs[3..].to_vec());
}
