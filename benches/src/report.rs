//! A workload's result: named sections of latency summaries, printed like
//! etcd's benchmark tool or as JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::stats::Summary;

/// One measured kind of request (e.g. "put", "read", "watch event").
#[derive(Debug, Clone, Serialize)]
pub struct Section {
    /// What was measured.
    pub name: String,
    /// Its latencies and rate.
    pub summary: Summary,
}

/// A workload's whole result.
#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    /// The subcommand.
    pub workload: String,
    /// Endpoints driven.
    pub endpoints: Vec<String>,
    /// gRPC connections.
    pub conns: usize,
    /// Concurrent clients.
    pub clients: usize,
    /// The headline section first, then the others.
    pub sections: Vec<Section>,
    /// Other figures (events received, conflicts, keys per list...).
    pub extra: BTreeMap<String, f64>,
}

impl BenchResult {
    /// The headline section.
    pub fn headline(&self) -> Option<&Summary> {
        self.sections.first().map(|s| &s.summary)
    }

    /// A named section.
    pub fn section(&self, name: &str) -> Option<&Summary> {
        self.sections
            .iter()
            .find(|s| s.name == name)
            .map(|s| &s.summary)
    }

    /// The etcd-style text report.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "workload {} on {} ({} conns, {} clients)",
            self.workload,
            self.endpoints.join(","),
            self.conns,
            self.clients
        );
        let many = self.sections.len() > 1;
        for s in &self.sections {
            if many {
                let _ = writeln!(out, "\n== {} ({} requests) ==", s.name, s.summary.count);
            }
            out.push_str(&s.summary.render());
        }
        if !self.extra.is_empty() {
            let _ = writeln!(out, "\nOther figures:");
            for (k, v) in &self.extra {
                let _ = writeln!(out, "  {k}:\t{v}");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::stats::Recorder;

    #[test]
    fn renders_sections_and_json() {
        let mut r = Recorder::default();
        r.record(Duration::from_millis(3));
        let mut w = Recorder::default();
        w.record(Duration::from_millis(9));
        let result = BenchResult {
            workload: "txn-mixed".into(),
            endpoints: vec!["127.0.0.1:2379".into()],
            conns: 1,
            clients: 2,
            sections: vec![
                Section {
                    name: "read".into(),
                    summary: r.summarize(Duration::from_secs(1)),
                },
                Section {
                    name: "write".into(),
                    summary: w.summarize(Duration::from_secs(1)),
                },
            ],
            extra: [("conflicts".to_string(), 0.0)].into(),
        };
        let text = result.render();
        assert!(text.contains("== read (1 requests) =="));
        assert!(text.contains("== write (1 requests) =="));
        assert!(text.contains("conflicts"));
        assert_eq!(result.headline().unwrap().count, 1);
        assert!((result.section("write").unwrap().fastest - 0.009).abs() < 1e-9);
        let json = serde_json::to_value(&result).unwrap();
        assert_eq!(json["sections"][1]["name"], "write");
        assert_eq!(json["clients"], 2);
    }
}
