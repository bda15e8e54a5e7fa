//! OCI images: references, the registry client, the content-addressed store, layers.

pub mod layer;
pub mod oci;
pub mod reference;
pub mod registry;
pub mod store;

pub use reference::Reference;
pub use registry::RegistryConfig;
pub use store::{Exported, Image, ImageStore, PullError};
