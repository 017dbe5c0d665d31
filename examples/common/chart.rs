//! Bar charts as PNG files, for the notebook's last cell (`plt.bar` with labelled bars).
//!
//! Text is drawn with a TrueType font read at run time (no system font library needed):
//! `--font`, `$FLUMEN_FONT`, or the first of the usual DejaVu/Liberation paths that exists
//! (Debian: `apt-get install fonts-dejavu-core`). DejaVu Sans covers the notebook's Cyrillic
//! title.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::{FontStyle, register_font};

/// The environment variable naming the chart font.
pub const FONT_ENV: &str = "FLUMEN_FONT";

/// Where fonts usually live; the first that exists is used.
const FONT_CANDIDATES: [&str; 5] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/Library/Fonts/Arial Unicode.ttf",
];

/// A bar chart: one bar per `(label, value)`, each labelled with its value.
#[derive(Debug, Clone)]
pub struct BarChart {
    /// Title above the plot.
    pub title: String,
    /// X axis title.
    pub x_label: String,
    /// Y axis title.
    pub y_label: String,
    /// Bars, left to right.
    pub bars: Vec<(String, i64)>,
}

/// The font to draw with: `explicit`, else `$FLUMEN_FONT`, else a usual system path.
pub fn find_font(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(path) = explicit {
        return Ok(path.to_path_buf());
    }
    if let Some(path) = std::env::var_os(FONT_ENV) {
        return Ok(PathBuf::from(path));
    }
    FONT_CANDIDATES
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .with_context(|| {
            format!(
                "no TrueType font found (looked at {}); install one (Debian: apt-get install fonts-dejavu-core) or pass --font / set {FONT_ENV}",
                FONT_CANDIDATES.join(", ")
            )
        })
}

impl BarChart {
    /// Draws the chart to a `width` × `height` PNG at `out`, with the font at `font`.
    pub fn render_png(&self, out: &Path, font: &Path, size: (u32, u32)) -> anyhow::Result<()> {
        if self.bars.is_empty() {
            bail!("nothing to draw: the chart has no bars");
        }
        let bytes =
            std::fs::read(font).with_context(|| format!("reading the font {}", font.display()))?;
        // plotters keeps registered fonts for the life of the program.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        register_font("sans-serif", FontStyle::Normal, bytes)
            .map_err(|_| anyhow::anyhow!("{} is not a TrueType font", font.display()))?;

        let root = BitMapBackend::new(out, size).into_drawing_area();
        root.fill(&WHITE)?;
        let max = self.bars.iter().map(|(_, v)| *v).max().unwrap_or(0).max(1);
        let last = self.bars.len() as i32 - 1;
        let mut chart = ChartBuilder::on(&root)
            .caption(&self.title, ("sans-serif", 20))
            .margin(20)
            .x_label_area_size(50)
            .y_label_area_size(70)
            .build_cartesian_2d((0..last).into_segmented(), 0..(max + max / 10 + 1))?;
        let labels: Vec<String> = self.bars.iter().map(|(l, _)| l.clone()).collect();
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_desc(&self.x_label)
            .y_desc(&self.y_label)
            .x_labels(self.bars.len())
            .x_label_formatter(&|x| match x {
                SegmentValue::CenterOf(i) => labels.get(*i as usize).cloned().unwrap_or_default(),
                _ => String::new(),
            })
            .axis_desc_style(("sans-serif", 16))
            .label_style(("sans-serif", 14))
            .draw()?;
        let bar_color = RGBColor(31, 119, 180); // matplotlib's default blue
        chart.draw_series(self.bars.iter().enumerate().map(|(i, (_, v))| {
            let i = i as i32;
            let mut bar = Rectangle::new(
                [
                    (SegmentValue::Exact(i), 0),
                    (SegmentValue::Exact(i + 1), *v),
                ],
                bar_color.filled(),
            );
            bar.set_margin(0, 0, 40, 40);
            bar
        }))?;
        let value_style = ("sans-serif", 16)
            .into_font()
            .color(&BLACK)
            .pos(Pos::new(HPos::Center, VPos::Bottom));
        chart.draw_series(self.bars.iter().enumerate().map(|(i, (_, v))| {
            Text::new(
                v.to_string(),
                (SegmentValue::CenterOf(i as i32), *v + max / 100 + 1),
                value_style.clone(),
            )
        }))?;
        root.present()
            .with_context(|| format!("writing {}", out.display()))?;
        Ok(())
    }
}
