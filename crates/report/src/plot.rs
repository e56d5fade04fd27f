//! `accuracy.svg`: accuracy and loss against depth (a run), or mean accuracy with its
//! range over runs (a sweep), drawn with plotters.

use crate::summary::{DepthRow, Summary, TUTORIAL_TEST_ACCURACY, TUTORIAL_TEST_LOSS};
use crate::sweep::SweepSummary;
use anyhow::{anyhow, Result};
use plotters::prelude::*;

/// A line: name, points, colour, and a band `(x, low, high)` around it (empty: none).
struct Series {
    name: String,
    points: Vec<(f64, f64)>,
    color: RGBColor,
    band: Vec<(f64, f64, f64)>,
}

impl Series {
    fn line(name: impl Into<String>, points: Vec<(f64, f64)>, color: RGBColor) -> Self {
        Self { name: name.into(), points, color, band: Vec::new() }
    }
}

const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// The x axis of an MLP's plots.
const DEPTH_AXIS: &str = "depth (hidden layers)";

fn draw(
    area: &DrawingArea<SVGBackend, plotters::coord::Shift>,
    title: &str,
    y_label: &str,
    series: &[Series],
    max_depth: usize,
    x_label: &str,
    legend: SeriesLabelPosition,
) -> Result<()> {
    let err = |e: &dyn std::fmt::Display| anyhow!("cannot draw the plot: {e}");
    let ys = series.iter().flat_map(|s| s.points.iter().map(|p| p.1).chain(s.band.iter().flat_map(|b| [b.1, b.2])));
    let (lo, hi) = ys.fold((f64::MAX, f64::MIN), |(lo, hi), y| (lo.min(y), hi.max(y)));
    let pad = ((hi - lo) * 0.1).max(0.01);
    // Room above the data for the legend (drawn in an upper corner): a line per series.
    let top = pad + (hi - lo + 2.0 * pad) * 0.08 * series.len() as f64;
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.5f64..max_depth as f64 + 0.5, (lo - pad)..(hi + top))
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .x_labels(max_depth.min(20))
        .x_label_formatter(&|x| format!("{}", x.round() as i64))
        .draw()
        .map_err(|e| err(&e))?;
    for s in series {
        let c = s.color;
        if s.band.len() > 1 {
            let outline: Vec<(f64, f64)> =
                s.band.iter().map(|b| (b.0, b.2)).chain(s.band.iter().rev().map(|b| (b.0, b.1))).collect();
            chart.draw_series(std::iter::once(Polygon::new(outline, c.mix(0.18).filled()))).map_err(|e| err(&e))?;
        }
        chart
            .draw_series(LineSeries::new(s.points.iter().copied(), c.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(s.name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        chart.draw_series(s.points.iter().map(|&p| Circle::new(p, 3, c.filled()))).map_err(|e| err(&e))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(legend)
        .draw()
        .map_err(|e| err(&e))?;
    Ok(())
}

pub(crate) fn accuracy_svg(s: &Summary) -> Result<String> {
    let mut svg = String::new();
    {
        // A third panel shows the reconstruction loss of autoencoder-pretrained depths.
        let panels = if s.has_reconstruction() { 3 } else { 2 };
        let root = SVGBackend::with_string(&mut svg, (550 * panels, 450)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow!("cannot draw the plot: {e}"))?;
        let (left, rest) = root.split_horizontally(550);
        let (right, third) = rest.split_horizontally(550);
        let pts = |f: &dyn Fn(&DepthRow) -> Option<f64>| -> Vec<(f64, f64)> {
            s.depths.iter().filter_map(|r| f(r).map(|v| (r.depth as f64, v))).collect()
        };
        let split = s.depths.iter().find_map(|r| r.eval_split.clone()).unwrap_or_else(|| "test".into());
        // The x-axis runs to the deepest depth (a run continued with --from starts above 1).
        let n = s.depths.iter().map(|r| r.depth).max().unwrap_or(1);
        // With fine-tuned or baseline models beside them, the greedy lines say so.
        let g = if s.has_other_stages() { "greedy " } else { "" };
        let mut acc: Vec<Series> = vec![
            Series::line(format!("{g}validation"), pts(&|r| Some(r.val_accuracy)), PALETTE[0]),
            Series::line(format!("{g}{split}"), pts(&|r| r.eval_accuracy), PALETTE[1]),
        ];
        let mut loss: Vec<Series> = vec![
            Series::line(format!("{g}validation"), pts(&|r| Some(r.val_loss)), PALETTE[0]),
            Series::line(format!("{g}{split}"), pts(&|r| r.eval_loss), PALETTE[1]),
        ];
        let rows_pts = |rows: &[DepthRow], f: &dyn Fn(&DepthRow) -> Option<f64>| -> Vec<(f64, f64)> {
            rows.iter().filter_map(|r| f(r).map(|v| (r.depth as f64, v))).collect()
        };
        for (name, rows, color) in [
            ("fine-tuned", &s.finetune, PALETTE[2]),
            ("from scratch", &s.baseline, PALETTE[3]),
            ("autoencoder probe", &s.autoencoder, PALETTE[4]),
            ("autoencoder fine-tuned", &s.autoencoder_finetune, PALETTE[5]),
        ] {
            acc.push(Series::line(format!("{name} (validation)"), rows_pts(rows, &|r| Some(r.val_accuracy)), color));
            loss.push(Series::line(format!("{name} (validation)"), rows_pts(rows, &|r| Some(r.val_loss)), color));
        }
        let n = layerwise_core::run::Phase::ALL
            .iter()
            .flat_map(|&st| s.rows(st).iter().map(|r| r.depth))
            .max()
            .unwrap_or(1)
            .max(n);
        let mut recon = Vec::new();
        for (name, rows) in [("", &s.depths), ("autoencoder loop ", &s.autoencoder)] {
            recon.push(Series::line(format!("{name}train"), rows_pts(rows, &|r| r.reconstruction_loss), PALETTE[4]));
            recon.push(Series::line(
                format!("{name}validation"),
                rows_pts(rows, &|r| r.val_reconstruction_loss),
                PALETTE[5],
            ));
        }
        recon.retain(|s| !s.points.is_empty());
        if s.compares_with_tutorial() {
            let tut = |v: &[f64]| v.iter().take(n).enumerate().map(|(i, &a)| (i as f64 + 1.0, a)).collect();
            let grey = RGBColor(127, 127, 127);
            acc.push(Series::line("Keras tutorial (test)", tut(&TUTORIAL_TEST_ACCURACY), grey));
            loss.push(Series::line("Keras tutorial (test)", tut(&TUTORIAL_TEST_LOSS), grey));
        }
        acc.retain(|s| !s.points.is_empty());
        loss.retain(|s| !s.points.is_empty());
        let (x, word) = if s.is_cnn() { ("stage (conv blocks)", "stage") } else { (DEPTH_AXIS, "depth") };
        draw(&left, &format!("Accuracy by {word}"), "accuracy", &acc, n, x, SeriesLabelPosition::UpperRight)?;
        draw(&right, &format!("Loss by {word}"), "cross-entropy loss", &loss, n, x, SeriesLabelPosition::UpperLeft)?;
        if panels == 3 {
            let title = "Reconstruction by depth";
            draw(&third, title, "mean squared error", &recon, n, x, SeriesLabelPosition::UpperRight)?;
        }
        root.present().map_err(|e| anyhow!("cannot draw the plot: {e}"))?;
    }
    Ok(svg)
}

/// A sweep's plot: per pipeline, mean validation and evaluation accuracy by depth, each
/// with a band from the minimum to the maximum over the runs.
pub(crate) fn sweep_svg(s: &SweepSummary) -> Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (800, 480)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow!("cannot draw the plot: {e}"))?;
        let max_depth = s.groups.iter().flat_map(|g| g.depths.iter().map(|d| d.depth)).max().unwrap_or(1);
        let mut series = Vec::new();
        for (i, g) in s.groups.iter().enumerate() {
            let prefix = if s.groups.len() > 1 { format!("{}: ", g.pipeline) } else { String::new() };
            let runs = g.runs.len();
            let val: Vec<_> = g.depths.iter().map(|d| (d.depth as f64, &d.val_accuracy)).collect();
            let eval: Vec<_> =
                g.depths.iter().filter_map(|d| Some((d.depth as f64, d.eval_accuracy.as_ref()?))).collect();
            for (k, (name, stats)) in [("validation", val), (g.eval_split.as_str(), eval)].into_iter().enumerate() {
                series.push(Series {
                    name: format!("{prefix}{name} (mean, range of {runs} runs)"),
                    points: stats.iter().map(|(x, st)| (*x, st.mean)).collect(),
                    color: PALETTE[(2 * i + k) % PALETTE.len()],
                    band: stats.iter().map(|(x, st)| (*x, st.min, st.max)).collect(),
                });
            }
        }
        if s.groups.iter().any(|g| g.reference.as_deref() == Some("keras-tutorial")) {
            let points = TUTORIAL_TEST_ACCURACY.iter().take(max_depth).enumerate().map(|(i, &a)| (i as f64 + 1.0, a));
            series.push(Series::line("Keras tutorial (test)", points.collect(), RGBColor(127, 127, 127)));
        }
        series.retain(|s| !s.points.is_empty());
        let legend = SeriesLabelPosition::LowerRight;
        draw(&root, "Accuracy by depth over runs", "accuracy", &series, max_depth, DEPTH_AXIS, legend)?;
        root.present().map_err(|e| anyhow!("cannot draw the plot: {e}"))?;
    }
    Ok(svg)
}
