//! FLV framing: RTMP audio and video message payloads are FLV tag bodies, so a published
//! stream becomes an FLV byte stream by adding the file header and tag headers.
//!
//! Pure byte work; no I/O.

use bytes::{BufMut, Bytes, BytesMut};

pub const TAG_AUDIO: u8 = 8;
pub const TAG_VIDEO: u8 = 9;
/// The largest tag body: the tag header's size field has 24 bits.
pub const MAX_BODY: usize = 0x00ff_ffff;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FlvError {
    #[error("a tag body of {len} bytes does not fit FLV's 24-bit size field")]
    TooLarge { len: usize },
}

/// The FLV file header (audio and video flagged) and the first PreviousTagSize.
pub fn header() -> Bytes {
    Bytes::from_static(b"FLV\x01\x05\x00\x00\x00\x09\x00\x00\x00\x00")
}

/// Whether an FLV video tag body carries a picture (not a codec header or an end marker):
/// for AVC, packet type 1; for any other codec, any video tag.
pub fn is_picture(kind: u8, body: &[u8]) -> bool {
    const CODEC_AVC: u8 = 7;
    const AVC_NALU: u8 = 1;
    match body {
        [first, packet_type, ..] if kind == TAG_VIDEO && first & 0x0f == CODEC_AVC => {
            *packet_type == AVC_NALU
        }
        [_, ..] => kind == TAG_VIDEO,
        [] => false,
    }
}

/// What a whole FLV tag (as [`tag`] makes it) carries, for holding a waiting caster's
/// latest pictures: a decoder needs the codec headers and everything since a keyframe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TagClass {
    /// An AVC or AAC sequence header (decoder configuration).
    CodecHeader,
    /// A video keyframe: decoding can start here.
    Keyframe,
    /// Anything else: inter frames, audio frames, end markers.
    Other,
}

/// Sorts a whole FLV tag by what a decoder starting on it needs.
pub fn class(tag: &[u8]) -> TagClass {
    const CODEC_AVC: u8 = 7;
    const SOUND_AAC: u8 = 10;
    const FRAME_KEY: u8 = 1;
    const SEQUENCE_HEADER: u8 = 0;
    let (Some(&kind), Some(body)) = (tag.first(), tag.get(11..)) else {
        return TagClass::Other;
    };
    match (kind, body) {
        (TAG_VIDEO, [first, packet, ..]) if first & 0x0f == CODEC_AVC => {
            if *packet == SEQUENCE_HEADER {
                TagClass::CodecHeader
            } else if first >> 4 == FRAME_KEY && *packet == 1 {
                TagClass::Keyframe
            } else {
                TagClass::Other
            }
        }
        (TAG_VIDEO, [first, ..]) if first >> 4 == FRAME_KEY => TagClass::Keyframe,
        (TAG_AUDIO, [first, SEQUENCE_HEADER, ..]) if first >> 4 == SOUND_AAC => {
            TagClass::CodecHeader
        }
        _ => TagClass::Other,
    }
}

/// One FLV tag: header, body, and the PreviousTagSize that follows it.
pub fn tag(kind: u8, timestamp_ms: u32, body: &[u8]) -> Result<Bytes, FlvError> {
    if body.len() > MAX_BODY {
        return Err(FlvError::TooLarge { len: body.len() });
    }
    let size = body.len() as u32;
    let mut out = BytesMut::with_capacity(11 + body.len() + 4);
    out.put_u8(kind);
    out.put_uint(u64::from(size), 3);
    out.put_uint(u64::from(timestamp_ms & 0x00ff_ffff), 3);
    out.put_u8((timestamp_ms >> 24) as u8);
    out.put_uint(0, 3);
    out.put_slice(body);
    out.put_u32(11 + size);
    Ok(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pictures_are_told_from_codec_headers() {
        assert!(
            !is_picture(TAG_VIDEO, &[0x17, 0x00, 0, 0, 0]),
            "AVC sequence header"
        );
        assert!(
            is_picture(TAG_VIDEO, &[0x17, 0x01, 0, 0, 0]),
            "AVC keyframe"
        );
        assert!(
            is_picture(TAG_VIDEO, &[0x27, 0x01, 0, 0, 0]),
            "AVC inter frame"
        );
        assert!(!is_picture(TAG_AUDIO, &[0xaf, 0x01]), "audio");
        assert!(!is_picture(TAG_VIDEO, &[]), "empty");
    }

    #[test]
    fn whole_tags_are_sorted_for_a_decoder_starting_on_them() {
        let class_of = |kind, body: &[u8]| class(&tag(kind, 0, body).unwrap());
        assert_eq!(
            class_of(TAG_VIDEO, &[0x17, 0x00, 0, 0, 0]),
            TagClass::CodecHeader
        );
        assert_eq!(
            class_of(TAG_VIDEO, &[0x17, 0x01, 0, 0, 0]),
            TagClass::Keyframe
        );
        assert_eq!(class_of(TAG_VIDEO, &[0x27, 0x01, 0, 0, 0]), TagClass::Other);
        assert_eq!(
            class_of(TAG_AUDIO, &[0xaf, 0x00, 0x12]),
            TagClass::CodecHeader
        );
        assert_eq!(class_of(TAG_AUDIO, &[0xaf, 0x01, 0x12]), TagClass::Other);
        assert_eq!(class(&[]), TagClass::Other);
    }

    #[test]
    fn tag_layout() {
        let t = tag(TAG_VIDEO, 0x0102_0304, &[0xaa, 0xbb]).expect("a small tag");
        assert_eq!(
            &t[..],
            &[9, 0, 0, 2, 0x02, 0x03, 0x04, 0x01, 0, 0, 0, 0xaa, 0xbb, 0, 0, 0, 13]
        );
    }

    #[test]
    fn a_body_over_24_bits_is_refused() {
        let body = vec![0u8; MAX_BODY + 1];
        assert_eq!(
            tag(TAG_VIDEO, 0, &body),
            Err(FlvError::TooLarge { len: MAX_BODY + 1 })
        );
        assert!(tag(TAG_VIDEO, 0, &body[1..]).is_ok());
    }
}
