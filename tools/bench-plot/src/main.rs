//! Draws the PNG plots of docs/benchmarks.md.
//!
//! `bench-plot RESULTS.json OUTDIR` reads the `plots` array that `ci/bench`
//! writes into docs/benchmarks.json and renders each entry to
//! `OUTDIR/<file>`. An entry is either
//!
//! ```json
//! {"file": "x.png", "kind": "lines" | "bars", "title": "...",
//!  "x_label": "...", "y_label": "...", "categories": ["1", "4", "16"],
//!  "series": [{"name": "...", "values": [1.0, null, 2.0]}],
//!  "hline": {"value": 1.05, "label": "target"}}
//! ```
//!
//! The x axis is categorical in both kinds (lines join the points of a
//! series across categories; bars are grouped per category); `null` values
//! are skipped. Text uses a TrueType font read at run time (DejaVu Sans from
//! Debian's fonts-dejavu-core, or `$BENCH_PLOT_FONT`), so no system font
//! library is linked.

#![forbid(unsafe_code)]

use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};
use serde_json::Value;
use std::error::Error;
use std::path::Path;

type Res<T> = Result<T, Box<dyn Error>>;

const FONT_CANDIDATES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

const PALETTE: &[RGBColor] = &[
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
    RGBColor(0xe3, 0x77, 0xc2),
    RGBColor(0x7f, 0x7f, 0x7f),
];

struct Series {
    name: String,
    values: Vec<Option<f64>>,
}

struct Plot {
    file: String,
    kind: String,
    title: String,
    x_label: String,
    y_label: String,
    categories: Vec<String>,
    series: Vec<Series>,
    hline: Option<(f64, String)>,
}

fn text(v: &Value, key: &str) -> String {
    v.get(key).and_then(Value::as_str).unwrap_or("").to_string()
}

fn parse(v: &Value) -> Res<Plot> {
    let file = text(v, "file");
    if file.is_empty() || file.contains('/') {
        return Err(format!("plot without a plain file name: {v}").into());
    }
    let categories = v
        .get("categories")
        .and_then(Value::as_array)
        .ok_or("plot without categories")?
        .iter()
        .map(|c| match c {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .collect();
    let series = v
        .get("series")
        .and_then(Value::as_array)
        .ok_or("plot without series")?
        .iter()
        .map(|s| Series {
            name: text(s, "name"),
            values: s
                .get("values")
                .and_then(Value::as_array)
                .map(|a| a.iter().map(Value::as_f64).collect())
                .unwrap_or_default(),
        })
        .collect();
    let hline = v
        .get("hline")
        .and_then(|h| Some((h.get("value")?.as_f64()?, text(h, "label"))));
    Ok(Plot {
        file,
        kind: text(v, "kind"),
        title: text(v, "title"),
        x_label: text(v, "x_label"),
        y_label: text(v, "y_label"),
        categories,
        series,
        hline,
    })
}

fn draw(p: &Plot, out: &Path) -> Res<()> {
    let path = out.join(&p.file);
    let root = BitMapBackend::new(&path, (900, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    let n = p.categories.len().max(1);
    let mut y_max = p
        .series
        .iter()
        .flat_map(|s| s.values.iter().flatten())
        .fold(0.0f64, |a, &b| a.max(b));
    if let Some((v, _)) = &p.hline {
        y_max = y_max.max(*v);
    }
    if y_max <= 0.0 {
        y_max = 1.0;
    }
    let mut chart = ChartBuilder::on(&root)
        .caption(&p.title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(48)
        .y_label_area_size(72)
        .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), 0.0f64..y_max * 1.15)?;
    let cats = p.categories.clone();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n)
        .x_label_formatter(&move |x: &f64| {
            let i = x.round();
            if (x - i).abs() < 0.01 && i >= 0.0 {
                cats.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .x_desc(p.x_label.as_str())
        .y_desc(p.y_label.as_str())
        .label_style(("sans-serif", 15))
        .draw()?;

    let groups = p.series.len().max(1) as f64;
    for (k, s) in p.series.iter().enumerate() {
        let color = PALETTE[k % PALETTE.len()];
        let points: Vec<(f64, f64)> = s
            .values
            .iter()
            .enumerate()
            .filter_map(|(i, v)| v.map(|v| (i as f64, v)))
            .collect();
        let legend = s.name.clone();
        if p.kind == "bars" {
            let width = 0.8 / groups;
            let left = -0.4 + width * k as f64;
            chart
                .draw_series(points.iter().map(|&(x, y)| {
                    Rectangle::new(
                        [(x + left, 0.0), (x + left + width * 0.9, y)],
                        color.filled(),
                    )
                }))?
                .label(legend)
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled())
                });
        } else {
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
                .label(legend)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
                });
            chart.draw_series(points.iter().map(|&pt| Circle::new(pt, 4, color.filled())))?;
        }
    }
    if let Some((v, label)) = &p.hline {
        let dashed = BLACK.mix(0.6);
        chart
            .draw_series(LineSeries::new(
                vec![(-0.5, *v), (n as f64 - 0.5, *v)],
                dashed.stroke_width(1),
            ))?
            .label(label.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 16, y)], dashed.stroke_width(1))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .label_font(("sans-serif", 14))
        .draw()?;
    root.present()?;
    Ok(())
}

fn load_font() -> Res<()> {
    let path = std::env::var("BENCH_PLOT_FONT")
        .ok()
        .or_else(|| {
            FONT_CANDIDATES
                .iter()
                .find(|p| Path::new(p).exists())
                .map(|p| p.to_string())
        })
        .ok_or("no TrueType font found (install fonts-dejavu-core or set BENCH_PLOT_FONT)")?;
    let bytes: &'static [u8] = Box::leak(std::fs::read(&path)?.into_boxed_slice());
    register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| format!("{path}: not a usable font"))?;
    Ok(())
}

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        return Err("usage: bench-plot RESULTS.json OUTDIR".into());
    }
    load_font()?;
    let json: Value = serde_json::from_str(&std::fs::read_to_string(&args[1])?)?;
    let out = Path::new(&args[2]);
    std::fs::create_dir_all(out)?;
    for spec in json
        .get("plots")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let plot = parse(spec)?;
        draw(&plot, out).map_err(|e| format!("{}: {e}", plot.file))?;
        println!("{}", out.join(&plot.file).display());
    }
    Ok(())
}
