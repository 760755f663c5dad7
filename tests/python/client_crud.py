"""The official Python `kubernetes` client against k3rs: CRUD, list and
watch with resourceVersion and timeoutSeconds, patches with dict and list
bodies, server-side apply. Exits non-zero with a message on the first difference."""

import sys

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

config.load_kube_config(config_file=sys.argv[1])
core = client.CoreV1Api()
apps = client.AppsV1Api()
ns = "py-client"

core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
cm = core.create_namespaced_config_map(
    ns, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="cfg", labels={"app": "py"}), data={"k": "v"})
)
assert cm.metadata.uid and cm.metadata.resource_version, cm
listed = core.list_namespaced_config_map(ns, label_selector="app=py")
assert [c.metadata.name for c in listed.items] == ["cfg"], listed
start_rv = listed.metadata.resource_version

# A dict body is sent as a strategic merge patch, a list body as a JSON patch.
core.patch_namespaced_config_map("cfg", ns, {"data": {"k2": "v2"}})
core.patch_namespaced_config_map("cfg", ns, [{"op": "replace", "path": "/data/k", "value": "w"}])
got = core.read_namespaced_config_map("cfg", ns)
assert got.data == {"k": "w", "k2": "v2"}, got.data

# Update with a stale resourceVersion: 409.
stale = cm
stale.data = {"k": "stale"}
try:
    core.replace_namespaced_config_map("cfg", ns, stale)
    raise SystemExit("a stale update was accepted")
except ApiException as e:
    assert e.status == 409, e

# Watch from the listed revision replays what happened since, and ends
# at timeoutSeconds.
seen = []
for event in watch.Watch().stream(
    core.list_namespaced_config_map, ns, resource_version=start_rv, timeout_seconds=2
):
    seen.append((event["type"], event["object"].metadata.name, dict(event["object"].data or {})))
assert seen == [("MODIFIED", "cfg", {"k": "v", "k2": "v2"}), ("MODIFIED", "cfg", {"k": "w", "k2": "v2"})], seen

dep = apps.create_namespaced_deployment(
    ns,
    {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "web", "image": "nginx"}]}},
        },
    },
)
apps.patch_namespaced_deployment_scale("web", ns, {"spec": {"replicas": 4}})
assert apps.read_namespaced_deployment("web", ns).spec.replicas == 4

# Server-side apply: it creates, and the applier owns its fields; a
# conflicting apply by another manager is a 409 until forced.
apply = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "applied"}, "data": {"mode": "a"}}
applied = core.patch_namespaced_config_map(
    "applied", ns, apply, field_manager="py-apply", _content_type="application/apply-patch+yaml"
)
assert applied.data == {"mode": "a"}, applied.data
assert [(m.manager, m.operation) for m in applied.metadata.managed_fields] == [("py-apply", "Apply")], applied.metadata
apply["data"]["mode"] = "b"
try:
    core.patch_namespaced_config_map(
        "applied", ns, apply, field_manager="other", _content_type="application/apply-patch+yaml"
    )
    raise SystemExit("a conflicting apply was accepted")
except ApiException as e:
    assert e.status == 409 and 'conflict with \\"py-apply\\"' in e.body, e.body
forced = core.patch_namespaced_config_map(
    "applied", ns, apply, field_manager="other", force=True, _content_type="application/apply-patch+yaml"
)
assert forced.data == {"mode": "b"}, forced.data
core.delete_namespaced_config_map("applied", ns)

try:
    core.read_namespaced_config_map("missing", ns)
    raise SystemExit("a missing object was found")
except ApiException as e:
    assert e.status == 404 and "not found" in e.body, e

core.delete_namespaced_config_map("cfg", ns)
assert core.list_namespaced_config_map(ns).items == []
print("ok")
