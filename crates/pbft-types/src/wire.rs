//! The protobuf types generated from `proto/pbft.proto`. Other crates convert from and to these at the edges and
//! work with the typed messages of `message` everywhere else.

include!(concat!(env!("OUT_DIR"), "/pbft.v1.rs"));

/// The gRPC status codes by the names `Refusal.code` carries (the names of the gRPC specification).
#[cfg(feature = "grpc")]
const CODE_NAMES: [(tonic::Code, &str); 17] = [
    (tonic::Code::Ok, "OK"),
    (tonic::Code::Cancelled, "CANCELLED"),
    (tonic::Code::Unknown, "UNKNOWN"),
    (tonic::Code::InvalidArgument, "INVALID_ARGUMENT"),
    (tonic::Code::DeadlineExceeded, "DEADLINE_EXCEEDED"),
    (tonic::Code::NotFound, "NOT_FOUND"),
    (tonic::Code::AlreadyExists, "ALREADY_EXISTS"),
    (tonic::Code::PermissionDenied, "PERMISSION_DENIED"),
    (tonic::Code::ResourceExhausted, "RESOURCE_EXHAUSTED"),
    (tonic::Code::FailedPrecondition, "FAILED_PRECONDITION"),
    (tonic::Code::Aborted, "ABORTED"),
    (tonic::Code::OutOfRange, "OUT_OF_RANGE"),
    (tonic::Code::Unimplemented, "UNIMPLEMENTED"),
    (tonic::Code::Internal, "INTERNAL"),
    (tonic::Code::Unavailable, "UNAVAILABLE"),
    (tonic::Code::DataLoss, "DATA_LOSS"),
    (tonic::Code::Unauthenticated, "UNAUTHENTICATED"),
];

#[cfg(feature = "grpc")]
impl Refusal {
    /// The refusal of the request (`client`, `timestamp`) that Submit would have answered with `status`.
    pub fn from_status(client: u64, timestamp: u64, status: &tonic::Status) -> Refusal {
        let code = CODE_NAMES
            .iter()
            .find(|(c, _)| *c == status.code())
            .map_or("UNKNOWN", |(_, name)| name);
        Refusal {
            client,
            timestamp,
            code: code.to_string(),
            message: status.message().to_string(),
        }
    }

    /// The status Submit would have answered with (UNKNOWN for a code this version does not know).
    pub fn to_status(&self) -> tonic::Status {
        let code = CODE_NAMES
            .iter()
            .find(|(_, name)| *name == self.code)
            .map_or(tonic::Code::Unknown, |(c, _)| *c);
        tonic::Status::new(code, self.message.clone())
    }
}

#[cfg(all(test, feature = "grpc"))]
mod tests {
    use super::*;

    #[test]
    fn refusal_codes_travel_by_name_and_back() {
        for (code, name) in CODE_NAMES {
            let refusal = Refusal::from_status(7, 9, &tonic::Status::new(code, "why"));
            assert_eq!(refusal.code, name);
            assert_eq!((refusal.client, refusal.timestamp), (7, 9));
            assert_eq!(refusal.to_status().code(), code);
            assert_eq!(refusal.to_status().message(), "why");
        }
        let unknown = Refusal {
            code: "NO_SUCH_CODE".into(),
            ..Refusal::default()
        };
        assert_eq!(unknown.to_status().code(), tonic::Code::Unknown);
    }
}
