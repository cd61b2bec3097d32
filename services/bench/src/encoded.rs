//! Unary calls whose request is encoded once, before the run, as h2load sends one fixed body:
//! the load generator then does the same small work for every RPC's request whatever its size,
//! and a comparison between RPCs measures the server (and the HTTP/2 both sides share), not the
//! generator's encoding. Answers are decoded into the real message, to check each one.

use std::marker::PhantomData;
use std::sync::Arc;

use bytes::BufMut;
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;

use crate::load::Call;

/// A call of `path` with the request `message`, a success when `ok` says so of the answer.
pub fn call<Req: prost::Message, Res: prost::Message + Default + Send + 'static>(
    path: &'static str,
    message: &Req,
    ok: fn(&Res) -> bool,
) -> Call {
    let body: Arc<[u8]> = message.encode_to_vec().into();
    Arc::new(move |channel: Channel| {
        let body = body.clone();
        Box::pin(async move {
            let mut grpc = tonic::client::Grpc::new(channel);
            if grpc.ready().await.is_err() {
                return false;
            }
            grpc.unary(
                tonic::Request::new(body),
                PathAndQuery::from_static(path),
                PreEncoded::<Res>(PhantomData),
            )
            .await
            .is_ok_and(|answer| ok(answer.get_ref()))
        })
    })
}

struct PreEncoded<Res>(PhantomData<Res>);

impl<Res: prost::Message + Default + Send + 'static> Codec for PreEncoded<Res> {
    type Encode = Arc<[u8]>;
    type Decode = Res;
    type Encoder = Bytes;
    type Decoder = Message<Res>;

    fn encoder(&mut self) -> Bytes {
        Bytes
    }

    fn decoder(&mut self) -> Message<Res> {
        Message(PhantomData)
    }
}

struct Bytes;

impl Encoder for Bytes {
    type Item = Arc<[u8]>;
    type Error = Status;

    fn encode(&mut self, item: Arc<[u8]>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

struct Message<Res>(PhantomData<Res>);

impl<Res: prost::Message + Default> Decoder for Message<Res> {
    type Item = Res;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Res>, Status> {
        Res::decode(src)
            .map(Some)
            .map_err(|e| Status::internal(e.to_string()))
    }
}
