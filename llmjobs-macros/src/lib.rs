//! The `#[llm_job]` attribute of [llmjobs](https://docs.rs/llmjobs). Use it through the
//! `llmjobs` crate, which re-exports it as `llmjobs::llm_job`.
//!
//! # `#[llm_job]`
//!
#![doc = include_str!("../docs/llm_job.md")]

mod attr;
mod expand;

use proc_macro::TokenStream;

#[doc = include_str!("../docs/llm_job.md")]
#[proc_macro_attribute]
pub fn llm_job(args: TokenStream, item: TokenStream) -> TokenStream {
    match expand::llm_job(args.into(), item.clone().into()) {
        Ok(expanded) => expanded.into(),
        // The item as written, so that its other uses still resolve while the error is fixed.
        Err(error) => {
            let mut output = item;
            output.extend(TokenStream::from(error.into_compile_error()));
            output
        }
    }
}
