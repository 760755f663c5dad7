//! Kubernetes quantities ("100m", "1.5", "128Mi", "1e3") as integers.

use serde_json::Value;

/// `ceil(q × 10^scale)`, saturating at `i64::MAX`; `None` when `q` is
/// not a quantity. Rounding up matches kube's `MilliValue`/`Value`.
pub fn scaled(q: &str, scale: i32) -> Option<i64> {
    let s = q.trim();
    let (negative, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(end);
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    if (int.is_empty() && frac.is_empty()) || frac.contains('.') {
        return None;
    }
    let (pow10, pow2): (i32, u32) = match suffix {
        "" => (0, 0),
        "n" => (-9, 0),
        "u" => (-6, 0),
        "m" => (-3, 0),
        "k" => (3, 0),
        "M" => (6, 0),
        "G" => (9, 0),
        "T" => (12, 0),
        "P" => (15, 0),
        "E" => (18, 0),
        "Ki" => (0, 10),
        "Mi" => (0, 20),
        "Gi" => (0, 30),
        "Ti" => (0, 40),
        "Pi" => (0, 50),
        "Ei" => (0, 60),
        e if e.starts_with(['e', 'E']) => (e[1..].parse::<i32>().ok()?, 0),
        _ => return None,
    };
    let digits = format!("{int}{frac}");
    let digits = digits.trim_start_matches('0');
    let value = if digits.is_empty() {
        0
    } else {
        let pow10 = i64::from(pow10) + i64::from(scale) - frac.len() as i64;
        ceil_scaled(digits, pow10, pow2)
    };
    Some(if negative { -value } else { value })
}

/// `ceil(digits × 2^pow2 × 10^pow10)` for a non-zero decimal string.
fn ceil_scaled(digits: &str, pow10: i64, pow2: u32) -> i64 {
    // More than 38 significant digits do not fit an i128; they cannot
    // matter for a request, so the excess is dropped (rounding up).
    let (kept, dropped) = digits.split_at(digits.len().min(36));
    let mut mantissa: i128 = kept.parse().unwrap_or(0);
    if dropped.bytes().any(|b| b != b'0') {
        mantissa += 1;
    }
    let pow10 = pow10 + dropped.len() as i64;
    let Some(num) = mantissa.checked_mul(1i128 << pow2) else {
        return i64::MAX;
    };
    if pow10 >= 0 {
        let scaled = u32::try_from(pow10)
            .ok()
            .and_then(|p| 10i128.checked_pow(p))
            .and_then(|f| num.checked_mul(f));
        return scaled.map_or(i64::MAX, |v| i64::try_from(v).unwrap_or(i64::MAX));
    }
    match u32::try_from(-pow10)
        .ok()
        .and_then(|p| 10i128.checked_pow(p))
    {
        Some(den) => i64::try_from((num + den - 1) / den).unwrap_or(i64::MAX),
        // Smaller than 10^-38 of a unit, but not zero: one unit.
        None => 1,
    }
}

/// A resource amount in the unit the scheduler compares: millicores for
/// `cpu`, whole units (bytes, pods) for everything else.
pub fn amount(resource: &str, q: &Value) -> Option<i64> {
    let text = match q {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    scaled(&text, if resource == "cpu" { 3 } else { 0 })
}
