//! The document is valid OpenAPI 3.1 in structure, and describes exactly the routes served.

use std::collections::BTreeSet;

use serde_json::Value;

use super::document;
use crate::http::served_routes;

fn doc() -> Value {
    serde_json::to_value(document()).unwrap()
}

const METHODS: &[&str] = &[
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// Every operation: (method, path, operation).
fn operations(doc: &Value) -> Vec<(String, String, Value)> {
    let mut all = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("a path item") {
            if METHODS.contains(&method.as_str()) {
                all.push((method.clone(), path.clone(), operation.clone()));
            }
        }
    }
    all
}

#[test]
fn every_served_route_is_documented_and_nothing_else() {
    let served: BTreeSet<(String, String)> = served_routes()
        .into_iter()
        .map(|(method, path)| (method.as_str().to_ascii_lowercase(), path.to_string()))
        .collect();
    let documented: BTreeSet<(String, String)> = operations(&doc())
        .into_iter()
        .map(|(method, path, _)| (method, path))
        .collect();
    let undocumented: Vec<_> = served.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "served but not documented: {undocumented:?}"
    );
    let unserved: Vec<_> = documented.difference(&served).collect();
    assert!(
        unserved.is_empty(),
        "documented but not served: {unserved:?}"
    );
}

#[test]
fn the_document_has_what_openapi_3_1_requires() {
    let doc = doc();
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1."),
        "{}",
        doc["openapi"]
    );
    assert!(!doc["info"]["title"].as_str().unwrap().is_empty());
    assert!(!doc["info"]["version"].as_str().unwrap().is_empty());
    let mut ids = BTreeSet::new();
    for (method, path, operation) in operations(&doc) {
        let at = format!("{method} {path}");
        let id = operation["operationId"]
            .as_str()
            .unwrap_or_else(|| panic!("{at}: no operationId"));
        assert!(ids.insert(id.to_string()), "{at}: operationId {id} twice");
        let responses = operation["responses"]
            .as_object()
            .unwrap_or_else(|| panic!("{at}: no responses"));
        assert!(!responses.is_empty(), "{at}: no responses");
        for (code, response) in responses {
            assert!(code.parse::<u16>().is_ok(), "{at}: status {code}");
            assert!(
                response["description"].is_string(),
                "{at} {code}: no description"
            );
        }
        // Each `{param}` of the path is a required path parameter.
        let params = operation["parameters"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for name in path
            .split('/')
            .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
        {
            assert!(
                params
                    .iter()
                    .any(|p| p["name"] == name && p["in"] == "path" && p["required"] == true),
                "{at}: path parameter {name} is not declared"
            );
        }
        for requirement in operation["security"]
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            for scheme in requirement.as_object().unwrap().keys() {
                assert!(
                    doc["components"]["securitySchemes"][scheme].is_object(),
                    "{at}: security scheme {scheme} is not defined"
                );
            }
        }
    }
}

#[test]
fn every_reference_resolves() {
    fn refs(value: &Value, found: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                if let Some(Value::String(target)) = map.get("$ref") {
                    found.push(target.clone());
                }
                map.values().for_each(|v| refs(v, found));
            }
            Value::Array(items) => items.iter().for_each(|v| refs(v, found)),
            _ => {}
        }
    }
    let doc = doc();
    let mut found = Vec::new();
    refs(&doc, &mut found);
    assert!(!found.is_empty(), "the responses refer to their schemas");
    for target in found {
        let pointer = target
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("{target} is not local"));
        assert!(doc.pointer(pointer).is_some(), "{target} does not resolve");
    }
}

#[test]
fn mutating_routes_require_the_token_and_reads_may_carry_it() {
    for (method, path, operation) in operations(&doc()) {
        let security = operation["security"]
            .as_array()
            .unwrap_or_else(|| panic!("{method} {path}"));
        let optional = security
            .iter()
            .any(|r| r.as_object().is_some_and(|r| r.is_empty()));
        assert_eq!(optional, method == "get", "{method} {path}: {security:?}");
        // Only the dashboard's page and assets, which hold no job data, need no token at all.
        let never = security
            .iter()
            .all(|r| r.as_object().is_some_and(|r| r.is_empty()));
        assert_eq!(
            never,
            ["/", "/dashboard/app.js", "/dashboard/app.css"].contains(&path.as_str()),
            "{method} {path}: {security:?}"
        );
        assert!(
            never || operation["responses"]["401"].is_object(),
            "{method} {path}: no 401"
        );
    }
}
