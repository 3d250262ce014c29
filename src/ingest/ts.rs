//! MPEG-TS, as far as the SRT ingest needs it: a queued SRT caster's latest pictures, held
//! while someone else is on air so that their turn starts at once from a keyframe (the
//! MPEG-TS counterpart of [`super::hold`]).
//!
//! Reads the program tables (PAT, then the PMT it names) to find the video stream, and a
//! keyframe by the random-access flag publishers set on its first packet. Pure; no I/O.

use bytes::Bytes;

use super::hold::DEFAULT_MAX_HELD_BYTES;

/// Bytes in a TS packet.
pub const PACKET: usize = 188;
const SYNC: u8 = 0x47;
/// Stream types of video in a PMT: MPEG-2, H.264, H.265.
const VIDEO_TYPES: [u8; 3] = [0x02, 0x1b, 0x24];

/// A waiting caster's tables and their packets since the latest video keyframe.
#[derive(Debug, Default)]
pub struct TsHold {
    pat: Option<Bytes>,
    pmt_pid: Option<u16>,
    pmt: Option<Bytes>,
    video_pid: Option<u16>,
    /// Packets since the latest keyframe, the keyframe's first; empty until one came.
    gop: Vec<u8>,
}

/// One packet's header: its PID, whether a section or PES starts in it, whether it is a
/// random-access point, and where its payload starts.
struct Header {
    pid: u16,
    start: bool,
    random_access: bool,
    payload: usize,
}

fn header(packet: &[u8]) -> Option<Header> {
    if packet.len() != PACKET || packet[0] != SYNC {
        return None;
    }
    let pid = u16::from(packet[1] & 0x1f) << 8 | u16::from(packet[2]);
    let start = packet[1] & 0x40 != 0;
    let control = (packet[3] >> 4) & 0x3;
    let (random_access, payload) = if control & 0x2 != 0 {
        let length = usize::from(packet[4]);
        (length > 0 && packet[5] & 0x40 != 0, 5 + length)
    } else {
        (false, 4)
    };
    (control & 0x1 != 0 && payload < PACKET).then_some(Header {
        pid,
        start,
        random_access,
        payload,
    })
}

/// The section that starts in `packet` (after its pointer field), up to its CRC.
fn section<'a>(packet: &'a [u8], h: &Header) -> Option<&'a [u8]> {
    let pointer = usize::from(*packet.get(h.payload)?);
    let at = h.payload + 1 + pointer;
    let body = packet.get(at..)?;
    let length = usize::from(u16::from(*body.get(1)? & 0x0f) << 8 | u16::from(*body.get(2)?));
    // Header (3) + length, without the CRC (4): a table that spans packets is not read.
    body.get(..(3 + length).checked_sub(4)?)
}

/// The first program's PMT PID, from a PAT section.
fn pmt_pid(pat: &[u8]) -> Option<u16> {
    pat.get(8..)?
        .chunks_exact(4)
        .map(|e| {
            (
                u16::from(e[0]) << 8 | u16::from(e[1]),
                u16::from(e[2] & 0x1f) << 8 | u16::from(e[3]),
            )
        })
        .find(|(program, _)| *program != 0)
        .map(|(_, pid)| pid)
}

/// The first video stream's PID, from a PMT section.
fn video_pid(pmt: &[u8]) -> Option<u16> {
    let info = usize::from(u16::from(*pmt.get(10)? & 0x0f) << 8 | u16::from(*pmt.get(11)?));
    let mut at = 12 + info;
    while let Some(entry) = pmt.get(at..at + 5) {
        let pid = u16::from(entry[1] & 0x1f) << 8 | u16::from(entry[2]);
        if VIDEO_TYPES.contains(&entry[0]) {
            return Some(pid);
        }
        at += 5 + usize::from(u16::from(entry[3] & 0x0f) << 8 | u16::from(entry[4]));
    }
    None
}

impl TsHold {
    /// Keeps what a decoder starting on the held pictures needs from `chunk` (whole TS
    /// packets, as SRT carries them; anything else is skipped).
    pub fn keep(&mut self, chunk: &[u8]) {
        for packet in chunk.chunks_exact(PACKET) {
            let Some(h) = header(packet) else { continue };
            if h.pid == 0 && h.start {
                if let Some(pid) = section(packet, &h).and_then(pmt_pid) {
                    self.pmt_pid = Some(pid);
                    self.pat = Some(Bytes::copy_from_slice(packet));
                }
                continue;
            }
            if Some(h.pid) == self.pmt_pid && h.start {
                if let Some(pid) = section(packet, &h).and_then(video_pid) {
                    self.video_pid = Some(pid);
                    self.pmt = Some(Bytes::copy_from_slice(packet));
                }
                continue;
            }
            if Some(h.pid) == self.video_pid && h.start && h.random_access {
                self.gop.clear();
            } else if self.gop.is_empty() {
                continue;
            }
            if self.gop.len() + PACKET > DEFAULT_MAX_HELD_BYTES {
                // A keyframe interval too long to hold: start on the next one.
                self.gop.clear();
                continue;
            }
            self.gop.extend_from_slice(packet);
        }
    }

    /// The tables, then the packets since the latest keyframe; empties the hold. Nothing
    /// before a keyframe came.
    pub fn take(&mut self) -> Option<Bytes> {
        let gop = std::mem::take(&mut self.gop);
        let (Some(pat), Some(pmt)) = (&self.pat, &self.pmt) else {
            return None;
        };
        if gop.is_empty() {
            return None;
        }
        let mut out = Vec::with_capacity(2 * PACKET + gop.len());
        out.extend_from_slice(pat);
        out.extend_from_slice(pmt);
        out.extend_from_slice(&gop);
        Some(Bytes::from(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A packet of `pid` with `payload` (padded with 0xff), a payload start and, with
    /// `random_access`, an adaptation field saying so.
    fn packet(pid: u16, start: bool, random_access: bool, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![
            SYNC,
            (pid >> 8) as u8 | if start { 0x40 } else { 0 },
            pid as u8,
        ];
        if random_access {
            p.extend_from_slice(&[0x30, 1, 0x40]);
        } else {
            p.push(0x10);
        }
        p.extend_from_slice(payload);
        p.resize(PACKET, 0xff);
        p
    }

    /// A section packet: pointer 0, `table` with its length, `body`, a dummy CRC.
    fn section_packet(pid: u16, table: u8, body: &[u8]) -> Vec<u8> {
        let length = body.len() + 4;
        let mut payload = vec![0, table, 0xb0 | (length >> 8) as u8, length as u8];
        payload.extend_from_slice(body);
        payload.extend_from_slice(&[0; 4]);
        packet(pid, true, false, &payload)
    }

    fn tables() -> Vec<u8> {
        // PAT: transport stream id, version, section numbers, then program 1 -> PMT 0x1000.
        let pat = section_packet(0, 0x00, &[0, 1, 0xc1, 0, 0, 0, 1, 0xf0, 0x00]);
        // PMT: program 1, version, sections, PCR PID 0x100, no program info, then AAC on
        // 0x101 and H.264 on 0x100.
        let pmt = section_packet(
            0x1000,
            0x02,
            &[
                0, 1, 0xc1, 0, 0, 0xe1, 0x00, 0xf0, 0, 0x0f, 0xe1, 0x01, 0xf0, 0, 0x1b, 0xe1, 0x00,
                0xf0, 0,
            ],
        );
        [pat, pmt].concat()
    }

    #[test]
    fn the_hold_starts_at_the_latest_video_keyframe_after_the_tables() {
        let mut hold = TsHold::default();
        hold.keep(&tables());
        let audio = packet(0x101, true, false, b"audio");
        let key1 = packet(0x100, true, true, b"key-1");
        let delta = packet(0x100, true, false, b"delta");
        let key2 = packet(0x100, true, true, b"key-2");
        // Before any keyframe: nothing to start on.
        hold.keep(&audio);
        assert_eq!(hold.take(), None);
        hold.keep(
            &[
                key1.clone(),
                delta.clone(),
                audio.clone(),
                key2.clone(),
                audio.clone(),
            ]
            .concat(),
        );
        let held = hold.take().expect("a GOP");
        assert_eq!(&held[..2 * PACKET], &tables()[..]);
        assert_eq!(&held[2 * PACKET..], &[key2, audio].concat()[..]);
        // Taken: empty until the next keyframe.
        hold.keep(&delta);
        assert_eq!(hold.take(), None);
    }

    #[test]
    fn audio_random_access_and_garbage_do_not_start_a_gop() {
        let mut hold = TsHold::default();
        hold.keep(&tables());
        hold.keep(&packet(0x101, true, true, b"audio key"));
        hold.keep(&[0u8; PACKET]);
        hold.keep(&[1, 2, 3]);
        assert_eq!(hold.take(), None);
    }
}
