//! Parameters written as patterns, the context in any position, raw identifiers, and attributes
//! on the function.

use llmjobs::{JobContext, JobError, llm_job};

#[llm_job]
async fn scale(
    mut factor: u32,
    (x, y): (u32, u32),
    ctx: JobContext,
    _: bool,
    r#type: String,
) -> Result<(u32, u32, String), JobError> {
    let _ = ctx;
    factor *= 2;
    Ok((x * factor, y * factor, r#type))
}

#[llm_job]
#[allow(clippy::unused_async)]
#[inline]
async fn r#match((a, b): (u8, u8), arg0: u32) -> Result<u32, JobError> {
    Ok(arg0 + u32::from(a) + u32::from(b))
}

// A `#[cfg]` on the function applies to everything generated: of these two, only one exists.
#[llm_job]
#[cfg(any())]
async fn twin(text: u32) -> Result<u32, JobError> {
    Ok(text)
}

#[llm_job]
#[cfg(all())]
async fn twin(text: String) -> Result<String, JobError> {
    Ok(text)
}

fn main() {
    let call = scale(1, (2, 3), true, "kind".into());
    assert_eq!(call.name(), "scale");
    assert_eq!(
        call.args_json(),
        Ok(r#"{"factor":1,"arg1":[2,3],"arg2":true,"type":"kind"}"#)
    );

    // A generated field name never takes a name the user wrote.
    let call = r#match((2, 3), 1);
    assert_eq!(call.name(), "match");
    assert_eq!(call.args_json(), Ok(r#"{"arg0_":[2,3],"arg0":1}"#));

    let call: llmjobs::JobCall<String> = twin("one".into());
    assert_eq!(call.name(), "twin");
}
