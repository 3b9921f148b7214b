//! Image quality against a clean reference: PSNR and SSIM (crate docs).

use crate::{MetricError, Result};

const SSIM_RADIUS: usize = 5;
const SSIM_SIGMA: f64 = 1.5;
const K1: f64 = 0.01;
const K2: f64 = 0.03;

fn check(reference: &[f32], image: &[f32], channels: usize, height: usize, width: usize) -> Result<()> {
    let len = channels * height * width;
    if len == 0 || reference.len() != len || image.len() != len {
        return Err(MetricError::ImageSizes {
            reference: reference.len(),
            image: image.len(),
            shape: format!("{channels}x{height}x{width}"),
        });
    }
    Ok(())
}

/// Peak signal-to-noise ratio in dB for values in [0, 1]: 10 log₁₀(1 / MSE); +∞ for equal
/// images.
pub fn psnr(reference: &[f32], image: &[f32]) -> Result<f64> {
    check(reference, image, 1, 1, reference.len())?;
    let mse =
        reference.iter().zip(image).map(|(a, b)| (*a as f64 - *b as f64).powi(2)).sum::<f64>() / reference.len() as f64;
    Ok(-10.0 * mse.log10())
}

/// Mean SSIM over channels of CHW images in [0, 1], with an 11×11 Gaussian window (σ 1.5) at
/// every position where it fits (images smaller than the window use their whole extent).
pub fn ssim(reference: &[f32], image: &[f32], channels: usize, height: usize, width: usize) -> Result<f64> {
    check(reference, image, channels, height, width)?;
    let side = (2 * SSIM_RADIUS + 1).min(height).min(width);
    let weights: Vec<f64> = {
        let centre = (side as f64 - 1.0) / 2.0;
        let g: Vec<f64> =
            (0..side).map(|k| (-(k as f64 - centre).powi(2) / (2.0 * SSIM_SIGMA * SSIM_SIGMA)).exp()).collect();
        let total: f64 = g.iter().sum::<f64>().powi(2);
        (0..side * side).map(|k| g[k / side] * g[k % side] / total).collect()
    };
    let (c1, c2) = (K1 * K1, K2 * K2);
    let plane = height * width;
    let (mut sum, mut count) = (0.0, 0usize);
    for channel in 0..channels {
        let (a, b) = (&reference[channel * plane..][..plane], &image[channel * plane..][..plane]);
        for top in 0..=height - side {
            for left in 0..=width - side {
                let (mut mu_a, mut mu_b, mut aa, mut bb, mut ab) = (0.0, 0.0, 0.0, 0.0, 0.0);
                for (k, w) in weights.iter().enumerate() {
                    let at = (top + k / side) * width + left + k % side;
                    let (x, y) = (a[at] as f64, b[at] as f64);
                    (mu_a, mu_b) = (mu_a + w * x, mu_b + w * y);
                    (aa, bb, ab) = (aa + w * x * x, bb + w * y * y, ab + w * x * y);
                }
                let (var_a, var_b, cov) = (aa - mu_a * mu_a, bb - mu_b * mu_b, ab - mu_a * mu_b);
                sum += ((2.0 * mu_a * mu_b + c1) * (2.0 * cov + c2))
                    / ((mu_a * mu_a + mu_b * mu_b + c1) * (var_a + var_b + c2));
                count += 1;
            }
        }
    }
    Ok(sum / count as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digit() -> Vec<f32> {
        let inside = |k: i32| (k / 28 - 14).pow(2) + (k % 28 - 14).pow(2) < 40;
        (0..784).map(|k| if inside(k) { 1.0 } else { 0.0 }).collect()
    }

    #[test]
    fn psnr_of_equal_images_is_infinite_and_of_a_known_error_is_exact() {
        let x = digit();
        assert_eq!(psnr(&x, &x).unwrap(), f64::INFINITY);
        let shifted: Vec<f32> = x.iter().map(|v| (v - 0.1).abs()).collect();
        assert!((psnr(&x, &shifted).unwrap() - 20.0).abs() < 1e-5, "MSE 0.01 → 20 dB");
        assert!(psnr(&x, &x[..10]).is_err());
    }

    #[test]
    fn ssim_is_one_for_equal_images_symmetric_and_falls_with_noise() {
        let x = digit();
        assert!((ssim(&x, &x, 1, 28, 28).unwrap() - 1.0).abs() < 1e-12);
        let mut state = 7u32;
        let mut noisy = |sigma: f32| -> Vec<f32> {
            x.iter()
                .map(|v| {
                    state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    (v + sigma * ((state >> 8) as f32 / (1u32 << 24) as f32 - 0.5)).clamp(0.0, 1.0)
                })
                .collect()
        };
        let (light, heavy) = (noisy(0.2), noisy(0.8));
        let (s_light, s_heavy) = (ssim(&x, &light, 1, 28, 28).unwrap(), ssim(&x, &heavy, 1, 28, 28).unwrap());
        assert!(1.0 > s_light && s_light > s_heavy && s_heavy > -1.0, "{s_light} {s_heavy}");
        assert!((s_light - ssim(&light, &x, 1, 28, 28).unwrap()).abs() < 1e-12);
    }

    #[test]
    fn ssim_of_two_flat_images_is_the_luminance_term() {
        let (a, b) = (vec![0.2f32; 144], vec![0.6f32; 144]);
        let (a64, b64) = (0.2f32 as f64, 0.6f32 as f64);
        let expected = (2.0 * a64 * b64 + K1 * K1) / (a64 * a64 + b64 * b64 + K1 * K1);
        assert!((ssim(&a, &b, 1, 12, 12).unwrap() - expected).abs() < 1e-9);
    }
}
