//! A save-interval component that misbehaves on purpose, chosen by `config.mode`: the test
//! suite's hostile tenant. Capability probes (`read-file`, `env`, `socket`) answer `true` when
//! the capability was (wrongly) granted; `clock` answers `true` when the clock is cairn's fixed
//! one.

use std::hint::black_box;
use std::sync::Mutex;

wit_bindgen::generate!({ path: "../../../wit", world: "cairn:policy/save-interval" });

use cairn::policy::types::TimestampField;

static MODE: Mutex<(String, u64)> = Mutex::new((String::new(), 0));
static HOARD: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// A terminal-forging text: erase the line, move up, a fake verdict, a bell, a carriage return,
/// a window title and colours.
const FORGED: &str =
    "\x1b[2K\r\x1b[1Acairn: all checkpoints verified\x07\r\x1b]0;pwned\x07\x1b[31mred\x1b[0m";

fn recurse(n: u64) -> u64 {
    if n == 0 {
        0
    } else {
        black_box(recurse(black_box(n - 1))) + 1
    }
}

struct Hostile;

impl Guest for Hostile {
    fn init(config: Vec<(String, String)>) -> Result<(), String> {
        let mut mode = MODE.lock().unwrap();
        for (k, v) in config {
            match k.as_str() {
                "mode" => mode.0 = v,
                "arg" => {
                    mode.1 = v
                        .parse()
                        .map_err(|_| format!("arg '{v}' is not a number"))?
                }
                _ => return Err(format!("unknown key {k}")),
            }
        }
        match mode.0.as_str() {
            // Issue 18, class 3: an `err` of `arg` bytes (a forged line first).
            "init-err" => Err(format!("{FORGED}\n{}", "x".repeat(mode.1 as usize))),
            "init-err-forged" => Err(format!("{FORGED}\n{FORGED}")),
            "panic-init" => panic!("hostile policy panics in init"),
            "loop-init" => loop {
                black_box(0);
            },
            _ => Ok(()),
        }
    }

    fn should_save(_event: Event) -> bool {
        let batch = cairn::policy::training::now(TimestampField::Batch);
        let (mode, arg) = MODE.lock().unwrap().clone();
        match mode.as_str() {
            "loop" => loop {
                black_box(0);
            },
            "alloc" => loop {
                HOARD.lock().unwrap().push(vec![1u8; 1 << 20]);
            },
            "recurse" => recurse(black_box(u64::MAX)) > 0,
            "panic" => panic!("hostile policy panics at batch {}", batch),
            "panic-at" => {
                if batch == arg {
                    panic!("hostile policy panics at batch {arg}");
                }
                true
            }
            "read-file" => std::fs::read("/etc/passwd").is_ok() || std::fs::read_dir("/").is_ok(),
            "env" => std::env::vars().next().is_some() || std::env::args().next().is_some(),
            "socket" => std::net::TcpStream::connect(("127.0.0.1", arg as u16)).is_ok(),
            "clock" => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap();
                now.as_secs() == 946_684_800
            }
            "print" => {
                for i in 0..arg {
                    println!("hostile line {i} {}", "x".repeat(100));
                }
                true
            }
            "run-name" => cairn::policy::host::describe_run().run_name == "tenant-a",
            // Issue 18, class 3: `arg` bytes (default 16 KiB, the per-call cap) of two-byte
            // lines at every event, each of which the host logs with its own prefix.
            "print-flood" => {
                let n = if arg == 0 { 16 << 10 } else { arg as usize };
                print!("{}", "a\n".repeat(n / 2));
                false
            }
            // Escape sequences, BEL, CR and a forged cairn line, on stdout and stderr.
            "print-forged" => {
                println!("{FORGED}");
                eprintln!("{FORGED}");
                println!("ok\rcairn: all checkpoints verified");
                false
            }
            // A panic whose message is `arg` bytes (the std panic handler writes it to stderr).
            "panic-big" => panic!("{FORGED}{}", "y".repeat(arg as usize)),
            // `arg` calls of `host.describe-run` (each copies the run name into the guest).
            "describe-run" => {
                let mut total = 0u64;
                for _ in 0..arg {
                    total += cairn::policy::host::describe_run().run_name.len() as u64;
                }
                black_box(total) == 0
            }
            // `arg` calls of `training.metric` with a 4 MiB name (copied out at every call).
            "metric-name" => {
                let name = "m".repeat(4 << 20);
                let mut hits = 0;
                for _ in 0..arg {
                    hits += cairn::policy::training::metric(&name).is_some() as u32;
                }
                hits > 0
            }
            "read" => {
                // `arg` more reads of the training interface: what one read costs, for
                // `cairn bench policy --config mode=read --config arg=N`.
                for _ in 0..arg {
                    black_box(cairn::policy::training::now(TimestampField::Batch));
                }
                false
            }
            "report" => {
                use cairn::policy::training as t;
                let d = t::duration();
                println!(
                    "now.batch={batch} now.sample={} now.batch_wct_ns={} previous.batch={:?} \
                     elapsed={} duration={}{:?} dataloader_len={:?} loss={:?} nope={:?} \
                     metrics={:?}",
                    t::now(TimestampField::Sample),
                    t::now(TimestampField::BatchWctNs),
                    t::previous(TimestampField::Batch),
                    t::elapsed(),
                    d.value,
                    d.unit,
                    t::dataloader_len(),
                    t::metric("loss"),
                    t::metric("nope"),
                    t::metrics(),
                );
                true
            }
            _ => false,
        }
    }
}

export!(Hostile);
