//! The routes the api's source declares: every `Router::route` call in
//! `api/src`, read as `(method, path)` pairs, so that a test can hold the
//! OpenAPI document to the router (axum cannot list a router's routes).
//!
//! The reading is deliberately strict, so that it cannot silently miss a
//! route: the path must be a string literal and the method router a chain of
//! `get(…)`, `post(…)`, … and `fallback(…)` calls; anything else (a path in a
//! constant, `any`, `on`, a nested router, a routed service) is a panic
//! naming the file, to be read here before it is used there. Comments,
//! string literals and `#[cfg(test)] mod … { … }` blocks (tests build
//! routers of their own) are skipped.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The methods axum's `MethodRouter` has a function for.
const METHODS: &[&str] = &[
    "get", "post", "put", "patch", "delete", "head", "options", "trace",
];

/// One declared `(method, path)`, with the file that declares it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct DeclaredRoute {
    /// Upper case: `GET`, `POST`, …
    pub method: String,
    /// As axum writes it: `/api/v1/leads/{id}`.
    pub path: String,
    pub file: PathBuf,
}

/// The api crate's source directory.
pub fn api_source_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../api/src")
}

/// Every route declared under `dir` (recursively), sorted.
pub fn declared_routes(dir: &Path) -> Vec<DeclaredRoute> {
    let mut files = Vec::new();
    rust_files(dir, &mut files);
    files.sort();
    let mut routes = BTreeSet::new();
    for file in files {
        let text = std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
        for (method, path) in routes_in(&text, &file) {
            routes.insert(DeclaredRoute {
                method,
                path,
                file: file.clone(),
            });
        }
    }
    routes.into_iter().collect()
}

fn rust_files(dir: &Path, into: &mut Vec<PathBuf>) {
    let entries =
        std::fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, into);
        } else if path.extension().is_some_and(|e| e == "rs") {
            into.push(path);
        }
    }
}

/// A lexed source file: code characters, and string literals whole (their
/// content, unescaped only as far as paths need). Comments are dropped and
/// char literals become `_`, so that no quote, brace or parenthesis inside
/// either can be taken for code.
#[derive(Debug, Clone, PartialEq)]
enum Token {
    Code(char),
    Str(String),
}

fn lex(text: &str) -> Vec<Token> {
    let chars: Vec<char> = text.chars().collect();
    let at = |i: usize| chars.get(i).copied();
    let mut tokens = Vec::with_capacity(chars.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let ident_before = i > 0 && (chars[i - 1].is_alphanumeric() || chars[i - 1] == '_');
        match c {
            '/' if at(i + 1) == Some('/') => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            '/' if at(i + 1) == Some('*') => {
                i += 2;
                while i < chars.len() && !(chars[i] == '*' && at(i + 1) == Some('/')) {
                    i += 1;
                }
                i += 2;
            }
            // r"…", r#"…"#, br"…": ends at the quote followed by as many #.
            'r' | 'b' if !ident_before && raw_string_start(&chars, i).is_some() => {
                let (open, hashes) = raw_string_start(&chars, i).unwrap_or((i, 0));
                let mut j = open + 1;
                let content_start = j;
                while j < chars.len()
                    && !(chars[j] == '"' && (1..=hashes).all(|k| at(j + k) == Some('#')))
                {
                    j += 1;
                }
                tokens.push(Token::Str(
                    chars[content_start..j.min(chars.len())].iter().collect(),
                ));
                i = j + 1 + hashes;
            }
            '"' => {
                let mut j = i + 1;
                let mut content = String::new();
                while j < chars.len() && chars[j] != '"' {
                    if chars[j] == '\\' {
                        j += 1;
                    }
                    if let Some(c) = at(j) {
                        content.push(c);
                    }
                    j += 1;
                }
                tokens.push(Token::Str(content));
                i = j + 1;
            }
            // 'x' and '\x' are char literals; 'a alone is a lifetime.
            '\'' if at(i + 2) == Some('\'') && at(i + 1) != Some('\\') => {
                tokens.push(Token::Code('_'));
                i += 3;
            }
            '\'' if at(i + 1) == Some('\\') => {
                let mut j = i + 2;
                while j < chars.len() && chars[j] != '\'' {
                    j += 1;
                }
                tokens.push(Token::Code('_'));
                i = j + 1;
            }
            c => {
                tokens.push(Token::Code(c));
                i += 1;
            }
        }
    }
    tokens
}

/// Where a raw string starting at `i` (`r`, `r#…`, `br…`) has its opening
/// quote, and how many `#` close it.
fn raw_string_start(chars: &[char], i: usize) -> Option<(usize, usize)> {
    let mut j = i;
    if chars.get(j) == Some(&'b') {
        j += 1;
    }
    if chars.get(j) != Some(&'r') {
        return None;
    }
    j += 1;
    let mut hashes = 0;
    while chars.get(j) == Some(&'#') {
        hashes += 1;
        j += 1;
    }
    (chars.get(j) == Some(&'"')).then_some((j, hashes))
}

/// `tokens` as text, each string literal shown as `""`: what the structure
/// of the code is matched against.
fn skeleton(tokens: &[Token]) -> Vec<char> {
    tokens
        .iter()
        .map(|t| match t {
            Token::Code(c) => *c,
            // One char per token, so that indices agree.
            Token::Str(_) => '"',
        })
        .collect()
}

fn find(haystack: &[char], needle: &str, from: usize) -> Option<usize> {
    let needle: Vec<char> = needle.chars().collect();
    (from..haystack.len().saturating_sub(needle.len() - 1))
        .find(|&i| haystack[i..].starts_with(&needle))
}

/// The index of the bracket closing the one opened just before `from`.
fn closing(skeleton: &[char], from: usize) -> Option<usize> {
    let mut depth = 0usize;
    for (i, c) in skeleton.iter().enumerate().skip(from) {
        match c {
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' if depth == 0 => return Some(i),
            ')' | ']' | '}' => depth -= 1,
            _ => {}
        }
    }
    None
}

/// The tokens of a file without its `#[cfg(test)] mod … { … }` blocks.
fn without_test_modules(tokens: Vec<Token>) -> Vec<Token> {
    let shape = skeleton(&tokens);
    let mut keep = vec![true; tokens.len()];
    let mut from = 0;
    while let Some(at) = find(&shape, "#[cfg(test)]", from) {
        let after: String = shape[at + 12..].iter().take(200).collect();
        let rest = after.trim_start();
        let Some(open) = rest
            .strip_prefix("mod ")
            .and_then(|r| r.find('{'))
            .map(|o| at + 12 + (after.len() - rest.len()) + 4 + o)
        else {
            from = at + 1;
            continue;
        };
        let end = closing(&shape, open + 1).unwrap_or(shape.len() - 1);
        keep[at..=end].iter_mut().for_each(|k| *k = false);
        from = end + 1;
    }
    tokens
        .into_iter()
        .zip(keep)
        .filter_map(|(t, k)| k.then_some(t))
        .collect()
}

/// The `(method, path)` pairs of every route call in `text`.
fn routes_in(text: &str, file: &Path) -> Vec<(String, String)> {
    let unreadable = |what: &str| -> ! {
        panic!(
            "{}: {what}; teach tests/src/declared_routes.rs to read it",
            file.display()
        )
    };
    let tokens = without_test_modules(lex(text));
    let shape = skeleton(&tokens);
    for refused in [".nest(", ".nest_service(", ".route_service("] {
        if find(&shape, refused, 0).is_some() {
            unreadable(&format!(
                "`{refused}` declares routes this reader cannot see"
            ));
        }
    }
    let needle = concat!(".", "route(");
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(at) = find(&shape, needle, from) {
        let args = at + needle.len();
        let end = closing(&shape, args).unwrap_or_else(|| unreadable("unbalanced route call"));
        let first = (args..end)
            .find(|&i| !shape[i].is_whitespace())
            .unwrap_or(end);
        let path = match &tokens[first] {
            Token::Str(path) => path.clone(),
            Token::Code(_) => {
                let text: String = shape[first..end].iter().collect();
                unreadable(&format!(
                    "the route path in `{}` is not a literal",
                    text.trim()
                ))
            }
        };
        let router: String = shape[first + 1..end].iter().collect();
        let router = router.trim().strip_prefix(',').unwrap_or_else(|| {
            unreadable(&format!("a route call for {path} without a method router"))
        });
        for name in top_level_calls(router.trim().trim_end_matches(',')) {
            match name.as_str() {
                "fallback" => {}
                m if METHODS.contains(&m) => found.push((m.to_uppercase(), path.clone())),
                other => unreadable(&format!("`{other}(…)` in the route {path}")),
            }
        }
        from = end;
    }
    found
}

/// The names of the calls chained at the top level of `expr` (a skeleton:
/// strings are `"`): `get(a).patch(b)` → `get`, `patch`;
/// `axum::routing::get(a)` → `get`.
fn top_level_calls(expr: &str) -> Vec<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = Vec::new();
    let mut i = 0;
    loop {
        while i < chars.len() && (chars[i].is_whitespace() || chars[i] == '.') {
            i += 1;
        }
        if i >= chars.len() {
            return names;
        }
        let Some(open) = (i..chars.len()).find(|&j| chars[j] == '(') else {
            names.push(chars[i..].iter().collect::<String>().trim().to_owned());
            return names;
        };
        let callee: String = chars[i..open].iter().collect();
        let callee = callee.trim();
        names.push(callee.rsplit("::").next().unwrap_or(callee).to_owned());
        match closing(&chars, open + 1) {
            Some(close) => i = close + 1,
            None => {
                names.push("<unbalanced>".to_owned());
                return names;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(code: &str) -> Vec<(String, String)> {
        routes_in(code, Path::new("x.rs"))
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(m, p)| (m.to_string(), p.to_string()))
            .collect()
    }

    #[test]
    fn chained_methods_and_fallbacks_are_read() {
        let code = r#"
            Router::new()
                .route("/a", post(create).get(list))
                .route(
                    "/a/{id}",
                    get(find).patch(update).delete(delete).fallback(admin::method_not_allowed),
                )
                // .route("/commented", get(x))
                .route("/b", axum::routing::get(b::list));
        "#;
        assert_eq!(
            read(code),
            pairs(&[
                ("POST", "/a"),
                ("GET", "/a"),
                ("GET", "/a/{id}"),
                ("PATCH", "/a/{id}"),
                ("DELETE", "/a/{id}"),
                ("GET", "/b"),
            ])
        );
    }

    #[test]
    fn test_modules_are_skipped_and_what_follows_them_is_read() {
        let code = r##"
            fn r() { x.route("/a", get(a)) }
            #[cfg(test)]
            mod tests {
                const BODY: &str = r#"{"x": "}"}"#;
                fn t() { x.route("/t", get(t)); let c = '{'; }
            }
            #[cfg(test)]
            fn helper() {}
            fn later() { x.route("/b", post(b)) }
        "##;
        assert_eq!(read(code), pairs(&[("GET", "/a"), ("POST", "/b")]));
    }

    #[test]
    fn strings_and_char_literals_are_not_code() {
        let code = r#"
            let q = '"';
            let s = "x.route(\"/not\", get(a))";
            let c = '\'';
            x.route("/a/{id}", get(find)) // .route("/commented", get(x))
        "#;
        assert_eq!(read(code), pairs(&[("GET", "/a/{id}")]));
    }

    #[test]
    #[should_panic(expected = "not a literal")]
    fn a_path_in_a_constant_is_refused() {
        read("x.route(PATH, get(serve))");
    }

    #[test]
    #[should_panic(expected = "`any(…)`")]
    fn an_unknown_method_router_is_refused() {
        read("x.route(\"/a\", any(serve))");
    }

    #[test]
    #[should_panic(expected = "nest")]
    fn a_nested_router_is_refused() {
        read("x.nest(\"/a\", other())");
    }
}
