//! weft's model of the configuration users write: Istio's resources and the Kubernetes
//! Gateway API, read from YAML or JSON with the file and line of every field, and
//! validated with Istio's rules.
//!
//! This crate does no I/O and knows nothing of xDS: text goes in, typed resources and
//! diagnostics come out.
//!
//! ```
//! let parsed = weft_api::parse_text("vs.yaml", "
//! apiVersion: networking.istio.io/v1
//! kind: VirtualService
//! metadata: {name: reviews}
//! spec:
//!   hosts: [reviews]
//!   http:
//!   - route:
//!     - destination: {host: reviews, subset: v1}
//!       weight: -5
//! ");
//! assert_eq!(
//!     parsed.diagnostics[0].to_string(),
//!     "vs.yaml:10: VirtualService default/reviews: spec.http[0].route[0].weight: must not be negative",
//! );
//! ```

pub mod cel;
pub mod diag;
pub mod duration;
pub mod gateway;
pub mod istio;
pub mod parse;
pub mod path;
pub mod resource;
pub mod schema;
pub mod validate;
pub mod yaml;

pub use diag::{Diagnostic, Level, Origin, ResourceName};
pub use parse::{Parsed, parse_text};
pub use path::FieldPath;
pub use resource::{Resource, Spec};
