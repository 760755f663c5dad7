//! The comparison's PNG bar chart: for each workload, etcd's figure as 100%
//! and k3rs's relative to it, drawn with plotters into a pixel buffer and
//! encoded with `png`. Labels need a TrueType font; one is looked for in the
//! usual system places, and without one the bars are drawn unlabelled.

use std::path::Path;
use std::sync::OnceLock;

use anyhow::{Context, Result, anyhow};
use plotters::prelude::*;
use plotters::style::FontStyle;

/// One group of bars: a workload and k3rs's figures relative to etcd's.
#[derive(Debug, Clone)]
pub struct Bar {
    /// Workload name.
    pub label: String,
    /// k3rs's main figure over etcd's, oriented so that above 1 is better
    /// for k3rs; `None` when either side did not run.
    pub main_ratio: Option<f64>,
    /// etcd's p99 over k3rs's p99 (above 1: k3rs's tail is shorter).
    pub p99_ratio: Option<f64>,
}

const FONT_PATHS: [&str; 4] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

/// Registers a system font for labels, once; false when none is found.
pub fn fonts_available() -> bool {
    static FOUND: OnceLock<bool> = OnceLock::new();
    *FOUND.get_or_init(|| {
        for path in FONT_PATHS {
            if let Ok(bytes) = std::fs::read(path) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        false
    })
}

/// Draws `bars` as a `width` x `height` RGB image; returns the pixels and
/// whether labels were drawn.
pub fn render(bars: &[Bar], title: &str, width: u32, height: u32) -> Result<(Vec<u8>, bool)> {
    let text = fonts_available();
    let mut buf = vec![255u8; (width * height * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
        let (left, right, top, bottom) = (60i32, 20i32, 80i32, 90i32);
        let plot_w = width as i32 - left - right;
        let plot_h = height as i32 - top - bottom;
        // The y axis runs to 4x etcd (ratios above are clipped and labelled).
        let max_ratio = bars
            .iter()
            .flat_map(|b| [b.main_ratio, b.p99_ratio])
            .flatten()
            .fold(1.0f64, f64::max)
            .clamp(1.25, 4.0);
        let y_of = |r: f64| top + plot_h - ((r.min(max_ratio) / max_ratio) * plot_h as f64) as i32;
        let err = |e: DrawingAreaErrorKind<_>| anyhow!("{e}");

        // Grid lines at every 0.5x, the 1.0 line (etcd) darker.
        let mut g = 0.5;
        while g <= max_ratio + 1e-9 {
            let y = y_of(g);
            let color = if (g - 1.0).abs() < 1e-9 {
                BLACK.mix(0.8)
            } else {
                BLACK.mix(0.15)
            };
            root.draw(&PathElement::new(
                vec![(left, y), (left + plot_w, y)],
                color.stroke_width(1),
            ))
            .map_err(err)?;
            if text {
                root.draw(&Text::new(
                    format!("{g:.1}x"),
                    (8, y - 7),
                    ("sans-serif", 13).into_font(),
                ))
                .map_err(err)?;
            }
            g += 0.5;
        }
        root.draw(&PathElement::new(
            vec![(left, top), (left, top + plot_h)],
            BLACK.stroke_width(1),
        ))
        .map_err(err)?;

        let n = bars.len().max(1) as i32;
        let group = plot_w / n;
        let bar_w = (group / 3).max(2);
        let colors = [RGBColor(66, 133, 244), RGBColor(234, 134, 0)];
        for (i, b) in bars.iter().enumerate() {
            let x0 = left + group * i as i32 + (group - 2 * bar_w) / 2;
            for (j, r) in [b.main_ratio, b.p99_ratio].into_iter().enumerate() {
                let x = x0 + j as i32 * bar_w;
                match r {
                    Some(r) => {
                        let y = y_of(r);
                        root.draw(&Rectangle::new(
                            [(x, y), (x + bar_w - 2, top + plot_h)],
                            colors[j].filled(),
                        ))
                        .map_err(err)?;
                        if text {
                            root.draw(&Text::new(
                                format!("{r:.2}"),
                                (x, y - 15),
                                ("sans-serif", 11).into_font(),
                            ))
                            .map_err(err)?;
                        }
                    }
                    None if text => {
                        root.draw(&Text::new(
                            "n/a",
                            (x, top + plot_h - 15),
                            ("sans-serif", 11).into_font(),
                        ))
                        .map_err(err)?;
                    }
                    None => {}
                }
            }
            if text {
                let style = ("sans-serif", 12)
                    .into_font()
                    .transform(FontTransform::Rotate90);
                root.draw(&Text::new(
                    b.label.clone(),
                    (x0 + bar_w - 6, top + plot_h + 6),
                    style,
                ))
                .map_err(err)?;
            }
        }
        if text {
            root.draw(&Text::new(
                title.to_string(),
                (left, 12),
                ("sans-serif", 18).into_font(),
            ))
            .map_err(err)?;
            let legend = [
                (
                    colors[0],
                    "k3rs / etcd, main figure (throughput; for latency workloads etcd / k3rs)",
                ),
                (
                    colors[1],
                    "etcd p99 / k3rs p99 (above 1: k3rs's tail is shorter)",
                ),
            ];
            for (k, (c, l)) in legend.iter().enumerate() {
                let (x, y) = (left + 10, 36 + k as i32 * 16);
                root.draw(&Rectangle::new([(x, y + 2), (x + 10, y + 12)], c.filled()))
                    .map_err(err)?;
                root.draw(&Text::new(
                    l.to_string(),
                    (x + 14, y),
                    ("sans-serif", 11).into_font(),
                ))
                .map_err(err)?;
            }
        }
        root.present().map_err(|e| anyhow!("{e}"))?;
    }
    Ok((buf, text))
}

/// Encodes RGB pixels as a PNG file.
pub fn write_png(path: &Path, rgb: &[u8], width: u32, height: u32) -> Result<()> {
    let file =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), width, height);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut w = enc.write_header()?;
    w.write_image_data(rgb)?;
    w.finish()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_and_encodes() {
        let bars = vec![
            Bar {
                label: "put-1".into(),
                main_ratio: Some(1.5),
                p99_ratio: Some(0.8),
            },
            Bar {
                label: "watch-latency".into(),
                main_ratio: None,
                p99_ratio: Some(9.0),
            },
        ];
        let (rgb, _) = render(&bars, "test", 400, 300).unwrap();
        assert_eq!(rgb.len(), 400 * 300 * 3);
        assert!(rgb.iter().any(|&b| b != 255), "something was drawn");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.png");
        write_png(&path, &rgb, 400, 300).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    }
}
