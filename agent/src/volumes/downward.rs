//! Pod fields and container resources as the downward API gives them
//! (to volumes and to env), and the resource quantities they are made of.

use std::fs;

use serde_json::Value;

use super::*;

// downward API values

/// The value of a pod field for the downward API (files and env vars).
pub fn field_value(pod: &Value, path: &str) -> Result<String, String> {
    let meta = pod.get("metadata").unwrap_or(&Value::Null);
    let text = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or("").to_string();
    if let Some(key) = subscript(path, "metadata.labels") {
        return Ok(text(meta.get("labels").and_then(|l| l.get(key))));
    }
    if let Some(key) = subscript(path, "metadata.annotations") {
        return Ok(text(meta.get("annotations").and_then(|l| l.get(key))));
    }
    let spec = pod.get("spec").unwrap_or(&Value::Null);
    let status = pod.get("status").unwrap_or(&Value::Null);
    match path {
        "metadata.name" => Ok(text(meta.get("name"))),
        "metadata.namespace" => Ok(pod_namespace(pod).to_string()),
        "metadata.uid" => Ok(text(meta.get("uid"))),
        "metadata.labels" => format_map(meta.get("labels")),
        "metadata.annotations" => format_map(meta.get("annotations")),
        "spec.nodeName" => Ok(text(spec.get("nodeName"))),
        "spec.serviceAccountName" => Ok(text(spec.get("serviceAccountName"))),
        "status.hostIP" => Ok(text(status.get("hostIP"))),
        "status.podIP" => Ok(text(status.get("podIP"))),
        "status.hostIPs" => Ok(ip_list(status.get("hostIPs"))),
        "status.podIPs" => Ok(ip_list(status.get("podIPs"))),
        "" => Err("fieldRef has no fieldPath".to_string()),
        other => Err(format!("unsupported fieldPath: {other}")),
    }
}

/// `prefix['key']` → `key`.
pub(super) fn subscript<'p>(path: &'p str, prefix: &str) -> Option<&'p str> {
    path.strip_prefix(prefix)?
        .strip_prefix("['")?
        .strip_suffix("']")
}

pub(super) fn ip_list(list: Option<&Value>) -> String {
    list.and_then(Value::as_array)
        .map(|ips| {
            ips.iter()
                .filter_map(|ip| ip.get("ip").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

/// Labels/annotations as the kubelet writes them: sorted `key="value"` lines, no trailing newline.
pub(super) fn format_map(map: Option<&Value>) -> Result<String, String> {
    let Some(map) = map.and_then(Value::as_object) else {
        return Ok(String::new());
    };
    let mut sorted: Vec<(&String, &Value)> = map.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    let mut lines = Vec::with_capacity(sorted.len());
    for (key, value) in sorted {
        let value = value
            .as_str()
            .ok_or_else(|| format!("value of {key} is not a string"))?;
        lines.push(format!("{key}={}", apiserver::objects::go_quote(value)));
    }
    Ok(lines.join("\n"))
}

/// The value of a container resource for the downward API (files and env vars), in units of `divisor`.
pub fn resource_value(
    pod: &Value,
    container_name: &str,
    resource: &str,
    divisor: Option<&Value>,
) -> Result<String, String> {
    let container = find_container(pod, container_name)
        .ok_or_else(|| format!("container \"{container_name}\" not found in pod"))?;
    let (section, name) = resource
        .split_once('.')
        .ok_or_else(|| format!("unsupported container resource: {resource}"))?;
    if !matches!(section, "limits" | "requests")
        || !matches!(name, "cpu" | "memory" | "ephemeral-storage")
    {
        return Err(format!("unsupported container resource: {resource}"));
    }
    let resources = container.get("resources").unwrap_or(&Value::Null);
    let lookup = |section: &str| -> Result<Option<Quantity>, String> {
        match resources.get(section).and_then(|s| s.get(name)) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => quantity_of(v).map(Some),
        }
    };
    let quantity = if section == "limits" {
        match lookup("limits")? {
            Some(q) => q,
            None => node_capacity(name)?,
        }
    } else {
        // Requests default to limits; without either they are zero.
        match lookup("requests")? {
            Some(q) => q,
            None => lookup("limits")?.unwrap_or(Quantity { num: 0, den: 1 }),
        }
    };
    let divisor = match divisor {
        None | Some(Value::Null) => Quantity { num: 1, den: 1 },
        Some(d) => quantity_of(d)?,
    };
    let value = if name == "cpu" {
        let d = divisor.milli()?;
        if d <= 0 {
            return Err(format!("invalid divisor for {resource}"));
        }
        ceil_div(quantity.milli()?, d)
    } else {
        let d = divisor.value()?;
        if d <= 0 {
            return Err(format!("invalid divisor for {resource}"));
        }
        ceil_div(quantity.value()?, d)
    };
    Ok(value.to_string())
}

pub(super) fn find_container<'p>(pod: &'p Value, name: &str) -> Option<&'p Value> {
    let spec = pod.get("spec")?;
    ["containers", "initContainers"]
        .iter()
        .filter_map(|k| spec.get(*k).and_then(Value::as_array))
        .flatten()
        .find(|c| str_field(c, "name") == name)
}

/// What an unlimited container may use: the node's capacity.
pub(super) fn node_capacity(resource: &str) -> Result<Quantity, String> {
    match resource {
        "cpu" => {
            let cpus = std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1);
            Ok(Quantity {
                num: cpus as i128,
                den: 1,
            })
        }
        "memory" => {
            let text = fs::read_to_string("/proc/meminfo")
                .map_err(|e| format!("cannot read node memory: {e}"))?;
            let kib = text
                .lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse::<i128>().ok())
                .ok_or_else(|| "cannot read node memory: no MemTotal".to_string())?;
            Ok(Quantity {
                num: kib * 1024,
                den: 1,
            })
        }
        _ => {
            // ephemeral-storage: the size of the root filesystem.
            // SAFETY: statvfs is plain old data, for which all-zero bytes are valid.
            let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
            // SAFETY: the path is a valid C string and `st` a valid out-pointer.
            let rc = unsafe { libc::statvfs(c"/".as_ptr(), &mut st) };
            if rc != 0 {
                return Err(format!(
                    "cannot read node storage: {}",
                    std::io::Error::last_os_error()
                ));
            }
            Ok(Quantity {
                num: st.f_blocks as i128 * st.f_frsize as i128,
                den: 1,
            })
        }
    }
}

// quantities

/// A resource quantity kept as an exact fraction, so rounding matches the API's (always up).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Quantity {
    pub(super) num: i128,
    pub(super) den: i128,
}

impl Quantity {
    pub(super) fn value(&self) -> Result<i128, String> {
        Ok(ceil_div(self.num, self.den))
    }

    pub(super) fn milli(&self) -> Result<i128, String> {
        let num = self
            .num
            .checked_mul(1000)
            .ok_or_else(|| "quantity too large".to_string())?;
        Ok(ceil_div(num, self.den))
    }
}

pub(super) fn ceil_div(a: i128, b: i128) -> i128 {
    let q = a / b;
    if (a % b != 0) && ((a > 0) == (b > 0)) {
        q + 1
    } else {
        q
    }
}

pub(super) fn gcd(mut a: i128, mut b: i128) -> i128 {
    a = a.abs();
    b = b.abs();
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a.max(1)
}

pub(super) fn quantity_of(value: &Value) -> Result<Quantity, String> {
    match value {
        Value::String(s) => parse_quantity(s),
        Value::Number(n) => parse_quantity(&n.to_string()),
        other => Err(format!("invalid quantity {other}")),
    }
}

/// Parses a Kubernetes quantity: `64Mi`, `1Gi`, `500M`, `250m`, `1e3`, `1.5`, `42`.
pub(super) fn parse_quantity(raw: &str) -> Result<Quantity, String> {
    let bad = || format!("invalid quantity \"{raw}\"");
    let s = raw.trim();
    let (negative, rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    let (number, suffix) = rest.split_at(end);
    let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
    if int_part.is_empty() && frac_part.is_empty() || frac_part.contains('.') {
        return Err(bad());
    }
    let digits = format!("{int_part}{frac_part}");
    let digits = digits.trim_start_matches('0');
    if digits.len() > 30 {
        return Err(bad());
    }
    let mut num: i128 = if digits.is_empty() {
        0
    } else {
        digits.parse().map_err(|_| bad())?
    };
    let mut exp10: i32 = -(frac_part.len() as i32);
    let mut pow2: u32 = 0;
    match suffix {
        "" => {}
        "Ki" => pow2 = 10,
        "Mi" => pow2 = 20,
        "Gi" => pow2 = 30,
        "Ti" => pow2 = 40,
        "Pi" => pow2 = 50,
        "Ei" => pow2 = 60,
        "n" => exp10 -= 9,
        "u" => exp10 -= 6,
        "m" => exp10 -= 3,
        "k" => exp10 += 3,
        "M" => exp10 += 6,
        "G" => exp10 += 9,
        "T" => exp10 += 12,
        "P" => exp10 += 15,
        "E" => exp10 += 18,
        s if s.starts_with(['e', 'E']) => {
            let e: i32 = s[1..].parse().map_err(|_| bad())?;
            if !(-40..=40).contains(&e) {
                return Err(bad());
            }
            exp10 += e;
        }
        _ => return Err(bad()),
    }
    let mut den: i128 = 1;
    let too_big = || format!("quantity \"{raw}\" is too large");
    num = num.checked_mul(1i128 << pow2).ok_or_else(too_big)?;
    if num == 0 {
        return Ok(Quantity { num: 0, den: 1 });
    }
    let scale = 10i128
        .checked_pow(exp10.unsigned_abs())
        .ok_or_else(too_big)?;
    if exp10 >= 0 {
        num = num.checked_mul(scale).ok_or_else(too_big)?;
    } else {
        den = scale;
    }
    let g = gcd(num, den);
    num /= g;
    den /= g;
    if negative {
        num = -num;
    }
    Ok(Quantity { num, den })
}
