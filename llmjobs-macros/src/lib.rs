//! The `#[llm_job]` attribute. Use it through the `llmjobs` crate, which re-exports it.

use proc_macro::TokenStream;

/// Turns an `async fn` into a durable job (documented in the `llmjobs` crate).
#[proc_macro_attribute]
pub fn llm_job(_args: TokenStream, item: TokenStream) -> TokenStream {
    item
}
