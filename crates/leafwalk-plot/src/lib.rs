//! Figures for leafwalk: grids of images and of signed directions in image space, and line
//! charts.
//!
//! This crate owns every PNG leafwalk draws, so they share one look: DejaVu Sans (embedded,
//! so no system fonts are needed), a blue–white–red map for signed directions (blue negative,
//! white zero, red positive, each tile scaled to its own largest magnitude), and atomic writes.
//! Pixels are filled directly into an RGB buffer; plotters draws the text and the charts.
#![warn(missing_docs)]

use std::path::Path;
use std::sync::Once;

use plotters::prelude::*;
use plotters::style::FontStyle;

/// What can go wrong while drawing a figure or writing it out; every message is one line naming the file.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// Drawing or encoding the figure failed: plotters could not draw text or lines, or the PNG or GIF
    /// encoder refused the pixels (e.g. GIF frames of different sizes). Nothing has been written.
    #[error("{path}: cannot draw the figure: {msg}")]
    Draw {
        /// The figure file that was to be written, as displayed in the message.
        path: String,
        /// The drawing library's or encoder's own message.
        msg: String,
    },
    /// Writing the encoded file failed: an I/O error of the atomic write, or a path that names no file. Any
    /// earlier file at that path is left as it was.
    #[error(transparent)]
    Data(#[from] leafwalk_data::DataError),
}

/// Results of this crate's drawing functions.
pub type Result<T> = std::result::Result<T, PlotError>;

const FONT: &[u8] = include_bytes!("../../../assets/fonts/DejaVuSans.ttf");
const FAMILY: &str = "sans-serif";

fn register_font() {
    static ONCE: Once = Once::new();
    // The embedded font is a valid TTF: registration cannot fail at run time.
    ONCE.call_once(|| {
        let _ = plotters::style::register_font(FAMILY, FontStyle::Normal, FONT);
    });
}

fn draw_error(path: &Path, e: impl std::fmt::Display) -> PlotError {
    PlotError::Draw { path: path.display().to_string(), msg: e.to_string() }
}

/// How a tile's values become colours.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TileKind {
    /// Pixels in [0, 1] (gray or RGB).
    Image,
    /// A direction: blue–white–red scaled to its largest magnitude (RGB directions show each
    /// channel around mid-gray instead).
    Signed,
}

/// One cell of a grid: CHW values and a caption drawn under it.
pub struct Tile<'a> {
    /// `channels * height * width` values, channels first, borrowed from the caller; values missing from a
    /// short slice are drawn as 0.
    pub values: &'a [f32],
    /// 3: the values are drawn as RGB (a signed direction per channel around mid-gray); any other count: the
    /// first channel alone.
    pub channels: usize,
    /// Rows of values; each is drawn `scale` screen pixels tall.
    pub height: usize,
    /// Columns of values; each is drawn `scale` screen pixels wide.
    pub width: usize,
    /// Text drawn on one line under the tile, neither wrapped nor clipped (keep it to a cell's width).
    pub caption: String,
    /// Whether the values are pixels or a signed direction.
    pub kind: TileKind,
}

impl<'a> Tile<'a> {
    /// A tile of an image (or direction) of `shape`.
    pub fn new(values: &'a [f32], shape: leafwalk_data::ImageShape, caption: String, kind: TileKind) -> Self {
        Tile { values, channels: shape.channels, height: shape.height, width: shape.width, caption, kind }
    }
}

const CAPTION_HEIGHT: u32 = 18;
const GAP: u32 = 6;

/// The RGB colour of every pixel of a tile.
fn tile_colours(tile: &Tile) -> Vec<[u8; 3]> {
    let plane = tile.height * tile.width;
    let at = |c: usize, p: usize| tile.values.get(c * plane + p).copied().unwrap_or(0.0);
    let to_byte = |v: f32| (v.clamp(0.0, 1.0) * 255.0).round() as u8;
    let max_abs = tile.values.iter().fold(0f32, |m, v| m.max(v.abs())).max(f32::MIN_POSITIVE);
    (0..plane)
        .map(|p| match (tile.kind, tile.channels) {
            (TileKind::Image, 3) => [to_byte(at(0, p)), to_byte(at(1, p)), to_byte(at(2, p))],
            (TileKind::Image, _) => [to_byte(at(0, p)); 3],
            (TileKind::Signed, 3) => {
                let s = |c| to_byte(0.5 + 0.5 * at(c, p) / max_abs);
                [s(0), s(1), s(2)]
            }
            (TileKind::Signed, _) => {
                let v = at(0, p) / max_abs;
                let fade = to_byte(1.0 - v.abs());
                if v >= 0.0 {
                    [255, fade, fade]
                } else {
                    [fade, fade, 255]
                }
            }
        })
        .collect()
}

/// Draws `tiles` in a grid of `columns`, each pixel as a `scale`×`scale` block, with an
/// optional title line on top, and writes a PNG atomically.
pub fn tile_grid(path: &Path, title: Option<&str>, tiles: &[Tile], columns: usize, scale: u32) -> Result<()> {
    let image = render_tiles(title, tiles, columns, scale).map_err(|e| draw_error(path, e))?;
    write_png(path, image.width(), image.height(), image.into_raw())
}

/// Writes `frames` (all the same size) as an endlessly looping GIF, atomically.
pub fn write_gif(path: &Path, frames: Vec<image::RgbImage>, delay_ms: u32) -> Result<()> {
    use image::codecs::gif::{GifEncoder, Repeat};
    let mut bytes = Vec::new();
    {
        let mut encoder = GifEncoder::new_with_speed(&mut bytes, 10);
        encoder.set_repeat(Repeat::Infinite).map_err(|e| draw_error(path, e))?;
        let delay = image::Delay::from_numer_denom_ms(delay_ms, 1);
        for frame in frames {
            let rgba = image::DynamicImage::ImageRgb8(frame).into_rgba8();
            encoder.encode_frame(image::Frame::from_parts(rgba, 0, 0, delay)).map_err(|e| draw_error(path, e))?;
        }
    }
    leafwalk_data::write_bytes_atomic(path, &bytes)?;
    Ok(())
}

/// The picture [`tile_grid`] writes, in memory (e.g. one GIF frame).
pub fn render_tiles(
    title: Option<&str>,
    tiles: &[Tile],
    columns: usize,
    scale: u32,
) -> std::result::Result<image::RgbImage, String> {
    register_font();
    let columns = columns.clamp(1, tiles.len().max(1));
    let rows = tiles.len().div_ceil(columns);
    let cell_w = tiles.iter().map(|t| t.width as u32 * scale).max().unwrap_or(1).max(60);
    let cell_h = tiles.iter().map(|t| t.height as u32 * scale).max().unwrap_or(1) + CAPTION_HEIGHT;
    let top = if title.is_some() { 24 } else { 0 };
    let width = columns as u32 * (cell_w + GAP) + GAP;
    let height = top + rows as u32 * (cell_h + GAP) + GAP;
    let mut buffer = vec![255u8; (width * height * 3) as usize];
    for (index, tile) in tiles.iter().enumerate() {
        let x0 = GAP + (index % columns) as u32 * (cell_w + GAP);
        let y0 = top + GAP + (index / columns) as u32 * (cell_h + GAP);
        for (p, colour) in tile_colours(tile).into_iter().enumerate() {
            let (ty, tx) = ((p / tile.width) as u32, (p % tile.width) as u32);
            for dy in 0..scale {
                for dx in 0..scale {
                    let offset = (((y0 + ty * scale + dy) * width + x0 + tx * scale + dx) * 3) as usize;
                    buffer[offset..offset + 3].copy_from_slice(&colour);
                }
            }
        }
    }
    {
        let root = BitMapBackend::with_buffer(&mut buffer, (width, height)).into_drawing_area();
        let style = TextStyle::from((FAMILY, 13).into_font()).color(&BLACK);
        if let Some(title) = title {
            root.draw_text(title, &TextStyle::from((FAMILY, 16).into_font()).color(&BLACK), (GAP as i32, 4))
                .map_err(|e| e.to_string())?;
        }
        for (index, tile) in tiles.iter().enumerate() {
            let x0 = GAP + (index % columns) as u32 * (cell_w + GAP);
            let y0 = top + GAP + (index / columns) as u32 * (cell_h + GAP) + cell_h - CAPTION_HEIGHT + 3;
            root.draw_text(&tile.caption, &style, (x0 as i32, y0 as i32)).map_err(|e| e.to_string())?;
        }
        root.present().map_err(|e| e.to_string())?;
    }
    image::RgbImage::from_raw(width, height, buffer).ok_or_else(|| "buffer size does not match the figure".to_string())
}

/// A named line of (x, y) points.
pub struct Series {
    /// The line's name in the chart's legend.
    pub label: String,
    /// `(x, y)` in data units, joined in the given order (sort by x first for a function plot). On the primary
    /// axis, points whose y is not finite (or, on a log axis, not positive) are left out.
    pub points: Vec<(f64, f64)>,
}

/// A line chart; `secondary` series use a right-hand axis of their own.
pub struct LineChart {
    /// Caption drawn above the plot area.
    pub title: String,
    /// Description of the horizontal axis, with its unit if it has one (e.g. `step`).
    pub x_label: String,
    /// Description of the left-hand (primary) axis.
    pub y_label: String,
    /// Draws the primary axis on a log scale, spanning the positive y values with a factor 1.5 of margin.
    pub log_y: bool,
    /// The lines on the primary axis, coloured in palette order; the x range and the primary y range are
    /// fitted to them alone (with 5% margins on a linear axis).
    pub series: Vec<Series>,
    /// The right-hand axis's description and its lines (linear scale, coloured after the primary ones,
    /// sharing the primary x range), or `None` for a chart with one y axis.
    pub secondary: Option<(String, Vec<Series>)>,
}

const PALETTE: [RGBColor; 9] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(23, 190, 207),
    RGBColor(140, 86, 75),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
];

fn range(series: &[Series], pick: impl Fn(&(f64, f64)) -> f64, positive_only: bool) -> (f64, f64) {
    let values = series
        .iter()
        .flat_map(|s| s.points.iter().map(&pick))
        .filter(|v| v.is_finite() && (!positive_only || *v > 0.0));
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if !lo.is_finite() {
        return if positive_only { (1e-3, 1.0) } else { (0.0, 1.0) };
    }
    if positive_only {
        (lo / 1.5, hi * 1.5)
    } else if hi - lo < 1e-12 {
        (lo - 0.5, hi + 0.5)
    } else {
        let pad = 0.05 * (hi - lo);
        (lo - pad, hi + pad)
    }
}

/// Draws `chart` as a 900×540 PNG, written atomically.
pub fn line_chart(path: &Path, chart: &LineChart) -> Result<()> {
    register_font();
    let (width, height) = (900u32, 540u32);
    let mut buffer = vec![255u8; (width * height * 3) as usize];
    {
        let fail = |e: &dyn std::fmt::Display| draw_error(path, e);
        let root = BitMapBackend::with_buffer(&mut buffer, (width, height)).into_drawing_area();
        let mut all: Vec<&Series> = chart.series.iter().collect();
        if let Some((_, s)) = &chart.secondary {
            all.extend(s.iter());
        }
        let (x0, x1) = range(&chart.series, |p| p.0, false);
        let (y0, y1) = range(&chart.series, |p| p.1, chart.log_y);
        let mut builder = ChartBuilder::on(&root);
        builder
            .caption(&chart.title, (FAMILY, 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .right_y_label_area_size(if chart.secondary.is_some() { 70 } else { 0 });
        let colours = |i: usize| PALETTE[i % PALETTE.len()];
        // Mesh, primary series and legend on any chart context (plain or dual-axis): the
        // secondary axis must be attached before the mesh is drawn, or the primary labels are
        // repeated on the right.
        macro_rules! draw_primary_and_legend {
            ($ctx:expr, $secondary:expr) => {{
                $ctx.configure_mesh()
                    .x_desc(chart.x_label.as_str())
                    .y_desc(chart.y_label.as_str())
                    .x_label_formatter(&|v| tick(*v))
                    .y_label_formatter(&|v| tick(*v))
                    .label_style((FAMILY, 13))
                    .draw()
                    .map_err(|e| fail(&e))?;
                for (i, s) in chart.series.iter().enumerate() {
                    let colour = colours(i);
                    let points = s.points.iter().copied().filter(|p| p.1.is_finite() && (!chart.log_y || p.1 > 0.0));
                    $ctx.draw_series(LineSeries::new(points, colour.stroke_width(2)))
                        .map_err(|e| fail(&e))?
                        .label(s.label.as_str())
                        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(2)));
                }
                $secondary;
                $ctx.configure_series_labels()
                    .position(SeriesLabelPosition::UpperRight)
                    .background_style(WHITE.mix(0.85))
                    .border_style(BLACK)
                    .label_font((FAMILY, 13))
                    .draw()
                    .map_err(|e| fail(&e))?;
            }};
        }
        macro_rules! draw {
            ($ctx:expr) => {{
                let ctx = $ctx;
                match &chart.secondary {
                    Some((label, secondary)) => {
                        let (s0, s1) = range(secondary, |p| p.1, false);
                        let mut ctx = ctx.set_secondary_coord(x0..x1, s0..s1);
                        draw_primary_and_legend!(ctx, {
                            ctx.configure_secondary_axes()
                                .y_desc(label.as_str())
                                .y_label_formatter(&|v| tick(*v))
                                .label_style((FAMILY, 13))
                                .draw()
                                .map_err(|e| fail(&e))?;
                            for (i, s) in secondary.iter().enumerate() {
                                let colour = colours(chart.series.len() + i);
                                ctx.draw_secondary_series(LineSeries::new(
                                    s.points.iter().copied(),
                                    colour.stroke_width(2),
                                ))
                                .map_err(|e| fail(&e))?
                                .label(s.label.as_str())
                                .legend(move |(x, y)| {
                                    PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(2))
                                });
                            }
                        });
                    }
                    None => {
                        let mut ctx = ctx;
                        draw_primary_and_legend!(ctx, ());
                    }
                }
            }};
        }
        if chart.log_y {
            draw!(builder.build_cartesian_2d(x0..x1, (y0..y1).log_scale()).map_err(|e| fail(&e))?);
        } else {
            draw!(builder.build_cartesian_2d(x0..x1, y0..y1).map_err(|e| fail(&e))?);
        }
        root.present().map_err(|e| fail(&e))?;
    }
    write_png(path, width, height, buffer)
}

/// Axis tick text: plain for ordinary magnitudes, scientific for tiny or huge ones.
fn tick(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 1e4 || v.abs() < 1e-2 {
        format!("{v:.0e}")
    } else {
        let text = format!("{v:.3}");
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

fn write_png(path: &Path, width: u32, height: u32, buffer: Vec<u8>) -> Result<()> {
    let image = image::RgbImage::from_raw(width, height, buffer)
        .ok_or_else(|| draw_error(path, "buffer size does not match the figure"))?;
    let mut bytes = Vec::new();
    image.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png).map_err(|e| draw_error(path, e))?;
    leafwalk_data::write_bytes_atomic(path, &bytes)?;
    Ok(())
}
