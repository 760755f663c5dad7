//! K3s's `registries.yaml` as containerd's registry configuration:
//!
//! ```yaml
//! mirrors:
//!   docker.io:
//!     endpoint: ["https://mirror.local:5000"]
//! configs:
//!   "mirror.local:5000":
//!     auth: {username: u, password: p}
//!     tls: {ca_file: /ca.pem, cert_file: /c.pem, key_file: /k.pem, insecure_skip_verify: false}
//! ```
//!
//! Each mirrored registry (and each one with a config of its own) gets a
//! `certs.d/<registry>/hosts.toml` naming its endpoints in order, with
//! their TLS settings, then the registry itself as K3s falls back to it
//! (`*` is containerd's `_default`); credentials go in containerd's
//! `config.toml`, where containerd 1.6 reads them.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::Value;

use super::containerd::toml_string;

/// A parsed `registries.yaml`.
#[derive(Debug, Default, Clone)]
pub struct Registries {
    /// Registry → its mirrors' endpoint URLs, in order.
    mirrors: BTreeMap<String, Vec<String>>,
    /// Registry host (as in an endpoint URL, `host:port`) → its settings.
    configs: BTreeMap<String, Value>,
}

impl Registries {
    /// Reads `path`; a missing file is no registry configuration.
    pub fn load(path: &Path) -> Result<Registries> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Registries::default()),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        Registries::parse(&text)
            .with_context(|| format!("{} is not a valid registries.yaml", path.display()))
    }

    pub fn parse(text: &str) -> Result<Registries> {
        let doc: Value = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_saphyr::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?
        };
        let mut registries = Registries::default();
        for (name, mirror) in doc["mirrors"].as_object().into_iter().flatten() {
            let endpoints: Vec<String> = mirror["endpoint"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(with_scheme)
                .collect();
            if mirror.get("rewrite").is_some() {
                tracing::warn!(registry = %name, "registries.yaml: rewrite is not supported by containerd 1.6's hosts files; ignoring it");
            }
            registries.mirrors.insert(name.clone(), endpoints);
        }
        for (host, config) in doc["configs"].as_object().into_iter().flatten() {
            registries.configs.insert(host.clone(), config.clone());
        }
        Ok(registries)
    }

    /// Writes `dir/<registry>/hosts.toml` for every registry named,
    /// replacing what an earlier start wrote.
    pub fn write_hosts(&self, dir: &Path) -> Result<()> {
        if dir.exists() {
            std::fs::remove_dir_all(dir)
                .with_context(|| format!("cannot clear {}", dir.display()))?;
        }
        let mut registries: Vec<&String> = self.mirrors.keys().collect();
        registries.extend(
            self.configs
                .keys()
                .filter(|h| !self.mirrors.contains_key(*h)),
        );
        for registry in registries {
            let folder = if registry == "*" {
                "_default"
            } else {
                registry.as_str()
            };
            if folder.contains('/') || folder.starts_with('.') {
                tracing::warn!(registry = %registry, "registries.yaml: not a registry host; ignoring it");
                continue;
            }
            let path = dir.join(folder);
            std::fs::create_dir_all(&path)
                .with_context(|| format!("cannot create {}", path.display()))?;
            std::fs::write(path.join("hosts.toml"), self.hosts_toml(registry))
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        Ok(())
    }

    /// The hosts file of `registry`: its mirrors, then itself.
    fn hosts_toml(&self, registry: &str) -> String {
        let mut out =
            String::from("# Written by the k3rs agent from registries.yaml; edits are lost.\n");
        if registry != "*" {
            out.push_str(&format!("server = {}\n", toml_string(&upstream(registry))));
        }
        for endpoint in self.mirrors.get(registry).into_iter().flatten() {
            out.push_str(&format!("\n[host.{}]\n", toml_string(endpoint)));
            out.push_str("  capabilities = [\"pull\", \"resolve\"]\n");
            out.push_str(&self.tls(&host_of(endpoint)));
        }
        if registry != "*" && self.configs.contains_key(registry) {
            out.push_str(&format!("\n[host.{}]\n", toml_string(&upstream(registry))));
            out.push_str("  capabilities = [\"pull\", \"resolve\"]\n");
            out.push_str(&self.tls(registry));
        }
        out
    }

    /// The TLS settings of `host`'s config, as hosts.toml keys.
    fn tls(&self, host: &str) -> String {
        let Some(tls) = self.configs.get(host).map(|c| &c["tls"]) else {
            return String::new();
        };
        let file = |key: &str| tls[key].as_str().filter(|s| !s.is_empty());
        let mut out = String::new();
        if let Some(ca) = file("ca_file") {
            out.push_str(&format!("  ca = {}\n", toml_string(ca)));
        }
        if let (Some(cert), Some(key)) = (file("cert_file"), file("key_file")) {
            out.push_str(&format!(
                "  client = [[{}, {}]]\n",
                toml_string(cert),
                toml_string(key)
            ));
        }
        if tls["insecure_skip_verify"].as_bool() == Some(true) {
            out.push_str("  skip_verify = true\n");
        }
        out
    }

    /// containerd `config.toml` tables with the registries' credentials.
    pub fn auth_toml(&self) -> String {
        let mut out = String::new();
        for (host, config) in &self.configs {
            let auth = &config["auth"];
            let fields: Vec<(&str, &str)> = [
                ("username", "username"),
                ("password", "password"),
                ("auth", "auth"),
                ("identitytoken", "identity_token"),
            ]
            .into_iter()
            .filter_map(|(toml_key, yaml_key)| Some((toml_key, auth[yaml_key].as_str()?)))
            .collect();
            if fields.is_empty() {
                continue;
            }
            out.push_str(&format!(
                "  [plugins.\"io.containerd.grpc.v1.cri\".registry.configs.{}.auth]\n",
                toml_string(host)
            ));
            for (key, value) in fields {
                out.push_str(&format!("    {key} = {}\n", toml_string(value)));
            }
        }
        out
    }
}

/// An endpoint as a URL: `mirror:5000` means https.
fn with_scheme(endpoint: &str) -> String {
    if endpoint.contains("://") {
        endpoint.trim_end_matches('/').to_string()
    } else {
        format!("https://{}", endpoint.trim_end_matches('/'))
    }
}

/// `host:port` of an endpoint URL, as `configs` are keyed.
fn host_of(endpoint: &str) -> String {
    let rest = endpoint.split_once("://").map_or(endpoint, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest).to_string()
}

/// Where a registry name itself is served (Docker Hub's real host).
fn upstream(registry: &str) -> String {
    match registry {
        "docker.io" => "https://registry-1.docker.io".to_string(),
        other => format!("https://{other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = r#"
mirrors:
  docker.io:
    endpoint:
      - "mirror.local:5000"
      - "http://plain.local"
  "*":
    endpoint: ["https://any.local"]
configs:
  "mirror.local:5000":
    auth: {username: user, password: "p\"w"}
    tls: {ca_file: /etc/ca.pem, cert_file: /etc/c.pem, key_file: /etc/k.pem}
  private.local:
    tls: {insecure_skip_verify: true}
"#;

    #[test]
    fn mirrors_become_hosts_files_and_auth_the_config() {
        let r = Registries::parse(YAML).unwrap();
        let hub = r.hosts_toml("docker.io");
        assert!(
            hub.contains("server = \"https://registry-1.docker.io\"\n"),
            "{hub}"
        );
        let mirror = hub.find("[host.\"https://mirror.local:5000\"]").unwrap();
        let plain = hub.find("[host.\"http://plain.local\"]").unwrap();
        assert!(mirror < plain, "endpoints keep their order: {hub}");
        assert!(
            hub.contains("  ca = \"/etc/ca.pem\"\n  client = [[\"/etc/c.pem\", \"/etc/k.pem\"]]\n"),
            "{hub}"
        );
        let private = r.hosts_toml("private.local");
        assert!(private.contains("[host.\"https://private.local\"]\n  capabilities = [\"pull\", \"resolve\"]\n  skip_verify = true\n"), "{private}");
        let auth = r.auth_toml();
        assert!(auth.contains("configs.\"mirror.local:5000\".auth]\n    username = \"user\"\n    password = \"p\\\"w\"\n"), "{auth}");
        let dir = tempfile::tempdir().unwrap();
        r.write_hosts(dir.path()).unwrap();
        assert!(dir.path().join("_default/hosts.toml").exists());
        assert!(dir.path().join("docker.io/hosts.toml").exists());
        assert!(dir.path().join("private.local/hosts.toml").exists());
        assert!(Registries::parse("mirrors: [").is_err());
        assert!(Registries::parse("").unwrap().auth_toml().is_empty());
    }
}
