//! Single image files: reading any PNG/JPEG/GIF into a model's input shape,
//! and writing `[0, 1]` pixels back out as PNG.

use std::fmt;
use std::io::{Cursor, Write};
use std::path::Path;
use std::str::FromStr;

use image::imageops::{self, FilterType};
use image::{DynamicImage, ExtendedColorType, ImageBuffer, ImageEncoder, Luma};

use crate::atomic_file::write_atomic;
use crate::error::{DataError, Result};
use crate::registry::ImageShape;

/// ITU-R BT.601 luma weights for red, green and blue, the same weights
/// MNIST-style grayscale conversions (and PIL's `convert("L")`) use.
const LUMA_WEIGHTS: [f32; 3] = [0.299, 0.587, 0.114];

/// Whether to flip polarity (`v -> 1 - v`) after loading an image file.
///
/// MNIST and Fashion-MNIST are light strokes on a black background, while a
/// digit drawn or photographed on paper is dark on light.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Invert {
    /// Invert a single-channel image when the mean of its outermost ring of
    /// pixels is brighter than the mean of its central region (the middle
    /// half of the rows and of the columns), judged after resizing. The
    /// background of a centred digit is its border, so this flips
    /// dark-on-light drawings and leaves dataset-style images alone.
    /// Colour (3-channel) targets are never inverted automatically: a photo
    /// with a bright sky is not a negative.
    #[default]
    Auto,
    /// Always invert.
    On,
    /// Never invert.
    Off,
}

/// Parses `auto`, `on` or `off`.
impl FromStr for Invert {
    type Err = DataError;

    fn from_str(text: &str) -> Result<Self> {
        match text {
            "auto" => Ok(Invert::Auto),
            "on" => Ok(Invert::On),
            "off" => Ok(Invert::Off),
            _ => Err(DataError::Parse {
                what: "invert mode",
                text: text.to_string(),
                problem: "expected auto, on or off".to_string(),
            }),
        }
    }
}

impl fmt::Display for Invert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Invert::Auto => "auto",
            Invert::On => "on",
            Invert::Off => "off",
        })
    }
}

/// The shape an image file stores (channels: 1 for grayscale with or without alpha, 3 for
/// colour), read from its header without decoding the pixels.
pub fn image_file_shape(path: &Path) -> Result<ImageShape> {
    let reader = image::ImageReader::open(path)
        .map_err(|error| DataError::io(path, error))?
        .with_guessed_format()
        .map_err(|error| DataError::io(path, error))?;
    let decoder =
        reader.into_decoder().map_err(|error| DataError::invalid(path, format!("not a readable image: {error}")))?;
    let (width, height) = image::ImageDecoder::dimensions(&decoder);
    let channels = match image::ImageDecoder::color_type(&decoder).channel_count() {
        1 | 2 => 1,
        _ => 3,
    };
    Ok(ImageShape { channels, height: height as usize, width: width as usize })
}

/// Loads an image file as `shape`-sized CHW `f32` pixels in `[0, 1]`.
///
/// - Formats: PNG, JPEG and GIF (first frame), recognised by content, not by
///   extension.
/// - Transparency: pixels are composited over white, so ink drawn on a
///   transparent canvas reads as ink on paper (and [`Invert::Auto`] then
///   turns it into a dataset-style image).
/// - Channels: colour to one channel by ITU-R BT.601 luma
///   (`0.299 R + 0.587 G + 0.114 B`); gray to three channels by replication.
/// - Size: resampled to `shape.height x shape.width` with a triangle
///   (bilinear) filter, [`FilterType::Triangle`], whether shrinking or
///   enlarging; the aspect ratio is not preserved. An image already of the
///   target size is not resampled.
/// - Polarity: see [`Invert`].
pub fn load_image(path: &Path, shape: ImageShape, invert: Invert) -> Result<Vec<f32>> {
    let (Ok(target_width), Ok(target_height)) = (u32::try_from(shape.width), u32::try_from(shape.height)) else {
        return Err(DataError::invalid(path, format!("cannot resize to {shape}: too large")));
    };
    if shape.is_empty() {
        return Err(DataError::invalid(path, format!("cannot load into an empty {shape} shape")));
    }
    let bytes = std::fs::read(path).map_err(|error| DataError::io(path, error))?;
    let decoded = image::ImageReader::new(Cursor::new(&bytes))
        .with_guessed_format()
        .map_err(|error| DataError::io(path, error))?
        .decode()
        .map_err(|error| DataError::invalid(path, format!("empty or corrupt image: {error}")))?;
    let (width, height) = (decoded.width(), decoded.height());
    if width == 0 || height == 0 {
        return Err(DataError::invalid(path, format!("empty image ({width}x{height} pixels)")));
    }
    let planes =
        target_planes(&decoded, shape.channels).ok_or_else(|| DataError::invalid(path, unsupported_channels(shape)))?;

    let mut pixels = Vec::with_capacity(shape.len());
    for plane in planes {
        let plane: ImageBuffer<Luma<f32>, Vec<f32>> =
            ImageBuffer::from_raw(width, height, plane).expect("planes are built with width * height values");
        if (width, height) == (target_width, target_height) {
            pixels.extend(plane.into_raw());
        } else {
            let resized = imageops::resize(&plane, target_width, target_height, FilterType::Triangle);
            pixels.extend(resized.into_raw());
        }
    }
    // The triangle filter has non-negative weights and cannot overshoot, but
    // clamping keeps the [0,1] promise independent of filter details.
    for value in &mut pixels {
        *value = value.clamp(0.0, 1.0);
    }

    let flip = match invert {
        Invert::On => true,
        Invert::Off => false,
        Invert::Auto => shape.channels == 1 && border_is_brighter(&pixels, shape),
    };
    if flip {
        invert_in_place(&mut pixels);
    }
    Ok(pixels)
}

fn unsupported_channels(shape: ImageShape) -> String {
    format!("cannot convert to {shape}: only 1 (gray) or 3 (RGB) channels are supported")
}

/// The image as `channels` planes of `width * height` values in `[0, 1]`,
/// composited over white; `None` for channel counts other than 1 and 3.
fn target_planes(decoded: &DynamicImage, channels: usize) -> Option<Vec<Vec<f32>>> {
    if channels != 1 && channels != 3 {
        return None;
    }
    let has_color = decoded.color().has_color();
    let plane_len = decoded.width() as usize * decoded.height() as usize;
    let mut planes = vec![Vec::with_capacity(plane_len); channels];
    for_each_rgba(decoded, |[red, green, blue, alpha]| {
        let over_white = |value: f32| value * alpha + (1.0 - alpha);
        let rgb = [over_white(red), over_white(green), over_white(blue)];
        if channels == 3 {
            for (plane, value) in planes.iter_mut().zip(rgb) {
                plane.push(value);
            }
        } else if has_color {
            let luma = rgb.iter().zip(LUMA_WEIGHTS).map(|(v, w)| v * w).sum();
            planes[0].push(luma);
        } else {
            // Gray sources are exact as they are; the luma weights sum to one
            // only up to rounding.
            planes[0].push(rgb[0]);
        }
    });
    Some(planes)
}

/// Calls `visit` with every pixel, in row-major order, as RGBA in `[0, 1]`.
/// 8-bit images are converted as `byte / 255` exactly like
/// [`crate::Dataset::batch`], so a dataset image saved as PNG loads back to
/// identical values (the `image` crate's own float conversion differs in the
/// last bit).
fn for_each_rgba(decoded: &DynamicImage, mut visit: impl FnMut([f32; 4])) {
    use DynamicImage::*;
    match decoded {
        ImageLuma8(_) | ImageLumaA8(_) | ImageRgb8(_) | ImageRgba8(_) => {
            for pixel in decoded.to_rgba8().pixels() {
                visit(pixel.0.map(|value| f32::from(value) / 255.0));
            }
        }
        ImageLuma16(_) | ImageLumaA16(_) | ImageRgb16(_) | ImageRgba16(_) => {
            for pixel in decoded.to_rgba16().pixels() {
                visit(pixel.0.map(|value| f32::from(value) / 65535.0));
            }
        }
        _ => {
            for pixel in decoded.to_rgba32f().pixels() {
                visit(pixel.0);
            }
        }
    }
}

/// Auto-invert test: mean of the outermost ring against the mean of the
/// central half (rows and columns `[n/4, n - n/4)`), over all channels.
fn border_is_brighter(pixels: &[f32], shape: ImageShape) -> bool {
    let (height, width) = (shape.height, shape.width);
    let (mut border_sum, mut border_count) = (0.0f64, 0usize);
    let (mut center_sum, mut center_count) = (0.0f64, 0usize);
    for plane in pixels.chunks_exact(shape.plane_len()) {
        for (y, row) in plane.chunks_exact(width).enumerate() {
            for (x, &value) in row.iter().enumerate() {
                if y == 0 || x == 0 || y + 1 == height || x + 1 == width {
                    border_sum += f64::from(value);
                    border_count += 1;
                }
                if (height / 4..height - height / 4).contains(&y) && (width / 4..width - width / 4).contains(&x) {
                    center_sum += f64::from(value);
                    center_count += 1;
                }
            }
        }
    }
    border_count > 0 && center_count > 0 && border_sum / border_count as f64 > center_sum / center_count as f64
}

pub(crate) fn invert_in_place(pixels: &mut [f32]) {
    for value in pixels {
        *value = 1.0 - *value;
    }
}

/// Writes `shape`-sized CHW pixels in `[0, 1]` as an 8-bit PNG (grayscale for
/// one channel, RGB for three). Values are clamped to `[0, 1]` and rounded to
/// the nearest of 256 levels, so saving dataset pixels (`byte / 255`) and
/// loading them back is lossless. The file is written beside `path` under a
/// temporary name and renamed into place, so readers never see half an image.
pub fn save_image(path: &Path, shape: ImageShape, pixels: &[f32]) -> Result<()> {
    if pixels.len() != shape.len() {
        return Err(DataError::invalid(
            path,
            format!("cannot save {} values as a {shape} image ({} expected)", pixels.len(), shape.len()),
        ));
    }
    if shape.is_empty() {
        return Err(DataError::invalid(path, format!("cannot save an empty {shape} image")));
    }
    let color_type = match shape.channels {
        1 => ExtendedColorType::L8,
        3 => ExtendedColorType::Rgb8,
        _ => return Err(DataError::invalid(path, unsupported_channels(shape))),
    };
    // CHW planes to the interleaved HWC rows PNG stores.
    let plane_len = shape.plane_len();
    let mut interleaved = Vec::with_capacity(pixels.len());
    for position in 0..plane_len {
        for channel in 0..shape.channels {
            interleaved.push(to_byte(pixels[channel * plane_len + position]));
        }
    }
    write_atomic(path, |writer: &mut dyn Write| {
        image::codecs::png::PngEncoder::new(writer)
            .write_image(&interleaved, shape.width as u32, shape.height as u32, color_type)
            .map_err(|error| DataError::invalid(path, format!("cannot encode PNG: {error}")))
    })
}

/// NaN becomes 0 (`as` saturates NaN to zero).
fn to_byte(value: f32) -> u8 {
    (value.clamp(0.0, 1.0) * 255.0).round() as u8
}

/// The image mirrored left to right (CHW pixels of `shape`).
pub fn mirror(pixels: &[f32], shape: ImageShape) -> Vec<f32> {
    pixels.chunks_exact(shape.width).flat_map(|row| row.iter().rev().copied()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MNIST_SHAPE: ImageShape = ImageShape { channels: 1, height: 28, width: 28 };
    const CIFAR_SHAPE: ImageShape = ImageShape { channels: 3, height: 32, width: 32 };

    fn write_gray_png(path: &Path, width: u32, height: u32, pixel: impl Fn(u32, u32) -> u8) {
        image::GrayImage::from_fn(width, height, |x, y| Luma([pixel(x, y)])).save(path).unwrap();
    }

    /// A PNG with a well-formed IHDR chunk declaring `width x height`.
    fn png_with_dimensions(width: u32, height: u32) -> Vec<u8> {
        fn chunk(bytes: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
            bytes.extend_from_slice(&(data.len() as u32).to_be_bytes());
            let mut crc = flate2::Crc::new();
            crc.update(kind);
            crc.update(data);
            bytes.extend_from_slice(kind);
            bytes.extend_from_slice(data);
            bytes.extend_from_slice(&crc.sum().to_be_bytes());
        }
        let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut header = Vec::new();
        header.extend_from_slice(&width.to_be_bytes());
        header.extend_from_slice(&height.to_be_bytes());
        // 8-bit grayscale, deflate, adaptive filtering, no interlace.
        header.extend_from_slice(&[8, 0, 0, 0, 0]);
        chunk(&mut bytes, b"IHDR", &header);
        chunk(&mut bytes, b"IEND", &[]);
        bytes
    }

    #[test]
    fn invert_parses() {
        assert_eq!("auto".parse::<Invert>().unwrap(), Invert::Auto);
        assert_eq!("on".parse::<Invert>().unwrap(), Invert::On);
        assert_eq!("off".parse::<Invert>().unwrap(), Invert::Off);
        let message = "yes".parse::<Invert>().unwrap_err().to_string();
        assert_eq!(message, "invalid invert mode \"yes\": expected auto, on or off");
    }

    #[test]
    fn save_then_load_is_lossless_for_dataset_pixels() {
        let dir = tempfile::tempdir().unwrap();
        for shape in [MNIST_SHAPE, CIFAR_SHAPE] {
            let path = dir.path().join(format!("{shape}.png"));
            let pixels: Vec<f32> = (0..shape.len()).map(|i| (i % 256) as f32 / 255.0).collect();
            save_image(&path, shape, &pixels).unwrap();
            assert_eq!(load_image(&path, shape, Invert::Off).unwrap(), pixels);
        }
        // Only the final file is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[test]
    fn save_rejects_wrong_length() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.png");
        let message = save_image(&path, MNIST_SHAPE, &[0.5; 10]).unwrap_err().to_string();
        assert!(message.starts_with(&path.display().to_string()), "{message}");
        assert!(message.contains("784 expected"), "{message}");
        assert!(!path.exists());
    }

    #[test]
    fn corrupt_png_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broken.png");
        let mut bytes = png_with_dimensions(4, 4);
        bytes.truncate(20);
        std::fs::write(&path, bytes).unwrap();
        let message = load_image(&path, MNIST_SHAPE, Invert::Off).unwrap_err().to_string();
        assert!(message.starts_with(&format!("{}: empty or corrupt image", path.display())), "{message}");
        assert_eq!(message.lines().count(), 1, "{message}");

        std::fs::write(&path, b"not an image at all").unwrap();
        let message = load_image(&path, MNIST_SHAPE, Invert::Off).unwrap_err().to_string();
        assert!(message.contains("broken.png: empty or corrupt image"), "{message}");
    }

    #[test]
    fn zero_sized_png_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        for (width, height) in [(0, 0), (0, 5)] {
            let path = dir.path().join(format!("empty-{width}x{height}.png"));
            std::fs::write(&path, png_with_dimensions(width, height)).unwrap();
            let message = load_image(&path, MNIST_SHAPE, Invert::Off).unwrap_err().to_string();
            assert!(message.starts_with(&path.display().to_string()), "{message}");
            assert!(message.contains("empty"), "{message}");
        }
    }

    #[test]
    fn empty_target_shape_is_rejected() {
        let shape = ImageShape { channels: 1, height: 0, width: 28 };
        let message = load_image(Path::new("x.png"), shape, Invert::Auto).unwrap_err().to_string();
        assert_eq!(message, "x.png: cannot load into an empty 1x0x28 shape");
    }

    #[test]
    fn missing_file_names_the_file() {
        let message = load_image(Path::new("no/such.png"), MNIST_SHAPE, Invert::Off).unwrap_err().to_string();
        assert!(message.starts_with("no/such.png: "), "{message}");
    }

    /// A dark "digit" (a filled square) on a white page.
    fn paper_digit(x: u32, y: u32) -> u8 {
        if (10..18).contains(&x) && (8..20).contains(&y) {
            20
        } else {
            250
        }
    }

    #[test]
    fn auto_inverts_white_background_digit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("paper.png");
        write_gray_png(&path, 28, 28, paper_digit);
        let pixels = load_image(&path, MNIST_SHAPE, Invert::Auto).unwrap();
        assert_eq!(pixels[0], 1.0 - 250.0 / 255.0, "background is now dark");
        assert_eq!(pixels[14 * 28 + 14], 1.0 - 20.0 / 255.0, "stroke is now light");
        assert_eq!(load_image(&path, MNIST_SHAPE, Invert::On).unwrap(), pixels);
        assert_eq!(load_image(&path, MNIST_SHAPE, Invert::Off).unwrap()[0], 250.0 / 255.0);
    }

    #[test]
    fn auto_keeps_dataset_style_digit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mnist-style.png");
        write_gray_png(&path, 28, 28, |x, y| 255 - paper_digit(x, y));
        let pixels = load_image(&path, MNIST_SHAPE, Invert::Auto).unwrap();
        assert_eq!(pixels, load_image(&path, MNIST_SHAPE, Invert::Off).unwrap());
    }

    #[test]
    fn auto_never_inverts_colour_targets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sky.png");
        write_gray_png(&path, 32, 32, |_, y| if y < 4 { 255 } else { 0 });
        let pixels = load_image(&path, CIFAR_SHAPE, Invert::Auto).unwrap();
        assert_eq!(pixels, load_image(&path, CIFAR_SHAPE, Invert::Off).unwrap());
    }

    #[test]
    fn resize_56_to_28() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.png");
        // Left half white, right half black.
        write_gray_png(&path, 56, 56, |x, _| if x < 28 { 255 } else { 0 });
        let pixels = load_image(&path, MNIST_SHAPE, Invert::Off).unwrap();
        assert_eq!(pixels.len(), 784);
        for row in pixels.chunks_exact(28) {
            assert!(row[..13].iter().all(|&v| (v - 1.0).abs() < 1e-6), "{row:?}");
            assert!(row[15..].iter().all(|&v| v.abs() < 1e-6), "{row:?}");
            // The edge is blended, not aliased.
            assert!(row[13] < 1.0 && row[13] > 0.5 && row[14] > 0.0 && row[14] < 0.5, "{row:?}");
        }
    }

    #[test]
    fn colour_to_gray_uses_luma_and_gray_to_rgb_replicates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("red.png");
        image::RgbImage::from_pixel(28, 28, image::Rgb([255, 0, 0])).save(&path).unwrap();
        let pixels = load_image(&path, MNIST_SHAPE, Invert::Off).unwrap();
        assert!(pixels.iter().all(|&v| (v - 0.299).abs() < 1e-6));

        let path = dir.path().join("gray.png");
        write_gray_png(&path, 32, 32, |x, y| (x * 8 + y) as u8);
        let gray = load_image(&path, ImageShape { channels: 1, ..CIFAR_SHAPE }, Invert::Off).unwrap();
        let rgb = load_image(&path, CIFAR_SHAPE, Invert::Off).unwrap();
        assert_eq!(rgb, [gray.clone(), gray.clone(), gray].concat());
    }

    #[test]
    fn transparency_composites_over_white() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ink.png");
        // Black ink in the middle of a fully transparent canvas.
        image::RgbaImage::from_fn(28, 28, |x, y| {
            if (10..18).contains(&x) && (10..18).contains(&y) {
                image::Rgba([0, 0, 0, 255])
            } else {
                image::Rgba([0, 0, 0, 0])
            }
        })
        .save(&path)
        .unwrap();
        let pixels = load_image(&path, MNIST_SHAPE, Invert::Off).unwrap();
        assert_eq!(pixels[0], 1.0);
        assert_eq!(pixels[14 * 28 + 14], 0.0);
        let pixels = load_image(&path, MNIST_SHAPE, Invert::Auto).unwrap();
        assert_eq!((pixels[0], pixels[14 * 28 + 14]), (0.0, 1.0));
    }
}
