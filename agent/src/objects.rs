//! The API objects a pod's volumes and environment are made from,
//! read through the agent's API client when a container starts and when
//! its volumes are refreshed.

use apiserver::client::{Client, resource_path};
use serde_json::Value;

use crate::runtime::BoxFuture;
use crate::volumes::Objects;

/// What volumes and env read: configMaps and secrets, and Services for
/// the service-link variables.
pub trait Sources: Objects {
    /// The Services of `namespace`, then `default/kubernetes`.
    fn services<'a>(&'a self, namespace: &'a str) -> BoxFuture<'a, Result<Vec<Value>, String>>;
}

/// `Sources` from the API server.
pub struct ApiSources {
    pub client: Client,
}

impl Objects for ApiSources {
    fn get<'a>(
        &'a self,
        kind: &'a str,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<Value>, String>> {
        Box::pin(async move {
            let path = resource_path("v1", kind, Some(namespace), Some(name));
            match self.client.get(&path).await {
                Ok(object) => Ok(Some(object)),
                Err(e) if e.is_not_found() => Ok(None),
                Err(e) => Err(format!("reading {kind} {namespace}/{name}: {e}")),
            }
        })
    }
}

impl Sources for ApiSources {
    fn services<'a>(&'a self, namespace: &'a str) -> BoxFuture<'a, Result<Vec<Value>, String>> {
        Box::pin(async move {
            let mut services = Vec::new();
            for ns in [namespace, "default"] {
                let path = resource_path("v1", "services", Some(ns), None);
                let list = self
                    .client
                    .get(&path)
                    .await
                    .map_err(|e| format!("listing the services of {ns}: {e}"))?;
                let items = list["items"].as_array().cloned().unwrap_or_default();
                services.extend(items.into_iter().filter(|s| {
                    ns == namespace
                        || s.pointer("/metadata/name").and_then(Value::as_str) == Some("kubernetes")
                }));
                if namespace == "default" {
                    break;
                }
            }
            Ok(services)
        })
    }
}
