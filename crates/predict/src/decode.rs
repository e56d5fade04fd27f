//! One image file as a model's input: decoded with a size check before anything large is
//! allocated, converted to the model's channels and size (each conversion said), laid out
//! CHW and scaled as the input contract says.

use anyhow::{bail, Context, Result};
use image::{DynamicImage, ImageReader, Limits};
use layerwise_core::input::InputContract;
use std::path::Path;

/// The largest image file read.
pub const MAX_IMAGE_BYTES: u64 = 64 << 20;
/// The largest width or height decoded.
pub const MAX_SIDE: u32 = 16_384;
/// The most memory one decode may allocate.
const MAX_ALLOC: u64 = 512 << 20;

/// An image made ready for a model.
#[derive(Debug, Clone)]
pub struct Decoded {
    /// Its pixels, CHW, 0..=255 (after conversion and resizing).
    pub pixels: Vec<u8>,
    /// The model's input row: the pixels scaled as the contract says.
    pub input: Vec<f32>,
    /// What was done to it (conversions, resizing), for the user.
    pub notes: Vec<String>,
}

/// Decode `path` (PNG, JPEG, BMP or WebP, told by its content) for a model with
/// `contract`. An image of another size is resized (bilinear, to the exact size: the
/// aspect ratio is not kept) when `resize`, else refused.
pub fn image_input(path: &Path, contract: &InputContract, resize: bool) -> Result<Decoded> {
    let bytes = layerwise_core::fsread::read_capped(path, "image", MAX_IMAGE_BYTES)?;
    layerwise_core::imagefile::check_complete(&bytes).with_context(|| format!("{}", path.display()))?;
    let reader = ImageReader::new(std::io::Cursor::new(&bytes[..]))
        .with_guessed_format()
        .with_context(|| format!("{}: cannot read it", path.display()))?;
    let Some(format) = reader.format() else {
        bail!("{}: not an image layerwise reads (PNG, JPEG, BMP or WebP)", path.display());
    };
    let mut reader = reader;
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_ALLOC);
    reader.limits(limits);
    let img = reader.decode().map_err(|e| match e {
        image::ImageError::Limits(_) => anyhow::anyhow!(
            "{}: the {format:?} image is larger than layerwise decodes ({MAX_SIDE} pixels a side, {} MiB): {e}",
            path.display(),
            MAX_ALLOC >> 20
        ),
        other => anyhow::anyhow!("{}: cannot decode it as {format:?} (damaged or truncated?): {other}", path.display()),
    })?;
    let mut notes = Vec::new();
    let [c, h, w] = contract.shape;
    let (iw, ih) = (img.width(), img.height());
    let img = if (iw as usize, ih as usize) == (w, h) {
        img
    } else if resize {
        notes.push(format!("resized from {iw}×{ih} to {w}×{h} (bilinear; the aspect ratio is not kept)"));
        img.resize_exact(w as u32, h as u32, image::imageops::FilterType::Triangle)
    } else {
        bail!("{}: it is {iw}×{ih}, the model takes {w}×{h}: drop --no-resize to resize it", path.display());
    };
    let color = img.color();
    let hwc: Vec<u8> = match c {
        1 => {
            if color.has_color() {
                notes.push(format!("{color:?} converted to grayscale"));
            } else if color.has_alpha() {
                notes.push("alpha channel dropped".into());
            }
            DynamicImage::to_luma8(&img).into_raw()
        }
        3 => {
            if !color.has_color() {
                notes.push(format!("{color:?} converted to RGB"));
            } else if color.has_alpha() {
                notes.push(format!("{color:?} converted to RGB (alpha dropped)"));
            }
            DynamicImage::to_rgb8(&img).into_raw()
        }
        other => bail!("the model takes {other} channels: layerwise predicts for 1 (gray) or 3 (RGB)"),
    };
    if color.bits_per_pixel() / (color.channel_count() as u16) > 8 {
        notes.push(format!("{color:?} reduced to 8 bits a channel"));
    }
    // HWC (how images decode) to CHW (how the model reads them).
    let plane = h * w;
    let mut pixels = vec![0u8; c * plane];
    for (i, px) in hwc.chunks_exact(c).enumerate() {
        for (ch, &v) in px.iter().enumerate() {
            pixels[ch * plane + i] = v;
        }
    }
    let input = contract.normalize_chw(&pixels);
    Ok(Decoded { pixels, input, notes })
}

#[cfg(test)]
mod truncation_tests {
    use crate::image_input;
    use anyhow::Result;
    use layerwise_core::input::InputContract;

    fn contract() -> InputContract {
        InputContract::new([3, 32, 32], &layerwise_core::dataset::Normalization::unit(3), vec!["a".into(), "b".into()])
    }

    #[test]
    fn a_jpeg_or_png_cut_short_is_an_error_of_its_own_not_made_up_rows() -> Result<()> {
        let img =
            image::RgbImage::from_fn(32, 32, |x, y| image::Rgb([(x * 8) as u8, (y * 8) as u8, ((x + y) * 4) as u8]));
        let dir = tempfile::tempdir()?;
        for (name, format) in [("x.jpg", image::ImageFormat::Jpeg), ("x.png", image::ImageFormat::Png)] {
            let mut bytes = Vec::new();
            image::DynamicImage::ImageRgb8(img.clone()).write_to(&mut std::io::Cursor::new(&mut bytes), format)?;
            let path = dir.path().join(name);
            std::fs::write(&path, &bytes)?;
            assert_eq!(image_input(&path, &contract(), false)?.input.len(), 3072);
            // Cut to 50 % and 97 %: the JPEG decoded without an error before.
            for keep in [0.5, 0.97] {
                std::fs::write(&path, &bytes[..(bytes.len() as f64 * keep) as usize])?;
                let e = image_input(&path, &contract(), false).map(|_| ()).unwrap_err();
                let text = format!("{e:#}");
                assert!(text.contains(name) && text.contains("is cut short"), "{name} at {keep}: {text}");
            }
        }
        Ok(())
    }
}
