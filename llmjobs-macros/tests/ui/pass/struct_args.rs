//! Arguments and output of the user's own serde types, including an optional argument.

use llmjobs::{JobContext, JobError, llm_job};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Document {
    title: String,
    body: String,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Summary {
    title: String,
    words: usize,
}

#[llm_job]
async fn summarize(
    ctx: JobContext,
    document: Document,
    language: Option<String>,
) -> Result<Summary, JobError> {
    let _ = (ctx, language);
    Ok(Summary {
        title: document.title,
        words: document.body.split_whitespace().count(),
    })
}

fn main() {
    let document = Document {
        title: "t".into(),
        body: "b".into(),
    };
    let call: llmjobs::JobCall<Summary> = summarize(document, None);
    assert_eq!(
        call.args_json(),
        Ok(r#"{"document":{"title":"t","body":"b"},"language":null}"#)
    );

    // A stored call that predates an optional parameter still deserializes.
    let args: summarize = serde_json::from_str(r#"{"document":{"title":"t","body":"b"}}"#).unwrap();
    let reserialized = serde_json::to_string(&args).unwrap();
    assert_eq!(
        reserialized,
        r#"{"document":{"title":"t","body":"b"},"language":null}"#
    );

    // A missing required argument is an error that names it.
    let Err(err) = serde_json::from_str::<summarize>(r#"{"language":"en"}"#) else {
        panic!("a call without its document deserialized");
    };
    assert!(
        err.to_string().contains("missing field `document`"),
        "{err}"
    );
}
