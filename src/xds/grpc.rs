//! gRPC framing of the xDS streams, done here rather than by tonic's codec, for memory.
//!
//! tonic's streaming codec keeps one `BytesMut` per stream for its responses and one for its
//! requests, and each keeps the capacity of the largest message it ever held: every stream
//! pinned a copy of the biggest response it was sent (a 1,000-service route configuration is
//! ~2 MB) and of the biggest request it sent (an EDS subscription to 4,000 names, ~200 KB),
//! long after they were written or read. Here:
//!
//! * responses: each message is written as a few `Bytes` chunks, its small fields copied into
//!   buffers of their own and its big resources shared with the snapshot (a route
//!   configuration sent to a thousand streams is not copied a thousand times), handed to
//!   HTTP/2 and freed once written;
//! * requests: [`Inbound`] buffers the request body until a whole message is there, decodes
//!   it, and drops a grown buffer once it is empty.
//!
//! The wire format is plain gRPC over HTTP/2 (uncompressed messages, `grpc-status` trailers),
//! so any client is unaffected.

use std::convert::Infallible;

use futures::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use prost::bytes::{Buf, Bytes, BytesMut};
use prost::Message;
use tokio::sync::mpsc;
use tonic::body::Body;
use tonic::codegen::http;
use tonic::{Code, Status};

use super::stream::Outbound;
use super::wire::{ChunkedMessage, Chunks};

/// Length of the gRPC message header: compressed flag (1) + length (4, big endian).
const HEADER: usize = 5;

/// Request buffers larger than this are replaced by a fresh one once empty.
const KEEP_BUFFER: usize = 16 * 1024;

/// Requests of one stream, decoded from the HTTP/2 request body.
pub(crate) struct Inbound<R> {
    body: Body,
    buf: BytesMut,
    max_message: usize,
    ended: bool,
    _message: std::marker::PhantomData<fn() -> R>,
}

impl<R: Message + Default> Inbound<R> {
    pub fn new(body: Body, max_message: usize) -> Self {
        Inbound {
            body,
            buf: BytesMut::new(),
            max_message,
            ended: false,
            _message: std::marker::PhantomData,
        }
    }

    /// The next request; `Ok(None)` when the client closed its side.
    pub async fn message(&mut self) -> Result<Option<R>, Status> {
        loop {
            if let Some(message) = self.decode()? {
                return Ok(Some(message));
            }
            if self.ended {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(Status::internal(
                        "the request stream ended in the middle of a grpc message",
                    ))
                };
            }
            match self.body.frame().await {
                None => self.ended = true,
                Some(Err(status)) => return Err(status),
                Some(Ok(frame)) => {
                    // Trailers in a request carry nothing for us.
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
            }
        }
    }

    fn decode(&mut self) -> Result<Option<R>, Status> {
        if self.buf.len() < HEADER {
            return Ok(None);
        }
        let compressed = self.buf[0];
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if compressed != 0 {
            return Err(Status::internal(
                "protocol error: received a compressed grpc message; the xds server accepts uncompressed messages only",
            ));
        }
        if len > self.max_message {
            return Err(Status::out_of_range(format!(
                "Error, decoded message length too large: found {len} bytes, the limit is: {} bytes",
                self.max_message
            )));
        }
        if self.buf.len() < HEADER + len {
            self.buf.reserve(HEADER + len - self.buf.len());
            return Ok(None);
        }
        let mut frame = self.buf.split_to(HEADER + len);
        frame.advance(HEADER);
        let message = R::decode(frame.freeze())
            .map_err(|e| Status::internal(format!("cannot decode the request: {e}")))?;
        if HEADER + len > KEEP_BUFFER || self.buf.capacity() > KEEP_BUFFER {
            // Let go of the allocation that held a big request. After `split_to` the rest
            // still shares it (its `capacity` is only what is left past the frame), so the
            // frame's size decides, not the capacity.
            self.buf = BytesMut::from(&self.buf[..]);
        }
        Ok(Some(message))
    }
}

/// One message as gRPC data: the 5-byte header and the message, as chunks that share the
/// snapshot's big resources instead of copying them ([`Chunks`]).
fn data_chunks<M: ChunkedMessage>(message: &M) -> Vec<Bytes> {
    let len = u32::try_from(message.encoded_len()).unwrap_or(u32::MAX);
    let mut header = [0u8; HEADER];
    header[1..].copy_from_slice(&len.to_be_bytes());
    let mut chunks = Chunks::with_prefix(&header);
    message.encode_chunks(&mut chunks);
    chunks.finish()
}

fn trailers(status: &Status) -> http::HeaderMap {
    let mut headers = http::HeaderMap::new();
    if status.add_header(&mut headers).is_err() {
        // Only a message that cannot be a header value fails; the code alone still can.
        headers.insert("grpc-status", http::HeaderValue::from(status.code() as i32));
    }
    headers
}

/// The HTTP response of a streaming call: the messages the stream's task sends on `rx`, then
/// `grpc-status` trailers (the task's error, or OK when it ends).
pub(crate) fn response<M: ChunkedMessage + Send + 'static>(
    rx: mpsc::Receiver<Outbound<M>>,
) -> http::Response<Body> {
    let frames = futures::stream::unfold(Some(rx), |rx| async move {
        let mut rx = rx?;
        let frames = match rx.recv().await {
            Some(Ok(message)) => {
                let data = data_chunks(&*message).into_iter().map(Frame::data);
                return Some((futures::stream::iter(data.collect::<Vec<_>>()), Some(rx)));
            }
            Some(Err(status)) => vec![Frame::trailers(trailers(&status))],
            None => vec![Frame::trailers(trailers(&Status::new(Code::Ok, "")))],
        };
        Some((futures::stream::iter(frames), None))
    })
    .flatten()
    .map(Ok::<_, Infallible>);
    let mut response = http::Response::new(Body::new(StreamBody::new(frames)));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    response
}
