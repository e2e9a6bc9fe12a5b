//! Architecture invariants checked as tests (see README "Architecture").

use crate::support::repo_path;

fn rust_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir)
        .expect("read dir")
        .filter_map(Result::ok)
    {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_module_says_what_it_owns() {
    let mut files = Vec::new();
    rust_files(&repo_path("src"), &mut files);
    for file in files {
        if file.file_name().is_some_and(|name| name == "tests.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&file).expect("read");
        assert!(
            text.starts_with("//!"),
            "{} has no module doc",
            file.display()
        );
    }
}

#[test]
fn pure_stages_do_no_io() {
    for file in [
        "src/smtp/proto.rs",
        "src/parse.rs",
        "src/event.rs",
        "src/thread.rs",
        "src/prompt.rs",
        "src/prompt/html.rs",
        "src/prompt/quote.rs",
        "src/deliver/retry.rs",
        "src/deliver/signature.rs",
        "src/verify/trust.rs",
    ] {
        let text = std::fs::read_to_string(repo_path(file)).expect("read");
        for forbidden in [
            "tokio::",
            "std::fs",
            "std::net::TcpStream",
            "reqwest::",
            "sqlx::",
        ] {
            assert!(!text.contains(forbidden), "{file} uses {forbidden}");
        }
    }
}

#[test]
fn eml_fixtures_are_crlf_only() {
    let dir = repo_path("fixtures/eml");
    let mut count = 0;
    for entry in std::fs::read_dir(&dir)
        .expect("read dir")
        .filter_map(Result::ok)
    {
        let path = entry.path();
        if path.extension().is_none_or(|ext| ext != "eml") {
            continue;
        }
        count += 1;
        let bytes = std::fs::read(&path).expect("read");
        for (idx, &byte) in bytes.iter().enumerate() {
            match byte {
                b'\n' => assert!(
                    idx > 0 && bytes[idx - 1] == b'\r',
                    "{}: bare LF at {idx}",
                    path.display()
                ),
                b'\r' => assert!(
                    bytes.get(idx + 1) == Some(&b'\n'),
                    "{}: bare CR at {idx}",
                    path.display()
                ),
                _ => {}
            }
        }
    }
    assert!(count >= 10, "only {count} fixtures");
}

#[test]
fn example_config_validates() {
    let text =
        std::fs::read_to_string(repo_path("deploy/config.example.toml")).expect("read example");
    mxhook::config::Config::from_toml_str(&text).expect("deploy/config.example.toml is valid");
}
