//! The protobuf types generated from `proto/pbft.proto`. Other crates convert from and to these at the edges and
//! work with the typed messages of `message` everywhere else.

include!(concat!(env!("OUT_DIR"), "/pbft.v1.rs"));
