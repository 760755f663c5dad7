//! List: pages read at one revision, continue tokens, selectors, and the
//! list and Table shapes.

use base64::Engine as _;
use serde_json::{Value, json};

use crate::resources::Resource;
use crate::selectors::{FieldSelector, LabelSelector};
use crate::status::{ApiError, ApiResult};
use crate::store::Store;

/// Query parameters of a list or watch.
#[derive(Debug, Default, Clone)]
pub struct ListParams {
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    pub limit: i64,
    pub continue_token: Option<String>,
    pub resource_version: Option<String>,
    pub timeout_seconds: Option<u64>,
    pub allow_bookmarks: bool,
}

impl ListParams {
    pub fn matches(&self, obj: &Value) -> bool {
        self.labels.matches(obj) && self.fields.matches(obj)
    }
}

fn encode_continue(revision: i64, start: &str) -> String {
    let token = json!({"v": "meta.k8s.io/v1", "rv": revision, "start": format!("{start}\u{0}")});
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token.to_string())
}

fn decode_continue(token: &str) -> ApiResult<(i64, String)> {
    let bad = || ApiError::bad_request("continue key is not valid: the token is malformed");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.trim_end_matches('='))
        .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(token))
        .map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    let rev = v.get("rv").and_then(Value::as_i64).ok_or_else(bad)?;
    let start = v.get("start").and_then(Value::as_str).ok_or_else(bad)?;
    if start.starts_with('/') || start.contains("..") {
        return Err(bad());
    }
    Ok((rev, start.to_string()))
}

/// Reads one page of matching objects; returns the list object.
pub async fn list(store: &Store, res: &Resource, namespace: Option<&str>, p: &ListParams) -> ApiResult<Value> {
    let prefix = res.prefix(namespace);
    let (mut revision, mut start) = match &p.continue_token {
        Some(token) => {
            if p.resource_version.as_deref().is_some_and(|rv| !rv.is_empty() && rv != "0") {
                return Err(ApiError::bad_request("specifying resource version is not allowed when using continue"));
            }
            let (rev, start) = decode_continue(token)?;
            (rev, Some(format!("{prefix}{start}")))
        }
        None => {
            let rev = match p.resource_version.as_deref() {
                None | Some("") | Some("0") => 0,
                Some(rv) => rv.parse().map_err(|_| ApiError::bad_request(format!("invalid resource version {rv:?}")))?,
            };
            (rev, None)
        }
    };
    let want = if p.limit > 0 { p.limit as usize } else { usize::MAX };
    let filtered = !p.labels.is_empty() || !p.fields.is_empty();
    let mut items = Vec::new();
    let mut last_key = None;
    let mut remaining;
    let mut page_limit = if p.limit > 0 { p.limit } else { 0 };
    loop {
        let page = store.list(&prefix, start.as_deref(), page_limit, revision).await.map_err(|e| {
            if e.code == 410 && p.continue_token.is_some() {
                ApiError::expired("The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.")
            } else {
                e
            }
        })?;
        revision = page.revision;
        let n = page.items.len();
        let mut consumed = 0;
        for (key, obj) in page.items {
            if items.len() == want {
                break;
            }
            consumed += 1;
            last_key = Some(key);
            if p.matches(&obj) {
                items.push(obj);
            }
        }
        // Keys after the last one looked at.
        remaining = page.remaining + (n - consumed) as i64;
        if items.len() >= want || remaining == 0 || n == 0 {
            break;
        }
        // Selectors dropped some: read on from the last key, with a larger page.
        start = last_key.as_ref().map(|k| format!("{k}\u{0}"));
        page_limit = (page_limit * 2).min(10_000);
    }
    let more = p.limit > 0 && items.len() as i64 >= p.limit && remaining > 0;
    let mut metadata = json!({"resourceVersion": revision.to_string()});
    if more {
        if let Some(key) = &last_key {
            metadata["continue"] = json!(encode_continue(revision, key.strip_prefix(&prefix).unwrap_or(key)));
            if !filtered {
                metadata["remainingItemCount"] = json!(remaining);
            }
        }
    }
    Ok(json!({
        "kind": format!("{}List", res.kind),
        "apiVersion": res.api_version(),
        "metadata": metadata,
        "items": items,
    }))
}

/// The `Table` kubectl asks for: NAME and AGE for every kind, the usual
/// columns for pods.
pub fn table(res: &Resource, list: &Value) -> Value {
    let items: Vec<&Value> = match list.get("items").and_then(Value::as_array) {
        Some(items) => items.iter().collect(),
        None => vec![list],
    };
    let mut columns = vec![json!({"name": "Name", "type": "string", "format": "name", "description": "Name", "priority": 0})];
    if res.kind == "Pod" {
        for c in ["Ready", "Status", "Restarts"] {
            columns.push(json!({"name": c, "type": "string", "format": "", "description": c, "priority": 0}));
        }
    }
    columns.push(json!({"name": "Age", "type": "string", "format": "", "description": "Age", "priority": 0}));
    let rows: Vec<Value> = items
        .iter()
        .map(|obj| {
            let name = obj.pointer("/metadata/name").cloned().unwrap_or(json!(""));
            let mut cells = vec![name];
            if res.kind == "Pod" {
                let statuses = obj.pointer("/status/containerStatuses").and_then(Value::as_array);
                let total = obj.pointer("/spec/containers").and_then(Value::as_array).map_or(0, Vec::len);
                let ready = statuses.map_or(0, |s| s.iter().filter(|c| c.get("ready") == Some(&json!(true))).count());
                let restarts: i64 = statuses.map_or(0, |s| s.iter().filter_map(|c| c.get("restartCount").and_then(Value::as_i64)).sum());
                let status = if obj.pointer("/metadata/deletionTimestamp").is_some() {
                    "Terminating".to_string()
                } else {
                    obj.pointer("/status/phase").and_then(Value::as_str).unwrap_or("Pending").to_string()
                };
                cells.extend([json!(format!("{ready}/{total}")), json!(status), json!(restarts)]);
            }
            cells.push(json!(crate::objects::age(obj.pointer("/metadata/creationTimestamp").and_then(Value::as_str).unwrap_or(""))));
            json!({
                "cells": cells,
                "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj.get("metadata").cloned().unwrap_or(json!({}))},
            })
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list.get("metadata").cloned().unwrap_or(json!({})),
        "columnDefinitions": columns,
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continue_tokens_round_trip() {
        let t = encode_continue(42, "default/web");
        assert_eq!(decode_continue(&t).unwrap(), (42, "default/web\u{0}".to_string()));
        assert!(decode_continue("!!").is_err());
    }
}
