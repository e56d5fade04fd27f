//! `accuracy.svg`: accuracy and loss against depth, drawn with plotters.

use crate::{Summary, TUTORIAL_TEST_ACCURACY, TUTORIAL_TEST_LOSS};
use anyhow::{anyhow, Result};
use plotters::prelude::*;

type Series = (String, Vec<(f64, f64)>, RGBColor);

fn draw(
    area: &DrawingArea<SVGBackend, plotters::coord::Shift>,
    title: &str,
    y_label: &str,
    series: &[Series],
    max_depth: usize,
    legend: SeriesLabelPosition,
) -> Result<()> {
    let err = |e: &dyn std::fmt::Display| anyhow!("cannot draw the plot: {e}");
    let ys = series.iter().flat_map(|s| s.1.iter().map(|p| p.1));
    let (lo, hi) = ys.fold((f64::MAX, f64::MIN), |(lo, hi), y| (lo.min(y), hi.max(y)));
    let pad = ((hi - lo) * 0.1).max(0.01);
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.5f64..max_depth as f64 + 0.5, (lo - pad)..(hi + pad))
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("depth (hidden layers)")
        .y_desc(y_label)
        .x_labels(max_depth.min(20))
        .x_label_formatter(&|x| format!("{}", x.round() as i64))
        .draw()
        .map_err(|e| err(&e))?;
    for (name, points, color) in series {
        let c = *color;
        chart
            .draw_series(LineSeries::new(points.iter().copied(), c.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, c.filled()))).map_err(|e| err(&e))?;
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
        let root = SVGBackend::with_string(&mut svg, (1100, 450)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow!("cannot draw the plot: {e}"))?;
        let (left, right) = root.split_horizontally(550);
        let pts = |f: &dyn Fn(&crate::DepthRow) -> Option<f64>| -> Vec<(f64, f64)> {
            s.depths.iter().filter_map(|r| f(r).map(|v| (r.depth as f64, v))).collect()
        };
        let split = s.depths.iter().find_map(|r| r.eval_split.clone()).unwrap_or_else(|| "test".into());
        let n = s.depths.len();
        let mut acc: Vec<Series> = vec![
            ("validation".into(), pts(&|r| Some(r.val_accuracy)), RGBColor(31, 119, 180)),
            (split.clone(), pts(&|r| r.eval_accuracy), RGBColor(214, 39, 40)),
        ];
        let mut loss: Vec<Series> = vec![
            ("validation".into(), pts(&|r| Some(r.val_loss)), RGBColor(31, 119, 180)),
            (split, pts(&|r| r.eval_loss), RGBColor(214, 39, 40)),
        ];
        if s.compares_with_tutorial() {
            let tut = |v: &[f64]| v.iter().take(n).enumerate().map(|(i, &a)| (i as f64 + 1.0, a)).collect();
            acc.push(("Keras tutorial (test)".into(), tut(&TUTORIAL_TEST_ACCURACY), RGBColor(127, 127, 127)));
            loss.push(("Keras tutorial (test)".into(), tut(&TUTORIAL_TEST_LOSS), RGBColor(127, 127, 127)));
        }
        acc.retain(|s| !s.1.is_empty());
        loss.retain(|s| !s.1.is_empty());
        draw(&left, "Accuracy by depth", "accuracy", &acc, n, SeriesLabelPosition::UpperRight)?;
        draw(&right, "Loss by depth", "cross-entropy loss", &loss, n, SeriesLabelPosition::UpperLeft)?;
        root.present().map_err(|e| anyhow!("cannot draw the plot: {e}"))?;
    }
    Ok(svg)
}
