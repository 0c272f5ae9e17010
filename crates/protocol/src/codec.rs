//! Encoding messages into frames and decoding payloads.

use serde::Serialize;
use serde::de::DeserializeOwned;

use purveyor_model::{ClassPath, wire};

use crate::{Encoding, FRAME_HEADER_LEN, InstanceList, Outcome, Response, ServerMessage};

/// A message that could not be encoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    #[error("message of {len} bytes exceeds the frame limit of {max} bytes")]
    TooLarge { len: usize, max: u32 },
    #[error("cannot encode message as {encoding:?}: {message}")]
    Serialize { encoding: Encoding, message: String },
}

/// A payload that is not a valid message in the expected encoding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed {encoding} payload ({len} bytes): {message}")]
pub struct DecodeError {
    pub encoding: &'static str,
    pub len: usize,
    pub message: String,
}

/// Appends `msg` to `out` as one frame (header and payload). On error `out` is unchanged.
pub fn encode_frame<T: Serialize>(
    encoding: Encoding,
    msg: &T,
    max: u32,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    let header_at = out.len();
    out.extend_from_slice(&[0; FRAME_HEADER_LEN]);
    let result = match encoding {
        Encoding::Json => serde_json::to_writer(&mut *out, msg).map_err(|e| e.to_string()),
        Encoding::Binary => {
            postcard::serialize_with_flavor(msg, AppendTo(out)).map_err(|e| e.to_string())
        }
    };
    if let Err(message) = result {
        out.truncate(header_at);
        return Err(EncodeError::Serialize { encoding, message });
    }
    finish_frame(out, header_at, max)
}

/// Appends the start of the frame of an `io_data` reply to request `id` carrying `len`
/// bytes, in the binary encoding: everything but the bytes themselves, which the caller
/// sends right after it (a server moving them from a pipe without copying them). The
/// result, followed by the bytes, is exactly the frame [`encode_frame`] makes of the
/// whole reply; a test holds the two together. On error `out` is unchanged.
pub fn encode_io_data_head(
    id: u32,
    len: usize,
    max: u32,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    let header_at = out.len();
    let msg = ServerMessage::Reply {
        id,
        outcome: Outcome::Ok(Response::IoData(Vec::new())),
    };
    encode_frame(Encoding::Binary, &msg, max, out)?;
    // An empty byte string ends the message: its length, a varint 0, is the last byte.
    debug_assert_eq!(out.last(), Some(&0));
    out.pop();
    let mut n = len;
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            break;
        }
        out.push(byte | 0x80);
    }
    let total = out.len() - header_at - FRAME_HEADER_LEN + len;
    if total > max as usize {
        out.truncate(header_at);
        return Err(EncodeError::TooLarge { len: total, max });
    }
    out[header_at..header_at + FRAME_HEADER_LEN].copy_from_slice(&(total as u32).to_le_bytes());
    Ok(())
}

/// The head of a frame that is an `io_data` reply in the binary encoding, from the bytes
/// received so far (starting at the frame's header): the request's id, the head's length
/// (header included) and the number of bytes after it, which fill the frame. `None` for
/// any other frame, or while the head has not all arrived. The head is checked by making
/// it again ([`encode_io_data_head`]), so nothing else can pass for one.
pub fn decode_io_data_head(bytes: &[u8]) -> Option<(u32, usize, usize)> {
    let header: [u8; FRAME_HEADER_LEN] = bytes.get(..FRAME_HEADER_LEN)?.try_into().ok()?;
    let frame = FRAME_HEADER_LEN + u32::from_le_bytes(header) as usize;
    // Five varints: the message's variant, the id, the outcome's, the response's, the
    // bytes' length.
    let mut at = FRAME_HEADER_LEN;
    let mut fields = [0u64; 5];
    for field in &mut fields {
        let mut value = 0u64;
        for shift in (0..).step_by(7).take(10) {
            let byte = *bytes.get(at)?;
            at += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                break;
            }
        }
        *field = value;
    }
    let (id, len) = (
        u32::try_from(fields[1]).ok()?,
        usize::try_from(fields[4]).ok()?,
    );
    if at.checked_add(len)? != frame {
        return None;
    }
    let mut again = Vec::with_capacity(at);
    encode_io_data_head(id, len, u32::MAX, &mut again).ok()?;
    (again == bytes[..at]).then_some((id, at, len))
}

/// Appends `msg` to `out` as one frame, as [`encode_frame`] does, the same bytes; a reply
/// carrying instances in the binary encoding is written by hand ([`purveyor_model::wire`]:
/// serde's dispatch per value is most of the cost of a large reply). A test holds the two
/// together. On error `out` is unchanged.
pub fn encode_server_frame(
    encoding: Encoding,
    msg: &ServerMessage,
    max: u32,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    let ServerMessage::Reply {
        id,
        outcome: Outcome::Ok(response @ (Response::Instance(_) | Response::Instances(_))),
    } = msg
    else {
        return encode_frame(encoding, msg, max, out);
    };
    if encoding != Encoding::Binary {
        return encode_frame(encoding, msg, max, out);
    }
    let header_at = out.len();
    out.extend_from_slice(&[0; FRAME_HEADER_LEN]);
    out.push(REPLY);
    wire::write_varint(out, u64::from(*id));
    out.push(OK);
    match response {
        Response::Instance(instance) => {
            out.push(INSTANCE);
            wire::write_instance(out, instance);
        }
        Response::Instances(list) => {
            out.push(INSTANCES);
            let class = list.class.as_str().as_bytes();
            wire::write_varint(out, class.len() as u64);
            out.extend_from_slice(class);
            wire::write_instance_list(out, &list.instances);
        }
        _ => unreachable!("matched above"),
    }
    finish_frame(out, header_at, max)
}

/// Fills in the header of the frame that starts at `header_at`, or, past `max`, takes the
/// frame off `out` again.
fn finish_frame(out: &mut Vec<u8>, header_at: usize, max: u32) -> Result<(), EncodeError> {
    let len = out.len() - header_at - FRAME_HEADER_LEN;
    if len > max as usize {
        out.truncate(header_at);
        return Err(EncodeError::TooLarge { len, max });
    }
    out[header_at..header_at + FRAME_HEADER_LEN].copy_from_slice(&(len as u32).to_le_bytes());
    Ok(())
}

/// Variant indexes, in declaration order (a test checks them against serde's):
/// `ServerMessage::Reply`, `Outcome::Ok`, `Response::Instances`, `Response::Instance`.
const REPLY: u8 = 0;
const OK: u8 = 0;
const INSTANCES: u8 = 4;
const INSTANCE: u8 = 5;

/// Decodes a server's message, as [`decode`] does; a reply carrying instances in the
/// binary encoding is read by hand ([`purveyor_model::wire`]), and whatever that does not
/// read — any other message, or bytes it declines — goes through [`decode`], which gives
/// the same message or the error.
pub fn decode_server_message(
    encoding: Encoding,
    payload: &[u8],
) -> Result<ServerMessage, DecodeError> {
    if encoding == Encoding::Binary
        && let Some(msg) = read_instances_reply(payload)
    {
        return Ok(msg);
    }
    decode(encoding, payload)
}

fn read_instances_reply(payload: &[u8]) -> Option<ServerMessage> {
    let mut r = wire::Reader::new(payload);
    if r.u32()? != u32::from(REPLY) {
        return None;
    }
    let id = r.u32()?;
    if r.u32()? != u32::from(OK) {
        return None;
    }
    let response = match u8::try_from(r.u32()?).ok()? {
        INSTANCE => Response::Instance(wire::read_instance(&mut r)?),
        INSTANCES => {
            let (class, rest) = postcard::take_from_bytes::<ClassPath>(r.rest()).ok()?;
            r.skip_to(rest);
            Response::Instances(InstanceList {
                class,
                instances: wire::read_instance_list(&mut r)?,
            })
        }
        _ => return None,
    };
    r.rest().is_empty().then_some(ServerMessage::Reply {
        id,
        outcome: Outcome::Ok(response),
    })
}

/// Appends `msg` to `out` as a bare payload, with no frame header (for the provider
/// library ABI, where the length travels beside the bytes). On error `out` is unchanged.
pub fn encode_payload<T: Serialize>(
    encoding: Encoding,
    msg: &T,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    let start = out.len();
    let result = match encoding {
        Encoding::Json => serde_json::to_writer(&mut *out, msg).map_err(|e| e.to_string()),
        Encoding::Binary => {
            postcard::serialize_with_flavor(msg, AppendTo(out)).map_err(|e| e.to_string())
        }
    };
    result.map_err(|message| {
        out.truncate(start);
        EncodeError::Serialize { encoding, message }
    })
}

/// A postcard output that appends to a caller's buffer, so frames are built in place.
struct AppendTo<'a>(&'a mut Vec<u8>);

impl postcard::ser_flavors::Flavor for AppendTo<'_> {
    type Output = ();

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.push(data);
        Ok(())
    }

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// Decodes one frame's payload.
///
/// The error's message is at most a few hundred bytes, whatever the payload quoted in it
/// (serde quotes an unknown name whole).
pub fn decode<T: DeserializeOwned>(encoding: Encoding, payload: &[u8]) -> Result<T, DecodeError> {
    decode_whole(encoding, payload).map_err(|mut e| {
        if e.message.len() > MESSAGE_MAX {
            e.message = purveyor_model::shorten(&e.message, MESSAGE_MAX).into_owned();
        }
        e
    })
}

/// The longest decode error message kept.
const MESSAGE_MAX: usize = 400;

fn decode_whole<T: DeserializeOwned>(encoding: Encoding, payload: &[u8]) -> Result<T, DecodeError> {
    match encoding {
        Encoding::Json => serde_json::from_slice(payload).map_err(|e| DecodeError {
            encoding: "JSON",
            len: payload.len(),
            message: e.to_string(),
        }),
        Encoding::Binary => {
            purveyor_model::take_refusal();
            let (msg, rest) = postcard::take_from_bytes(payload).map_err(|e| DecodeError {
                encoding: "binary",
                len: payload.len(),
                message: match purveyor_model::take_refusal() {
                    Some(why) => format!("{e}: {why}"),
                    None => e.to_string(),
                },
            })?;
            if !rest.is_empty() {
                return Err(DecodeError {
                    encoding: "binary",
                    len: payload.len(),
                    message: format!("{} trailing bytes after the message", rest.len()),
                });
            }
            Ok(msg)
        }
    }
}

impl std::fmt::Display for Encoding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Encoding::Binary => "binary",
            Encoding::Json => "json",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ClientMessage, FrameBuffer, Request};
    use purveyor_model::{ClassPath, Instance, InstanceKey, Value};

    fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(msg: T) {
        for encoding in [Encoding::Binary, Encoding::Json] {
            let mut out = Vec::new();
            encode_frame(encoding, &msg, 1 << 20, &mut out).unwrap();
            let mut fb = FrameBuffer::new(1 << 20);
            for chunk in out.chunks(4096) {
                fb.spare()[..chunk.len()].copy_from_slice(chunk);
                fb.filled(chunk.len());
            }
            let payload = fb.next_frame().unwrap().unwrap();
            let back: T = decode(encoding, payload).unwrap();
            assert_eq!(back, msg, "{encoding:?}");
        }
    }

    /// Replies carrying instances, written and read by hand: the same frames as serde's,
    /// read back to the same messages, and anything the hand reader declines (every
    /// other message, damaged bytes) decoded by serde with serde's answer.
    #[test]
    fn instance_replies_by_hand_are_the_frames_serde_makes() {
        let a = Instance::from_pairs([
            ("name", Value::String("eth0".into())),
            ("bytes", Value::U64(1 << 40)),
            ("ratio", Value::F64(0.25)),
            ("tags", Value::Array(vec![Value::String("up".into())])),
        ]);
        let b = Instance::with_values(
            a.names(),
            vec![
                Value::String("lo".into()),
                Value::U64(0),
                Value::F64(-1.0),
                Value::Array(vec![]),
            ],
        );
        let other = Instance::from_pairs([("x", Value::Bool(false))]);
        let replies = [
            Response::Instance(a.clone()),
            Response::Instance(Instance::new()),
            Response::Instances(InstanceList {
                class: ClassPath::new("net.interface").unwrap(),
                instances: vec![a, other, b],
            }),
            Response::Instances(InstanceList {
                class: ClassPath::new("net.interface").unwrap(),
                instances: vec![],
            }),
            Response::Pong,
        ];
        for (i, response) in replies.into_iter().enumerate() {
            let msg = ServerMessage::Reply {
                id: 300 * i as u32,
                outcome: Outcome::Ok(response),
            };
            for encoding in [Encoding::Binary, Encoding::Json] {
                let (mut ours, mut serde) = (Vec::new(), Vec::new());
                encode_server_frame(encoding, &msg, 1 << 20, &mut ours).unwrap();
                encode_frame(encoding, &msg, 1 << 20, &mut serde).unwrap();
                assert_eq!(ours, serde, "{msg:?}");
                let payload = &ours[FRAME_HEADER_LEN..];
                assert_eq!(decode_server_message(encoding, payload).unwrap(), msg);
                if encoding == Encoding::Binary && i < 4 {
                    assert!(read_instances_reply(payload).is_some(), "{msg:?}");
                }
            }
            let mut frame = Vec::new();
            encode_frame(Encoding::Binary, &msg, 1 << 20, &mut frame).unwrap();
            let payload = &frame[FRAME_HEADER_LEN..];
            for at in 0..payload.len() {
                for byte in [0u8, 4, 5, 0x80, 0xff] {
                    let mut bad = payload.to_vec();
                    bad[at] = byte;
                    let ours = decode_server_message(Encoding::Binary, &bad);
                    let theirs = decode::<ServerMessage>(Encoding::Binary, &bad);
                    match (ours, theirs) {
                        (Ok(x), Ok(y)) => assert_eq!(format!("{x:?}"), format!("{y:?}")),
                        (Err(x), Err(y)) => assert_eq!(x, y),
                        (x, y) => panic!("hand {x:?} against serde {y:?}"),
                    }
                }
            }
        }
        // Too large for the frame: refused, `out` unchanged.
        let big = ServerMessage::Reply {
            id: 1,
            outcome: Outcome::Ok(Response::Instance(Instance::from_pairs([(
                "s",
                Value::String("x".repeat(100)),
            )]))),
        };
        let mut out = vec![9];
        assert!(matches!(
            encode_server_frame(Encoding::Binary, &big, 50, &mut out),
            Err(EncodeError::TooLarge { .. })
        ));
        assert_eq!(out, [9]);
    }

    /// A `get` whose key value is an array nested 20 000 deep (40 KB) aborted the daemon
    /// (and a worker, on a direct channel) by overflowing the decoding thread's stack. It
    /// is refused in both encodings, naming why.
    #[test]
    fn a_deeply_nested_key_overflowed_the_decoder() {
        let depth = 20_000;
        // ClientMessage::Request (0), id 1, Request::Get (its index), class, a key of one
        // property whose value nests arrays `depth` deep.
        let get = ClientMessage::Request {
            id: 1,
            request: Request::Get {
                class: ClassPath::new("system.load").unwrap(),
                key: {
                    let mut key = InstanceKey::new();
                    key.insert(
                        purveyor_model::Identifier::new("pid").unwrap(),
                        Value::U64(5),
                    );
                    key
                },
            },
        };
        let mut flat = Vec::new();
        encode_payload(Encoding::Binary, &get, &mut flat).unwrap();
        // The value `{"u64": 5}` is its last two bytes: put the nesting before them.
        let mut deep = flat[..flat.len() - 2].to_vec();
        for _ in 0..depth {
            deep.extend_from_slice(&[7, 1]);
        }
        deep.extend_from_slice(&flat[flat.len() - 2..]);
        assert!(deep.len() > 40_000);
        let err = decode::<ClientMessage>(Encoding::Binary, &deep).unwrap_err();
        assert!(err.to_string().contains("arrays do not nest"), "{err}");
        let json = format!(
            r#"{{"request":{{"id":1,"request":{{"get":{{"class":"system.load","key":{{"pid":{}{{"u64":5}}{}}}}}}}}}}}"#,
            r#"{"array":["#.repeat(depth),
            "]}".repeat(depth)
        );
        assert!(decode::<ClientMessage>(Encoding::Json, json.as_bytes()).is_err());
    }

    #[test]
    fn messages_round_trip_in_both_encodings() {
        round_trip(ClientMessage::Request {
            id: 7,
            request: Request::Get {
                class: ClassPath::new("system.load").unwrap(),
                key: InstanceKey::new(),
            },
        });
        round_trip(ServerMessage::Reply {
            id: u32::MAX,
            outcome: Outcome::Ok(Response::Instance(Instance::from_pairs([
                ("load1", Value::F64(0.5)),
                ("name", Value::String("x".into())),
            ]))),
        });
    }

    #[test]
    fn json_shape_is_documented_shape() {
        let mut out = Vec::new();
        let msg = ClientMessage::Request {
            id: 1,
            request: Request::Ping,
        };
        encode_frame(Encoding::Json, &msg, 1024, &mut out).unwrap();
        assert_eq!(&out[4..], br#"{"request":{"id":1,"request":"ping"}}"#);
        assert_eq!(out[..4], (out.len() as u32 - 4).to_le_bytes());
    }

    #[test]
    fn garbage_is_a_decode_error() {
        let err = decode::<ClientMessage>(Encoding::Binary, &[0xff, 0xff, 0xff]).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("malformed binary payload (3 bytes)"),
            "{err}"
        );
        let err = decode::<ClientMessage>(Encoding::Json, b"{nope").unwrap_err();
        assert!(
            err.to_string().starts_with("malformed JSON payload"),
            "{err}"
        );
    }

    /// A binary peer is told what was wrong, not only that something was: a property
    /// name in a key, and a table of names in an instance.
    #[test]
    fn binary_refusals_name_what_was_wrong() {
        let mut key = InstanceKey::new();
        key.insert(
            purveyor_model::Identifier::new("pid").unwrap(),
            Value::U64(1),
        );
        let msg = ClientMessage::Request {
            id: 1,
            request: Request::Get {
                class: ClassPath::new("system.process").unwrap(),
                key,
            },
        };
        let mut bytes = Vec::new();
        encode_payload(Encoding::Binary, &msg, &mut bytes).unwrap();
        let at = bytes.windows(3).position(|w| w == b"pid").unwrap();
        bytes[at] = b'P';
        let err = decode::<ClientMessage>(Encoding::Binary, &bytes).unwrap_err();
        assert!(
            err.to_string().ends_with(
                "invalid identifier \"Pid\": it must start with a lowercase ASCII letter"
            ),
            "{err}"
        );
        let reply = ServerMessage::Reply {
            id: 1,
            outcome: Outcome::Ok(Response::Instance(Instance::from_pairs([(
                "pid",
                Value::U64(1),
            )]))),
        };
        let mut bytes = Vec::new();
        encode_payload(Encoding::Binary, &reply, &mut bytes).unwrap();
        let at = bytes.windows(3).position(|w| w == b"pid").unwrap();
        bytes[at - 1] = 9; // the name's length byte now runs past the blob
        let err = decode::<ServerMessage>(Encoding::Binary, &bytes).unwrap_err();
        assert!(
            err.to_string().contains("a names blob ends inside a name"),
            "{err}"
        );
        // A later success does not carry an old reason.
        decode::<ClientMessage>(Encoding::Binary, &[0, 0]).ok();
        assert_eq!(purveyor_model::take_refusal(), None);
    }

    #[test]
    fn oversized_message_is_refused_and_buffer_kept() {
        let mut out = vec![1, 2, 3];
        let err = encode_frame(Encoding::Json, &"x".repeat(100), 50, &mut out).unwrap_err();
        assert!(matches!(err, EncodeError::TooLarge { max: 50, .. }));
        assert_eq!(out, vec![1, 2, 3]);
    }
}

#[cfg(test)]
mod io_data_head {
    use super::*;
    use crate::{Outcome, Response, ServerMessage};

    #[test]
    fn the_head_and_the_bytes_make_the_frame_of_the_whole_reply() {
        for len in [
            0usize,
            1,
            127,
            128,
            300,
            16_383,
            16_384,
            1 << 20,
            (4 << 20) + 7,
        ] {
            let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let msg = ServerMessage::Reply {
                id: 0x1234_5678,
                outcome: Outcome::Ok(Response::IoData(data.clone())),
            };
            let mut whole = Vec::new();
            encode_frame(Encoding::Binary, &msg, u32::MAX, &mut whole).unwrap();
            let mut spliced = b"earlier".to_vec();
            encode_io_data_head(0x1234_5678, len, u32::MAX, &mut spliced).unwrap();
            spliced.extend_from_slice(&data);
            assert_eq!(&spliced[7..], &whole[..], "len {len}");
        }
    }

    #[test]
    fn an_io_data_head_is_recognised_and_nothing_else_is() {
        let mut frame = Vec::new();
        encode_io_data_head(77, 300_000, u32::MAX, &mut frame).unwrap();
        let head = frame.len();
        frame.extend_from_slice(&[5; 1000]);
        assert_eq!(decode_io_data_head(&frame), Some((77, head, 300_000)));
        assert_eq!(
            decode_io_data_head(&frame[..head - 1]),
            None,
            "head incomplete"
        );
        // Other replies of the same shape are not io_data.
        for response in [
            Response::IoValue(300_000),
            Response::IoProcedures(Vec::new()),
            Response::Pong,
        ] {
            let mut other = Vec::new();
            let msg = ServerMessage::Reply {
                id: 77,
                outcome: Outcome::Ok(response),
            };
            encode_frame(Encoding::Binary, &msg, u32::MAX, &mut other).unwrap();
            other.extend_from_slice(&[0; 64]);
            assert_eq!(decode_io_data_head(&other), None, "{other:?}");
        }
        // A length that does not fill the frame.
        let mut short = Vec::new();
        encode_io_data_head(77, 10, u32::MAX, &mut short).unwrap();
        short[0] += 1;
        assert_eq!(decode_io_data_head(&short), None);
    }

    #[test]
    fn a_head_past_the_frame_limit_is_refused_and_writes_nothing() {
        let mut out = b"earlier".to_vec();
        let err = encode_io_data_head(1, 1 << 20, 1 << 20, &mut out).unwrap_err();
        assert!(matches!(err, EncodeError::TooLarge { .. }), "{err}");
        assert_eq!(out, b"earlier");
    }
}
