//! Black-box: the python-etcd3 client (Debian's python3-etcd3, run with
//! /usr/bin/python3) drives the target; its printed results must match.

use crate::case::*;

/// The python client's script: every line it prints is compared.
const SCRIPT: &str = r#"
import os, sys, etcd3
host, port = os.environ["ENDPOINT"].rsplit("//", 1)[1].rsplit(":", 1)
p = os.environ["PREFIX"]
c = etcd3.client(host=host, port=int(port), timeout=10)
r0 = c.get_response(p + "nothing").header.revision
def rel(rev): return rev - r0
c.put(p + "a", "1")
c.put(p + "b", "2")
v, m = c.get(p + "a")
print("get", v.decode(), rel(m.create_revision), rel(m.mod_revision), m.version)
print("prefix", [(v.decode(), m.key.decode()[len(p):]) for v, m in c.get_prefix(p)])
print("prefix desc", [m.key.decode()[len(p):] for _, m in c.get_prefix(p, sort_order="descend")])
print("keys_only", [(v, m.key.decode()[len(p):]) for v, m in c.get_prefix(p, keys_only=True)])
print("range", [m.key.decode()[len(p):] for _, m in c.get_range(p + "a", p + "b")])
print("put_if_not_exists", c.put_if_not_exists(p + "a", "x"), c.put_if_not_exists(p + "c", "3"))
print("replace", c.replace(p + "a", "1", "10"), c.replace(p + "a", "1", "11"))
ok, resps = c.transaction(
    compare=[c.transactions.value(p + "a") == "10", c.transactions.version(p + "b") > 0],
    success=[c.transactions.put(p + "d", "4"), c.transactions.get(p + "d")],
    failure=[])
print("txn", ok, [[(v.decode(), m.key.decode()[len(p):]) for v, m in r] if isinstance(r, list) else type(r).__name__ for r in resps])
ok, _ = c.transaction(compare=[c.transactions.mod(p + "a") < 1], success=[], failure=[c.transactions.delete(p + "d")])
print("txn failure", ok, c.get(p + "d")[0])
print("delete", c.delete(p + "c"), c.delete(p + "c"))
print("delete_prefix deleted", c.delete_prefix(p).deleted)
print("revision", rel(c.get_response(p + "nothing").header.revision))
s = c.status()
print("status", s.version.startswith("3."), s.db_size > 0, s.leader.name)
"#;

/// put/get/prefix/range/txn/replace/delete/status through python-etcd3.
pub async fn smoke(cx: Ctx) -> CaseResult {
    let py = std::env::var("CONFORMANCE_PYTHON").unwrap_or_else(|_| "/usr/bin/python3".to_string());
    cx.note(format!("{py} -c <python-etcd3 smoke script>"));
    let out = tokio::process::Command::new(&py)
        .arg("-c")
        .arg(SCRIPT)
        .env("ENDPOINT", &cx.endpoint)
        .env("PREFIX", String::from_utf8_lossy(&cx.prefix).into_owned())
        .env("PYTHONWARNINGS", "ignore")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(std::time::Duration::from_secs(60), out)
        .await
        .map_err(|_| cx.fail("python finishes", "exit", "still running after 60 s"))?
        .map_err(|e| cx.fail("python runs", "spawned", format!("{py}: {e}")))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let want = "\
get 1 1 1 1
prefix [('1', 'a'), ('2', 'b')]
prefix desc ['b', 'a']
keys_only [(b'', 'a'), (b'', 'b')]
range ['a']
put_if_not_exists False True
replace True False
txn True ['ResponseOp', [('4', 'd')]]
txn failure False None
delete True False
delete_prefix deleted 2
revision 8
status True True default
";
    if !out.status.success() {
        return Err(cx.fail(
            "python succeeds",
            want,
            format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)),
        ));
    }
    cx.eq("python output", want, stdout.as_str())
}
