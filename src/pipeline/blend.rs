//! Blending rendered pictures into the program's I420 frames.
//!
//! A picture is converted once, when it is rendered, into what the per-frame blend needs:
//! BT.709 limited-range Y, U and V already multiplied by their alpha, 255 − alpha beside
//! them, and the runs of pixels that are not transparent. Per frame, only those runs are
//! touched, in place. GStreamer 1.22's generic blender (`overlaycomposition`) converts the
//! whole frame row to AYUV and back for each row a picture covers, and every picture pixel
//! from RGB each time; a layer set covering a fifth of the rows cost 4–5 % of a 720p relay's
//! CPU that way (BENCHMARKS.md, "Graphics layers").
//!
//! The picture's top-left corner is put on even coordinates, so its chroma lines up with the
//! frame's 2×2 blocks (a one-pixel shift is invisible; the renderer places on even
//! margins anyway). Pixels outside the frame are skipped.

/// One rendered picture, ready to blend.
#[derive(Debug)]
pub struct Picture {
    /// Where the top-left corner goes (even).
    x: i64,
    y: i64,
    luma: Plane,
    chroma: Plane,
}

/// One plane's worth of premultiplied samples, by runs of visible pixels.
#[derive(Debug, Default)]
struct Plane {
    /// Per visible pixel in run order: the sample(s) × alpha (Y, or U and V).
    first: Vec<u16>,
    second: Vec<u16>,
    /// Per visible pixel in run order: 255 − alpha.
    rest: Vec<u8>,
    runs: Vec<Run>,
}

/// Visible pixels next to each other in one row of a plane.
#[derive(Debug, Clone, Copy)]
struct Run {
    row: u32,
    column: u32,
    len: u32,
    /// Where the run's samples start in the plane's vectors.
    at: u32,
}

impl Plane {
    /// Adds the pixels of one row; `pixel(i)` gives (first, second, alpha).
    fn push_row(&mut self, row: u32, width: u32, pixel: impl Fn(u32) -> (u16, u16, u8)) {
        let mut open: Option<Run> = None;
        for column in 0..width {
            let (first, second, alpha) = pixel(column);
            if alpha == 0 {
                if let Some(run) = open.take() {
                    self.runs.push(run);
                }
                continue;
            }
            let run = open.get_or_insert(Run {
                row,
                column,
                len: 0,
                at: self.rest.len() as u32,
            });
            run.len += 1;
            self.first.push(first);
            self.second.push(second);
            self.rest.push(255 - alpha);
        }
        self.runs.extend(open);
    }
}

/// BT.709 limited range, from 8-bit RGB: (Y, U, V).
fn yuv(r: u8, g: u8, b: u8) -> (u8, u8, u8) {
    let (r, g, b) = (f32::from(r), f32::from(g), f32::from(b));
    let y = 16.0 + (0.2126 * r + 0.7152 * g + 0.0722 * b) * 219.0 / 255.0;
    let u = 128.0 + (-0.1146 * r - 0.3854 * g + 0.5 * b) * 224.0 / 255.0;
    let v = 128.0 + (0.5 * r - 0.4542 * g - 0.0458 * b) * 224.0 / 255.0;
    let clamp = |c: f32| c.round().clamp(0.0, 255.0) as u8;
    (clamp(y), clamp(u), clamp(v))
}

impl Picture {
    /// Converts an RGBA picture (straight alpha) to go at (`x`, `y`) in the frame.
    pub fn new(image: &image::RgbaImage, x: i64, y: i64) -> Picture {
        let (w, h) = image.dimensions();
        let px = |c: u32, r: u32| -> [u8; 4] {
            if c < w && r < h {
                image.get_pixel(c, r).0
            } else {
                [0; 4]
            }
        };
        let mut luma = Plane::default();
        for r in 0..h {
            luma.push_row(r, w, |c| {
                let [red, green, blue, a] = px(c, r);
                let (y, _, _) = yuv(red, green, blue);
                (u16::from(y) * u16::from(a), 0, a)
            });
        }
        let mut chroma = Plane::default();
        for r in 0..h.div_ceil(2) {
            chroma.push_row(r, w.div_ceil(2), |c| {
                // The 2×2 block's mean alpha, and its U and V weighted by each pixel's alpha.
                let (mut u, mut v, mut a) = (0u32, 0u32, 0u32);
                for (dc, dr) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                    let [red, green, blue, alpha] = px(2 * c + dc, 2 * r + dr);
                    let (_, cu, cv) = yuv(red, green, blue);
                    u += u32::from(cu) * u32::from(alpha);
                    v += u32::from(cv) * u32::from(alpha);
                    a += u32::from(alpha);
                }
                ((u / 4) as u16, (v / 4) as u16, (a / 4) as u8)
            });
        }
        Picture {
            x: x & !1,
            y: y & !1,
            luma,
            chroma,
        }
    }

    /// Blends the picture into an I420 frame's planes, in place. `planes` and `strides` are
    /// Y, U, V; `size` is the frame's width and height.
    pub fn blend_i420(&self, planes: [&mut [u8]; 3], strides: [usize; 3], size: (u32, u32)) {
        let [y, u, v] = planes;
        let (w, h) = (i64::from(size.0), i64::from(size.1));
        blend_plane(
            &self.luma,
            &self.luma.first,
            y,
            strides[0],
            (self.x, self.y),
            (w, h),
        );
        let at = (self.x / 2, self.y / 2);
        let size = ((w + 1) / 2, (h + 1) / 2);
        blend_plane(&self.chroma, &self.chroma.first, u, strides[1], at, size);
        blend_plane(&self.chroma, &self.chroma.second, v, strides[2], at, size);
    }
}

/// `round(v / 255)` for v up to 255 × 255.
fn div255(v: u32) -> u8 {
    let v = v + 128;
    ((v + (v >> 8)) >> 8) as u8
}

/// Blends one plane's runs of `samples` at `at` into `dst` (`size` samples wide and high).
fn blend_plane(
    plane: &Plane,
    samples: &[u16],
    dst: &mut [u8],
    stride: usize,
    at: (i64, i64),
    size: (i64, i64),
) {
    for run in &plane.runs {
        let row = at.1 + i64::from(run.row);
        if row < 0 || row >= size.1 {
            continue;
        }
        let start = at.0 + i64::from(run.column);
        let from = start.max(0);
        let to = (start + i64::from(run.len)).min(size.0);
        if from >= to {
            continue;
        }
        let skip = (from - start) as usize;
        let n = (to - from) as usize;
        let at = run.at as usize + skip;
        let line = row as usize * stride + from as usize;
        let Some(dst) = dst.get_mut(line..line + n) else {
            continue;
        };
        let (src, rest) = (&samples[at..at + n], &plane.rest[at..at + n]);
        for ((d, &s), &r) in dst.iter_mut().zip(src).zip(rest) {
            *d = div255(u32::from(s) + u32::from(*d) * u32::from(r));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{Rgba, RgbaImage};

    /// A frame of one colour, blended with `picture` at (x, y); returns its three planes.
    fn blended(picture: &Picture, (w, h): (u32, u32), fill: (u8, u8, u8)) -> [Vec<u8>; 3] {
        let (cw, ch) = (w.div_ceil(2) as usize, h.div_ceil(2) as usize);
        let mut y = vec![fill.0; (w * h) as usize];
        let mut u = vec![fill.1; cw * ch];
        let mut v = vec![fill.2; cw * ch];
        picture.blend_i420([&mut y, &mut u, &mut v], [w as usize, cw, cw], (w, h));
        [y, u, v]
    }

    #[test]
    fn opaque_pixels_replace_and_transparent_ones_keep() {
        let mut image = RgbaImage::from_pixel(4, 2, Rgba([255, 255, 255, 255]));
        image.put_pixel(3, 0, Rgba([0, 0, 0, 0]));
        image.put_pixel(3, 1, Rgba([0, 0, 0, 0]));
        let [y, u, v] = blended(&Picture::new(&image, 2, 2), (8, 6), (16, 128, 128));
        // White is Y 235; the transparent column keeps the frame's black.
        assert_eq!(&y[2 * 8..3 * 8], &[16, 16, 235, 235, 235, 16, 16, 16]);
        assert_eq!(&y[3 * 8..4 * 8], &[16, 16, 235, 235, 235, 16, 16, 16]);
        assert_eq!(y[0], 16);
        // White's chroma is neutral: nothing moves it.
        assert!(u.iter().chain(&v).all(|&c| c == 128));
    }

    #[test]
    fn half_alpha_mixes_half_way() {
        let image = RgbaImage::from_pixel(2, 2, Rgba([255, 0, 0, 128]));
        let [y, u, v] = blended(&Picture::new(&image, 0, 0), (2, 2), (16, 128, 128));
        let (ry, ru, rv) = yuv(255, 0, 0);
        let mix = |s: u8, d: u8| ((u32::from(s) * 128 + u32::from(d) * 127 + 127) / 255) as u8;
        assert!(y.iter().all(|&s| s.abs_diff(mix(ry, 16)) <= 1), "{y:?}");
        assert!(u[0].abs_diff(mix(ru, 128)) <= 1, "{u:?}");
        assert!(v[0].abs_diff(mix(rv, 128)) <= 1, "{v:?}");
    }

    #[test]
    fn pictures_past_the_edges_are_clipped_and_odd_places_made_even() {
        let image = RgbaImage::from_pixel(6, 6, Rgba([255, 255, 255, 255]));
        let [y, _, _] = blended(&Picture::new(&image, -3, 5), (8, 8), (16, 128, 128));
        // x −3 → −4 and y 5 → 4: columns 0 and 1, rows 4 to 7 are white.
        for row in 0..8 {
            let want: &[u8] = if row >= 4 {
                &[235, 235, 16, 16, 16, 16, 16, 16]
            } else {
                &[16; 8]
            };
            assert_eq!(&y[row * 8..row * 8 + 8], want, "row {row}");
        }
    }

    #[test]
    fn colours_convert_as_bt709_limited_range() {
        assert_eq!(yuv(0, 0, 0), (16, 128, 128));
        assert_eq!(yuv(255, 255, 255), (235, 128, 128));
        // BT.709 red: Y 63, Cb 102, Cr 240.
        assert_eq!(yuv(255, 0, 0), (63, 102, 240));
    }
}
