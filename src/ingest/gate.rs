//! The gate in front of `rml_rtmp`'s server session. `rml_rtmp` trusts its input more than a
//! server facing the internet may, so the gate frames each read with a chunk deserializer of
//! its own (the same one the session uses, fed the same bytes) and refuses, before the session
//! parses anything, what the session would choke on:
//! - a chunk size of 0, or a message still incomplete after [`Limits::max_message_bytes`];
//! - AMF command and data messages over [`Limits::max_command_bytes`] or nested deeper than
//!   [`Limits::max_amf_depth`] (`rml_amf0` recurses once per level: deep nesting overflows the
//!   stack, which no `catch_unwind` survives);
//! - commands with fewer than three values (`rml_rtmp` 0.8 slices the first three and panics).
//!
//! Owns that chunk framing and the AMF0 shape walk (iterative, so no input can overflow the
//! stack). It must not answer the peer, keep session state or do I/O: it says yes or no to
//! each read, and [`Protocol`](super::protocol::Protocol) acts on the answer. The limits and
//! the errors are the protocol's ([`Limits`], [`ProtocolError`]).

use rml_rtmp::chunk_io::ChunkDeserializer;
use rml_rtmp::messages::MessagePayload;

use super::protocol::{guard, Limits, ProtocolError};

/// RTMP message types the gate looks into.
const MSG_SET_CHUNK_SIZE: u8 = 1;
const MSG_AMF3_DATA: u8 = 15;
const MSG_AMF3_COMMAND: u8 = 17;
const MSG_AMF0_DATA: u8 = 18;
const MSG_AMF0_COMMAND: u8 = 20;

/// Frames the session's input with a chunk deserializer of its own and checks each message
/// before the session sees it.
pub(super) struct Gate {
    limits: Limits,
    chunks: ChunkDeserializer,
    /// Bytes fed since a message last completed.
    pending: usize,
}

impl Gate {
    pub(super) fn new(limits: Limits) -> Self {
        Self {
            limits,
            chunks: ChunkDeserializer::new(),
            pending: 0,
        }
    }

    /// Checks one read of the session's input, as the session will see it.
    pub(super) fn check(&mut self, bytes: &[u8]) -> Result<(), ProtocolError> {
        let mut input = bytes;
        let mut completed = false;
        loop {
            let chunks = &mut self.chunks;
            let next = guard("chunk framing", || chunks.get_next_message(input))?
                .map_err(|e| ProtocolError::Chunks(e.to_string()))?;
            input = &[];
            let Some(message) = next else { break };
            completed = true;
            self.check_message(&message)?;
        }
        // Counted per read: the bytes of a read that also completed a message are forgiven.
        self.pending = if completed {
            0
        } else {
            self.pending.saturating_add(bytes.len())
        };
        if self.pending > self.limits.max_message_bytes {
            return Err(ProtocolError::MessageTooLarge {
                limit: self.limits.max_message_bytes,
            });
        }
        Ok(())
    }

    fn check_message(&mut self, message: &MessagePayload) -> Result<(), ProtocolError> {
        let type_id = message.type_id;
        let data = &message.data[..];
        match type_id {
            MSG_SET_CHUNK_SIZE => {
                // Too short or top bit set: the session's own parsing refuses it.
                let Some(size) = data
                    .get(..4)
                    .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                else {
                    return Ok(());
                };
                if size == 0 {
                    return Err(ProtocolError::ChunkSize { size });
                }
                if size <= 0x7fff_ffff {
                    // The session applies the same size at the same point of the stream.
                    self.chunks
                        .set_max_chunk_size(size as usize)
                        .map_err(|_| ProtocolError::ChunkSize { size })?;
                }
                Ok(())
            }
            MSG_AMF3_DATA | MSG_AMF0_DATA | MSG_AMF3_COMMAND | MSG_AMF0_COMMAND => {
                if data.len() > self.limits.max_command_bytes {
                    return Err(ProtocolError::CommandTooLarge {
                        type_id,
                        len: data.len(),
                        limit: self.limits.max_command_bytes,
                    });
                }
                // rml_rtmp reads AMF3-flagged commands as AMF0 after a leading zero.
                let body = match data {
                    [0, rest @ ..] if type_id == MSG_AMF3_COMMAND => rest,
                    _ => data,
                };
                let shape = amf_shape(body, self.limits.max_amf_depth).map_err(|e| match e {
                    AmfError::TooDeep => ProtocolError::AmfTooDeep {
                        type_id,
                        limit: self.limits.max_amf_depth,
                    },
                    AmfError::Malformed(reason) => ProtocolError::Amf { type_id, reason },
                })?;
                let command = matches!(type_id, MSG_AMF3_COMMAND | MSG_AMF0_COMMAND);
                if command && shape.values < 3 {
                    return Err(ProtocolError::Amf {
                        type_id,
                        reason: "a command needs a name, a transaction id and an object",
                    });
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

/// What an AMF0 body holds, as far as the limits care.
#[derive(Debug, PartialEq, Eq)]
struct AmfShape {
    /// Values at the top level.
    values: usize,
    /// Deepest nesting of objects and arrays.
    depth: usize,
}

#[derive(Debug, PartialEq, Eq)]
enum AmfError {
    TooDeep,
    Malformed(&'static str),
}

/// Walks an AMF0 body without recursion, the way `rml_amf0::deserialize` reads it: top-level
/// values until the end or an object-end marker; strings read as far as the bytes go; strict
/// arrays end early at an object-end marker. Stops with [`AmfError::TooDeep`] past `max_depth`.
fn amf_shape(data: &[u8], max_depth: usize) -> Result<AmfShape, AmfError> {
    enum Frame {
        Object,
        Array { left: u32 },
    }
    enum Value {
        End,
        Scalar,
        Open(Frame),
    }
    struct Reader<'a> {
        data: &'a [u8],
        pos: usize,
    }
    impl Reader<'_> {
        fn take(&mut self, n: usize) -> Result<&[u8], AmfError> {
            let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
            let end = end.ok_or(AmfError::Malformed("truncated value"))?;
            let bytes = &self.data[self.pos..end];
            self.pos = end;
            Ok(bytes)
        }
        fn u16(&mut self) -> Result<usize, AmfError> {
            let b = self.take(2)?;
            Ok(usize::from(u16::from_be_bytes([b[0], b[1]])))
        }
        fn u32(&mut self) -> Result<u32, AmfError> {
            let b = self.take(4)?;
            Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        }
        /// Skips up to `n` bytes: a short read is not an error to `rml_amf0`.
        fn skip_short(&mut self, n: usize) {
            self.pos = self.pos.saturating_add(n).min(self.data.len());
        }
        fn value(&mut self) -> Result<Value, AmfError> {
            let Some(&marker) = self.data.get(self.pos) else {
                return Ok(Value::End);
            };
            self.pos += 1;
            Ok(match marker {
                0x00 => {
                    self.take(8)?;
                    Value::Scalar
                }
                0x01 => {
                    self.take(1)?;
                    Value::Scalar
                }
                0x02 => {
                    let len = self.u16()?;
                    self.skip_short(len);
                    Value::Scalar
                }
                0x03 => Value::Open(Frame::Object),
                0x05 | 0x06 => Value::Scalar,
                0x08 => {
                    self.u32()?;
                    Value::Open(Frame::Object)
                }
                0x09 => Value::End,
                0x0a => Value::Open(Frame::Array { left: self.u32()? }),
                _ => return Err(AmfError::Malformed("unknown AMF0 marker")),
            })
        }
    }

    let mut r = Reader { data, pos: 0 };
    let mut stack: Vec<Frame> = Vec::new();
    let mut shape = AmfShape {
        values: 0,
        depth: 0,
    };
    loop {
        let value = match stack.last_mut() {
            None => match r.value()? {
                Value::End => return Ok(shape),
                v => {
                    shape.values += 1;
                    v
                }
            },
            Some(Frame::Object) => {
                let label = r.u16()?;
                if label == 0 {
                    if r.take(1)? != [0x09] {
                        return Err(AmfError::Malformed("empty property name"));
                    }
                    stack.pop();
                    continue;
                }
                r.skip_short(label);
                match r.value()? {
                    Value::End => return Err(AmfError::Malformed("property without a value")),
                    v => v,
                }
            }
            Some(Frame::Array { left }) => {
                if *left == 0 {
                    stack.pop();
                    continue;
                }
                *left -= 1;
                match r.value()? {
                    Value::End => {
                        stack.pop();
                        continue;
                    }
                    v => v,
                }
            }
        };
        if let Value::Open(frame) = value {
            stack.push(frame);
            shape.depth = shape.depth.max(stack.len());
            if stack.len() > max_depth {
                return Err(AmfError::TooDeep);
            }
        }
    }
}

/// A chunk with a full header on chunk stream 3, message stream 0, in one chunk.
#[cfg(test)]
pub(super) fn message(type_id: u8, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = vec![0x03, 0, 0, 0];
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(type_id);
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(payload);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::protocol::{DEFAULT_MAX_MESSAGE_BYTES, DEFAULT_MAX_READ};

    /// Runs reads through a fresh gate with the default limits; returns its refusal.
    fn check<'a>(reads: impl IntoIterator<Item = &'a [u8]>) -> Option<ProtocolError> {
        let mut gate = Gate::new(Limits::default());
        reads.into_iter().find_map(|read| gate.check(read).err())
    }

    #[test]
    fn a_zero_chunk_size_is_refused() {
        let error = check([&message(1, &0u32.to_be_bytes())[..]]);
        assert!(
            matches!(error, Some(ProtocolError::ChunkSize { size: 0 })),
            "{error:?}"
        );
    }

    #[test]
    fn an_endless_message_is_cut_off() {
        // The largest chunk size, then a video message claiming 16 MiB that never ends.
        let mut bytes = message(1, &0x7fff_ffffu32.to_be_bytes());
        bytes.extend_from_slice(&[0x06, 0, 0, 0, 0xff, 0xff, 0xff, 9, 1, 0, 0, 0]);
        bytes.resize(
            bytes.len() + DEFAULT_MAX_MESSAGE_BYTES + DEFAULT_MAX_READ,
            0,
        );
        let error = check(bytes.chunks(DEFAULT_MAX_READ));
        assert!(
            matches!(error, Some(ProtocolError::MessageTooLarge { .. })),
            "{error:?}"
        );
    }

    #[test]
    fn a_command_too_short_for_rml_rtmp_is_refused() {
        // rml_rtmp 0.8 slices three values out of every command and panics on fewer.
        let mut amf = vec![0x02, 0, 7];
        amf.extend_from_slice(b"connect");
        let error = check([&message(20, &amf)[..]]);
        assert!(
            matches!(error, Some(ProtocolError::Amf { type_id: 20, .. })),
            "{error:?}"
        );
    }

    #[test]
    fn amf_shape_follows_rml_amf0() {
        let shape = |d: &[u8]| amf_shape(d, 4);
        // A string, a number, an object {a: null}.
        let mut d = vec![0x02, 0, 1, b'x', 0x00];
        d.extend_from_slice(&[0; 8]);
        d.extend_from_slice(&[0x03, 0, 1, b'a', 0x05, 0, 0, 0x09]);
        assert_eq!(
            shape(&d),
            Ok(AmfShape {
                values: 3,
                depth: 1
            })
        );
        // A top-level object-end marker stops the read.
        assert_eq!(
            shape(&[0x05, 0x09, 0x05]),
            Ok(AmfShape {
                values: 1,
                depth: 0
            })
        );
        // A short string reads as far as the bytes go.
        assert_eq!(
            shape(&[0x02, 0, 9, b'a']),
            Ok(AmfShape {
                values: 1,
                depth: 0
            })
        );
        // A strict array ends at its count or at an end marker.
        assert_eq!(
            shape(&[0x0a, 0, 0, 0, 9, 0x0a, 0, 0, 0, 1, 0x05, 0x09, 0x05]),
            Ok(AmfShape {
                values: 2,
                depth: 2
            })
        );
        assert_eq!(
            shape(&[0x03, 0x00]),
            Err(AmfError::Malformed("truncated value"))
        );
        assert_eq!(
            shape(&[0x03, 0x00, 0x01, b'a']),
            Err(AmfError::Malformed("property without a value"))
        );
        let deep: Vec<u8> = [0x0a, 0, 0, 0, 1].repeat(5);
        assert_eq!(shape(&deep), Err(AmfError::TooDeep));
        assert_eq!(
            shape(&[0x11]),
            Err(AmfError::Malformed("unknown AMF0 marker"))
        );
    }
}
