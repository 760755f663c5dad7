//! The CRI container log format, read back for `kubectl logs`: each file
//! line is `TIMESTAMP STREAM TAG CONTENT`, with the RFC 3339 timestamp
//! (nanoseconds, UTC), `stdout` or `stderr`, and tag `F` for a line the
//! container ended or `P` for a piece of a longer one that the runtime
//! split. `Decoder` joins the pieces back into the container's lines.

/// One line the container wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// As the runtime wrote it (of the line's first piece).
    pub timestamp: String,
    /// Seconds and nanoseconds since the epoch, for `sinceTime`.
    pub time: (i64, u32),
    /// What the container wrote, with its newline when it ended the line.
    pub text: Vec<u8>,
}

/// Turns file bytes, fed in any pieces, into the container's lines.
#[derive(Debug, Default)]
pub struct Decoder {
    /// The end of the input that is not a whole file line yet.
    unfinished: Vec<u8>,
    /// A container line whose pieces are still coming.
    open: Option<LogLine>,
}

impl Decoder {
    /// The container lines `bytes` completes.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<LogLine> {
        self.unfinished.extend_from_slice(bytes);
        let Some(last_newline) = self.unfinished.iter().rposition(|&b| b == b'\n') else {
            return Vec::new();
        };
        let rest = self.unfinished.split_off(last_newline + 1);
        let whole = std::mem::replace(&mut self.unfinished, rest);
        let mut lines = Vec::new();
        for file_line in whole.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            if let Some(line) = self.piece(file_line) {
                lines.push(line);
            }
        }
        lines
    }

    /// The line still being written, if any: shown as it is when the log
    /// is read without following it.
    pub fn finish(&mut self) -> Option<LogLine> {
        self.open.take()
    }

    fn piece(&mut self, file_line: &[u8]) -> Option<LogLine> {
        let mut fields = file_line.splitn(4, |&b| b == b' ');
        let (Some(timestamp), Some(_stream), Some(tag)) =
            (fields.next(), fields.next(), fields.next())
        else {
            return None;
        };
        let content = fields.next().unwrap_or_default();
        let timestamp = String::from_utf8_lossy(timestamp).into_owned();
        let line = self.open.get_or_insert_with(|| LogLine {
            time: parse_rfc3339(&timestamp).unwrap_or((0, 0)),
            timestamp,
            text: Vec::new(),
        });
        line.text.extend_from_slice(content);
        if tag == b"P" {
            return None;
        }
        line.text.push(b'\n');
        self.open.take()
    }
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)` as seconds and nanoseconds
/// since the epoch.
pub fn parse_rfc3339(s: &str) -> Option<(i64, u32)> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't') {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<i64> { s.get(range)?.parse().ok() };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut rest = &s[19..];
    let mut nanos = 0u32;
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
        let padded = format!("{:0<9}", &fraction[..digits.min(9)]);
        nanos = padded.parse().ok()?;
        rest = &fraction[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        zone if zone.len() == 6 => {
            let sign = if zone.starts_with('-') { -1 } else { 1 };
            sign * (zone.get(1..3)?.parse::<i64>().ok()? * 3600
                + zone.get(4..6)?.parse::<i64>().ok()? * 60)
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    Some((
        days * 86_400 + hour * 3600 + minute * 60 + second - offset,
        nanos,
    ))
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_join_into_lines_across_reads() {
        let mut d = Decoder::default();
        let lines = d.push(
            b"2026-12-03T06:02:54.39908972Z stdout F hello\n2026-12-03T06:02:55Z stderr P ab",
        );
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].text, b"hello\n");
        assert_eq!(lines[0].timestamp, "2026-12-03T06:02:54.39908972Z");
        assert!(d.push(b"c\n2026-12-03T06:02:56Z stderr F de").is_empty());
        let lines = d.push(b"f\n");
        assert_eq!(lines[0].text, b"abcdef\n");
        assert_eq!(lines[0].timestamp, "2026-12-03T06:02:55Z");
        assert!(d.finish().is_none());
        assert!(d.push(b"2026-12-03T06:02:57Z stdout P tail\n").is_empty());
        assert_eq!(d.finish().unwrap().text, b"tail");
        // An empty line the container wrote has no content field at all.
        assert_eq!(d.push(b"2026-12-03T06:02:58Z stdout F\n")[0].text, b"\n");
    }

    /// Whatever bytes a log file holds, in whatever pieces they are read,
    /// decoding neither panics nor loses a complete line's content.
    #[test]
    fn any_bytes_decode() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..2000 {
            let len = (next() % 200) as usize;
            let alphabet = b"0123456789TZ:.- PF\nstdouterr";
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    let r = next();
                    if r % 5 == 0 {
                        (r >> 8) as u8
                    } else {
                        alphabet[(r >> 8) as usize % alphabet.len()]
                    }
                })
                .collect();
            let cut = if bytes.is_empty() {
                0
            } else {
                (next() as usize) % bytes.len()
            };
            let mut whole = Decoder::default();
            let mut pieces = Decoder::default();
            let mut a = whole.push(&bytes);
            a.extend(whole.finish());
            let mut b = pieces.push(&bytes[..cut]);
            b.extend(pieces.push(&bytes[cut..]));
            b.extend(pieces.finish());
            assert_eq!(a, b, "{bytes:?} cut at {cut}");
            let _ = parse_rfc3339(&String::from_utf8_lossy(&bytes));
        }
    }

    #[test]
    fn timestamps_parse() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some((0, 0)));
        assert_eq!(
            parse_rfc3339("2026-12-03T06:02:54.39908972Z"),
            Some((1_796_277_774, 399_089_720))
        );
        assert_eq!(parse_rfc3339("1970-01-01T01:00:00+01:00"), Some((0, 0)));
        assert_eq!(parse_rfc3339("yesterday"), None);
    }
}
