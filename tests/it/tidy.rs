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
        "src/event/auth.rs",
        "src/event/calendar.rs",
        "src/event/mail.rs",
        "src/event/payload.rs",
        "src/event/size.rs",
        "src/thread.rs",
        "src/prompt.rs",
        "src/parse/html.rs",
        "src/prompt/quote.rs",
        "src/deliver/retry.rs",
        "src/signature.rs",
        "src/verify/trust.rs",
        "src/route.rs",
        "src/ingress/provider.rs",
        "src/secrets.rs",
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

/// The top-level modules of `src/` and, for each, the other top-level modules it names through
/// `crate::` paths (`use crate::x`, `crate::x::f()`, `use crate::{x, y::z}`). Test files and a
/// trailing `#[cfg(test)] mod tests { … }` are left out: tests may reach anywhere.
fn module_dependencies() -> std::collections::BTreeMap<String, std::collections::BTreeSet<String>> {
    let src = repo_path("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut graph = std::collections::BTreeMap::<String, std::collections::BTreeSet<String>>::new();
    for file in &files {
        let relative = file.strip_prefix(&src).expect("under src");
        let top = relative
            .components()
            .next()
            .and_then(|first| first.as_os_str().to_str())
            .expect("a path")
            .trim_end_matches(".rs")
            .to_owned();
        if ["lib", "main"].contains(&top.as_str())
            || file.file_name().is_some_and(|name| name == "tests.rs")
        {
            continue;
        }
        let text = std::fs::read_to_string(file).expect("read");
        let text = text
            .find("#[cfg(test)]\nmod tests {")
            .map_or(text.as_str(), |end| &text[..end]);
        let deps = graph.entry(top.clone()).or_default();
        for name in crate_paths(text) {
            if name != top {
                deps.insert(name);
            }
        }
    }
    let modules: std::collections::BTreeSet<String> = graph.keys().cloned().collect();
    for deps in graph.values_mut() {
        deps.retain(|dep| modules.contains(dep));
    }
    graph
}

/// The first segment of every `crate::` path in `text`, groups included.
fn crate_paths(text: &str) -> Vec<String> {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut names = Vec::new();
    for (at, _) in text.match_indices("crate::") {
        let rest = &text[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // Only the segments at the group's own depth name modules of the crate.
            let mut depth = 0;
            let mut start = true;
            for (idx, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => start = true,
                    c if start && depth == 0 && !c.is_whitespace() => {
                        start = false;
                        names.push(ident(&group[idx..]));
                    }
                    _ => {}
                }
            }
        } else {
            names.push(ident(rest));
        }
    }
    names.retain(|name| !name.is_empty());
    names
}

/// A cycle among `graph`'s modules, as the path that closes it, if there is one.
fn find_cycle(
    graph: &std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut std::collections::BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|seen| seen == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = std::collections::BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

#[test]
fn top_level_modules_depend_on_each_other_in_one_direction() {
    let graph = module_dependencies();
    assert!(
        graph.len() >= 15
            && graph
                .get("intake")
                .is_some_and(|deps| deps.contains("parse")),
        "the dependency reader found too little: {graph:?}"
    );
    if let Some(cycle) = find_cycle(&graph) {
        panic!(
            "top-level modules import each other in a loop: {}",
            cycle.join(" -> ")
        );
    }
}

#[test]
fn the_dependency_reader_sees_every_form_of_crate_path() {
    let text = "use crate::config::Config;\nuse crate::{db::{self, Db}, model, route::Rule};\n\
                let x = crate::store::put(); // crate::\n";
    assert_eq!(
        crate_paths(text),
        ["config", "db", "model", "route", "store"]
    );
    let graph = [
        ("a", vec!["b"]),
        ("b", vec!["c"]),
        ("c", vec!["a"]),
        ("d", vec![]),
    ]
    .into_iter()
    .map(|(name, deps)| {
        (
            name.to_owned(),
            deps.into_iter().map(str::to_owned).collect(),
        )
    })
    .collect();
    assert_eq!(
        find_cycle(&graph).map(|cycle| cycle.join(" -> ")),
        Some("a -> b -> c -> a".to_owned())
    );
}
