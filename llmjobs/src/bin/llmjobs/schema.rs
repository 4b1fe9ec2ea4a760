//! `llmjobs schema` and `llmjobs migrate [--check]`.

use llmjobs::{Compatibility, Inspector, Jobs, SchemaInfo};
use serde_json::json;

use crate::args::MigrateArgs;
use crate::{Failure, Outcome};

/// What the schema's state means, in a sentence.
fn verdict(info: &SchemaInfo) -> &'static str {
    match info.compatibility {
        Compatibility::Current => "this llmjobs can use it",
        Compatibility::Older => {
            "older than this llmjobs: `llmjobs migrate` (or the application's next start) upgrades it"
        }
        Compatibility::Newer => "migrated by a newer llmjobs: this llmjobs must not use it",
        Compatibility::Uninitialized => {
            "no llmjobs tables: `llmjobs migrate` (or the application's first start) creates them"
        }
        Compatibility::Failed => "a migration failed part-way: restore the database from a backup",
        _ => "unknown",
    }
}

fn print(info: &SchemaInfo, json: bool) {
    if json {
        let value = json!({
            "backend": info.backend,
            "version": info.version,
            "supported": info.supported,
            "compatibility": info.compatibility,
            "usable": info.is_usable(),
        });
        outln!("{value}");
        return;
    }
    let version = info
        .version
        .map_or_else(|| "none".to_string(), |v| v.to_string());
    outln!(
        "{} schema version {version}; this llmjobs ({}) uses version {}: {}",
        info.backend,
        env!("CARGO_PKG_VERSION"),
        info.supported,
        verdict(info)
    );
}

pub(crate) async fn show(url: &str, json: bool) -> Outcome {
    let info = Inspector::schema_of(url).await?;
    print(&info, json);
    Ok(())
}

pub(crate) async fn migrate(url: &str, args: MigrateArgs) -> Outcome {
    let info = Inspector::schema_of(url).await?;
    if args.check {
        print(&info, false);
        return if info.is_usable() {
            Ok(())
        } else {
            Err(Failure::code(1))
        };
    }
    match info.compatibility {
        Compatibility::Current => {
            print(&info, false);
            Ok(())
        }
        Compatibility::Older | Compatibility::Uninitialized => {
            // Opening migrates; a runtime that runs no jobs does nothing else of note.
            let jobs = Jobs::builder()
                .url(url)
                .run_jobs(false)
                .auto_register(false)
                .open()
                .await?;
            jobs.shutdown().await;
            print(&Inspector::schema_of(url).await?, false);
            Ok(())
        }
        _ => Err(Failure::msg(format!(
            "cannot migrate: schema version {} — {}",
            info.version.unwrap_or(0),
            verdict(&info)
        ))),
    }
}
