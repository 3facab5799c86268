//! Project automation, run as `cargo xtask <command>` (a cargo alias):
//!
//! - `codegen` regenerates the client and api crates from `openapi.json`;
//! - `codegen --check` regenerates in memory and fails, naming each stale file, when the
//!   committed code differs (CI runs it; so does a unit test below);
//! - `bench [ARGS]` builds the server and the benchmark in release mode and runs the
//!   delivery benchmark (`cargo xtask bench --help` lists its options).

mod api_gen;
mod client_gen;
mod convert;
mod model;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use anyhow::{bail, Context, Result};

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Every generated file, relative to the workspace root, with its content.
pub fn generate_all(root: &Path) -> Result<Vec<(PathBuf, String)>> {
    let text =
        std::fs::read_to_string(root.join("openapi.json")).context("reading openapi.json")?;
    let doc: serde_json::Value = serde_json::from_str(&text).context("parsing openapi.json")?;
    let spec = model::Spec::from_json(&doc)?;
    let files = vec![
        ("crates/client/src/generated.rs", client_gen::client(&doc)?),
        (
            "crates/api/src/generated/models.rs",
            api_gen::models(&spec)?,
        ),
        (
            "crates/api/src/generated/server.rs",
            api_gen::server(&spec)?,
        ),
    ];
    files
        .into_iter()
        .map(|(path, code)| {
            Ok((
                PathBuf::from(path),
                format(code).with_context(|| format!("formatting {path}"))?,
            ))
        })
        .collect()
}

/// Formats generated tokens with prettyplease, then rustfmt (the same formatter `cargo
/// fmt` runs), so generated files pass `cargo fmt --check` and are byte-for-byte
/// reproducible.
fn format(code: proc_macro2::TokenStream) -> Result<String> {
    use std::io::Write;
    let mut file: syn::File = syn::parse2(code).context("generated code does not parse")?;
    syn::visit_mut::VisitMut::visit_file_mut(&mut OneDocLinePerAttribute, &mut file);
    let pretty = prettyplease::unparse(&file);
    // prettyplease drops the leading line comment; put the header back.
    let pretty = format!("{}{}", api_gen::HEADER, pretty);
    let mut child = Command::new(std::env::var("RUSTFMT").unwrap_or_else(|_| "rustfmt".into()))
        .args(["--edition", "2021", "--emit", "stdout", "--quiet"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running rustfmt")?;
    child
        .stdin
        .take()
        .context("rustfmt stdin")?
        .write_all(pretty.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("rustfmt failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// Splits multi-line `#[doc = "..."]` attributes (progenitor writes them) into one per
/// line, so they print as `///` comments. Printed as `/** */` blocks instead, their
/// indented lines would read as Markdown code blocks and run as doctests.
struct OneDocLinePerAttribute;

impl syn::visit_mut::VisitMut for OneDocLinePerAttribute {
    fn visit_attributes_mut(&mut self, attrs: &mut Vec<syn::Attribute>) {
        let mut out = Vec::with_capacity(attrs.len());
        for attr in attrs.drain(..) {
            let text = match &attr.meta {
                syn::Meta::NameValue(nv) if nv.path.is_ident("doc") => match &nv.value {
                    syn::Expr::Lit(syn::ExprLit {
                        lit: syn::Lit::Str(s),
                        ..
                    }) if s.value().contains('\n') => Some(s.value()),
                    _ => None,
                },
                _ => None,
            };
            match text {
                Some(text) => {
                    for line in text.lines() {
                        let line = line.trim_end();
                        let line = if line.is_empty() || line.starts_with(' ') {
                            line.to_owned()
                        } else {
                            format!(" {line}")
                        };
                        out.push(match &attr.style {
                            syn::AttrStyle::Outer => syn::parse_quote!(#[doc = #line]),
                            syn::AttrStyle::Inner(_) => syn::parse_quote!(#![doc = #line]),
                        });
                    }
                }
                None => out.push(attr),
            }
        }
        *attrs = out;
    }
}

/// The generated files that differ from what is on disk.
pub fn stale_files(root: &Path) -> Result<Vec<PathBuf>> {
    Ok(generate_all(root)?
        .into_iter()
        .filter(|(path, code)| {
            std::fs::read_to_string(root.join(path)).ok().as_deref() != Some(code.as_str())
        })
        .map(|(path, _)| path)
        .collect())
}

fn codegen(check: bool) -> Result<bool> {
    let root = workspace_root();
    if check {
        let stale = stale_files(&root)?;
        for path in &stale {
            eprintln!("stale: {} (run `cargo xtask codegen`)", path.display());
        }
        if stale.is_empty() {
            eprintln!("generated code is up to date");
        }
        return Ok(stale.is_empty());
    }
    for (path, code) in generate_all(&root)? {
        let full = root.join(&path);
        if std::fs::read_to_string(&full).ok().as_deref() == Some(code.as_str()) {
            continue;
        }
        if let Some(dir) = full.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&full, code)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(true)
}

const USAGE: &str =
    "usage: cargo xtask codegen [--check] | cargo xtask bench [ARGS...] | cargo xtask screenshots";

/// Regenerates `docs/portal-*.png`: the portal's browser test, run against its seeded
/// server with Chromium, saves a screenshot of each page it visits.
fn screenshots() -> Result<bool> {
    let root = workspace_root();
    let docs = root.join("docs");
    std::fs::create_dir_all(&docs)?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(&root)
        .env("SONZAI_PORTAL_SCREENSHOTS", &docs)
        .env("SONZAI_REQUIRE_BROWSER", "1")
        .args([
            "test",
            "-p",
            "sonzai-webhooks-tests",
            "--test",
            "server",
            "portal::the_portal_in_a_real_browser",
            "--",
            "--exact",
        ])
        .status()
        .context("running the portal's browser test")?;
    if status.success() {
        eprintln!("wrote the portal screenshots to {}", docs.display());
    }
    Ok(status.success())
}

/// Builds the server and the bench in release mode (debug builds would measure the
/// compiler's lack of optimisation, not the server) and runs the bench with `args`.
fn bench(args: &[&str]) -> Result<bool> {
    let root = workspace_root();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let built = Command::new(cargo)
        .current_dir(&root)
        .args([
            "build",
            "--release",
            "-p",
            "sonzai-webhooks-server",
            "-p",
            "sonzai-webhooks-bench",
        ])
        .status()
        .context("running cargo build")?;
    if !built.success() {
        bail!("cargo build failed ({built})");
    }
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| root.join("target"), |dir| root.join(dir));
    let mut command = Command::new(target_dir.join("release").join("sonzai-webhooks-bench"));
    command.args(args);
    #[cfg(unix)]
    {
        // Replace this process, so signals and the exit code are the bench's own.
        use std::os::unix::process::CommandExt as _;
        let err = command.exec();
        Err(err).context("running sonzai-webhooks-bench")
    }
    #[cfg(not(unix))]
    {
        Ok(command
            .status()
            .context("running sonzai-webhooks-bench")?
            .success())
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["codegen"] => codegen(false),
        ["codegen", "--check"] => codegen(true),
        ["bench", rest @ ..] => bench(rest),
        ["screenshots"] => screenshots(),
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;

    /// A property added to a schema of the spec shows in the client and in the api
    /// models, validators and JSON Schema lookup alike: both sides come from one spec.
    #[test]
    fn a_spec_change_reaches_client_and_api() {
        let text = std::fs::read_to_string(workspace_root().join("openapi.json")).unwrap();
        let mut doc: Value = serde_json::from_str(&text).unwrap();
        let generate = |doc: &Value| {
            let spec = model::Spec::from_json(doc).unwrap();
            (
                client_gen::client(doc).unwrap().to_string(),
                api_gen::models(&spec).unwrap().to_string(),
            )
        };
        let (client, models) = generate(&doc);
        assert!(!client.contains("probe_note") && !models.contains("probe_note"));
        doc["components"]["schemas"]["Webhook"]["properties"]["probe_note"] =
            json!({"type": "string", "description": "A note."});
        let (client, models) = generate(&doc);
        assert!(
            client.contains("pub probe_note"),
            "client lacks the new field"
        );
        assert!(
            models.contains("pub probe_note"),
            "api model lacks the new field"
        );
        assert!(
            models.contains("const NAME : & str = \"probe_note\""),
            "api validator lacks the new field"
        );
    }

    /// Plain `cargo test` catches generated code that is stale or was edited by hand.
    #[test]
    fn generated_code_is_up_to_date() {
        let stale = super::stale_files(&super::workspace_root()).unwrap();
        assert!(
            stale.is_empty(),
            "stale generated files {stale:?}: run `cargo xtask codegen`"
        );
    }
}
