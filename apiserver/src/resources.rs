//! The resources k3rs serves: their group, version, kind, names, scope and
//! where kube-apiserver keeps them in etcd.

/// One served resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resource {
    /// "" for the core group.
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    /// The URL segment: `pods`.
    pub plural: &'static str,
    pub singular: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    /// kube-apiserver's etcd prefix, with a trailing slash.
    pub storage: &'static str,
    /// Whether `.status` is a subresource (writes to the object leave it alone).
    pub has_status: bool,
    /// In kubectl's `all` category.
    pub in_all: bool,
}

impl Resource {
    /// `v1` or `apps/v1`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The resource as kube's errors name it: `pods`, `deployments.apps`.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// The etcd key of an object.
    pub fn key(&self, namespace: Option<&str>, name: &str) -> String {
        match namespace {
            Some(ns) if self.namespaced => format!("{}{ns}/{name}", self.storage),
            _ => format!("{}{name}", self.storage),
        }
    }

    /// The etcd prefix of a list (one namespace, or all).
    pub fn prefix(&self, namespace: Option<&str>) -> String {
        match namespace {
            Some(ns) if self.namespaced => format!("{}{ns}/", self.storage),
            _ => self.storage.to_string(),
        }
    }
}

// One row of the resource table: each argument is a column.
#[allow(clippy::too_many_arguments)]
const fn res(
    group: &'static str,
    kind: &'static str,
    plural: &'static str,
    singular: &'static str,
    namespaced: bool,
    short_names: &'static [&'static str],
    storage: &'static str,
    has_status: bool,
    in_all: bool,
) -> Resource {
    Resource {
        group,
        version: "v1",
        kind,
        plural,
        singular,
        namespaced,
        short_names,
        storage,
        has_status,
        in_all,
    }
}

/// Every served resource.
pub static RESOURCES: &[Resource] = &[
    res(
        "",
        "Namespace",
        "namespaces",
        "namespace",
        false,
        &["ns"],
        "/registry/namespaces/",
        true,
        false,
    ),
    res(
        "",
        "Pod",
        "pods",
        "pod",
        true,
        &["po"],
        "/registry/pods/",
        true,
        true,
    ),
    res(
        "",
        "Node",
        "nodes",
        "node",
        false,
        &["no"],
        "/registry/minions/",
        true,
        false,
    ),
    res(
        "",
        "Service",
        "services",
        "service",
        true,
        &["svc"],
        "/registry/services/specs/",
        true,
        true,
    ),
    res(
        "",
        "Endpoints",
        "endpoints",
        "endpoints",
        true,
        &["ep"],
        "/registry/services/endpoints/",
        false,
        false,
    ),
    res(
        "",
        "ConfigMap",
        "configmaps",
        "configmap",
        true,
        &["cm"],
        "/registry/configmaps/",
        false,
        false,
    ),
    res(
        "",
        "Secret",
        "secrets",
        "secret",
        true,
        &[],
        "/registry/secrets/",
        false,
        false,
    ),
    res(
        "",
        "ServiceAccount",
        "serviceaccounts",
        "serviceaccount",
        true,
        &["sa"],
        "/registry/serviceaccounts/",
        false,
        false,
    ),
    res(
        "",
        "Event",
        "events",
        "event",
        true,
        &["ev"],
        "/registry/events/",
        false,
        false,
    ),
    res(
        "apps",
        "Deployment",
        "deployments",
        "deployment",
        true,
        &["deploy"],
        "/registry/deployments/",
        true,
        true,
    ),
    res(
        "apps",
        "ReplicaSet",
        "replicasets",
        "replicaset",
        true,
        &["rs"],
        "/registry/replicasets/",
        true,
        true,
    ),
    res(
        "coordination.k8s.io",
        "Lease",
        "leases",
        "lease",
        true,
        &[],
        "/registry/leases/",
        false,
        false,
    ),
    res(
        "discovery.k8s.io",
        "EndpointSlice",
        "endpointslices",
        "endpointslice",
        true,
        &[],
        "/registry/endpointslices/",
        false,
        false,
    ),
    res(
        "networking.k8s.io",
        "NetworkPolicy",
        "networkpolicies",
        "networkpolicy",
        true,
        &["netpol"],
        "/registry/networkpolicies/",
        false,
        false,
    ),
];

/// The API groups other than core, with their one version.
pub static GROUPS: &[&str] = &[
    "apps",
    "coordination.k8s.io",
    "discovery.k8s.io",
    "networking.k8s.io",
];

/// The resource `plural` of `group`/`version`.
pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static Resource> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// Every resource of one group-version.
pub fn of_group_version<'a>(
    group: &'a str,
    version: &'a str,
) -> impl Iterator<Item = &'static Resource> + 'a {
    RESOURCES
        .iter()
        .filter(move |r| r.group == group && r.version == version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_kube_apiserver() {
        let pods = find("", "v1", "pods").unwrap();
        assert_eq!(
            pods.key(Some("default"), "web"),
            "/registry/pods/default/web"
        );
        let nodes = find("", "v1", "nodes").unwrap();
        assert_eq!(nodes.key(None, "n1"), "/registry/minions/n1");
        assert_eq!(
            find("apps", "v1", "deployments").unwrap().api_version(),
            "apps/v1"
        );
    }
}
