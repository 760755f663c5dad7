"""The official Python client's watch, as installed and unchanged, against
k3rs: `watch.Watch().stream(list_namespaced_config_map, ...)` sees ADDED,
MODIFIED and DELETED. The client sends `watch=True` (Python's str(True));
a server that reads only `true` answers a list and the stream sees nothing."""

import sys
import threading

from kubernetes import client, config, watch

config.load_kube_config(config_file=sys.argv[1])
core = client.CoreV1Api()
ns = "py-watch"
core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))

seen = []
started = threading.Event()


def follow():
    w = watch.Watch()
    started.set()
    for event in w.stream(core.list_namespaced_config_map, ns, timeout_seconds=20):
        seen.append((event["type"], event["object"].metadata.name))
        if event["type"] == "DELETED":
            w.stop()


watcher = threading.Thread(target=follow)
watcher.start()
started.wait()
# The watch starts with the namespace's current (empty) state; give the
# request a moment to reach the server before the first write.
threading.Event().wait(1)
core.create_namespaced_config_map(ns, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="w"), data={"k": "1"}))
core.patch_namespaced_config_map("w", ns, {"data": {"k": "2"}})
core.delete_namespaced_config_map("w", ns)
watcher.join(30)
assert not watcher.is_alive(), f"the watch did not end; saw {seen}"
assert seen == [("ADDED", "w"), ("MODIFIED", "w"), ("DELETED", "w")], seen
print("ok", seen)
