//! Protobuf's `Struct`, `Value` and `ListValue` with ordered maps: the same wire format
//! as the generated types, whose hash maps encode in a different order each time. Config
//! encoded from these gives the same bytes for the same content, so an unchanged
//! translation is not mistaken for a change.

use std::collections::BTreeMap;

/// `google.protobuf.Struct` with ordered fields (same wire format).
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct SortedStruct {
    #[prost(btree_map = "string, message", tag = "1")]
    pub(crate) fields: BTreeMap<String, SortedValue>,
}

/// `google.protobuf.Value`, the kinds the metadata uses.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct SortedValue {
    #[prost(oneof = "SortedKind", tags = "3, 4, 5, 6")]
    pub(crate) kind: Option<SortedKind>,
}

/// `google.protobuf.Value`'s kinds.
#[derive(Clone, PartialEq, prost::Oneof)]
pub(crate) enum SortedKind {
    #[prost(string, tag = "3")]
    String(String),
    #[prost(bool, tag = "4")]
    Bool(bool),
    #[prost(message, tag = "5")]
    Struct(SortedStruct),
    #[prost(message, tag = "6")]
    List(SortedList),
}

/// `google.protobuf.ListValue`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct SortedList {
    #[prost(message, repeated, tag = "1")]
    pub(crate) values: Vec<SortedValue>,
}
