//! Write one of the testkit's hostile components as a `.wasm` file, for the suites that are not
//! in Rust (the Python suite's compile-memory test needs a compile bomb, and Python has no
//! component-model assembler):
//!
//! ```text
//! cargo run -p cairn-testkit --example hostile_component -- loop-diamonds LOCALS DIAMONDS OUT.wasm
//! ```

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let count = |s: &str| s.parse::<usize>().ok().filter(|&n| n > 0);
    match args.as_slice() {
        [kind, locals, diamonds, out] if kind == "loop-diamonds" => {
            let (Some(locals), Some(diamonds)) = (count(locals), count(diamonds)) else {
                eprintln!("hostile_component: LOCALS and DIAMONDS must be positive counts");
                return ExitCode::from(2);
            };
            let bytes = cairn_testkit::wat::loop_diamonds(locals, diamonds);
            if let Err(e) = std::fs::write(out, bytes) {
                eprintln!("hostile_component: cannot write {out}: {e}");
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("usage: hostile_component loop-diamonds LOCALS DIAMONDS OUT.wasm");
            ExitCode::from(2)
        }
    }
}
