#!/usr/bin/env python3
"""Hand-written components for issue 18, classes 4 (the memory cap is per linear memory) and 5
(compilation has no bound), as component-model text (`.wat`).

Each component exports `should-save(event) -> bool` (so it implements
cairn:policy/save-interval) from a core module written here; nothing else is needed, and
cairn's `init` is optional. Turn the text into binaries with wasm-tools (crates.io
`wasm-tools`, tested with 1.254.2: `cargo install wasm-tools --locked --version 1.254.2`):

    python3 make_wat.py OUT_DIR [NAME...]       # writes NAME.wat and, with wasm-tools on
                                                # PATH, NAME.wasm (`wasm-tools parse`)
    python3 make_wat.py --list

The memory components are small as text and as binaries; the compile bombs are generated
(their text is megabytes, their binaries 100-600 KB) and never committed.
"""

import os
import shutil
import subprocess
import sys

PAGE = 64 << 10

# The component shell: an enum type exported under the world's name, and `should-save`
# lifted from the core instance's export of the same name.
SHELL = """(component
  (core module $m
{core}
  )
  (core instance $i (instantiate $m))
{more}
  (type $event' (enum "batch" "epoch" "iteration"))
  (export $event "event" (type $event'))
  (func $f (param "event" $event) (result bool) (canon lift (core func $i "should-save")))
  (export "should-save" (func $f))
)
"""


def component(core, more=""):
    return SHELL.format(core=core, more=more)


# ---- class 4: many memories, many instances, tables -------------------------------------


def many_memories(count=30, mib=60, touch=True):
    """One core module with `count` memories of `mib` MiB each (each under the per-memory
    cap), every page written by the start function (memory.fill), so the process really holds
    count * mib MiB from instantiation on."""
    pages = (mib << 20) // PAGE
    mems = "\n".join(f"    (memory $m{i} {pages})" for i in range(count))
    fill = "\n".join(touch_pages(f"$m{i}", mib << 20) for i in range(count)) if touch else ""
    core = f"""{mems}
    (func $start (local $p i32)
{fill}
    )
    (start $start)
    (func (export "should-save") (param i32) (result i32) (i32.const 0))"""
    return component(core)


def touch_pages(mem, size):
    """A loop writing one byte every 4 KiB of memory `mem` (so the OS really backs it): a few
    thousand instructions per MiB, far below any fuel or deadline. Uses local $p."""
    return f"""      (local.set $p (i32.const 0))
      (loop $l{mem.strip("$")}
        (i32.store8 {mem} (local.get $p) (i32.const 1))
        (local.set $p (i32.add (local.get $p) (i32.const 4096)))
        (br_if $l{mem.strip("$")} (i32.lt_u (local.get $p) (i32.const {size}))))"""


def many_instances(count=30, mib=60):
    """One small core module with one `mib` MiB memory filled at start, instantiated `count`
    times by the component: each instance is a separate store-level memory."""
    pages = (mib << 20) // PAGE
    inner = f"""(core module $one
    (memory {pages})
    (func $start (local $p i32)
{touch_pages("0", mib << 20)}
    )
    (start $start)
  )
"""
    inst = "\n".join(f"  (core instance $x{i} (instantiate $one))" for i in range(count - 1))
    core = """    (func (export "should-save") (param i32) (result i32) (i32.const 0))"""
    return component(core, more="  " + inner + inst)


def growing_memories(count=30, mib=120):
    """`count` memories of one page; each `should-save` grows the next one to `mib` MiB and
    writes it. Every grow is checked against the per-memory cap and passes; the live instance
    keeps them all, so after `count` events the job holds count * mib MiB."""
    pages = (mib << 20) // PAGE
    mems = "\n".join(f"    (memory $m{i} 1)" for i in range(count))
    grow = "\n".join(
        f"      (if (i32.eq (global.get $n) (i32.const {i})) (then\n"
        f"      (drop (memory.grow $m{i} (i32.const {pages - 1})))\n"
        + touch_pages(f"$m{i}", mib << 20) + "))"
        for i in range(count)
    )
    core = f"""{mems}
    (global $n (mut i32) (i32.const 0))
    (func (export "should-save") (param i32) (result i32) (local $p i32)
{grow}
      (global.set $n (i32.add (global.get $n) (i32.const 1)))
      (i32.const 0))"""
    return component(core)


def many_tables(count=60, elements=100_000):
    """`count` funcref tables of `elements` elements each (the per-table cap), all filled."""
    tabs = "\n".join(f"    (table $t{i} {elements} funcref)" for i in range(count))
    fill = "\n".join(
        f"      (table.fill $t{i} (i32.const 0) (ref.func $f) (i32.const {elements}))"
        for i in range(count)
    )
    core = f"""{tabs}
    (func $f)
    (elem declare func $f)
    (func $start
{fill}
    )
    (start $start)
    (func (export "should-save") (param i32) (result i32) (i32.const 0))"""
    return component(core)


# ---- class 5: compile bombs --------------------------------------------------------------


def bomb_func(body, locals_decl=""):
    return component(f"""    (func $bomb (param i32) (result i32) {locals_decl}
{body}
      (i32.const 0))
    (func (export "should-save") (param i32) (result i32) (call $bomb (local.get 0)))""")


def locals_diamonds(nlocals=49_999, diamonds=2_000):
    """SSA construction: `nlocals` locals, `diamonds` if-merges, then every local read after
    the last merge. The translator gives a merge block one parameter per local live through
    it: up to nlocals * diamonds block parameters."""
    lines = [f"      (if (local.get 0) (then (local.set {1 + i % nlocals} (i64.const {i}))))"
             for i in range(diamonds)]
    lines += [f"      (local.set 1 (i64.add (local.get 1) (local.get {i})))"
              for i in range(1, nlocals + 1)]
    return bomb_func_locals(nlocals, "\n".join(lines))


def bomb_func_locals(nlocals, body):
    decl = "(local " + "i64 " * nlocals + ")"
    return bomb_func(body, decl)


def locals_loop(nlocals=49_999, statements=50_000):
    """A loop whose body reads and writes `nlocals` locals in a long chain: every local is
    live around the back edge, and register allocation sees tens of thousands of
    interfering values."""
    body = ["      (loop $l"]
    for s in range(statements):
        a, b, c = (s * 7919) % nlocals + 1, (s * 104729) % nlocals + 1, (s * 31) % nlocals + 1
        body.append(f"        (local.set {c} (i64.add (local.get {a}) (local.get {b})))")
    body.append("        (br_if $l (i32.wrap_i64 (local.get 1))))")
    return bomb_func_locals(nlocals, "\n".join(body))


def operand_stack(values=100_000):
    """`values` operands pushed before any is consumed (all live at once), then summed."""
    body = ["      (local.get 0)" for _ in range(values)]
    body += ["      (i32.add)" for _ in range(values - 1)]
    body.append("      (drop)")
    return bomb_func("\n".join(body))


def nested_br_table(depth=5_000, targets=65_000):
    """`depth` nested blocks, a loop inside, and a `targets`-way br_table to all of them:
    a switch with as many edges as targets."""
    opens = "\n".join(f"      (block $b{i}" for i in range(depth))
    labels = " ".join(f"$b{(i * 7) % depth}" for i in range(targets))
    inner = f"      (br_table {labels} $b0 (local.get 0))"
    closes = "\n".join("      (drop (i32.const 1)))" for _ in range(depth))
    return bomb_func(f"{opens}\n{inner}\n{closes}")


def nested_ifs_locals(depth=10_000, nlocals=1_000):
    """`depth` nested if/else, each arm writing a local, `nlocals` locals read at the bottom
    of each: block parameters for every local at every join."""
    opens, closes = [], []
    for i in range(depth):
        opens.append(f"      (if (local.get 0) (then (local.set {1 + i % nlocals} (i64.const {i}))) (else")
        closes.append("      ))")
    reads = [f"      (local.set 1 (i64.add (local.get 1) (local.get {1 + i})))" for i in range(nlocals)]
    return bomb_func_locals(nlocals, "\n".join(opens + reads + closes[::-1]))


def loop_diamonds(nlocals=20_000, diamonds=3_000):
    """`diamonds` if-merges inside a loop, `nlocals` locals read after the loop: every local is
    a parameter of the loop header and of every merge."""
    lines = ["      (loop $l"]
    for i in range(diamonds):
        lines.append(f"        (if (local.get 0) (then (local.set {1 + (i * 13) % nlocals} (i64.const {i}))))")
    lines.append("        (br_if $l (local.get 0)))")
    for i in range(1, nlocals + 1):
        lines.append(f"      (local.set 1 (i64.add (local.get 1) (local.get {i})))")
    return bomb_func_locals(nlocals, "\n".join(lines))


def calls_live(nlocals=20_000, calls=20_000):
    """`nlocals` locals all written first and read last, with `calls` calls in between: every
    local is live across every call, which clobbers every register."""
    body = [f"      (local.set {i} (i64.const {i}))" for i in range(1, nlocals + 1)]
    for c in range(calls):
        body.append(f"      (call $g)")
    body += [f"      (local.set 1 (i64.add (local.get 1) (local.get {i})))"
             for i in range(1, nlocals + 1)]
    return component(f"""    (func $g)
    (func $bomb (param i32) (result i32) (local {"i64 " * nlocals})
{chr(10).join(body)}
      (i32.const 0))
    (func (export "should-save") (param i32) (result i32) (call $bomb (local.get 0)))""")


def loop_diamonds_big(nlocals=40_000, diamonds=6_000):
    return loop_diamonds(nlocals, diamonds)


FILES = {
    "mem-30x60.wat": lambda: many_memories(30, 60),
    "mem-63x127.wat": lambda: many_memories(63, 127),
    "mem-instances-30x60.wat": lambda: many_instances(30, 60),
    "mem-instances-63x100.wat": lambda: many_instances(63, 100),
    "mem-grow-60x60.wat": lambda: growing_memories(60, 60),
    "tables-60x100k.wat": lambda: many_tables(60, 100_000),
    "bomb-locals-diamonds.wat": lambda: locals_diamonds(),
    "bomb-loop-diamonds.wat": lambda: loop_diamonds(),
    "bomb-loop-diamonds-40k.wat": lambda: loop_diamonds(40_000, 6_000),
    "bomb-calls-live.wat": lambda: calls_live(),
    "bomb-locals-loop.wat": lambda: locals_loop(),
    "bomb-operand-stack.wat": lambda: operand_stack(),
    "bomb-br-table.wat": lambda: nested_br_table(),
    "bomb-nested-ifs.wat": lambda: nested_ifs_locals(),
}


def main(argv):
    if argv[1:2] == ["--list"]:
        print("\n".join(FILES))
        return 0
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    out = argv[1]
    os.makedirs(out, exist_ok=True)
    tool = shutil.which("wasm-tools")
    for name in argv[2:] or list(FILES):
        wat = os.path.join(out, name)
        with open(wat, "w") as f:
            f.write(FILES[name]())
        line = f"{name}\t{os.path.getsize(wat)} bytes"
        if tool:
            wasm = wat[:-4] + ".wasm"
            subprocess.run([tool, "parse", wat, "-o", wasm], check=True)
            line += f"\t{os.path.basename(wasm)} {os.path.getsize(wasm)} bytes"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
