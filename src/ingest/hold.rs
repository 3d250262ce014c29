//! A waiting caster's latest pictures: what the RTMP server keeps of a queued publisher
//! while someone else is on air, so that when their turn comes the program can start
//! decoding them at once, from a keyframe, without waiting for the next one.
//!
//! Owns the held tags only: the latest codec header of each kind, and every tag since the
//! latest keyframe. Pure; no I/O.

use bytes::Bytes;

use super::flv::{self, TagClass};

/// A held GOP larger than this is dropped until the next keyframe (a caster with a very long
/// keyframe interval starts on their next keyframe instead, after a moment of the slate).
pub const DEFAULT_MAX_HELD_BYTES: usize = 16 << 20;

#[derive(Debug, Default)]
pub struct Hold {
    /// The latest sequence header of each kind (video, audio).
    headers: [Option<Bytes>; 2],
    /// Tags since the latest keyframe, the keyframe first; empty until one came.
    gop: Vec<Bytes>,
    gop_bytes: usize,
    /// The FLV timestamp of the latest picture held.
    latest_picture_ms: Option<u32>,
}

impl Hold {
    /// Keeps `tag` (whole, as [`flv::tag`] makes it) if a decoder starting on the held GOP
    /// needs it; `picture` is whether it is a video picture, `timestamp_ms` its timestamp.
    pub fn keep(&mut self, tag: Bytes, picture: bool, timestamp_ms: u32) {
        match flv::class(&tag) {
            TagClass::CodecHeader => {
                let slot = usize::from(tag[0] == flv::TAG_AUDIO);
                self.headers[slot] = Some(tag);
                return;
            }
            TagClass::Keyframe => {
                self.gop.clear();
                self.gop_bytes = 0;
            }
            TagClass::Other if self.gop.is_empty() => return,
            TagClass::Other => {}
        }
        if self.gop_bytes + tag.len() > DEFAULT_MAX_HELD_BYTES {
            self.gop.clear();
            self.gop_bytes = 0;
            self.latest_picture_ms = None;
            return;
        }
        if picture {
            self.latest_picture_ms = Some(timestamp_ms);
        }
        self.gop_bytes += tag.len();
        self.gop.push(tag);
    }

    /// What a new decoder is given, in order: the codec headers, then the GOP; and the
    /// timestamp of its latest picture (the one to show now). Empties the hold.
    pub fn take(&mut self) -> (Vec<Bytes>, Option<u32>) {
        let mut tags: Vec<Bytes> = self.headers.iter_mut().filter_map(Option::take).collect();
        tags.append(&mut self.gop);
        self.gop_bytes = 0;
        (tags, self.latest_picture_ms.take())
    }

    /// Bytes held now.
    pub fn bytes(&self) -> usize {
        self.gop_bytes + self.headers.iter().flatten().map(Bytes::len).sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::flv::{tag, TAG_AUDIO, TAG_VIDEO};

    fn video(key: bool, ts: u32) -> Bytes {
        tag(
            TAG_VIDEO,
            ts,
            &[if key { 0x17 } else { 0x27 }, 0x01, 0, 0, 0],
        )
        .unwrap()
    }

    #[test]
    fn the_headers_and_the_latest_gop_are_held() {
        let mut hold = Hold::default();
        let avc_header = tag(TAG_VIDEO, 0, &[0x17, 0x00, 0, 0, 0]).unwrap();
        let aac_header = tag(TAG_AUDIO, 0, &[0xaf, 0x00, 0x12, 0x10]).unwrap();
        hold.keep(avc_header.clone(), false, 0);
        hold.keep(aac_header.clone(), false, 0);
        // Nothing before the first keyframe is any use to a decoder.
        hold.keep(video(false, 10), true, 10);
        hold.keep(video(true, 20), true, 20);
        hold.keep(video(false, 30), true, 30);
        let audio = tag(TAG_AUDIO, 35, &[0xaf, 0x01, 1, 2]).unwrap();
        hold.keep(audio.clone(), false, 35);
        // A new keyframe starts the GOP again.
        hold.keep(video(true, 40), true, 40);
        hold.keep(video(false, 50), true, 50);
        let (tags, latest) = hold.take();
        assert_eq!(
            tags,
            vec![avc_header, aac_header, video(true, 40), video(false, 50)]
        );
        assert_eq!(latest, Some(50));
        assert_eq!(hold.bytes(), 0);
        assert_eq!(hold.take(), (Vec::new(), None));
    }

    #[test]
    fn a_gop_too_large_to_hold_is_dropped_until_the_next_keyframe() {
        let mut hold = Hold::default();
        hold.keep(video(true, 0), true, 0);
        let big = tag(TAG_VIDEO, 10, &vec![0x27; DEFAULT_MAX_HELD_BYTES / 2]).unwrap();
        hold.keep(big.clone(), true, 10);
        hold.keep(big, true, 20);
        assert_eq!(hold.bytes(), 0);
        hold.keep(video(false, 30), true, 30);
        assert_eq!(hold.take(), (Vec::new(), None));
        hold.keep(video(true, 40), true, 40);
        assert_eq!(hold.take(), (vec![video(true, 40)], Some(40)));
    }
}
