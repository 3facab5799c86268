//! Generates the client crate's `src/generated.rs` with progenitor, from the 3.0 form of
//! the spec (see [`crate::convert`]).

use anyhow::{Context, Result};
use progenitor::{GenerationSettings, Generator, InterfaceStyle, TagStyle};
use serde_json::Value;

use crate::convert;

pub fn client(doc: &Value) -> Result<proc_macro2::TokenStream> {
    let mut doc30 = convert::downgrade_to_30(doc)?;
    convert::adapt_for_client(&mut doc30);
    let spec: openapiv3::OpenAPI =
        serde_json::from_value(doc30).context("the converted document is not valid OpenAPI 3.0")?;
    let mut settings = GenerationSettings::default();
    settings
        .with_interface(InterfaceStyle::Builder)
        .with_tag(TagStyle::Merged)
        .with_derive("PartialEq");
    let mut generator = Generator::new(&settings);
    generator
        .generate_tokens(&spec)
        .map_err(|e| anyhow::anyhow!("progenitor: {e}"))
}
