//! The mock's `/v1/files`: multipart uploads of batch input, listing, and downloads of input,
//! output and error files.

use std::collections::HashMap;

use serde_json::{Value, json};

use super::{Answer, Refusal, Reply, State, lock, unix_now};

#[derive(Default)]
pub(super) struct Files {
    list: Vec<File>,
    serial: u64,
}

struct File {
    id: String,
    filename: String,
    purpose: String,
    text: String,
    created_at: u64,
}

impl File {
    fn object(&self) -> Value {
        json!({
            "id": self.id,
            "object": "file",
            "bytes": self.text.len(),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
        })
    }
}

impl Files {
    fn add(&mut self, filename: String, purpose: String, text: String) -> &File {
        self.serial += 1;
        self.list.push(File {
            id: format!("file-mock-{}", self.serial),
            filename,
            purpose,
            text,
            created_at: unix_now(),
        });
        self.list.last().expect("just pushed")
    }

    /// Stores a batch's output or error file; its id.
    pub(super) fn add_output(&mut self, text: String) -> String {
        let name = format!("batch_output_{}.jsonl", self.serial + 1);
        self.add(name, "batch_output".into(), text).id.clone()
    }

    pub(super) fn text(&self, id: &str) -> Option<String> {
        self.get(id).map(|f| f.text.clone())
    }

    fn get(&self, id: &str) -> Option<&File> {
        self.list.iter().find(|f| f.id == id)
    }
}

pub(super) fn upload(state: &State, content_type: &str, body: &[u8]) -> Answer {
    let boundary = content_type
        .split(';')
        .map(str::trim)
        .find_map(|p| p.strip_prefix("boundary="))
        .map(|b| b.trim_matches('"').to_string())
        .ok_or_else(|| Refusal::new(400, "an upload is multipart/form-data with a boundary"))?;
    let parts = multipart(body, &boundary);
    let field = |name: &str| parts.iter().find(|p| p.name == name);
    let purpose = field("purpose")
        .map(|p| String::from_utf8_lossy(&p.data).trim().to_string())
        .ok_or_else(|| Refusal::new(400, "purpose: field required"))?;
    let file = field("file").ok_or_else(|| Refusal::new(400, "file: field required"))?;
    let text = String::from_utf8(file.data.clone())
        .map_err(|_| Refusal::new(400, "the file is not UTF-8 text"))?;
    let filename = file.filename.clone().unwrap_or_else(|| "upload".into());
    let mut inner = lock(&state.batches.inner);
    let object = inner.files.add(filename, purpose, text).object();
    Ok(Reply::Json(object))
}

pub(super) fn list(state: &State, query: &str) -> Answer {
    let params = query_params(query);
    let limit: usize = params
        .get("limit")
        .and_then(|l| l.parse().ok())
        .unwrap_or(10_000);
    let inner = lock(&state.batches.inner);
    let newest_first = inner
        .files
        .list
        .iter()
        .rev()
        .filter(|f| params.get("purpose").is_none_or(|p| *p == f.purpose));
    let page: Vec<&File> = match params.get("after") {
        Some(after) => newest_first
            .skip_while(|f| &f.id != after)
            .skip(1)
            .collect(),
        None => newest_first.collect(),
    };
    let data: Vec<Value> = page.iter().take(limit).map(|f| f.object()).collect();
    Ok(Reply::Json(
        json!({"object": "list", "data": data, "has_more": page.len() > limit}),
    ))
}

pub(super) fn get(state: &State, id: &str) -> Answer {
    let inner = lock(&state.batches.inner);
    let file = inner
        .files
        .get(id)
        .ok_or_else(|| Refusal::new(404, format!("no file `{id}`")))?;
    Ok(Reply::Json(file.object()))
}

pub(super) fn content(state: &State, id: &str) -> Answer {
    let inner = lock(&state.batches.inner);
    let text = inner
        .files
        .text(id)
        .ok_or_else(|| Refusal::new(404, format!("no file `{id}`")))?;
    Ok(Reply::Lines(text))
}

pub(super) fn query_params(query: &str) -> HashMap<String, String> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// One part of a multipart body.
struct Part {
    name: String,
    filename: Option<String>,
    data: Vec<u8>,
}

/// The parts of a `multipart/form-data` body.
fn multipart(body: &[u8], boundary: &str) -> Vec<Part> {
    let delimiter = format!("--{boundary}");
    let mut parts = Vec::new();
    for chunk in split(body, delimiter.as_bytes()).into_iter().skip(1) {
        if chunk.starts_with(b"--") {
            break;
        }
        let chunk = chunk.strip_prefix(b"\r\n").unwrap_or(chunk);
        let Some(split_at) = find(chunk, b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&chunk[..split_at]);
        let data = &chunk[split_at + 4..];
        let data = data.strip_suffix(b"\r\n").unwrap_or(data);
        let disposition = head
            .lines()
            .find(|l| l.to_ascii_lowercase().starts_with("content-disposition"))
            .unwrap_or_default();
        let param = |key: &str| {
            disposition
                .split(';')
                .map(str::trim)
                .find_map(|p| p.strip_prefix(&format!("{key}=")))
                .map(|v| v.trim_matches('"').to_string())
        };
        if let Some(name) = param("name") {
            parts.push(Part {
                name,
                filename: param("filename"),
                data: data.to_vec(),
            });
        }
    }
    parts
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn split<'a>(mut body: &'a [u8], delimiter: &[u8]) -> Vec<&'a [u8]> {
    let mut pieces = Vec::new();
    while let Some(at) = find(body, delimiter) {
        pieces.push(&body[..at]);
        body = &body[at + delimiter.len()..];
    }
    pieces.push(body);
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multipart_bodies_yield_their_fields() {
        let body = b"--XX\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n--XX\r\nContent-Disposition: form-data; name=\"file\"; filename=\"in.jsonl\"\r\nContent-Type: application/jsonl\r\n\r\n{\"a\":1}\n\r\n--XX--\r\n";
        let parts = multipart(body, "XX");
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].name, "purpose");
        assert_eq!(parts[0].data, b"batch");
        assert_eq!(parts[1].filename.as_deref(), Some("in.jsonl"));
        assert_eq!(parts[1].data, b"{\"a\":1}\n");
    }
}
