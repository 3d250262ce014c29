//! Team logos from the scores API: the limits a logo must meet before it is decoded, decoding
//! it once and scaling it once to the size the scorebug draws it at, and a small cache of
//! the outcomes by URL.
//!
//! A logo is refused when its body is over [`MAX_LOGO_BYTES`] or when its header says it is
//! larger than [`MAX_LOGO_SIDE`] on a side; the full decode never starts then. The cache
//! holds at most [`CACHE_ENTRIES`] URLs and drops the least recently used, so a CDN that signs
//! its URLs anew on every poll costs one small, scaled logo per entry and no more.
//!
//! Pure: no I/O. The poller fetches; the renderer draws.

use std::collections::VecDeque;
use std::io::Cursor;
use std::sync::Arc;

use image::{ImageReader, Limits, RgbaImage};

/// The largest logo body read; reading stops past it.
pub const MAX_LOGO_BYTES: usize = 2 * 1024 * 1024;
/// The largest logo, in pixels on either side, that is decoded.
pub const MAX_LOGO_SIDE: u32 = 1024;
/// What the decoder may allocate: a [`MAX_LOGO_SIDE`] square at 16 bits per RGBA channel.
const MAX_DECODE_ALLOC: u64 = MAX_LOGO_SIDE as u64 * MAX_LOGO_SIDE as u64 * 8;
/// Logo URLs kept (each with its scaled logo or the reason it was refused).
pub const CACHE_ENTRIES: usize = 32;
/// The longest logo URL fetched; a URL is part of each cache entry.
pub const MAX_URL_BYTES: usize = 2048;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogoError {
    #[error("{width}×{height} pixels is over the {MAX_LOGO_SIDE}×{MAX_LOGO_SIDE} limit")]
    TooLarge { width: u32, height: u32 },
    #[error("not an image this build reads (PNG or JPEG): {0}")]
    NotImage(String),
    #[error("cannot decode: {0}")]
    Decode(String),
}

/// Checks the header, then decodes `bytes` and scales the logo to a `side`x`side` square.
pub fn decode_scaled(bytes: &[u8], side: u32) -> Result<RgbaImage, LogoError> {
    let (width, height) = dimensions(bytes)?;
    if width > MAX_LOGO_SIDE || height > MAX_LOGO_SIDE {
        return Err(LogoError::TooLarge { width, height });
    }
    let mut reader = reader(bytes)?;
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_LOGO_SIDE);
    limits.max_image_height = Some(MAX_LOGO_SIDE);
    limits.max_alloc = Some(MAX_DECODE_ALLOC);
    reader.limits(limits);
    let logo = reader
        .decode()
        .map_err(|e| LogoError::Decode(e.to_string()))?
        .into_rgba8();
    Ok(crate::render::scale_logo(&logo, side))
}

/// The image's size, read from its header alone.
pub fn dimensions(bytes: &[u8]) -> Result<(u32, u32), LogoError> {
    reader(bytes)?
        .into_dimensions()
        .map_err(|e| LogoError::NotImage(e.to_string()))
}

fn reader(bytes: &[u8]) -> Result<ImageReader<Cursor<&[u8]>>, LogoError> {
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| LogoError::NotImage(e.to_string()))?;
    if reader.format().is_none() {
        return Err(LogoError::NotImage("unknown format".to_owned()));
    }
    Ok(reader)
}

/// A scaled logo, or why the URL gave none.
pub type Outcome = Result<Arc<RgbaImage>, String>;

/// The outcomes of the last [`CACHE_ENTRIES`] logo URLs, least recently used first.
#[derive(Debug)]
pub struct LogoCache {
    entries: VecDeque<(String, Outcome)>,
    capacity: usize,
}

impl Default for LogoCache {
    fn default() -> Self {
        Self::with_capacity(CACHE_ENTRIES)
    }
}

impl LogoCache {
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            entries: VecDeque::with_capacity(capacity),
            capacity: capacity.max(1),
        }
    }

    /// The outcome for `url`, which becomes the most recently used.
    pub fn get(&mut self, url: &str) -> Option<Outcome> {
        let at = self.entries.iter().position(|(u, _)| u == url)?;
        let entry = self.entries.remove(at)?;
        let outcome = entry.1.clone();
        self.entries.push_back(entry);
        Some(outcome)
    }

    /// Keeps `outcome` for `url`, dropping the least recently used URL when full.
    pub fn insert(&mut self, url: String, outcome: Outcome) {
        if let Some(at) = self.entries.iter().position(|(u, _)| *u == url) {
            self.entries.remove(at);
        }
        while self.entries.len() >= self.capacity {
            self.entries.pop_front();
        }
        self.entries.push_back((url, outcome));
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The pixel bytes the cached logos hold.
    pub fn pixel_bytes(&self) -> usize {
        self.entries
            .iter()
            .filter_map(|(_, o)| o.as_ref().ok())
            .map(|logo| logo.as_raw().len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xedb8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    fn png(width: u32, height: u32) -> Vec<u8> {
        use image::ImageEncoder;
        let pixels = vec![200u8; (width * height * 4) as usize];
        let mut out = Vec::new();
        image::codecs::png::PngEncoder::new(&mut out)
            .write_image(&pixels, width, height, image::ExtendedColorType::Rgba8)
            .expect("encodes");
        out
    }

    /// A PNG whose header claims `width`x`height` with a single empty IDAT: what a
    /// decompression bomb looks like before its data.
    fn crafted_header(width: u32, height: u32) -> Vec<u8> {
        let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut chunk = |kind: &[u8], data: &[u8]| {
            out.extend_from_slice(&(data.len() as u32).to_be_bytes());
            let mut body = kind.to_vec();
            body.extend_from_slice(data);
            out.extend_from_slice(&body);
            out.extend_from_slice(&crc32(&body).to_be_bytes());
        };
        let mut ihdr = Vec::new();
        ihdr.extend_from_slice(&width.to_be_bytes());
        ihdr.extend_from_slice(&height.to_be_bytes());
        ihdr.extend_from_slice(&[8, 6, 0, 0, 0]); // 8-bit RGBA, deflate, no interlace
        chunk(b"IHDR", &ihdr);
        chunk(b"IDAT", &[0x78, 0x9c]);
        out
    }

    #[test]
    fn the_header_is_enough_to_refuse_a_bomb() {
        let bomb = crafted_header(20_000, 20_000);
        assert_eq!(dimensions(&bomb), Ok((20_000, 20_000)));
        let err = decode_scaled(&bomb, 34).unwrap_err();
        assert_eq!(
            err,
            LogoError::TooLarge {
                width: 20_000,
                height: 20_000
            }
        );
        assert_eq!(
            err.to_string(),
            "20000×20000 pixels is over the 1024×1024 limit"
        );
        // One side over the limit is enough.
        assert!(matches!(
            decode_scaled(&crafted_header(1025, 10), 34),
            Err(LogoError::TooLarge { .. })
        ));
    }

    #[test]
    fn a_logo_is_decoded_and_scaled_to_the_drawn_size() {
        let logo = decode_scaled(&png(1024, 512), 34).expect("decodes");
        assert_eq!(logo.dimensions(), (34, 34));
        assert_eq!(logo.get_pixel(10, 10).0, [200, 200, 200, 200]);
        assert!(matches!(
            decode_scaled(b"<html>not found</html>", 34),
            Err(LogoError::NotImage(_))
        ));
        // The header says 8x8 but the data is cut short.
        let mut cut = png(8, 8);
        cut.truncate(cut.len() - 20);
        assert!(matches!(decode_scaled(&cut, 34), Err(LogoError::Decode(_))));
    }

    #[test]
    fn the_cache_keeps_the_most_recently_used() {
        let logo =
            |n: u8| Ok(Arc::new(RgbaImage::from_pixel(2, 2, image::Rgba([n; 4])))) as Outcome;
        let mut cache = LogoCache::with_capacity(3);
        for n in 0..3u8 {
            cache.insert(format!("/logo.png?sig={n}"), logo(n));
        }
        // Using sig=0 makes sig=1 the least recently used.
        assert!(cache.get("/logo.png?sig=0").is_some());
        cache.insert("/logo.png?sig=3".to_owned(), Err("HTTP 404".to_owned()));
        assert_eq!(cache.len(), 3);
        assert!(cache.get("/logo.png?sig=1").is_none());
        assert!(cache.get("/logo.png?sig=2").is_some());
        assert_eq!(
            cache.get("/logo.png?sig=3"),
            Some(Err("HTTP 404".to_owned()))
        );
        assert_eq!(cache.pixel_bytes(), 2 * 16);
        // A URL that changes on every poll never grows it.
        for n in 0..1000 {
            cache.insert(format!("/logo.png?sig=x{n}"), logo(1));
        }
        assert_eq!(cache.len(), 3);
        // Inserting a URL again replaces it rather than duplicating it.
        cache.insert("/logo.png?sig=x999".to_owned(), logo(2));
        assert_eq!(cache.len(), 3);
    }
}
