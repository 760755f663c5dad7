//! What the server fills in and checks on the objects clients send.

use std::collections::{HashMap, HashSet};

use serde_json::{Map, Value, json};

use crate::resources::Resource;
use crate::scheduler;
use crate::status::{ApiError, ApiResult};

/// Random bytes from the system's generator.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut buf)
        .expect("the system's random generator works");
    buf
}

/// A version-4 UUID.
pub fn uid() -> String {
    let mut b = random_bytes::<16>();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Now, as Kubernetes writes timestamps: RFC 3339, UTC, whole seconds.
pub fn now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    rfc3339(secs)
}

pub fn rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Days to civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Whether `name` is a DNS-1123 subdomain (most objects).
pub fn is_subdomain(name: &str) -> bool {
    name.len() <= 253 && subdomain_shape(name)
}

/// Whether `name` is a DNS-1123 label: what container, volume and
/// namespace names must be, and what the server makes uids of.
pub fn is_dns1123_label(name: &str) -> bool {
    is_label(name, 63)
}

/// Dot-separated labels, whatever the length (kube's subdomain regex).
fn subdomain_shape(name: &str) -> bool {
    !name.is_empty() && name.split('.').all(|part| is_label(part, usize::MAX))
}

/// Whether `name` is a DNS-1123 label of at most `max` bytes.
fn is_label(name: &str, max: usize) -> bool {
    !name.is_empty()
        && name.len() <= max
        && name
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

// kube's names for the formats, word for word: clients show and match them.
const LABEL_FMT: &str = "[a-z0-9]([-a-z0-9]*[a-z0-9])?";
const LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character";
const SUBDOMAIN_FMT: &str = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*";
const SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character";
const DNS1035_FMT: &str = "[a-z]([-a-z0-9]*[a-z0-9])?";
const DNS1035_MSG: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character";

/// kube's `RegexError`, with the double space its loop leaves after the
/// first of two examples.
fn regex_error(message: &str, format: &str, examples: &[&str]) -> String {
    let mut s = format!("{message} (e.g. ");
    for (i, example) in examples.iter().enumerate() {
        if i > 0 {
            s.push_str(" or ");
        }
        s.push_str(&format!("'{example}', "));
    }
    s + &format!("regex used for validation is '{format}')")
}

fn too_long(max: usize) -> String {
    format!("must be no more than {max} characters")
}

/// Why `value` is no DNS-1123 label, in kube's words (none: it is one).
fn label_errors(value: &str) -> Vec<String> {
    let mut errors = Vec::new();
    if value.len() > 63 {
        errors.push(too_long(63));
    }
    if !is_label(value, usize::MAX) {
        errors.push(if subdomain_shape(value) {
            "must not contain dots".to_string()
        } else {
            regex_error(LABEL_MSG, LABEL_FMT, &["my-name", "123-abc"])
        });
    }
    errors
}

/// Why `value` is no DNS-1123 subdomain, in kube's words.
fn subdomain_errors(value: &str) -> Vec<String> {
    let mut errors = Vec::new();
    if value.len() > 253 {
        errors.push(too_long(253));
    }
    if !subdomain_shape(value) {
        errors.push(regex_error(SUBDOMAIN_MSG, SUBDOMAIN_FMT, &["example.com"]));
    }
    errors
}

/// Why `value` is no DNS-1035 label (a Service's name), in kube's words.
fn dns1035_errors(value: &str) -> Vec<String> {
    let mut errors = Vec::new();
    if value.len() > 63 {
        errors.push(too_long(63));
    }
    if !(is_label(value, usize::MAX) && value.starts_with(|c: char| c.is_ascii_lowercase())) {
        errors.push(regex_error(
            DNS1035_MSG,
            DNS1035_FMT,
            &["my-name", "abc-123"],
        ));
    }
    errors
}

/// Why `value` is no IANA service name (a container port's name), in
/// kube's words.
fn port_name_errors(value: &str) -> Vec<String> {
    let mut errors = Vec::new();
    if value.len() > 15 {
        errors.push(too_long(15));
    }
    if value.is_empty()
        || !value
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
    {
        errors
            .push("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)".into());
    }
    if !value.bytes().any(|c| c.is_ascii_lowercase()) {
        errors.push("must contain at least one letter (a-z)".into());
    }
    if value.contains("--") {
        errors.push("must not contain consecutive hyphens".into());
    }
    if value.starts_with('-') || value.ends_with('-') {
        errors.push("must not begin or end with a hyphen".into());
    }
    errors
}

/// `s` as Go's `%q` writes it: kube's messages quote values so.
pub fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\x07' => out.push_str("\\a"),
            '\x08' => out.push_str("\\b"),
            '\x0c' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\x0b' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c == '\x7f' => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if !go_printable(c) && (c as u32) < 0x10000 => {
                out.push_str(&format!("\\u{:04x}", c as u32))
            }
            c if !go_printable(c) => out.push_str(&format!("\\U{:08x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Close to Go's `unicode.IsPrint`: controls, non-ASCII spaces, format
/// and private-use characters are not.
fn go_printable(c: char) -> bool {
    let n = c as u32;
    !(c.is_control()
        || matches!(n, 0xa0 | 0xad | 0x1680 | 0x2000..=0x200f | 0x2028..=0x202f)
        || matches!(n, 0x205f..=0x206f | 0x3000 | 0xfeff | 0xfff9..=0xfffb)
        || matches!(n, 0xe000..=0xf8ff | 0xf0000..=0x10ffff))
}

/// Field errors as kube's validation collects them: the cause type, the
/// field, and the error's text without the field.
#[derive(Debug, Default)]
struct Causes(Vec<(&'static str, String, String)>);

impl Causes {
    fn push(&mut self, reason: &'static str, field: &str, message: String) {
        self.0.push((reason, field.to_string(), message));
    }

    fn required(&mut self, field: &str, detail: &str) {
        let message = match detail {
            "" => "Required value".to_string(),
            d => format!("Required value: {d}"),
        };
        self.push("FieldValueRequired", field, message);
    }

    fn invalid(&mut self, field: &str, value: &str, detail: &str) {
        let message = format!("Invalid value: {}: {detail}", go_quote(value));
        self.push("FieldValueInvalid", field, message);
    }

    fn invalid_number(&mut self, field: &str, value: i64, detail: &str) {
        self.push(
            "FieldValueInvalid",
            field,
            format!("Invalid value: {value}: {detail}"),
        );
    }

    fn duplicate(&mut self, field: &str, value: &str) {
        let message = format!("Duplicate value: {}", go_quote(value));
        self.push("FieldValueDuplicate", field, message);
    }

    fn not_found(&mut self, field: &str, value: &str) {
        self.push(
            "FieldValueNotFound",
            field,
            format!("Not found: {}", go_quote(value)),
        );
    }

    fn not_supported(&mut self, field: &str, value: &str, supported: &[&str]) {
        let supported: Vec<String> = supported.iter().map(|s| go_quote(s)).collect();
        let message = format!(
            "Unsupported value: {}: supported values: {}",
            go_quote(value),
            supported.join(", ")
        );
        self.push("FieldValueNotSupported", field, message);
    }

    /// A name that must be a DNS-1123 label: required, then kube's reasons.
    fn label(&mut self, field: &str, value: &str) {
        if value.is_empty() {
            return self.required(field, "");
        }
        for e in label_errors(value) {
            self.invalid(field, value, &e);
        }
    }

    fn too_many(&mut self, field: &str, actual: usize, max: usize) {
        self.push(
            "FieldValueTooMany",
            field,
            format!("Too many: {actual}: must have at most {max} items"),
        );
    }

    fn len(&self) -> usize {
        self.0.len()
    }
}

/// The items of the list `v[key]`; none when it is missing or no list.
fn items<'a>(v: Option<&'a Value>, key: &str) -> &'a [Value] {
    v.and_then(|v| v.get(key))
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or_default()
}

/// Checks the name and the fields every object of `res` needs.
pub fn validate(res: &Resource, obj: &Value) -> ApiResult<()> {
    check(res, obj, None)
}

/// `validate`, and on an update (`current` given) kube's `ValidateUpdate`
/// for the fields that may not change, all reported together.
fn check(res: &Resource, obj: &Value, current: Option<&Value>) -> ApiResult<()> {
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    let mut causes = Causes::default();
    if name.is_empty() {
        causes.required("metadata.name", "name or generateName is required");
    } else {
        let errors = match res.kind {
            "Namespace" => label_errors(name),
            "Service" => dns1035_errors(name),
            _ => subdomain_errors(name),
        };
        for e in errors {
            causes.invalid("metadata.name", name, &e);
        }
    }
    match res.kind {
        "Pod" => pod_spec(obj.get("spec"), "spec", &mut causes),
        "Deployment" | "ReplicaSet" => {
            if obj.pointer("/spec/selector").is_none() {
                causes.required("spec.selector", "");
            }
            let template = obj.pointer("/spec/template/spec");
            pod_spec(template, "spec.template.spec", &mut causes);
        }
        "EndpointSlice" => endpoint_slice(obj, &mut causes),
        "Service" => service(obj.get("spec"), &mut causes),
        "NetworkPolicy" => network_policy(obj.get("spec"), &mut causes),
        _ => {}
    }
    if let Some(current) = current {
        immutable(res, current, obj, &mut causes);
    }
    if causes.0.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid_fields(
            res.group, res.kind, name, causes.0,
        ))
    }
}

/// The fields an update may not change.
fn immutable(res: &Resource, current: &Value, new: &Value, causes: &mut Causes) {
    if res.kind == "EndpointSlice" {
        let (was, is) = (text(current, "addressType"), text(new, "addressType"));
        if was != is {
            causes.invalid("addressType", is, "field is immutable");
        }
    }
}

const PORT_RANGE: &str = "must be between 1 and 65535, inclusive";

/// kube's `ValidateEndpointSlice` (discovery/v1): the address type, each
/// endpoint's addresses (1 to 100, of that type), its names, and the ports
/// (at most 100, each name unique).
fn endpoint_slice(obj: &Value, causes: &mut Causes) {
    const MAX_ENDPOINTS: usize = 1000;
    const MAX_ADDRESSES: usize = 100;
    const MAX_PORTS: usize = 100;
    let address_type = text(obj, "addressType");
    match address_type {
        "" => causes.required("addressType", ""),
        "IPv4" | "IPv6" | "FQDN" => {}
        other => causes.not_supported("addressType", other, &["FQDN", "IPv4", "IPv6"]),
    }
    let endpoints = items(Some(obj), "endpoints");
    if endpoints.len() > MAX_ENDPOINTS {
        causes.too_many("endpoints", endpoints.len(), MAX_ENDPOINTS);
    }
    for (i, e) in endpoints.iter().enumerate() {
        let at = format!("endpoints[{i}]");
        let addresses = items(Some(e), "addresses");
        if addresses.is_empty() {
            causes.required(
                &format!("{at}.addresses"),
                "must contain at least 1 address",
            );
        } else if addresses.len() > MAX_ADDRESSES {
            causes.too_many(&format!("{at}.addresses"), addresses.len(), MAX_ADDRESSES);
        }
        for (j, a) in addresses.iter().enumerate() {
            let field = format!("{at}.addresses[{j}]");
            let a = a.as_str().unwrap_or_default();
            match address_type {
                "IPv4" if a.parse::<std::net::Ipv4Addr>().is_err() => {
                    causes.invalid(&field, a, "must be a valid IPv4 address")
                }
                "IPv6" if a.parse::<std::net::Ipv6Addr>().is_err() => {
                    causes.invalid(&field, a, "must be a valid IPv6 address")
                }
                "FQDN" => {
                    for err in subdomain_errors(a) {
                        causes.invalid(&field, a, &err);
                    }
                }
                _ => {}
            }
        }
        let hostname = text(e, "hostname");
        if !hostname.is_empty() {
            causes.label(&format!("{at}.hostname"), hostname);
        }
        let node = text(e, "nodeName");
        if !node.is_empty() {
            for err in subdomain_errors(node) {
                causes.invalid(&format!("{at}.nodeName"), node, &err);
            }
        }
    }
    let ports = items(Some(obj), "ports");
    if ports.len() > MAX_PORTS {
        causes.too_many("ports", ports.len(), MAX_PORTS);
    }
    let mut names = HashSet::new();
    for (i, p) in ports.iter().enumerate() {
        let at = format!("ports[{i}]");
        let name = text(p, "name");
        if !name.is_empty() {
            for err in label_errors(name) {
                causes.invalid(&format!("{at}.name"), name, &err);
            }
        }
        if !names.insert(name) {
            causes.duplicate(&format!("{at}.name"), name);
        }
        protocol(p, &at, causes);
        if let Some(n) = p.get("port").and_then(Value::as_i64)
            && !(1..=65535).contains(&n)
        {
            causes.invalid_number(&format!("{at}.port"), n, PORT_RANGE);
        }
    }
}

/// A port's `protocol`: missing (defaulted to TCP) or one kube supports.
fn protocol(port: &Value, at: &str, causes: &mut Causes) {
    let protocol = text(port, "protocol");
    if !matches!(protocol, "" | "TCP" | "UDP" | "SCTP") {
        let field = format!("{at}.protocol");
        causes.not_supported(&field, protocol, &["SCTP", "TCP", "UDP"]);
    }
}

/// kube's `ValidateService` (on the defaulted object), in its order: the
/// ports (names, numbers, protocols), session affinity, external IPs, the
/// type, node ports, and no (port, protocol) twice.
fn service(spec: Option<&Value>, causes: &mut Causes) {
    let spec_type = spec.map_or("", |s| text(s, "type"));
    let headless = spec.is_some_and(|s| text(s, "clusterIP") == "None");
    let ports = items(spec, "ports");
    if ports.is_empty() && !headless && spec_type != "ExternalName" {
        causes.required("spec.ports", "");
    }
    let mut names = HashSet::new();
    for (i, p) in ports.iter().enumerate() {
        let at = format!("spec.ports[{i}]");
        let name = text(p, "name");
        if name.is_empty() {
            if ports.len() > 1 {
                causes.required(&format!("{at}.name"), "");
            }
        } else {
            for e in label_errors(name) {
                causes.invalid(&format!("{at}.name"), name, &e);
            }
            if !names.insert(name) {
                causes.duplicate(&format!("{at}.name"), name);
            }
        }
        let port = number(p, "port");
        if !(1..=65535).contains(&port) {
            causes.invalid_number(&format!("{at}.port"), port, PORT_RANGE);
        }
        protocol(p, &at, causes);
    }
    let affinity = spec.map_or("", |s| text(s, "sessionAffinity"));
    match affinity {
        "" | "None" => {}
        "ClientIP" => {
            let field = "spec.sessionAffinityConfig.clientIP.timeoutSeconds";
            let timeout =
                spec.and_then(|s| s.pointer("/sessionAffinityConfig/clientIP/timeoutSeconds"));
            match timeout.and_then(Value::as_i64) {
                None => causes.required(field, "when session affinity type is ClientIP"),
                Some(t) if !(1..=MAX_AFFINITY_SECONDS).contains(&t) => causes.invalid_number(
                    field,
                    t,
                    &format!("must be greater than 0 and less than {MAX_AFFINITY_SECONDS}"),
                ),
                Some(_) => {}
            }
        }
        other => causes.not_supported("spec.sessionAffinity", other, &["ClientIP", "None"]),
    }
    for (i, ip) in items(spec, "externalIPs").iter().enumerate() {
        let field = format!("spec.externalIPs[{i}]");
        let ip = ip.as_str().unwrap_or_default();
        match ip.parse::<std::net::IpAddr>() {
            Err(_) => causes.invalid(
                &field,
                ip,
                "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
            ),
            Ok(addr) => {
                for e in special_ip_errors(addr, ip) {
                    causes.invalid(&field, ip, &e);
                }
            }
        }
    }
    const TYPES: [&str; 4] = ["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"];
    if !spec_type.is_empty() && !TYPES.contains(&spec_type) {
        causes.not_supported("spec.type", spec_type, &TYPES);
    }
    if spec_type == "ClusterIP" {
        for (i, p) in ports.iter().enumerate() {
            if number(p, "nodePort") != 0 {
                causes.push(
                    "FieldValueForbidden",
                    &format!("spec.ports[{i}].nodePort"),
                    "Forbidden: may not be used when `type` is 'ClusterIP'".into(),
                );
            }
        }
    }
    // A node port is unique per protocol; so is a Service port.
    let mut node_ports = HashSet::new();
    for (i, p) in ports.iter().enumerate() {
        let node_port = number(p, "nodePort");
        if node_port != 0 && !node_ports.insert((text(p, "protocol"), node_port)) {
            causes.push(
                "FieldValueDuplicate",
                &format!("spec.ports[{i}].nodePort"),
                format!("Duplicate value: {node_port}"),
            );
        }
    }
    let mut pairs = HashSet::new();
    for (i, p) in ports.iter().enumerate() {
        let (protocol, port) = (text(p, "protocol"), number(p, "port"));
        if !pairs.insert((protocol, port)) {
            // kube prints the key, a core.ServicePort, with Go's %#v.
            let key = format!(
                "core.ServicePort{{Name:\"\", Protocol:{}, AppProtocol:(*string)(nil), Port:{port}, \
                 TargetPort:intstr.IntOrString{{Type:0, IntVal:0, StrVal:\"\"}}, NodePort:0}}",
                go_quote(protocol)
            );
            causes.push(
                "FieldValueDuplicate",
                &format!("spec.ports[{i}]"),
                format!("Duplicate value: {key}"),
            );
        }
    }
}

/// kube's `core.MaxClientIPServiceAffinitySeconds`: one day.
const MAX_AFFINITY_SECONDS: i64 = 86400;

/// `v[key]` as a number; 0 (Go's zero value) when missing or no integer.
fn number(v: &Value, key: &str) -> i64 {
    v.get(key).and_then(Value::as_i64).unwrap_or(0)
}

/// kube's `ValidateNonSpecialIP` for external IPs: the unspecified,
/// loopback and link-local addresses are refused.
fn special_ip_errors(ip: std::net::IpAddr, text: &str) -> Vec<String> {
    use std::net::IpAddr;
    let mut errors = Vec::new();
    if ip.is_unspecified() {
        errors.push(format!("may not be unspecified ({text})"));
    }
    if ip.is_loopback() {
        errors.push("may not be in the loopback range (127.0.0.0/8, ::1/128)".into());
    }
    let (link_local, link_local_multicast) = match ip {
        IpAddr::V4(v4) => (v4.is_link_local(), v4.octets()[..3] == [224, 0, 0]),
        IpAddr::V6(v6) => {
            let o = v6.octets();
            (
                v6.is_unicast_link_local(),
                o[0] == 0xff && o[1] & 0x0f == 0x02,
            )
        }
    };
    if link_local {
        errors.push("may not be in the link-local range (169.254.0.0/16, fe80::/10)".into());
    }
    if link_local_multicast {
        errors
            .push("may not be in the link-local multicast range (224.0.0.0/24, ff02::/10)".into());
    }
    errors
}

/// kube's `ValidateNetworkPolicySpec`, for the rules' shape: policy types,
/// ports, and peers that name something.
fn network_policy(spec: Option<&Value>, causes: &mut Causes) {
    let types = items(spec, "policyTypes");
    for (i, t) in types.iter().enumerate() {
        let t = t.as_str().unwrap_or_default();
        if !matches!(t, "Ingress" | "Egress") {
            causes.not_supported(&format!("spec.policyTypes[{i}]"), t, &["Egress", "Ingress"]);
        }
    }
    if types.len() > 2 {
        causes.invalid(
            "spec.policyTypes",
            &format!("{types:?}"),
            "may not specify more than two policyTypes",
        );
    }
    for (rules, peers) in [("ingress", "from"), ("egress", "to")] {
        for (i, rule) in items(spec, rules).iter().enumerate() {
            let at = format!("spec.{rules}[{i}]");
            for (j, p) in items(Some(rule), "ports").iter().enumerate() {
                let at = format!("{at}.ports[{j}]");
                protocol(p, &at, causes);
                match p.get("port") {
                    Some(Value::Number(n)) => {
                        let n = n.as_i64().unwrap_or(0);
                        if !(1..=65535).contains(&n) {
                            causes.invalid_number(&format!("{at}.port"), n, PORT_RANGE);
                        }
                    }
                    Some(Value::String(name)) => {
                        for e in port_name_errors(name) {
                            causes.invalid(&format!("{at}.port"), name, &e);
                        }
                    }
                    _ => {}
                }
            }
            for (j, peer) in items(Some(rule), peers).iter().enumerate() {
                let at = format!("{at}.{peers}[{j}]");
                let named = ["podSelector", "namespaceSelector", "ipBlock"]
                    .iter()
                    .filter(|k| peer.get(**k).is_some_and(|v| !v.is_null()))
                    .count();
                if named == 0 {
                    causes.required(&at, "must specify a peer");
                }
                if let Some(block) = peer.get("ipBlock").filter(|b| !b.is_null()) {
                    if named > 1 {
                        causes.push(
                            "FieldValueForbidden",
                            &at,
                            "Forbidden: may not specify both ipBlock and another peer".into(),
                        );
                    }
                    let cidr = text(block, "cidr");
                    if cidr.is_empty() {
                        causes.required(&format!("{at}.ipBlock.cidr"), "");
                    } else if !valid_cidr(cidr) {
                        causes.invalid(
                            &format!("{at}.ipBlock.cidr"),
                            cidr,
                            "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)",
                        );
                    }
                }
            }
        }
    }
}

fn valid_cidr(cidr: &str) -> bool {
    let Some((ip, bits)) = cidr.split_once('/') else {
        return false;
    };
    let Ok(ip) = ip.parse::<std::net::IpAddr>() else {
        return false;
    };
    let max = if ip.is_ipv4() { 32 } else { 128 };
    bits.parse::<u8>().is_ok_and(|b| b <= max)
}

/// kube's `ValidatePodSpec` for what names things: volumes, containers
/// and init containers (each a DNS-1123 label, unique; the agent makes
/// paths of container names), their ports and volume mounts. `at` is the
/// spec's field path, in the order kube checks.
fn pod_spec(spec: Option<&Value>, at: &str, causes: &mut Causes) {
    // Only volumes without errors can be mounted (kube's rule).
    let mut volumes = HashSet::new();
    for (i, v) in items(spec, "volumes").iter().enumerate() {
        let field = format!("{at}.volumes[{i}].name");
        let name = text(v, "name");
        let before = causes.len();
        causes.label(&field, name);
        if volumes.contains(name) {
            causes.duplicate(&field, name);
        }
        if causes.len() == before {
            volumes.insert(name);
        }
    }
    let containers = items(spec, "containers");
    if containers.is_empty() {
        causes.required(&format!("{at}.containers"), "");
    }
    let mut names = HashSet::new();
    for (i, c) in containers.iter().enumerate() {
        let path = format!("{at}.containers[{i}]");
        container(c, &path, &volumes, causes);
        if !names.insert(text(c, "name")) {
            causes.duplicate(&format!("{path}.name"), text(c, "name"));
        }
    }
    // Init containers' names are unique among all the pod's containers.
    for (i, c) in items(spec, "initContainers").iter().enumerate() {
        let path = format!("{at}.initContainers[{i}]");
        container(c, &path, &volumes, causes);
        let name = text(c, "name");
        if names.contains(name) {
            causes.duplicate(&format!("{path}.name"), name);
        } else if !name.is_empty() {
            names.insert(name);
        }
    }
}

/// kube's `validateContainerCommon`, for the parts k3rs checks.
fn container(c: &Value, path: &str, volumes: &HashSet<&str>, causes: &mut Causes) {
    causes.label(&format!("{path}.name"), text(c, "name"));
    if text(c, "image").is_empty() {
        causes.required(&format!("{path}.image"), "");
    }
    let mut port_names = HashSet::new();
    for (j, p) in items(Some(c), "ports").iter().enumerate() {
        let at = format!("{path}.ports[{j}]");
        let name = text(p, "name");
        if !name.is_empty() {
            let errors = port_name_errors(name);
            for e in &errors {
                causes.invalid(&format!("{at}.name"), name, e);
            }
            if errors.is_empty() && !port_names.insert(name) {
                causes.duplicate(&format!("{at}.name"), name);
            }
        }
        match p.get("containerPort").and_then(Value::as_i64) {
            None | Some(0) => causes.required(&format!("{at}.containerPort"), ""),
            Some(n) if !(1..=65535).contains(&n) => {
                causes.invalid_number(&format!("{at}.containerPort"), n, PORT_RANGE)
            }
            Some(_) => {}
        }
        if let Some(n) = p.get("hostPort").and_then(Value::as_i64)
            && n != 0
            && !(1..=65535).contains(&n)
        {
            causes.invalid_number(&format!("{at}.hostPort"), n, PORT_RANGE);
        }
        // Missing, it is defaulted (to TCP); an update may leave it out.
        protocol(p, &at, causes);
    }
    let mut mount_points = HashSet::new();
    for (j, m) in items(Some(c), "volumeMounts").iter().enumerate() {
        let at = format!("{path}.volumeMounts[{j}]");
        let name = text(m, "name");
        if name.is_empty() {
            causes.required(&format!("{at}.name"), "");
        }
        if !volumes.contains(name) {
            causes.not_found(&format!("{at}.name"), name);
        }
        let mount_path = text(m, "mountPath");
        if mount_path.is_empty() {
            causes.required(&format!("{at}.mountPath"), "");
        }
        if !mount_points.insert(mount_path) {
            causes.invalid(&format!("{at}.mountPath"), mount_path, "must be unique");
        }
    }
}

/// Fills in what the server sets on create: name from generateName, uid,
/// creationTimestamp, generation, namespace, kind/apiVersion, defaults.
pub fn prepare_create(res: &Resource, obj: &mut Value, namespace: Option<&str>) -> ApiResult<()> {
    if !obj.is_object() {
        return Err(ApiError::bad_request("the body is not a JSON object"));
    }
    let kind = obj.get("kind").and_then(Value::as_str);
    if kind.is_some_and(|k| k != res.kind) {
        return Err(ApiError::bad_request(format!(
            "the object's kind {:?} does not match the resource {} ({})",
            kind.unwrap_or_default(),
            res.plural,
            res.kind
        )));
    }
    obj["kind"] = json!(res.kind);
    obj["apiVersion"] = json!(res.api_version());
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    let meta = obj["metadata"]
        .as_object_mut()
        .expect("made an object above");
    let has_name = meta
        .get("name")
        .and_then(Value::as_str)
        .is_some_and(|n| !n.is_empty());
    if !has_name && let Some(prefix) = meta.get("generateName").and_then(Value::as_str) {
        const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
        let suffix: String = random_bytes::<5>()
            .iter()
            .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
            .collect();
        meta.insert("name".into(), json!(format!("{prefix}{suffix}")));
    }
    if res.namespaced {
        let ns = namespace.unwrap_or("default");
        match meta.get("namespace").and_then(Value::as_str) {
            Some(given) if given != ns => {
                return Err(ApiError::bad_request(format!(
                    "the namespace of the provided object ({given}) does not match the namespace sent on the request ({ns})"
                )));
            }
            _ => {
                meta.insert("namespace".into(), json!(ns));
            }
        }
    } else {
        meta.remove("namespace");
    }
    meta.insert("uid".into(), json!(uid()));
    meta.insert("creationTimestamp".into(), json!(now()));
    meta.insert("generation".into(), json!(1));
    meta.remove("resourceVersion");
    meta.remove("deletionTimestamp");
    // Status belongs to the server and its controllers, not the creator;
    // but a Node is registered with its status (kube's node strategy).
    if res.has_status && res.kind != "Node" {
        obj.as_object_mut().expect("checked above").remove("status");
    }
    defaults(res, obj);
    create_defaults(res, obj);
    validate(res, obj)
}

/// Fills in, on an update, the defaults kube-apiserver's decoder sets on
/// every write (not the ones only a create gets), then checks the object
/// and what it may not change from `current`.
pub fn prepare_update(res: &Resource, current: &Value, obj: &mut Value) -> ApiResult<()> {
    defaults(res, obj);
    check(res, obj, Some(current))
}

/// `v[key]`, made an empty object when missing or null; None when `v` is
/// no object or `v[key]` is something else.
fn child<'a>(v: &'a mut Value, key: &str) -> Option<&'a mut Value> {
    let slot = v.as_object_mut()?.entry(key).or_insert(Value::Null);
    if slot.is_null() {
        *slot = json!({});
    }
    if slot.is_object() { Some(slot) } else { None }
}

/// Sets `v[key]` when missing or null: a Go pointer field's default.
fn default_to(v: &mut Value, key: &str, value: Value) {
    if let Some(m) = v.as_object_mut() {
        let slot = m.entry(key).or_insert(Value::Null);
        if slot.is_null() {
            *slot = value;
        }
    }
}

/// Sets `v[key]` when missing, null, "" or 0: a Go value field's default
/// (its zero value means unset).
fn default_unless_zero(v: &mut Value, key: &str, value: Value) {
    if let Some(m) = v.as_object_mut() {
        let slot = m.entry(key).or_insert(Value::Null);
        let zero = match slot {
            Value::Null => true,
            Value::String(s) => s.is_empty(),
            Value::Number(n) => n.as_f64() == Some(0.0),
            _ => false,
        };
        if zero {
            *slot = value;
        }
    }
}

/// The items of the list `v[key]`, to change; none when missing or no list.
fn items_mut<'a>(v: &'a mut Value, key: &str) -> impl Iterator<Item = &'a mut Value> {
    v.get_mut(key)
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
}

/// What kube-apiserver's decoder defaults on every write, create or
/// update: the `SetDefaults_*` functions of core/v1 and apps/v1.
fn defaults(res: &Resource, obj: &mut Value) {
    match res.kind {
        "Pod" => {
            let Some(spec) = child(obj, "spec") else {
                return;
            };
            pod_spec_defaults(spec);
            // SetDefaults_Pod: pods only, not the templates of workloads.
            default_to(spec, "enableServiceLinks", json!(true));
            for key in ["containers", "initContainers"] {
                items_mut(spec, key).for_each(requests_from_limits);
            }
            if spec.get("hostNetwork") == Some(&json!(true)) {
                for key in ["containers", "initContainers"] {
                    for port in items_mut(spec, key).flat_map(|c| items_mut(c, "ports")) {
                        if let Some(p) = port.get("containerPort").cloned() {
                            default_unless_zero(port, "hostPort", p);
                        }
                    }
                }
            }
        }
        "Namespace" => {
            // Set on every write, so the label always tells the name.
            let name = obj.pointer("/metadata/name").and_then(Value::as_str);
            if let Some(name) = name.filter(|n| !n.is_empty()).map(str::to_string)
                && let Some(labels) = child(obj, "metadata").and_then(|m| child(m, "labels"))
            {
                labels["kubernetes.io/metadata.name"] = json!(name);
            }
        }
        "Service" => {
            if let Some(spec) = child(obj, "spec") {
                service_defaults(spec);
            }
        }
        "EndpointSlice" => {
            for port in items_mut(obj, "ports") {
                default_to(port, "name", json!(""));
                default_to(port, "protocol", json!("TCP"));
            }
        }
        "NetworkPolicy" => {
            let Some(spec) = child(obj, "spec") else {
                return;
            };
            default_to(spec, "podSelector", json!({}));
            for rules in ["ingress", "egress"] {
                for rule in items_mut(spec, rules) {
                    for port in items_mut(rule, "ports") {
                        default_to(port, "protocol", json!("TCP"));
                    }
                }
            }
            // SetDefaults_NetworkPolicy: Ingress always, Egress when it
            // has egress rules.
            let no_types = spec
                .get("policyTypes")
                .and_then(Value::as_array)
                .is_none_or(Vec::is_empty);
            if no_types {
                let mut types = vec![json!("Ingress")];
                if spec
                    .get("egress")
                    .and_then(Value::as_array)
                    .is_some_and(|e| !e.is_empty())
                {
                    types.push(json!("Egress"));
                }
                spec["policyTypes"] = json!(types);
            }
        }
        "Endpoints" => {
            for subset in items_mut(obj, "subsets") {
                for port in items_mut(subset, "ports") {
                    default_unless_zero(port, "protocol", json!("TCP"));
                }
            }
        }
        "Deployment" => {
            let Some(spec) = child(obj, "spec") else {
                return;
            };
            default_to(spec, "replicas", json!(1));
            if let Some(strategy) = child(spec, "strategy") {
                default_unless_zero(strategy, "type", json!("RollingUpdate"));
                if text(strategy, "type") == "RollingUpdate"
                    && let Some(rolling) = child(strategy, "rollingUpdate")
                {
                    default_to(rolling, "maxUnavailable", json!("25%"));
                    default_to(rolling, "maxSurge", json!("25%"));
                }
            }
            default_to(spec, "revisionHistoryLimit", json!(10));
            default_to(spec, "progressDeadlineSeconds", json!(600));
            if let Some(template) = spec.pointer_mut("/template/spec") {
                pod_spec_defaults(template);
            }
        }
        "ReplicaSet" => {
            // Its template is left as sent: the Deployment controller finds
            // a ReplicaSet by comparing its template with the Deployment's
            // as stored, and a Deployment updated without the template's
            // defaults would then match none.
            if let Some(spec) = child(obj, "spec") {
                default_to(spec, "replicas", json!(1));
            }
        }
        "Secret" => {
            default_unless_zero(obj, "type", json!("Opaque"));
            fold_string_data(obj);
        }
        "Node" => {
            if let Some(status) = obj.get_mut("status").filter(|s| s.is_object())
                && let Some(capacity) = status.get("capacity").cloned()
            {
                default_to(status, "allocatable", capacity);
            }
        }
        _ => {}
    }
}

/// What only a create gets: the registry strategies' `PrepareForCreate`
/// (the initial status) and the default admission plugins' changes.
fn create_defaults(res: &Resource, obj: &mut Value) {
    match res.kind {
        "Pod" => {
            if let Some(spec) = child(obj, "spec") {
                // The ServiceAccount admission plugin.
                if text(spec, "serviceAccountName").is_empty() {
                    spec["serviceAccountName"] = json!("default");
                    spec["serviceAccount"] = json!("default");
                }
                // The Priority admission plugin: the class's priority, 0
                // without a class (no PriorityClass objects are served).
                let priority = match text(spec, "priorityClassName") {
                    "" => Some(0),
                    "system-cluster-critical" => Some(2_000_000_000),
                    "system-node-critical" => Some(2_000_001_000),
                    _ => None,
                };
                if let Some(p) = priority {
                    default_to(spec, "priority", json!(p));
                }
                default_to(spec, "preemptionPolicy", json!("PreemptLowerPriority"));
            }
            let qos = qos_class(obj.get("spec"));
            obj["status"] = json!({"phase": "Pending", "qosClass": qos});
        }
        "Namespace" => {
            // Deleting a namespace empties it first: that is this finalizer.
            if let Some(spec) = child(obj, "spec") {
                let has_list = spec.get("finalizers").is_some_and(Value::is_array);
                if !has_list {
                    spec["finalizers"] = json!([]);
                }
                let finalizers = spec["finalizers"].as_array_mut().expect("a list");
                if !finalizers.iter().any(|f| f == "kubernetes") {
                    finalizers.push(json!("kubernetes"));
                }
            }
            obj["status"] = json!({"phase": "Active"});
        }
        // Each kind's empty status, as kube's encoder writes it.
        "Service" => obj["status"] = json!({"loadBalancer": {}}),
        "Deployment" => obj["status"] = json!({}),
        "ReplicaSet" => obj["status"] = json!({"replicas": 0}),
        _ => {}
    }
}

/// `SetDefaults_Service`.
fn service_defaults(spec: &mut Value) {
    default_unless_zero(spec, "sessionAffinity", json!("None"));
    match text(spec, "sessionAffinity") {
        "None" => {
            if let Some(m) = spec.as_object_mut() {
                m.remove("sessionAffinityConfig");
            }
        }
        "ClientIP" => {
            let timeout = spec.pointer("/sessionAffinityConfig/clientIP/timeoutSeconds");
            if timeout.is_none_or(Value::is_null) {
                spec["sessionAffinityConfig"] = json!({"clientIP": {"timeoutSeconds": 10800}});
            }
        }
        _ => {}
    }
    default_unless_zero(spec, "type", json!("ClusterIP"));
    for port in items_mut(spec, "ports") {
        default_unless_zero(port, "protocol", json!("TCP"));
        // targetPort 0 or "" means the port itself.
        if let Some(number) = port.get("port").cloned() {
            default_unless_zero(port, "targetPort", number);
        }
    }
    let kind = text(spec, "type").to_string();
    let external_ips = spec
        .get("externalIPs")
        .and_then(Value::as_array)
        .is_some_and(|ips| !ips.is_empty());
    if matches!(kind.as_str(), "NodePort" | "LoadBalancer") || (kind == "ClusterIP" && external_ips)
    {
        default_unless_zero(spec, "externalTrafficPolicy", json!("Cluster"));
    }
    if matches!(kind.as_str(), "ClusterIP" | "NodePort" | "LoadBalancer") {
        default_to(spec, "internalTrafficPolicy", json!("Cluster"));
    }
    if kind == "LoadBalancer" {
        default_to(spec, "allocateLoadBalancerNodePorts", json!(true));
    }
}

/// `SetDefaults_PodSpec` and what it reaches (containers, probes,
/// volumes), for a pod or a workload's template; and `serviceAccount`
/// kept equal to `serviceAccountName`, as kube's v1 conversion does.
fn pod_spec_defaults(spec: &mut Value) {
    default_unless_zero(spec, "dnsPolicy", json!("ClusterFirst"));
    default_unless_zero(spec, "restartPolicy", json!("Always"));
    default_to(spec, "securityContext", json!({}));
    default_to(spec, "terminationGracePeriodSeconds", json!(30));
    default_unless_zero(spec, "schedulerName", json!("default-scheduler"));
    for key in ["containers", "initContainers"] {
        items_mut(spec, key).for_each(container_defaults);
    }
    items_mut(spec, "volumes").for_each(volume_defaults);
    let account = match text(spec, "serviceAccountName") {
        "" => text(spec, "serviceAccount"),
        name => name,
    }
    .to_string();
    if !account.is_empty() {
        spec["serviceAccountName"] = json!(account);
        spec["serviceAccount"] = json!(account);
    }
}

fn container_defaults(c: &mut Value) {
    let policy = pull_policy(text(c, "image"));
    default_unless_zero(c, "imagePullPolicy", json!(policy));
    default_unless_zero(c, "terminationMessagePath", json!("/dev/termination-log"));
    default_unless_zero(c, "terminationMessagePolicy", json!("File"));
    // A struct in kube: always written, empty or not.
    default_to(c, "resources", json!({}));
    for port in items_mut(c, "ports") {
        default_unless_zero(port, "protocol", json!("TCP"));
    }
    for var in items_mut(c, "env") {
        if let Some(field) = var.pointer_mut("/valueFrom/fieldRef") {
            default_unless_zero(field, "apiVersion", json!("v1"));
        }
    }
    for key in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(probe) = c.get_mut(key).filter(|p| p.is_object()) {
            for (field, value) in [
                ("timeoutSeconds", 1),
                ("periodSeconds", 10),
                ("successThreshold", 1),
                ("failureThreshold", 3),
            ] {
                default_unless_zero(probe, field, json!(value));
            }
            if let Some(http) = probe.get_mut("httpGet") {
                http_get_defaults(http);
            }
            if let Some(grpc) = probe.get_mut("grpc") {
                default_to(grpc, "service", json!(""));
            }
        }
    }
    for hook in ["postStart", "preStop"] {
        if let Some(http) = c.pointer_mut(&format!("/lifecycle/{hook}/httpGet")) {
            http_get_defaults(http);
        }
    }
}

fn http_get_defaults(http: &mut Value) {
    default_unless_zero(http, "path", json!("/"));
    default_unless_zero(http, "scheme", json!("HTTP"));
}

fn volume_defaults(v: &mut Value) {
    let Some(m) = v.as_object_mut() else {
        return;
    };
    // A volume that names no source is an emptyDir.
    if m.iter().all(|(k, val)| k == "name" || val.is_null()) {
        m.insert("emptyDir".into(), json!({}));
    }
    for key in ["secret", "configMap", "downwardAPI", "projected"] {
        if let Some(source) = m.get_mut(key) {
            default_to(source, "defaultMode", json!(0o644));
        }
    }
    if let Some(host_path) = m.get_mut("hostPath") {
        default_to(host_path, "type", json!(""));
    }
    let field_refs = |items: &mut Value| {
        for item in items_mut(items, "items") {
            if let Some(field) = item.get_mut("fieldRef") {
                default_unless_zero(field, "apiVersion", json!("v1"));
            }
        }
    };
    if let Some(downward) = m.get_mut("downwardAPI") {
        field_refs(downward);
    }
    if let Some(projected) = m.get_mut("projected") {
        for source in items_mut(projected, "sources") {
            if let Some(downward) = source.get_mut("downwardAPI") {
                field_refs(downward);
            }
            if let Some(token) = source.get_mut("serviceAccountToken") {
                default_to(token, "expirationSeconds", json!(3600));
            }
        }
    }
}

/// A pod's container limits without requests request the limits.
fn requests_from_limits(c: &mut Value) {
    let Some(resources) = c.get_mut("resources").and_then(Value::as_object_mut) else {
        return;
    };
    let Some(limits) = resources.get("limits").and_then(Value::as_object).cloned() else {
        return;
    };
    let requests = resources.entry("requests").or_insert(json!({}));
    if requests.is_null() {
        *requests = json!({});
    }
    if let Some(r) = requests.as_object_mut() {
        for (k, v) in limits {
            r.entry(k).or_insert(v);
        }
    }
    // An empty map is left out, as kube's encoder does.
    if requests.as_object().is_some_and(Map::is_empty) {
        resources.remove("requests");
    }
}

/// kube's `ComputePodQOS`: Guaranteed when every container limits CPU and
/// memory and the requests equal the limits, BestEffort when nothing is
/// requested or limited, else Burstable.
fn qos_class(spec: Option<&Value>) -> &'static str {
    let mut requests: HashMap<&'static str, i64> = HashMap::new();
    let mut limits: HashMap<&'static str, i64> = HashMap::new();
    let mut guaranteed = true;
    let all = items(spec, "containers")
        .iter()
        .chain(items(spec, "initContainers"));
    for c in all {
        let sum = |totals: &mut HashMap<&'static str, i64>, kind: &str| {
            let mut found = HashSet::new();
            for name in ["cpu", "memory"] {
                let quantity = c.pointer(&format!("/resources/{kind}/{name}"));
                if let Some(n) = quantity.and_then(|q| scheduler::quantity::amount(name, q))
                    && n > 0
                {
                    *totals.entry(name).or_insert(0) += n;
                    found.insert(name);
                }
            }
            found
        };
        sum(&mut requests, "requests");
        if sum(&mut limits, "limits").len() < 2 {
            guaranteed = false;
        }
    }
    if requests.is_empty() && limits.is_empty() {
        return "BestEffort";
    }
    guaranteed &= requests.iter().all(|(k, v)| limits.get(k) == Some(v));
    if guaranteed && requests.len() == limits.len() {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

/// kube's pull policy default: Always for the `latest` tag, or for an
/// image named by neither tag nor digest; else IfNotPresent.
fn pull_policy(image: &str) -> &'static str {
    if image.is_empty() {
        // Not a reference at all: kube finds no tag.
        return "IfNotPresent";
    }
    let (name, digest) = match image.split_once('@') {
        Some((name, _)) => (name, true),
        None => (image, false),
    };
    let last = name.rsplit('/').next().unwrap_or(name);
    match last.rsplit_once(':').map(|(_, tag)| tag) {
        Some("latest") => "Always",
        Some(_) => "IfNotPresent",
        None if digest => "IfNotPresent",
        None => "Always",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_and_uids() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_795_867_200), "2026-11-28T12:00:00Z");
        let u = uid();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
    }

    #[test]
    fn names_are_checked() {
        let cm = crate::resources::find("", "v1", "configmaps").unwrap();
        assert!(validate(cm, &json!({"metadata": {"name": "a.b-c"}})).is_ok());
        let e = validate(cm, &json!({"metadata": {"name": "Bad_Name"}})).unwrap_err();
        assert_eq!(e.code, 422);
        let ns = crate::resources::find("", "v1", "namespaces").unwrap();
        assert!(validate(ns, &json!({"metadata": {"name": "a.b"}})).is_err());
    }

    fn resource(plural: &str) -> &'static Resource {
        let group = match plural {
            "deployments" | "replicasets" => "apps",
            "leases" => "coordination.k8s.io",
            "endpointslices" => "discovery.k8s.io",
            "networkpolicies" => "networking.k8s.io",
            _ => "",
        };
        crate::resources::find(group, "v1", plural).unwrap()
    }

    /// The `field: message` of each cause `validate` finds in `obj`.
    fn causes_of(plural: &str, obj: Value) -> Vec<String> {
        match validate(resource(plural), &obj) {
            Ok(()) => Vec::new(),
            Err(e) => e.details.unwrap()["causes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| {
                    format!(
                        "{}: {}",
                        c["field"].as_str().unwrap(),
                        c["message"].as_str().unwrap()
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn endpoint_slices_are_checked_as_kube_checks_them() {
        let slice = |body: Value| {
            let mut s = json!({"metadata": {"name": "web-x"}});
            s.as_object_mut()
                .unwrap()
                .extend(body.as_object().unwrap().clone());
            s
        };
        assert_eq!(
            causes_of(
                "endpointslices",
                slice(json!({"addressType": "IPv4",
            "endpoints": [{"addresses": ["10.42.0.5"], "nodeName": "n1"}],
            "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}))
            ),
            Vec::<String>::new()
        );
        assert_eq!(
            causes_of("endpointslices", slice(json!({}))),
            ["addressType: Required value"]
        );
        assert_eq!(
            causes_of("endpointslices", slice(json!({"addressType": "IPv5"}))),
            [
                "addressType: Unsupported value: \"IPv5\": supported values: \"FQDN\", \"IPv4\", \"IPv6\""
            ]
        );
        let many: Vec<String> = (0..101).map(|i| format!("10.42.0.{}", i % 250)).collect();
        assert_eq!(
            causes_of(
                "endpointslices",
                slice(json!({"addressType": "IPv4",
                "endpoints": [{"addresses": []}, {"addresses": many}, {"addresses": ["x"]}]}))
            ),
            [
                "endpoints[0].addresses: Required value: must contain at least 1 address",
                "endpoints[1].addresses: Too many: 101: must have at most 100 items",
                "endpoints[2].addresses[0]: Invalid value: \"x\": must be a valid IPv4 address",
            ]
        );
        assert_eq!(
            causes_of(
                "endpointslices",
                slice(json!({"addressType": "IPv4",
                "ports": [{"name": "a", "port": 0}, {"name": "a", "protocol": "ICMP"}]}))
            ),
            [
                "ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive",
                "ports[1].name: Duplicate value: \"a\"",
                "ports[1].protocol: Unsupported value: \"ICMP\": supported values: \"SCTP\", \"TCP\", \"UDP\"",
            ]
        );
        let res = resource("endpointslices");
        let old = slice(json!({"addressType": "IPv4"}));
        assert!(prepare_update(res, &old, &mut old.clone()).is_ok());
        let mut changed =
            slice(json!({"addressType": "IPv6", "endpoints": [{"addresses": ["10.0.0.1"]}]}));
        let e = prepare_update(res, &old, &mut changed).unwrap_err();
        assert_eq!(e.code, 422);
        assert_eq!(
            e.message,
            "EndpointSlice.discovery.k8s.io \"web-x\" is invalid: [endpoints[0].addresses[0]: Invalid value: \"10.0.0.1\": must be a valid IPv6 address, addressType: Invalid value: \"IPv6\": field is immutable]"
        );
        check_created(
            "endpointslices",
            slice(
                json!({"addressType": "IPv4", "ports": [{"port": 53, "protocol": "UDP"}, {"name": "x", "port": 1}]}),
            ),
            &[
                ("/ports/0/name", json!("")),
                ("/ports/0/protocol", json!("UDP")),
                ("/ports/1/protocol", json!("TCP")),
            ],
        );
    }

    #[test]
    fn network_policies_are_defaulted_and_checked() {
        check_created(
            "networkpolicies",
            json!({"metadata": {"name": "p"}, "spec": {"egress": [{"ports": [{"port": 53}]}]}}),
            &[
                ("/spec/podSelector", json!({})),
                ("/spec/policyTypes", json!(["Ingress", "Egress"])),
                ("/spec/egress/0/ports/0/protocol", json!("TCP")),
            ],
        );
        check_created(
            "networkpolicies",
            json!({"metadata": {"name": "p"}, "spec": {"podSelector": {"matchLabels": {"app": "web"}}}}),
            &[("/spec/policyTypes", json!(["Ingress"]))],
        );
        assert_eq!(
            causes_of(
                "networkpolicies",
                json!({"metadata": {"name": "p"}, "spec": {"policyTypes": ["Sideways"],
                "ingress": [{"from": [{}, {"ipBlock": {"cidr": "10.0.0.0/40"}}], "ports": [{"port": 70000}]}]}})
            ),
            [
                "spec.policyTypes[0]: Unsupported value: \"Sideways\": supported values: \"Egress\", \"Ingress\"",
                "spec.ingress[0].ports[0].port: Invalid value: 70000: must be between 1 and 65535, inclusive",
                "spec.ingress[0].from[0]: Required value: must specify a peer",
                "spec.ingress[0].from[1].ipBlock.cidr: Invalid value: \"10.0.0.0/40\": must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)",
            ]
        );
    }

    /// Creates `body` as `plural` and checks each pointer's value (null:
    /// the field is absent).
    fn check_created(plural: &str, body: Value, expected: &[(&str, Value)]) {
        let mut obj = body;
        prepare_create(resource(plural), &mut obj, Some("default")).unwrap();
        for (pointer, want) in expected {
            let got = obj.pointer(pointer).cloned().unwrap_or(Value::Null);
            assert_eq!(&got, want, "{plural} {pointer} in {obj:#}");
        }
    }

    /// What kube-apiserver answers for each served kind's minimal body.
    #[test]
    fn created_objects_carry_kubes_defaults() {
        let c = |name: &str, image: &str| json!({"name": name, "image": image});
        let pod_spec = json!({"containers": [c("c", "busybox")]});
        check_created(
            "services",
            json!({"metadata": {"name": "web"}, "spec": {"ports": [{"port": 80}]}}),
            &[
                ("/status", json!({"loadBalancer": {}})),
                ("/spec/type", json!("ClusterIP")),
                ("/spec/sessionAffinity", json!("None")),
                ("/spec/internalTrafficPolicy", json!("Cluster")),
                ("/spec/externalTrafficPolicy", Value::Null),
                ("/spec/ports/0/protocol", json!("TCP")),
                ("/spec/ports/0/targetPort", json!(80)),
            ],
        );
        check_created(
            "services",
            json!({"metadata": {"name": "lb"}, "spec": {"type": "LoadBalancer", "sessionAffinity": "ClientIP",
                "ports": [{"port": 80, "targetPort": "http", "protocol": "UDP"}]}}),
            &[
                ("/spec/externalTrafficPolicy", json!("Cluster")),
                ("/spec/allocateLoadBalancerNodePorts", json!(true)),
                (
                    "/spec/sessionAffinityConfig",
                    json!({"clientIP": {"timeoutSeconds": 10800}}),
                ),
                ("/spec/ports/0/targetPort", json!("http")),
                ("/spec/ports/0/protocol", json!("UDP")),
            ],
        );
        check_created(
            "namespaces",
            json!({"metadata": {"name": "team"}}),
            &[
                ("/status", json!({"phase": "Active"})),
                ("/spec/finalizers", json!(["kubernetes"])),
                (
                    "/metadata/labels/kubernetes.io~1metadata.name",
                    json!("team"),
                ),
            ],
        );
        check_created(
            "namespaces",
            json!({"metadata": {"name": "t"}, "spec": {"finalizers": ["example.com/x"]}, "status": {"phase": "Terminating"}}),
            &[
                ("/spec/finalizers", json!(["example.com/x", "kubernetes"])),
                ("/status/phase", json!("Active")),
            ],
        );
        check_created(
            "pods",
            json!({"metadata": {"name": "p"}, "spec": pod_spec, "status": {"phase": "Running"}}),
            &[
                (
                    "/status",
                    json!({"phase": "Pending", "qosClass": "BestEffort"}),
                ),
                ("/spec/restartPolicy", json!("Always")),
                ("/spec/dnsPolicy", json!("ClusterFirst")),
                ("/spec/schedulerName", json!("default-scheduler")),
                ("/spec/securityContext", json!({})),
                ("/spec/terminationGracePeriodSeconds", json!(30)),
                ("/spec/enableServiceLinks", json!(true)),
                ("/spec/serviceAccountName", json!("default")),
                ("/spec/serviceAccount", json!("default")),
                ("/spec/priority", json!(0)),
                ("/spec/preemptionPolicy", json!("PreemptLowerPriority")),
                ("/spec/containers/0/imagePullPolicy", json!("Always")),
                (
                    "/spec/containers/0/terminationMessagePath",
                    json!("/dev/termination-log"),
                ),
                ("/spec/containers/0/terminationMessagePolicy", json!("File")),
                ("/spec/containers/0/resources", json!({})),
            ],
        );
        check_created(
            "pods",
            json!({"metadata": {"name": "p"}, "spec": {
                "serviceAccount": "robot", "terminationGracePeriodSeconds": 0, "restartPolicy": "Never",
                "volumes": [{"name": "scratch"}, {"name": "cfg", "configMap": {"name": "x"}}],
                "initContainers": [c("init", "busybox:1.36")],
                "containers": [{"name": "c", "image": "nginx@sha256:abc",
                    "ports": [{"containerPort": 80}],
                    "env": [{"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}],
                    "readinessProbe": {"httpGet": {"port": 80}, "periodSeconds": 3},
                    "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]}}),
            &[
                ("/spec/serviceAccountName", json!("robot")),
                ("/spec/terminationGracePeriodSeconds", json!(0)),
                ("/spec/restartPolicy", json!("Never")),
                ("/spec/volumes/0/emptyDir", json!({})),
                ("/spec/volumes/1/configMap/defaultMode", json!(420)),
                ("/spec/volumes/1/emptyDir", Value::Null),
                (
                    "/spec/initContainers/0/imagePullPolicy",
                    json!("IfNotPresent"),
                ),
                (
                    "/spec/initContainers/0/terminationMessagePolicy",
                    json!("File"),
                ),
                ("/spec/containers/0/imagePullPolicy", json!("IfNotPresent")),
                ("/spec/containers/0/ports/0/protocol", json!("TCP")),
                (
                    "/spec/containers/0/env/0/valueFrom/fieldRef/apiVersion",
                    json!("v1"),
                ),
                (
                    "/spec/containers/0/readinessProbe",
                    json!({"httpGet": {"port": 80, "path": "/", "scheme": "HTTP"}, "periodSeconds": 3,
                        "timeoutSeconds": 1, "successThreshold": 1, "failureThreshold": 3}),
                ),
                (
                    "/spec/containers/0/resources/requests",
                    json!({"cpu": "1", "memory": "1Gi"}),
                ),
                // The init container limits nothing.
                ("/status/qosClass", json!("Burstable")),
            ],
        );
        let template = json!({"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [c("web", "nginx:1.25")]}});
        let workload = json!({"metadata": {"name": "web"}, "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": template.clone()}});
        check_created(
            "deployments",
            workload.clone(),
            &[
                ("/status", json!({})),
                ("/spec/replicas", json!(1)),
                (
                    "/spec/strategy",
                    json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}}),
                ),
                ("/spec/revisionHistoryLimit", json!(10)),
                ("/spec/progressDeadlineSeconds", json!(600)),
                ("/spec/template/spec/restartPolicy", json!("Always")),
                ("/spec/template/spec/dnsPolicy", json!("ClusterFirst")),
                (
                    "/spec/template/spec/terminationGracePeriodSeconds",
                    json!(30),
                ),
                (
                    "/spec/template/spec/containers/0/imagePullPolicy",
                    json!("IfNotPresent"),
                ),
                ("/spec/template/spec/containers/0/resources", json!({})),
                // Pods only, as kube: not in templates.
                ("/spec/template/spec/enableServiceLinks", Value::Null),
                ("/spec/template/spec/serviceAccountName", Value::Null),
            ],
        );
        let mut partial = workload.clone();
        partial["spec"]["strategy"] = json!({"rollingUpdate": {"maxSurge": 2}});
        check_created(
            "deployments",
            partial,
            &[(
                "/spec/strategy",
                json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 2, "maxUnavailable": "25%"}}),
            )],
        );
        check_created(
            "replicasets",
            workload,
            &[
                ("/status", json!({"replicas": 0})),
                ("/spec/replicas", json!(1)),
                ("/spec/template", template),
            ],
        );
        check_created(
            "secrets",
            json!({"metadata": {"name": "s"}, "stringData": {"k": "v"}}),
            &[
                ("/type", json!("Opaque")),
                ("/data/k", json!("dg==")),
                ("/stringData", Value::Null),
            ],
        );
        check_created(
            "endpoints",
            json!({"metadata": {"name": "web"}, "subsets": [{"addresses": [{"ip": "10.0.0.1"}], "ports": [{"port": 80}]}]}),
            &[("/subsets/0/ports/0/protocol", json!("TCP"))],
        );
        check_created(
            "nodes",
            json!({"metadata": {"name": "n1"}, "status": {"capacity": {"cpu": "2", "pods": "110"}}}),
            &[
                ("/status/capacity/cpu", json!("2")),
                ("/status/allocatable", json!({"cpu": "2", "pods": "110"})),
            ],
        );
        for plural in ["configmaps", "serviceaccounts", "leases", "events"] {
            check_created(
                plural,
                json!({"metadata": {"name": "x"}, "data": {"a": "b"}}),
                &[("/status", Value::Null), ("/metadata/name", json!("x"))],
            );
        }
    }

    #[test]
    fn updates_get_the_decoders_defaults_but_not_the_creates() {
        let ns = resource("namespaces");
        let mut obj = json!({"metadata": {"name": "team", "labels": {"kubernetes.io/metadata.name": "other"}}});
        prepare_update(ns, &obj.clone(), &mut obj).unwrap();
        assert_eq!(
            obj["metadata"]["labels"]["kubernetes.io/metadata.name"],
            "team"
        );
        assert_eq!(obj.get("status"), None);
        let pods = resource("pods");
        let mut pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "x:1"}]}});
        prepare_update(pods, &pod.clone(), &mut pod).unwrap();
        assert_eq!(
            pod["spec"]["containers"][0]["imagePullPolicy"],
            "IfNotPresent"
        );
        assert_eq!(pod["spec"]["enableServiceLinks"], true);
        assert_eq!(pod.get("status"), None);
        assert_eq!(pod["spec"].get("priority"), None);
    }

    #[test]
    fn pull_policy_follows_the_tag() {
        for (image, policy) in [
            ("busybox", "Always"),
            ("busybox:latest", "Always"),
            ("busybox:1.36", "IfNotPresent"),
            ("registry:5000/team/app", "Always"),
            ("registry:5000/team/app:v2", "IfNotPresent"),
            ("app@sha256:abcd", "IfNotPresent"),
            ("app:latest@sha256:abcd", "Always"),
            ("", "IfNotPresent"),
        ] {
            assert_eq!(pull_policy(image), policy, "{image}");
        }
    }

    #[test]
    fn qos_class_follows_requests_and_limits() {
        let pod = |resources: &[Value]| {
            let containers: Vec<Value> = resources
                .iter()
                .enumerate()
                .map(|(i, r)| json!({"name": format!("c{i}"), "image": "x", "resources": r}))
                .collect();
            let mut obj = json!({"metadata": {"name": "p"}, "spec": {"containers": containers}});
            prepare_create(resource("pods"), &mut obj, None).unwrap();
            obj["status"]["qosClass"].as_str().unwrap().to_string()
        };
        let full = json!({"limits": {"cpu": "500m", "memory": "64Mi"}});
        assert_eq!(pod(&[json!({})]), "BestEffort");
        assert_eq!(pod(&[json!({"requests": {"cpu": "0"}})]), "BestEffort");
        assert_eq!(pod(&[full.clone(), full.clone()]), "Guaranteed");
        assert_eq!(
            pod(&[
                json!({"limits": {"cpu": "0.5", "memory": "64Mi"}, "requests": {"cpu": "500m"}})
            ]),
            "Guaranteed"
        );
        assert_eq!(pod(&[full.clone(), json!({})]), "Burstable");
        assert_eq!(pod(&[json!({"limits": {"cpu": "1"}})]), "Burstable");
        assert_eq!(
            pod(&[json!({"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "100m"}})]),
            "Burstable"
        );
    }

    /// The 422's causes, as (reason, field, message).
    fn causes(plural: &str, obj: Value) -> Vec<(String, String, String)> {
        let e = validate(resource(plural), &obj).unwrap_err();
        assert_eq!((e.code, e.reason), (422, "Invalid"));
        e.details.unwrap()["causes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                let s = |k: &str| c[k].as_str().unwrap().to_string();
                (s("reason"), s("field"), s("message"))
            })
            .collect()
    }

    fn cause(reason: &str, field: &str, message: &str) -> (String, String, String) {
        (reason.into(), field.into(), message.into())
    }

    const LABEL_ERROR: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";

    #[test]
    fn container_names_are_dns_labels() {
        let pod = |names: &[&str]| {
            let containers: Vec<Value> = names
                .iter()
                .map(|n| json!({"name": n, "image": "busybox"}))
                .collect();
            json!({"metadata": {"name": "p"}, "spec": {"containers": containers}})
        };
        let traversal = "../../../../../../tmp/probe/trav";
        assert_eq!(
            causes("pods", pod(&[traversal])),
            [cause(
                "FieldValueInvalid",
                "spec.containers[0].name",
                &format!("Invalid value: \"{traversal}\": {LABEL_ERROR}")
            )]
        );
        for bad in ["a/b", "UPPER_case", "-a", "a-", ".."] {
            assert_eq!(
                causes("pods", pod(&[bad]))[0].2,
                format!("Invalid value: {}: {LABEL_ERROR}", go_quote(bad)),
                "{bad}"
            );
        }
        assert_eq!(
            causes("pods", pod(&["a.b"]))[0].2,
            "Invalid value: \"a.b\": must not contain dots"
        );
        let long = "a".repeat(64);
        assert_eq!(
            causes("pods", pod(&[&long]))[0].2,
            format!("Invalid value: \"{long}\": must be no more than 63 characters")
        );
        assert_eq!(
            causes("pods", pod(&[""])),
            [cause(
                "FieldValueRequired",
                "spec.containers[0].name",
                "Required value"
            )]
        );
        assert!(
            validate(
                resource("pods"),
                &pod(&["web", "side-car-2", &"a".repeat(63)])
            )
            .is_ok()
        );
    }

    #[test]
    fn names_are_unique_across_containers_and_init_containers() {
        let c = |n: &str| json!({"name": n, "image": "busybox"});
        let obj = json!({"metadata": {"name": "p"}, "spec": {
            "containers": [c("web"), c("web"), c("side")],
            "initContainers": [c("side"), c("init"), c("init")]}});
        assert_eq!(
            causes("pods", obj),
            [
                cause(
                    "FieldValueDuplicate",
                    "spec.containers[1].name",
                    "Duplicate value: \"web\""
                ),
                cause(
                    "FieldValueDuplicate",
                    "spec.initContainers[0].name",
                    "Duplicate value: \"side\""
                ),
                cause(
                    "FieldValueDuplicate",
                    "spec.initContainers[2].name",
                    "Duplicate value: \"init\""
                ),
            ]
        );
    }

    #[test]
    fn volume_and_port_names_are_checked() {
        let obj = json!({"metadata": {"name": "p"}, "spec": {
        "volumes": [{"name": "Data"}, {"name": "d"}, {"name": "d"}, {"name": ""}],
        "containers": [{"name": "c", "image": "busybox",
            "volumeMounts": [{"name": "d", "mountPath": "/d"}, {"name": "Data", "mountPath": "/d"}],
            "ports": [
                {"name": "http", "containerPort": 80},
                {"name": "http", "containerPort": 81},
                {"name": "a-very-long-port", "containerPort": 82},
                {"name": "8080", "containerPort": 83},
                {"name": "a--b", "containerPort": 84},
                {"name": "-a", "containerPort": 85},
                {"containerPort": 70000, "protocol": "XTP"},
                {"name": "ok"},
            ]}]}});
        let got = causes("pods", obj);
        let want = [
            cause(
                "FieldValueInvalid",
                "spec.volumes[0].name",
                &format!("Invalid value: \"Data\": {LABEL_ERROR}"),
            ),
            cause(
                "FieldValueDuplicate",
                "spec.volumes[2].name",
                "Duplicate value: \"d\"",
            ),
            cause(
                "FieldValueRequired",
                "spec.volumes[3].name",
                "Required value",
            ),
            cause(
                "FieldValueDuplicate",
                "spec.containers[0].ports[1].name",
                "Duplicate value: \"http\"",
            ),
            cause(
                "FieldValueInvalid",
                "spec.containers[0].ports[2].name",
                "Invalid value: \"a-very-long-port\": must be no more than 15 characters",
            ),
            cause(
                "FieldValueInvalid",
                "spec.containers[0].ports[3].name",
                "Invalid value: \"8080\": must contain at least one letter (a-z)",
            ),
            cause(
                "FieldValueInvalid",
                "spec.containers[0].ports[4].name",
                "Invalid value: \"a--b\": must not contain consecutive hyphens",
            ),
            cause(
                "FieldValueInvalid",
                "spec.containers[0].ports[5].name",
                "Invalid value: \"-a\": must not begin or end with a hyphen",
            ),
            cause(
                "FieldValueInvalid",
                "spec.containers[0].ports[6].containerPort",
                "Invalid value: 70000: must be between 1 and 65535, inclusive",
            ),
            cause(
                "FieldValueNotSupported",
                "spec.containers[0].ports[6].protocol",
                "Unsupported value: \"XTP\": supported values: \"SCTP\", \"TCP\", \"UDP\"",
            ),
            cause(
                "FieldValueRequired",
                "spec.containers[0].ports[7].containerPort",
                "Required value",
            ),
            cause(
                "FieldValueNotFound",
                "spec.containers[0].volumeMounts[1].name",
                "Not found: \"Data\"",
            ),
            cause(
                "FieldValueInvalid",
                "spec.containers[0].volumeMounts[1].mountPath",
                "Invalid value: \"/d\": must be unique",
            ),
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn services_are_checked_as_kube_does() {
        let svc = |spec: Value| {
            let mut obj = json!({"metadata": {"name": "web"}, "spec": spec});
            defaults(resource("services"), &mut obj);
            obj
        };
        let ok = svc(json!({"type": "NodePort", "ports": [
            {"name": "http", "port": 80, "nodePort": 30080},
            {"name": "dns", "port": 80, "protocol": "UDP", "nodePort": 30080}]}));
        validate(resource("services"), &ok).unwrap();
        validate(resource("services"), &svc(json!({"ports": [{"port": 80}]}))).unwrap();

        let got = causes(
            "services",
            svc(json!({"type": "NodePort", "ports": [
                {"name": "Web", "port": 80, "nodePort": 30080},
                {"port": 80, "protocol": "TCP", "nodePort": 30080},
                {"name": "web", "port": 70000, "protocol": "ICMP"},
                {"name": "web", "port": 81}]})),
        );
        let got: Vec<(&str, &str)> = got.iter().map(|c| (c.1.as_str(), c.2.as_str())).collect();
        assert_eq!(
            got,
            [
                (
                    "spec.ports[0].name",
                    format!("Invalid value: \"Web\": {LABEL_ERROR}").as_str()
                ),
                ("spec.ports[1].name", "Required value"),
                (
                    "spec.ports[2].port",
                    "Invalid value: 70000: must be between 1 and 65535, inclusive"
                ),
                (
                    "spec.ports[2].protocol",
                    "Unsupported value: \"ICMP\": supported values: \"SCTP\", \"TCP\", \"UDP\""
                ),
                ("spec.ports[3].name", "Duplicate value: \"web\""),
                ("spec.ports[1].nodePort", "Duplicate value: 30080"),
                (
                    "spec.ports[1]",
                    "Duplicate value: core.ServicePort{Name:\"\", Protocol:\"TCP\", AppProtocol:(*string)(nil), Port:80, TargetPort:intstr.IntOrString{Type:0, IntVal:0, StrVal:\"\"}, NodePort:0}"
                ),
            ]
        );

        let got = causes(
            "services",
            svc(json!({"type": "Balanced", "ports": [{"port": 80}],
                "sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 86401}},
                "externalIPs": ["0.0.0.0", "127.0.0.1", "not-an-ip", "203.0.113.9"]})),
        );
        let got: Vec<(&str, &str)> = got.iter().map(|c| (c.1.as_str(), c.2.as_str())).collect();
        assert_eq!(
            got,
            [
                (
                    "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                    "Invalid value: 86401: must be greater than 0 and less than 86400"
                ),
                (
                    "spec.externalIPs[0]",
                    "Invalid value: \"0.0.0.0\": may not be unspecified (0.0.0.0)"
                ),
                (
                    "spec.externalIPs[1]",
                    "Invalid value: \"127.0.0.1\": may not be in the loopback range (127.0.0.0/8, ::1/128)"
                ),
                (
                    "spec.externalIPs[2]",
                    "Invalid value: \"not-an-ip\": must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"
                ),
                (
                    "spec.type",
                    "Unsupported value: \"Balanced\": supported values: \"ClusterIP\", \"ExternalName\", \"LoadBalancer\", \"NodePort\""
                ),
            ]
        );
        // A headless or ExternalName Service needs no ports; others do.
        validate(resource("services"), &svc(json!({"clusterIP": "None"}))).unwrap();
        let got = causes("services", svc(json!({})));
        assert_eq!(
            (got[0].1.as_str(), got[0].2.as_str()),
            ("spec.ports", "Required value")
        );
        let got = causes(
            "services",
            svc(json!({"ports": [{"port": 80, "nodePort": 30001}]})),
        );
        assert_eq!(
            got[0].2,
            "Forbidden: may not be used when `type` is 'ClusterIP'"
        );
    }

    #[test]
    fn invalid_answers_read_as_kubes() {
        let pods = resource("pods");
        let obj = json!({"metadata": {"name": "p"}, "spec": {"containers": [
            {"name": "a/b", "image": "busybox"}, {"name": "a/b"}]}});
        let e = validate(pods, &obj).unwrap_err();
        assert_eq!(
            e.message,
            format!(
                "Pod \"p\" is invalid: [spec.containers[0].name: Invalid value: \"a/b\": {LABEL_ERROR}, \
                 spec.containers[1].name: Invalid value: \"a/b\": {LABEL_ERROR}, \
                 spec.containers[1].image: Required value, spec.containers[1].name: Duplicate value: \"a/b\"]"
            )
        );
        let details = e.details.unwrap();
        assert_eq!(
            (&details["kind"], &details["name"]),
            (&json!("Pod"), &json!("p"))
        );
        assert_eq!(details.get("group"), None);
        // A template's fields are named from the workload.
        let d = json!({"metadata": {"name": "web"}, "spec": {"selector": {},
            "template": {"spec": {"containers": [{"name": "UPPER_case", "image": "nginx"}]}}}});
        let e = validate(resource("deployments"), &d).unwrap_err();
        assert_eq!(
            e.message,
            format!(
                "Deployment.apps \"web\" is invalid: spec.template.spec.containers[0].name: \
                 Invalid value: \"UPPER_case\": {LABEL_ERROR}"
            )
        );
        assert_eq!(e.details.unwrap()["group"], "apps");
        // Metadata names, per kind.
        let svc = causes("services", json!({"metadata": {"name": "1web"}}));
        assert_eq!(
            svc[0].2,
            "Invalid value: \"1web\": a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')"
        );
        let cm = causes("configmaps", json!({"metadata": {"name": "Bad_Name"}}));
        assert_eq!(
            cm[0].2,
            r#"Invalid value: "Bad_Name": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"#
        );
        assert_eq!(
            causes("configmaps", json!({"metadata": {}})),
            [cause(
                "FieldValueRequired",
                "metadata.name",
                "Required value: name or generateName is required"
            )]
        );
        assert_eq!(go_quote("a\"b\\c\n\u{1}é"), r#""a\"b\\c\n\x01é""#);
    }
}

/// Seconds since the epoch of an RFC 3339 UTC timestamp ("…Z").
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hh * 3600 + mm * 60 + ss)
}

/// kubectl's short age: 42s, 5m, 3h, 2d.
pub fn age(created: &str) -> String {
    let Some(t) = parse_rfc3339(created) else {
        return "<unknown>".into();
    };
    let now = parse_rfc3339(&now()).unwrap_or(t);
    let s = (now - t).max(0);
    match s {
        s if s < 120 => format!("{s}s"),
        s if s < 3600 * 3 => format!("{}m", s / 60),
        s if s < 86_400 * 2 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

#[cfg(test)]
mod time_tests {
    #[test]
    fn rfc3339_round_trips() {
        for t in [0, 951_782_400, 1_795_867_200] {
            assert_eq!(super::parse_rfc3339(&super::rfc3339(t)), Some(t));
        }
    }
}

/// A Secret's `stringData` is write-only: it is folded into `data`
/// (base64), overriding keys of the same name.
pub fn fold_string_data(obj: &mut Value) {
    use base64::Engine as _;
    let Some(Value::Object(strings)) = obj.as_object_mut().and_then(|o| o.remove("stringData"))
    else {
        return;
    };
    if !obj.get("data").is_some_and(Value::is_object) {
        obj["data"] = json!({});
    }
    for (k, v) in strings {
        let text = v.as_str().unwrap_or_default();
        obj["data"][k] = json!(base64::engine::general_purpose::STANDARD.encode(text));
    }
}
