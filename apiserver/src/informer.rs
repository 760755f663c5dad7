//! A cache of one resource kept current by list + watch (client-go's
//! reflector): controllers read it instead of listing on every decision.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch;

use crate::client::Client;

/// Cached objects by `namespace/name` (cluster-scoped: `name`).
type Cache = BTreeMap<String, Value>;

/// A cheap handle; the list+watch task runs until every handle is dropped.
#[derive(Clone)]
pub struct Informer {
    cache: Arc<RwLock<Cache>>,
    /// Bumped after every change; `true` in `synced` once the first list is in.
    version: watch::Receiver<u64>,
    synced: watch::Receiver<bool>,
}

fn key_of(obj: &Value) -> String {
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    match obj.pointer("/metadata/namespace").and_then(Value::as_str) {
        Some(ns) if !ns.is_empty() => format!("{ns}/{name}"),
        _ => name.to_string(),
    }
}

impl Informer {
    /// Lists `list_path` (`/api/v1/pods`) with `query` (`fieldSelector=…`,
    /// already encoded, or empty), then watches from the list's revision;
    /// lists again when the watch ends or its revision was compacted.
    pub fn start(client: Client, list_path: &str, query: &str) -> Informer {
        let cache = Arc::new(RwLock::new(Cache::new()));
        let (version_tx, version) = watch::channel(0u64);
        let (synced_tx, synced) = watch::channel(false);
        let list_path = list_path.to_string();
        let query = query.to_string();
        let task_cache = cache.clone();
        tokio::spawn(async move {
            let sep = if query.is_empty() { "" } else { "&" };
            let mut failures = 0u32;
            loop {
                if version_tx.is_closed() {
                    return;
                }
                let listed = client.get(&format!("{list_path}?{query}")).await;
                let list = match listed {
                    Ok(l) => l,
                    Err(e) => {
                        failures += 1;
                        if failures % 10 == 1 {
                            tracing::warn!(path = %list_path, error = %e, "listing failed; retrying");
                        }
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                };
                failures = 0;
                let mut rv = list
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str)
                    .unwrap_or("0")
                    .to_string();
                {
                    let mut c = task_cache.write().expect("not poisoned");
                    c.clear();
                    for item in list["items"].as_array().into_iter().flatten() {
                        c.insert(key_of(item), item.clone());
                    }
                }
                version_tx.send_modify(|v| *v += 1);
                let _ = synced_tx.send(true);
                // Watch from `rv`; a stream that ends (its timeout) is
                // resumed, an error or ERROR event (410 Expired) relists.
                'watching: loop {
                    let path = format!(
                        "{list_path}?{query}{sep}watch=true&allowWatchBookmarks=true&resourceVersion={rv}&timeoutSeconds=300"
                    );
                    let Ok(mut events) = client.watch(&path).await else {
                        break 'watching;
                    };
                    while let Some(event) = events.recv().await {
                        let Ok(event) = event else { break 'watching };
                        if let Some(v) = event
                            .object
                            .pointer("/metadata/resourceVersion")
                            .and_then(Value::as_str)
                        {
                            rv = v.to_string();
                        }
                        match event.kind.as_str() {
                            "ADDED" | "MODIFIED" => {
                                task_cache
                                    .write()
                                    .expect("not poisoned")
                                    .insert(key_of(&event.object), event.object);
                            }
                            "DELETED" => {
                                task_cache
                                    .write()
                                    .expect("not poisoned")
                                    .remove(&key_of(&event.object));
                            }
                            "BOOKMARK" => continue,
                            _ => break 'watching,
                        }
                        version_tx.send_modify(|v| *v += 1);
                    }
                    if version_tx.is_closed() {
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        Informer {
            cache,
            version,
            synced,
        }
    }

    /// Waits until the first list is in the cache.
    pub async fn wait_synced(&self) {
        let mut s = self.synced.clone();
        let _ = s.wait_for(|v| *v).await;
    }

    /// Every cached object.
    pub fn list(&self) -> Vec<Value> {
        self.cache
            .read()
            .expect("not poisoned")
            .values()
            .cloned()
            .collect()
    }

    pub fn get(&self, namespace: Option<&str>, name: &str) -> Option<Value> {
        let key = match namespace {
            Some(ns) => format!("{ns}/{name}"),
            None => name.to_string(),
        };
        self.cache.read().expect("not poisoned").get(&key).cloned()
    }

    /// Changes whenever the cache does.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.version.clone()
    }
}
