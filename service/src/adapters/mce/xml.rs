//! The XML tree of MCE's SOAP bodies (the `mce-xml` crate, shared with the simulator).
pub use mce_xml::{Element, XmlError, escape, parse};
