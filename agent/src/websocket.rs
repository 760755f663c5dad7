//! kubectl's WebSocket streams (`v5.channel.k8s.io`, its default since
//! 1.30) on runtimes whose streaming server speaks only SPDY (containerd
//! 1.6 answers WebSocket with 403): the agent is the WebSocket server and
//! an SPDY/3.1 client, as kube-apiserver's stream translator is.
//!
//! WebSocket (RFC 6455) messages carry one stream each, its channel in
//! the first byte: 0 stdin, 1 stdout, 2 stderr, 3 error (the exit
//! `Status`), 4 resize; v5 adds 255, "close that stream" (stdin's EOF).
//! On the SPDY side each is a stream the client opens with a
//! `streamtype` header. SPDY header blocks are zlib streams; the agent
//! sends its own as stored (uncompressed) deflate blocks, which any
//! inflater reads, and never needs to read the server's.

use std::collections::HashMap;

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::runtime::Stdio;

/// The WebSocket subprotocols translated, best first.
pub const PROTOCOLS: &[&str] = &["v5.channel.k8s.io", "v4.channel.k8s.io"];
/// What the SPDY side is asked for.
pub const SPDY_PROTOCOL: &str = "v4.channel.k8s.io";

const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// The largest WebSocket message accepted (kubectl sends at most 32 KiB).
const MAX_MESSAGE: usize = 16 << 20;

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`.
pub fn accept_key(key: &str) -> String {
    use base64::Engine;
    let digest = ring::digest::digest(
        &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        format!("{key}{WS_GUID}").as_bytes(),
    );
    base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
}

/// The subprotocol to answer, of those the client offers.
pub fn choose_protocol(offered: &str) -> Option<&'static str> {
    let offered: Vec<&str> = offered.split(',').map(str::trim).collect();
    PROTOCOLS.iter().copied().find(|p| offered.contains(p))
}

/// The channels of a kube stream.
const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
const CLOSE: u8 = 255;

/// Joins a WebSocket client and an SPDY server until the command ends.
pub async fn bridge<W, S>(ws: W, spdy: S, stdio: Stdio) -> std::io::Result<()>
where
    W: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut ws_read, mut ws_write) = tokio::io::split(ws);
    let (mut spdy_read, mut spdy_write) = tokio::io::split(spdy);
    // The streams the server waits for, by channel; SPDY ids are odd.
    let mut wanted = vec![ERROR];
    if stdio.stdin {
        wanted.push(STDIN);
    }
    if stdio.stdout {
        wanted.push(STDOUT);
    }
    if stdio.stderr && !stdio.tty {
        wanted.push(STDERR);
    }
    if stdio.tty {
        wanted.push(RESIZE);
    }
    let mut header = HeaderWriter::default();
    let mut ids: HashMap<u8, u32> = HashMap::new();
    for (i, channel) in wanted.iter().enumerate() {
        let id = 2 * i as u32 + 1;
        ids.insert(*channel, id);
        spdy_write
            .write_all(&syn_stream(id, stream_type(*channel), &mut header))
            .await?;
    }
    let channels: HashMap<u32, u8> = ids.iter().map(|(c, id)| (*id, *c)).collect();
    // (opcode, payload) for the client; frames for the server.
    let (to_ws, mut ws_out) = tokio::sync::mpsc::channel::<(u8, Vec<u8>)>(64);
    let (to_spdy, mut spdy_out) = tokio::sync::mpsc::channel::<Vec<u8>>(64);
    let from_server = {
        let (to_ws, to_spdy) = (to_ws.clone(), to_spdy.clone());
        // The command is over once stdout, stderr and error have ended.
        let expected_ends = channels
            .values()
            .filter(|c| !matches!(**c, STDIN | RESIZE))
            .count();
        async move {
            let mut ended = 0;
            let mut error = Vec::new();
            while let Some(frame) = read_spdy_frame(&mut spdy_read).await? {
                match frame {
                    SpdyFrame::Data { stream, fin, data } => {
                        let Some(&channel) = channels.get(&stream) else {
                            continue;
                        };
                        if channel == ERROR {
                            error.extend_from_slice(&data);
                        } else if !data.is_empty() {
                            let mut message = vec![channel];
                            message.extend_from_slice(&data);
                            if to_ws.send((OP_BINARY, message)).await.is_err() {
                                break;
                            }
                        }
                        if fin {
                            if channel == ERROR && !error.is_empty() {
                                let mut message = vec![ERROR];
                                message.append(&mut error);
                                let _ = to_ws.send((OP_BINARY, message)).await;
                            }
                            ended += 1;
                            if ended >= expected_ends {
                                break;
                            }
                        }
                    }
                    SpdyFrame::Ping(payload) => {
                        let _ = to_spdy.send(control_frame(6, 0, &payload)).await;
                    }
                    SpdyFrame::GoAway => break,
                    // The server resets the error stream once it has
                    // written the exit status: the command is over.
                    SpdyFrame::Reset(stream) if channels.get(&stream) == Some(&ERROR) => break,
                    SpdyFrame::Reset(_) | SpdyFrame::Other => {}
                }
            }
            if !error.is_empty() {
                let mut message = vec![ERROR];
                message.append(&mut error);
                let _ = to_ws.send((OP_BINARY, message)).await;
            }
            Ok::<(), std::io::Error>(())
        }
    };
    let from_client = async move {
        while let Some(message) = read_ws_message(&mut ws_read).await? {
            match message {
                WsMessage::Data(data) => {
                    let Some((&channel, payload)) = data.split_first() else {
                        continue;
                    };
                    let frame = if channel == CLOSE {
                        let closed = payload.first().copied().unwrap_or(STDIN);
                        ids.get(&closed).map(|id| data_frame(*id, true, &[]))
                    } else {
                        ids.get(&channel).map(|id| data_frame(*id, false, payload))
                    };
                    if let Some(frame) = frame
                        && to_spdy.send(frame).await.is_err()
                    {
                        break;
                    }
                }
                WsMessage::Ping(payload) => {
                    let _ = to_ws.send((OP_PONG, payload)).await;
                }
                WsMessage::Close => break,
            }
        }
        Ok::<(), std::io::Error>(())
    };
    let server = tokio::spawn(from_server);
    let client = tokio::spawn(from_client);
    let spdy_writer = tokio::spawn(async move {
        while let Some(frame) = spdy_out.recv().await {
            if spdy_write.write_all(&frame).await.is_err() {
                return;
            }
        }
    });
    let ws_writer = tokio::spawn(async move {
        while let Some((opcode, payload)) = ws_out.recv().await {
            ws_write.write_all(&ws_frame(opcode, &payload)).await?;
        }
        // Normal closure, once everything for the client is written.
        ws_write
            .write_all(&ws_frame(OP_CLOSE, &1000u16.to_be_bytes()))
            .await?;
        ws_write.shutdown().await
    });
    let ended = server.await;
    // The client side holds senders too: end it so the writers finish.
    client.abort();
    let _ = client.await;
    spdy_writer.abort();
    let _ = ws_writer.await;
    match ended {
        Ok(result) => result,
        Err(e) => Err(std::io::Error::other(e)),
    }
}

const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

fn stream_type(channel: u8) -> &'static str {
    match channel {
        STDIN => "stdin",
        STDOUT => "stdout",
        STDERR => "stderr",
        RESIZE => "resize",
        _ => "error",
    }
}

/// A message from the WebSocket client.
enum WsMessage {
    Data(Vec<u8>),
    Ping(Vec<u8>),
    Close,
}

/// The next message, its fragments joined; None at the end of the stream.
async fn read_ws_message<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Option<WsMessage>> {
    let mut message = Vec::new();
    loop {
        let mut head = [0u8; 2];
        if r.read_exact(&mut head).await.is_err() {
            return Ok(None);
        }
        let (fin, opcode) = (head[0] & 0x80 != 0, head[0] & 0x0F);
        let masked = head[1] & 0x80 != 0;
        let len = match head[1] & 0x7F {
            126 => u64::from(r.read_u16().await?),
            127 => r.read_u64().await?,
            n => u64::from(n),
        } as usize;
        if len > MAX_MESSAGE || message.len() + len > MAX_MESSAGE {
            return Err(std::io::Error::other("WebSocket message too large"));
        }
        let mut mask = [0u8; 4];
        if masked {
            r.read_exact(&mut mask).await?;
        }
        let mut payload = vec![0u8; len];
        r.read_exact(&mut payload).await?;
        if masked {
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= mask[i % 4];
            }
        }
        match opcode {
            OP_CLOSE => return Ok(Some(WsMessage::Close)),
            OP_PING => return Ok(Some(WsMessage::Ping(payload))),
            OP_PONG => continue,
            _ => {
                message.extend_from_slice(&payload);
                if fin {
                    return Ok(Some(WsMessage::Data(message)));
                }
            }
        }
    }
}

/// One unmasked, unfragmented frame (servers do not mask).
fn ws_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![0x80 | opcode];
    push_ws_len(&mut frame, payload.len());
    frame.extend_from_slice(payload);
    frame
}

fn push_ws_len(frame: &mut Vec<u8>, len: usize) {
    if len < 126 {
        frame.push(len as u8);
    } else if len <= usize::from(u16::MAX) {
        frame.push(126);
        frame.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        frame.push(127);
        frame.extend_from_slice(&(len as u64).to_be_bytes());
    }
}

/// What the agent reads of the SPDY server's frames.
enum SpdyFrame {
    Data {
        stream: u32,
        fin: bool,
        data: Vec<u8>,
    },
    Ping(Vec<u8>),
    Reset(u32),
    GoAway,
    Other,
}

const SPDY_VERSION: u16 = 3;
const FLAG_FIN: u8 = 0x01;
/// The largest frame read (SPDY lengths are 24 bits).
const MAX_FRAME: usize = 1 << 24;

async fn read_spdy_frame<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Option<SpdyFrame>> {
    let mut head = [0u8; 8];
    if r.read_exact(&mut head).await.is_err() {
        return Ok(None);
    }
    let mut h = &head[..];
    let first = h.get_u32();
    let flags = h.get_u8();
    let len = usize::from(h.get_u8()) << 16 | usize::from(h.get_u16());
    if len >= MAX_FRAME {
        return Err(std::io::Error::other("SPDY frame too large"));
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await?;
    if first & 0x8000_0000 == 0 {
        tracing::trace!(stream = first & 0x7FFF_FFFF, flags, len, "SPDY data frame");
        return Ok(Some(SpdyFrame::Data {
            stream: first & 0x7FFF_FFFF,
            fin: flags & FLAG_FIN != 0,
            data: payload,
        }));
    }
    let kind = first & 0xFFFF;
    tracing::trace!(kind, flags, len, "SPDY control frame");
    let stream = || {
        payload.get(..4).map_or(0, |b| {
            u32::from_be_bytes([b[0], b[1], b[2], b[3]]) & 0x7FFF_FFFF
        })
    };
    Ok(Some(match kind {
        3 => SpdyFrame::Reset(stream()),
        6 => SpdyFrame::Ping(payload),
        7 => SpdyFrame::GoAway,
        _ => SpdyFrame::Other,
    }))
}

fn control_frame(kind: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = BytesMut::with_capacity(8 + payload.len());
    frame.put_u16(0x8000 | SPDY_VERSION);
    frame.put_u16(kind);
    frame.put_u8(flags);
    frame.put_uint(payload.len() as u64, 3);
    frame.put_slice(payload);
    frame.to_vec()
}

fn data_frame(stream: u32, fin: bool, data: &[u8]) -> Vec<u8> {
    let mut frame = BytesMut::with_capacity(8 + data.len());
    frame.put_u32(stream & 0x7FFF_FFFF);
    frame.put_u8(if fin { FLAG_FIN } else { 0 });
    frame.put_uint(data.len() as u64, 3);
    frame.put_slice(data);
    frame.to_vec()
}

/// A SYN_STREAM opening stream `id` of type `kind`.
fn syn_stream(id: u32, kind: &str, header: &mut HeaderWriter) -> Vec<u8> {
    let mut payload = BytesMut::new();
    payload.put_u32(id);
    payload.put_u32(0);
    // Priority 0, slot 0.
    payload.put_u16(0);
    payload.put_slice(&header.block(&[("streamtype", kind)]));
    control_frame(1, 0, &payload)
}

/// The connection's header compression context: one zlib stream for all
/// header blocks sent, each block a stored deflate block.
#[derive(Default)]
struct HeaderWriter {
    started: bool,
}

impl HeaderWriter {
    fn block(&mut self, headers: &[(&str, &str)]) -> Vec<u8> {
        let mut raw = BytesMut::new();
        raw.put_u32(headers.len() as u32);
        for (name, value) in headers {
            raw.put_u32(name.len() as u32);
            raw.put_slice(name.as_bytes());
            raw.put_u32(value.len() as u32);
            raw.put_slice(value.as_bytes());
        }
        let mut out = Vec::new();
        if !self.started {
            // zlib: deflate with a 32 KiB window, no preset dictionary.
            out.extend_from_slice(&[0x78, 0x01]);
            self.started = true;
        }
        // A stored block (not the last), its length and its complement.
        out.push(0x00);
        out.extend_from_slice(&(raw.len() as u16).to_le_bytes());
        out.extend_from_slice(&(!(raw.len() as u16)).to_le_bytes());
        out.extend_from_slice(&raw);
        // A sync flush (an empty stored block): an inflater hands out
        // what it has only at a block boundary it can see.
        out.extend_from_slice(&[0x00, 0x00, 0x00, 0xFF, 0xFF]);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_accept_key_is_rfc_6455s() {
        // The example of RFC 6455, section 1.3.
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        assert_eq!(
            choose_protocol("v5.channel.k8s.io, v4.channel.k8s.io"),
            Some("v5.channel.k8s.io")
        );
        assert_eq!(choose_protocol("base64.channel.k8s.io"), None);
    }

    #[test]
    fn header_blocks_are_a_zlib_stream_of_stored_blocks() {
        let mut w = HeaderWriter::default();
        let first = w.block(&[("streamtype", "error")]);
        assert_eq!(&first[..3], &[0x78, 0x01, 0x00]);
        let second = w.block(&[("streamtype", "stdout")]);
        assert_eq!(second[0], 0x00);
        let len = u16::from_le_bytes([second[1], second[2]]);
        assert_eq!(!len, u16::from_le_bytes([second[3], second[4]]));
        assert_eq!(usize::from(len), second.len() - 10);
        assert!(second.ends_with(&[0x00, 0x00, 0x00, 0xFF, 0xFF]));
    }

    #[tokio::test]
    async fn websocket_frames_round_trip_masked() {
        let payload = vec![1u8; 300];
        let mask = [1u8, 2, 3, 4];
        let mut frame = vec![0x82, 0x80 | 126];
        frame.extend_from_slice(&300u16.to_be_bytes());
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        let mut r = &frame[..];
        match read_ws_message(&mut r).await.unwrap() {
            Some(WsMessage::Data(d)) => assert_eq!(d, payload),
            _ => panic!("a data message"),
        }
        assert_eq!(&ws_frame(OP_BINARY, b"ab")[..], &[0x82, 2, b'a', b'b']);
    }

    #[tokio::test]
    async fn spdy_data_frames_parse() {
        let frame = data_frame(5, true, b"out");
        let mut r = &frame[..];
        match read_spdy_frame(&mut r).await.unwrap() {
            Some(SpdyFrame::Data { stream, fin, data }) => {
                assert_eq!((stream, fin, data.as_slice()), (5, true, &b"out"[..]));
            }
            _ => panic!("a data frame"),
        }
    }
}
