//! The corpora in `corpus/<target>/` replayed through the targets, and one
//! bounded mutation loop per target.
//!
//! A corpus file's name says what it must give: `ok-*` is accepted,
//! `err-*` refused, `crash-*` (a past crasher, or an input that once gave
//! a wrong answer) may be either but must not break an invariant. API
//! bodies are MessagePack when the name ends in `.msgpack`, else JSON.
//!
//! A failing mutation loop writes the (shrunk) input that broke the target
//! to `target/tmp/fuzz-crashers/<target>`: fix the bug, then copy that file
//! into `corpus/<target>/crash-<what>` so it is replayed from then on.

use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::path::{Path, PathBuf};

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::TestRunner;

use crate::node::FuzzNode;
use crate::strategies::{mutate, mutations};
use crate::targets;

/// One corpus file.
#[derive(Debug, Clone)]
pub struct Seed {
    pub name: String,
    pub bytes: Vec<u8>,
}

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz/corpus")
        .join(target)
}

/// The files of a target's corpus, by name.
pub fn seeds(target: &str) -> Vec<Seed> {
    let dir = corpus_dir(target);
    let mut seeds: Vec<Seed> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.unwrap().path();
            Seed {
                name: path.file_name().unwrap().to_string_lossy().into_owned(),
                bytes: std::fs::read(&path).unwrap(),
            }
        })
        .collect();
    seeds.sort_by(|a, b| a.name.cmp(&b.name));
    assert!(
        seeds.iter().any(|s| s.name.starts_with("ok-")),
        "{}: no ok- seed",
        dir.display()
    );
    seeds
}

/// Runs `f` on `bytes`; if it panics, saves `bytes` as the target's latest
/// crasher first (the last one saved is proptest's shrunk input).
fn guarded(target: &str, bytes: &[u8], f: impl FnOnce() -> bool) -> bool {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(accepted) => accepted,
        Err(panic) => {
            let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-crashers");
            let file = dir.join(target);
            if std::fs::create_dir_all(&dir)
                .and_then(|()| std::fs::write(&file, bytes))
                .is_ok()
            {
                eprintln!("fuzz {target}: input saved to {}", file.display());
            }
            resume_unwind(panic)
        }
    }
}

/// The targets by corpus name, with what each needs to run.
#[derive(Clone, Copy)]
enum Target {
    Bytes(fn(&[u8]) -> bool),
    /// Takes the node and the content type the seed's name gives.
    Body(fn(&FuzzNode, &str, &[u8]) -> bool),
    /// Takes the node.
    Path(fn(&FuzzNode, &[u8]) -> bool),
}

const TARGETS: &[(&str, Target)] = &[
    (
        "client_frame_json",
        Target::Bytes(targets::client_frame_json),
    ),
    (
        "client_frame_msgpack",
        Target::Bytes(targets::client_frame_msgpack),
    ),
    ("api_publish", Target::Body(targets::api_publish)),
    ("api_batch", Target::Body(targets::api_batch)),
    ("api_path", Target::Path(targets::api_path)),
    ("claims", Target::Bytes(targets::claims)),
    ("token", Target::Bytes(targets::token)),
    ("envelope", Target::Bytes(targets::envelope)),
    ("stored_message", Target::Bytes(targets::stored_message)),
];

fn target(name: &str) -> Target {
    TARGETS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, t)| *t)
        .unwrap_or_else(|| panic!("no target {name}"))
}

/// Runs one input; `seed_name` gives the content type of API bodies.
fn run(name: &str, t: Target, node: Option<&FuzzNode>, seed_name: &str, bytes: &[u8]) -> bool {
    guarded(name, bytes, || match t {
        Target::Bytes(f) => f(bytes),
        Target::Body(f) => f(node.expect("node"), targets::content_type(seed_name), bytes),
        Target::Path(f) => f(node.expect("node"), bytes),
    })
}

fn needs_node(t: Target) -> bool {
    !matches!(t, Target::Bytes(_))
}

/// Every corpus file of every target gives what its name says.
#[test]
fn corpora_replay() {
    let node = FuzzNode::start();
    let mut wrong = Vec::new();
    let mut count = 0;
    for (name, t) in TARGETS {
        for seed in seeds(name) {
            count += 1;
            let accepted = run(name, *t, Some(&node), &seed.name, &seed.bytes);
            let expected = match seed.name.split('-').next() {
                Some("ok") => Some(true),
                Some("err") => Some(false),
                Some("crash") => None,
                _ => panic!("{name}/{}: name it ok-, err- or crash-", seed.name),
            };
            if expected.is_some_and(|e| e != accepted) {
                wrong.push(format!("{name}/{} accepted: {accepted}", seed.name));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "corpus files gave the wrong answer: {wrong:#?}"
    );
    assert!(count >= 40, "only {count} corpus files");
}

/// `FANOUT_FUZZ_CASES` edited seeds (and some plain noise) through a target.
fn mutation_loop(name: &'static str) {
    let t = target(name);
    let node = needs_node(t).then(FuzzNode::start);
    let seeds = seeds(name);
    let n = seeds.len();
    let picked = seeds.clone();
    let edited = (0..n, mutations())
        .prop_map(move |(i, edits)| (i, mutate(picked[i].bytes.clone(), &edits)));
    let noise = (0..n, vec(any::<u8>(), 0..256));
    let input = prop_oneof![9 => edited, 1 => noise];
    let mut runner = TestRunner::new(crate::fuzz_config());
    let result = runner.run(&input, |(i, bytes)| {
        run(name, t, node.as_ref(), &seeds[i].name, &bytes);
        Ok(())
    });
    if let Err(e) = result {
        panic!(
            "fuzz target {name} failed: {e}\n(the input is in {}/fuzz-crashers/{name})",
            env!("CARGO_TARGET_TMPDIR")
        );
    }
}

#[test]
fn fuzz_client_frame_json() {
    mutation_loop("client_frame_json");
}

#[test]
fn fuzz_client_frame_msgpack() {
    mutation_loop("client_frame_msgpack");
}

#[test]
fn fuzz_api_publish() {
    mutation_loop("api_publish");
}

#[test]
fn fuzz_api_batch() {
    mutation_loop("api_batch");
}

#[test]
fn fuzz_api_path() {
    mutation_loop("api_path");
}

#[test]
fn fuzz_claims() {
    mutation_loop("claims");
}

#[test]
fn fuzz_token() {
    mutation_loop("token");
}

#[test]
fn fuzz_envelope() {
    mutation_loop("envelope");
}

#[test]
fn fuzz_stored_message() {
    mutation_loop("stored_message");
}
