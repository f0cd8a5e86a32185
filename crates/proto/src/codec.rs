//! The protobuf codec of every generated Storemesh stub.
//!
//! It is tonic-prost's codec with one change: a message that does not decode (invalid UTF-8 in a
//! `string`, a truncated field, a wrong wire type) is `INVALID_ARGUMENT` with a
//! `google.rpc.BadRequest` naming the field, instead of tonic's `INTERNAL`. Such a message is
//! the sender's mistake, and callers must be able to tell it apart from a server fault.

use std::marker::PhantomData;

use prost::Message;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::{ProstCodec, ProstEncoder};

pub struct StrictProstCodec<T, U> {
    inner: ProstCodec<T, U>,
}

impl<T, U> Default for StrictProstCodec<T, U> {
    fn default() -> Self {
        Self {
            inner: ProstCodec::default(),
        }
    }
}

impl<T, U> Codec for StrictProstCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = StrictDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        self.inner.encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        StrictDecoder(PhantomData)
    }
}

pub struct StrictDecoder<U>(PhantomData<U>);

impl<U: Message + Default> Decoder for StrictDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf).map(Some).map_err(invalid_message)
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

/// prost reports the failing field as `Message.field: reason`; keep the field's name.
fn invalid_message(error: prost::DecodeError) -> Status {
    use tonic_types::{ErrorDetails, StatusExt};
    let text = error.to_string();
    let detail = text
        .strip_prefix("failed to decode Protobuf message: ")
        .unwrap_or(&text);
    let (field, reason) = match detail.split_once(": ") {
        Some((path, reason)) if !path.contains(' ') => (
            path.rsplit_once('.').map_or(path, |(_, field)| field),
            reason,
        ),
        _ => ("", detail),
    };
    let mut details = ErrorDetails::new();
    details.add_bad_request_violation(field, reason);
    Status::with_error_details(
        tonic::Code::InvalidArgument,
        format!("malformed request message: {detail}"),
        details,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, PartialEq, prost::Message)]
    struct Named {
        #[prost(string, tag = "1")]
        display_name: String,
    }

    #[test]
    fn invalid_utf8_names_the_field() {
        // Field 1, wire type 2 (length-delimited), 2 bytes that are not UTF-8.
        let bytes: &[u8] = &[0x0a, 0x02, 0xff, 0xfe];
        let error = Named::decode(bytes).unwrap_err();
        let status = invalid_message(error);
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        use tonic_types::StatusExt;
        let details = status.get_error_details();
        let violation = &details.bad_request().unwrap().field_violations[0];
        assert_eq!(violation.field, "display_name");
        assert!(violation.description.contains("UTF-8"), "{violation:?}");
    }
}
