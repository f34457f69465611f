//! Hand-written hostile components, generated as component-model text and assembled in the
//! test itself with the `wat` crate (no `wasm-tools` binary to install): many memories, many
//! core instances, memories grown at every call, big tables, and compile bombs. The shapes are
//! those of `policies/hostile/wat/make_wat.py` (issue 18, classes 4 and 5), with sizes as
//! parameters. Every component implements `cairn:policy/save-interval` with a core
//! `should-save` that the shell lifts.

use std::fmt::Write;
use std::path::{Path, PathBuf};

const PAGE: u64 = 64 << 10;

/// A component around the core module text `core` (and more component items, `more`).
pub fn component(core: &str, more: &str) -> Vec<u8> {
    let text = format!(
        r#"(component
  (core module $m
{core}
  )
  (core instance $i (instantiate $m))
{more}
  (type $event' (enum "batch" "epoch" "iteration"))
  (export $event "event" (type $event'))
  (func $f (param "event" $event) (result bool) (canon lift (core func $i "should-save")))
  (export "should-save" (func $f))
)"#
    );
    wat::parse_str(&text).unwrap_or_else(|e| panic!("bad generated component text: {e}"))
}

/// Write `bytes` as `dir/name` and return the path.
pub fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// A loop writing one byte every 4 KiB of memory `mem`, so the OS really backs `bytes` of it.
fn touch(mem: &str, bytes: u64) -> String {
    let label = format!("$l{}", mem.trim_start_matches('$'));
    format!(
        "      (local.set $p (i32.const 0))
      (loop {label}
        (i32.store8 {mem} (local.get $p) (i32.const 1))
        (local.set $p (i32.add (local.get $p) (i32.const 4096)))
        (br_if {label} (i32.lt_u (local.get $p) (i32.const {bytes}))))\n"
    )
}

/// One core module with `count` memories of `mib` MiB each, all written at instantiation.
pub fn many_memories(count: usize, mib: u64) -> Vec<u8> {
    let pages = (mib << 20) / PAGE;
    let mut core = String::new();
    for i in 0..count {
        let _ = writeln!(core, "    (memory $m{i} {pages})");
    }
    core.push_str("    (func $start (local $p i32)\n");
    for i in 0..count {
        core.push_str(&touch(&format!("$m{i}"), mib << 20));
    }
    core.push_str("    )\n    (start $start)\n");
    core.push_str("    (func (export \"should-save\") (param i32) (result i32) (i32.const 0))");
    component(&core, "")
}

/// A core module with one `mib` MiB memory written at start, instantiated `count` times.
pub fn many_instances(count: usize, mib: u64) -> Vec<u8> {
    let pages = (mib << 20) / PAGE;
    let mut more = format!(
        "  (core module $one\n    (memory {pages})\n    (func $start (local $p i32)\n{}    )\n    (start $start)\n  )\n",
        touch("0", mib << 20)
    );
    for i in 0..count.saturating_sub(1) {
        let _ = writeln!(more, "  (core instance $x{i} (instantiate $one))");
    }
    component(
        "    (func (export \"should-save\") (param i32) (result i32) (i32.const 0))",
        &more,
    )
}

/// `count` memories of one page; the n-th `should-save` grows memory n to `mib` MiB and writes
/// it, so a live instance holds more at every call.
pub fn growing_memories(count: usize, mib: u64) -> Vec<u8> {
    let pages = (mib << 20) / PAGE;
    let mut core = String::new();
    for i in 0..count {
        let _ = writeln!(core, "    (memory $m{i} 1)");
    }
    core.push_str("    (global $n (mut i32) (i32.const 0))\n");
    core.push_str("    (func (export \"should-save\") (param i32) (result i32) (local $p i32)\n");
    for i in 0..count {
        let _ = write!(
            core,
            "      (if (i32.eq (global.get $n) (i32.const {i})) (then\n      (drop (memory.grow $m{i} (i32.const {})))\n{}))\n",
            pages - 1,
            touch(&format!("$m{i}"), mib << 20)
        );
    }
    core.push_str(
        "      (global.set $n (i32.add (global.get $n) (i32.const 1)))\n      (i32.const 0))",
    );
    component(&core, "")
}

/// `count` funcref tables of `elements` elements each, all filled at instantiation.
pub fn many_tables(count: usize, elements: u64) -> Vec<u8> {
    let mut core = String::new();
    for i in 0..count {
        let _ = writeln!(core, "    (table $t{i} {elements} funcref)");
    }
    core.push_str("    (func $f)\n    (elem declare func $f)\n    (func $start\n");
    for i in 0..count {
        let _ = writeln!(
            core,
            "      (table.fill $t{i} (i32.const 0) (ref.func $f) (i32.const {elements}))"
        );
    }
    core.push_str("    )\n    (start $start)\n");
    core.push_str("    (func (export \"should-save\") (param i32) (result i32) (i32.const 0))");
    component(&core, "")
}

/// A function with `locals` i64 locals and `body`, called by `should-save`.
fn bomb(locals: usize, body: &str) -> Vec<u8> {
    let decl = "i64 ".repeat(locals);
    component(
        &format!(
            "    (func $bomb (param i32) (result i32) (local {decl})\n{body}\n      (i32.const 0))\n    (func (export \"should-save\") (param i32) (result i32) (call $bomb (local.get 0)))"
        ),
        "",
    )
}

/// A CPU bomb for the compiler: a loop of `statements` adds over `locals` locals, all live
/// around the back edge (register allocation grows about as locals³: 20 000 take ~30 CPU-s in
/// a release build).
pub fn locals_loop(locals: usize, statements: usize) -> Vec<u8> {
    let mut body = String::from("      (loop $l\n");
    for s in 0..statements {
        let (a, b, c) = (
            (s * 7919) % locals + 1,
            (s * 104_729) % locals + 1,
            (s * 31) % locals + 1,
        );
        let _ = writeln!(
            body,
            "        (local.set {c} (i64.add (local.get {a}) (local.get {b})))"
        );
    }
    body.push_str("        (br_if $l (i32.wrap_i64 (local.get 1))))");
    bomb(locals, &body)
}

/// A memory bomb for the compiler: `diamonds` if-merges in a loop, `locals` locals read after
/// it; every local is a block parameter of every merge (20 000 × 3 000 took 2 GB).
pub fn loop_diamonds(locals: usize, diamonds: usize) -> Vec<u8> {
    let mut body = String::from("      (loop $l\n");
    for i in 0..diamonds {
        let _ = writeln!(
            body,
            "        (if (local.get 0) (then (local.set {} (i64.const {i}))))",
            1 + (i * 13) % locals
        );
    }
    body.push_str("        (br_if $l (local.get 0)))\n");
    for i in 1..=locals {
        let _ = writeln!(
            body,
            "      (local.set 1 (i64.add (local.get 1) (local.get {i})))"
        );
    }
    bomb(locals, &body)
}
