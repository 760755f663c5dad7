//! A recorded history: operations with invoke/return times, and its text form.

use std::fmt::Write as _;

use super::model::{Cmp, EtcdError, Kv, Request, Response, value_name};

/// The return time of an op whose outcome is unknown.
pub const INFINITY: u64 = u64::MAX;

/// One operation: who, what, what came back, and when (nanoseconds on a
/// monotonic clock from the start of the run).
#[derive(Clone, Debug)]
pub struct Op {
    pub client: usize,
    pub req: Request,
    pub resp: Response,
    pub invoke: u64,
    /// [`INFINITY`] when the outcome is unknown.
    pub ret: u64,
}

impl Op {
    /// `c3 put k4=c3.17 lease=… -> rev 456 prev …`.
    pub fn describe(&self, keys: &[String]) -> String {
        format!(
            "c{} {} -> {}",
            self.client,
            describe_req(&self.req, keys),
            describe_resp(&self.resp, keys)
        )
    }
}

fn key_name(keys: &[String], k: u8) -> String {
    keys.get(k as usize)
        .cloned()
        .unwrap_or_else(|| format!("<foreign key #{k}>"))
}

fn kv_text(kv: &Kv, keys: &[String]) -> String {
    let mut s = format!(
        "{}={} (cr {}, mod {}, ver {}",
        key_name(keys, kv.key),
        value_name(kv.value),
        kv.create,
        kv.modr,
        kv.version
    );
    if kv.lease != 0 {
        let _ = write!(s, ", lease {:x}", kv.lease);
    }
    s.push(')');
    s
}

fn opt_kv_text(kv: &Option<Kv>, keys: &[String]) -> String {
    kv.as_ref()
        .map_or_else(|| "nothing".to_string(), |kv| kv_text(kv, keys))
}

/// A request in words.
pub fn describe_req(req: &Request, keys: &[String]) -> String {
    match req {
        Request::Get { key } => format!("get {}", key_name(keys, *key)),
        Request::List => "list".into(),
        Request::Put { key, value, lease } => {
            let mut s = format!("put {}={}", key_name(keys, *key), value_name(*value));
            if *lease != 0 {
                let _ = write!(s, " lease {lease:x}");
            }
            s
        }
        Request::Delete { key } => format!("delete {}", key_name(keys, *key)),
        Request::Cas { key, cmp, value } => {
            let cond = match cmp {
                Cmp::ModRevision(m) => format!("mod({}) == {m}", key_name(keys, *key)),
                Cmp::Value(v) => format!("value({}) == {}", key_name(keys, *key), value_name(*v)),
            };
            format!(
                "txn if {cond} then put {}={} else get",
                key_name(keys, *key),
                value_name(*value)
            )
        }
        Request::LeaseGrant => "lease grant".into(),
        Request::LeaseRevoke { id } => format!("lease revoke {id:x}"),
        Request::Compact { revision } => format!("compact {revision}"),
    }
}

/// A response in words.
pub fn describe_resp(resp: &Response, keys: &[String]) -> String {
    match resp {
        Response::Get { rev, kv } => format!("rev {rev}: {}", opt_kv_text(kv, keys)),
        Response::List { rev, kvs } => {
            let items: Vec<String> = kvs.iter().map(|kv| kv_text(kv, keys)).collect();
            format!("rev {rev}: [{}]", items.join(", "))
        }
        Response::Put { rev, prev } => match prev {
            Some(p) => format!("rev {rev}, prev {}", opt_kv_text(p, keys)),
            None => format!("rev {rev} (seen by a watch; prev not checked)"),
        },
        Response::Delete { rev, deleted, prev } => {
            let items: Vec<String> = prev.iter().map(|kv| kv_text(kv, keys)).collect();
            format!("rev {rev}, deleted {deleted} [{}]", items.join(", "))
        }
        Response::Cas {
            rev,
            succeeded: true,
            ..
        } => format!("rev {rev}, succeeded"),
        Response::Cas {
            rev,
            succeeded: false,
            kv,
        } => format!("rev {rev}, failed; read {}", opt_kv_text(kv, keys)),
        Response::LeaseGrant { rev, id } => format!("rev {rev}, lease {id:x}"),
        Response::LeaseRevoke { rev } => format!("rev {rev}"),
        Response::Compact { rev } => format!("rev {rev}"),
        Response::Error(EtcdError::Compacted) => "ErrCompacted".into(),
        Response::Error(EtcdError::FutureRev) => "ErrFutureRev".into(),
        Response::Error(EtcdError::LeaseNotFound) => "ErrLeaseNotFound".into(),
        Response::Unknown(why) => format!("UNKNOWN ({why})"),
    }
}

/// Seconds with microseconds, or `∞`.
pub fn time_text(t: u64) -> String {
    if t == INFINITY {
        "        ∞".into()
    } else {
        format!("{:9.6}", t as f64 / 1e9)
    }
}

/// One line per op, `[invoke .. return] #index client op -> result`.
pub fn op_line(index: usize, op: &Op, keys: &[String]) -> String {
    format!(
        "[{} .. {}] #{index:<5} {}",
        time_text(op.invoke),
        time_text(op.ret),
        op.describe(keys)
    )
}

/// The whole history as text: by invocation time, then per client.
pub fn timeline(ops: &[Op], keys: &[String]) -> String {
    let mut order: Vec<usize> = (0..ops.len()).collect();
    order.sort_by_key(|&i| (ops[i].invoke, i));
    let mut out = String::new();
    let _ = writeln!(
        out,
        "== timeline: {} ops by invocation time (seconds from start) ==",
        ops.len()
    );
    for &i in &order {
        out.push_str(&op_line(i, &ops[i], keys));
        out.push('\n');
    }
    let mut clients: Vec<usize> = ops.iter().map(|o| o.client).collect();
    clients.sort_unstable();
    clients.dedup();
    for c in clients {
        let _ = writeln!(out, "\n== client c{c} ==");
        for &i in order.iter().filter(|&&i| ops[i].client == c) {
            out.push_str(&op_line(i, &ops[i], keys));
            out.push('\n');
        }
    }
    out
}
