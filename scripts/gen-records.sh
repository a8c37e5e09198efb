#!/usr/bin/env bash
# Generates guest-sdk/src/records.rs, the Rust side of the kernel -> guest record ABI, from
# ebpf/include/kpulse_events.h:
#   * one Rust struct per C struct of the header, with `SIZE`, `parse`, `parse_padded` and
#     `to_bytes`, reading every field little-endian at the offset clang gives it;
#   * the header's enum constants and integer #defines as `pub const`s.
# Layouts are never computed here: clang compiles the header for the BPF target with -g and
# the offsets, sizes and enum / macro values are read back from the object's BTF with
# bpftool. clang's AST only tells which structs, enums and macros belong to the header (the
# difference from a translation unit with <linux/types.h> alone) and where their comments
# are, which become the doc comments.
#
#   scripts/gen-records.sh            regenerate guest-sdk/src/records.rs (rustfmt'ed)
#   scripts/gen-records.sh -o FILE    write FILE instead
#
# scripts/test.sh runs it and fails if the committed file differs. Overridable: BPF_CLANG,
# BPFTOOL, RUSTFMT.
set -euo pipefail
out=guest-sdk/src/records.rs
if [ "${1:-}" = "-o" ] && [ -n "${2:-}" ]; then
    out=$(realpath -m -- "$2")
elif [ $# -gt 0 ]; then
    echo "usage: $0 [-o FILE]" >&2
    exit 2
fi
cd "$(dirname "$0")/.."
# shellcheck source=scripts/common.sh
source scripts/common.sh

# clang-19 and bpftool as ebpf/Makefile uses them; linux-libc-dev for <linux/types.h>.
ensure_packages clang-19 bpftool linux-libc-dev python3
export BPF_CLANG=${BPF_CLANG:-clang-19} BPFTOOL=${BPFTOOL:-bpftool} RUSTFMT=${RUSTFMT:-rustfmt}
command -v "$RUSTFMT" >/dev/null || { echo "rustfmt not found: rustup component add rustfmt" >&2; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 - ebpf/include/kpulse_events.h "$tmp" "$tmp/records.rs" <<'PY'
import json
import os
import re
import subprocess
import sys
import textwrap

HEADER, TMP, OUT = sys.argv[1:4]
CLANG = os.environ["BPF_CLANG"]
BPFTOOL = os.environ["BPFTOOL"]
INCLUDE_DIR = os.path.dirname(HEADER)
HEADER_NAME = os.path.basename(HEADER)


def fail(msg):
    sys.exit(f"gen-records: {HEADER}: {msg}")


def run(args, **kw):
    r = subprocess.run(args, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        fail(f"`{' '.join(args)}` failed:\n{r.stderr}")
    return r.stdout


# The BPF target has no multiarch include path of its own: give it the host compiler's
# system directories (after its own), as libbpf-bootstrap does, so <asm/types.h> resolves.
search = subprocess.run([CLANG, "-v", "-E", "-x", "c", "-"], input="",
                        capture_output=True, text=True).stderr
sys_dirs, inside = [], False
for line in search.splitlines():
    if line.startswith("#include <...> search starts here:"):
        inside = True
    elif line.startswith("End of search list."):
        inside = False
    elif inside:
        sys_dirs += ["-idirafter", line.strip()]
CFLAGS = ["-target", "bpfel", "-I", INCLUDE_DIR] + sys_dirs


def write(name, text):
    path = os.path.join(TMP, name)
    with open(path, "w") as f:
        f.write(text)
    return path


BASE = "#include <linux/types.h>\n"
FULL = BASE + f'#include "{HEADER_NAME}"\n'


def ast(src):
    return json.loads(run([CLANG, *CFLAGS, "-fsyntax-only", "-Xclang", "-ast-dump=json", src]))


def macros(src):
    found = {}
    for line in run([CLANG, *CFLAGS, "-E", "-dM", src]).splitlines():
        m = re.match(r"#define (\w+)(\(?)\s*(.*)$", line)
        if m and not m.group(2):  # object-like only
            found[m.group(1)] = m.group(3).strip()
    return found


base_c, full_c = write("base.c", BASE), write("full.c", FULL)
with open(HEADER) as f:
    header_text = f.read()
# clang's AST offsets count bytes, this text characters: one non-ASCII character (a "µ" in
# a comment) shifts every comment after it off its declaration, silently.
for number, text in enumerate(header_text.split("\n"), 1):
    if not text.isascii():
        sys.exit(f"{HEADER}:{number}: non-ASCII character; keep the header ASCII: {text.strip()}")

# ---- what the header declares (names, order, comment positions) -------------------------
base_ast, full_ast = ast(base_c), ast(full_c)


def top_names(tree, kind):
    return {n.get("name") for n in tree.get("inner", []) if n["kind"] == kind}


def enum_constant_names(tree):
    return {c["name"] for n in tree.get("inner", []) if n["kind"] == "EnumDecl"
            for c in n.get("inner", []) if c["kind"] == "EnumConstantDecl"}


base_records = top_names(base_ast, "RecordDecl")
base_constants = enum_constant_names(base_ast)
structs, enums = [], []  # AST nodes in header order
for n in full_ast.get("inner", []):
    if n["kind"] == "RecordDecl" and n.get("completeDefinition") and n.get("name") \
            and n["name"] not in base_records:
        if n.get("tagUsed") != "struct":
            fail(f"{n.get('tagUsed')} {n['name']}: only structs are supported")
        if not any(s["name"] == n["name"] for s in structs):
            structs.append(n)
    elif n["kind"] == "EnumDecl":
        consts = [c for c in n.get("inner", []) if c["kind"] == "EnumConstantDecl"
                  and c["name"] not in base_constants]
        if consts:
            enums.append((n.get("name"), consts))

base_macros, full_macros = macros(base_c), macros(full_c)
header_macros = {k: v for k, v in full_macros.items()
                 if v and base_macros.get(k) != v}
enum_constants = {c["name"] for _, cs in enums for c in cs}


def offset_of(loc):
    """File offset of an AST location (the expansion site for a macro)."""
    if "offset" in loc:
        return loc["offset"], loc.get("tokLen", 0)
    for key in ("expansionLoc", "spellingLoc"):
        if key in loc and "offset" in loc[key]:
            return loc[key]["offset"], loc[key].get("tokLen", 0)
    return None, 0


def clean_comment(body):
    lines = [re.sub(r"^\s*\*?\s?", "", l).rstrip() for l in body.split("\n")]
    while lines and not lines[0].strip():
        lines.pop(0)
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def trailing_comment(node):
    """The /* ... */ after a field's `;` or an enumerator's `,` on the same line."""
    off, tok = offset_of(node.get("range", {}).get("end", {}))
    if off is None:
        return None
    i = off + tok
    m = re.compile(r"[^;,}\n]*[;,]?[ \t]*/\*(.*?)\*/", re.S).match(header_text, i)
    if not m:
        return None
    text = " ".join(l.strip() for l in clean_comment(m.group(1)))
    text = re.sub(r"^\d+:\s*", "", text)  # "48: ..." -> "...": the offset is documented anyway
    return re.sub(r"\s+", " ", text).strip() or None


def leading_comment(node):
    """A /* ... */ block that ends on the line right above a declaration."""
    off, _ = offset_of(node.get("range", {}).get("begin", {}))
    if off is None:
        return None
    before = header_text[:off]
    stripped = before.rstrip()
    if not stripped.endswith("*/") or before[len(stripped):].count("\n") != 1:
        return None
    start = stripped.rfind("/*")
    if start < 0:
        return None
    lines = clean_comment(stripped[start + 2:-2])
    if lines and re.match(r"^-+ .* -+$", lines[0].strip()):
        return None  # a section banner
    return lines or None


def macro_comment(name):
    m = re.search(rf"^[ \t]*#[ \t]*define[ \t]+{name}\b[^\n]*?/\*(.*?)\*/", header_text, re.M)
    return re.sub(r"\s+", " ", m.group(1)).strip() if m else None


# ---- let clang lay everything out: one BTF object ---------------------------------------
def probe_ok(expr):
    src = write("probe.c", FULL + f"enum __kpgen_probe {{ __kpgen_probe = ({expr}) }};\n")
    return subprocess.run([CLANG, *CFLAGS, "-fsyntax-only", src],
                          capture_output=True).returncode == 0


int_macros = sorted(k for k in header_macros if k not in enum_constants)
if not probe_ok(" + ".join(f"(unsigned long long)({k})" for k in int_macros) or "0"):
    int_macros = [k for k in int_macros if probe_ok(k)]  # drop non-integer macros

gen = [FULL]
for s in structs:
    gen.append(f"struct {s['name']} __kpgen_s_{s['name']};")
for name, consts in enums:
    if name:
        gen.append(f"enum {name} __kpgen_e_{name};")
    else:  # anonymous enum: one single-valued enum per constant
        for c in consts:
            gen.append(f"enum __kpgen_c_{c['name']} {{ __kpgen_c_{c['name']} = {c['name']} }}"
                       f" __kpgen_v_{c['name']};")
for k in int_macros:
    gen.append(f"enum __kpgen_m_{k} {{ __kpgen_m_{k} = ({k}) }} __kpgen_v_{k};")
obj = os.path.join(TMP, "gen.o")
run([CLANG, *CFLAGS, "-g", "-O2", "-c", write("gen.c", "\n".join(gen) + "\n"), "-o", obj])
btf = json.loads(run([BPFTOOL, "btf", "dump", "file", obj, "format", "raw", "-j"]))
types = {t["id"]: t for t in btf["types"]}
var_type = {t["name"]: types[t["type_id"]] for t in btf["types"] if t["kind"] == "VAR"}

# ---- C types -> Rust ---------------------------------------------------------------------
KEYWORDS = set("""as async await break const continue crate dyn else enum extern false fn for
if impl in let loop match mod move mut pub ref return self Self static struct super trait true
type unsafe use where while abstract become box do final macro override priv try typeof unsized
virtual yield gen""".split())
QUALIFIERS = {"CONST", "VOLATILE", "RESTRICT", "TYPE_TAG"}


def rust_ident(name):
    return f"r#{name}" if name in KEYWORDS else name


def rust_type_name(c_name):
    return "".join(p[:1].upper() + p[1:] for p in re.sub(r"^kp_", "", c_name).split("_") if p)


def resolve(tid):
    t = types[tid]
    while t["kind"] == "TYPEDEF" or t["kind"] in QUALIFIERS:
        t = types[t["type_id"]]
    return t


def c_spelling(tid):
    """(base type as written, array suffix) of a member's type."""
    t = types[tid]
    if t["kind"] == "ARRAY":
        base, dims = c_spelling(t["type_id"])
        return base, f"[{t['nr_elems']}]" + dims
    if t["kind"] in QUALIFIERS:
        base, dims = c_spelling(t["type_id"])
        return f"{t['kind'].lower()} {base}", dims
    if t["kind"] in ("STRUCT", "UNION", "ENUM", "ENUM64"):
        tag = {"STRUCT": "struct", "UNION": "union"}.get(t["kind"], "enum")
        return f"{tag} {t['name']}", ""
    return t["name"], ""


def int_type(t, where):
    if t["kind"] == "INT":
        if t["encoding"] == "BOOL" or t["nr_bits"] != t["size"] * 8 or t["bits_offset"]:
            fail(f"{where}: unsupported integer {t['name']}")
        signed = t["encoding"] == "SIGNED" and t["name"] != "char"
        size = t["size"]
    elif t["kind"] in ("ENUM", "ENUM64"):
        signed = t.get("encoding") == "SIGNED" or any(v["val"] < 0 for v in t["values"])
        size = t["size"]
    else:
        return None
    if size not in (1, 2, 4, 8, 16):
        fail(f"{where}: unsupported integer size {size}")
    return ("i" if signed else "u") + str(size * 8), size


def layout(tid, where):
    """(rust type, size, reader(b, off_expr, depth), writer(val, off_expr, depth))."""
    t = resolve(tid)
    it = int_type(t, where)
    if it:
        rt, size = it
        return (rt, size,
                lambda off, d, rt=rt: f"{rt}::from_le_bytes(take(b, {off}))",
                lambda val, off, d: f"put(out, {off}, &{val}.to_le_bytes());")
    if t["kind"] == "STRUCT":
        if t["name"] not in struct_names:
            fail(f"{where}: struct {t['name']} is not declared in the header")
        rt = rust_type_name(t["name"])
        return (rt, t["size"],
                lambda off, d, rt=rt: f"{rt}::read(b, {off})",
                lambda val, off, d: f"{val}.write(out, {off});")
    if t["kind"] == "ARRAY":
        n = t["nr_elems"]
        if n == 0:
            fail(f"{where}: flexible array members are not supported")
        ert, esize, eread, ewrite = layout(t["type_id"], where)

        def elem_off(off, d):
            i = f"i{d}"
            return f"{off} + {i}" if esize == 1 else f"{off} + {i} * {esize}"

        def reader(off, d):
            return f"core::array::from_fn(|i{d}| {eread(elem_off(off, d), d + 1)})"

        def writer(val, off, d):
            return (f"for (i{d}, v{d}) in {val}.iter().enumerate() {{ "
                    f"{ewrite(f'v{d}', elem_off(off, d), d + 1)} }}")
        return f"[{ert}; {n}]", esize * n, reader, writer
    fail(f"{where}: unsupported member type {t['kind']} {t.get('name', '')}")


def offset_expr(off):
    return "at" if off == 0 else f"at + {off}"


def doc(lines, indent=""):
    out = []
    for line in lines:
        wrapped = textwrap.wrap(line, 96 - len(indent) - 4, break_long_words=False,
                                break_on_hyphens=False) or [""]
        out += [f"{indent}///" + (f" {w}" if w else "") for w in wrapped]
    return out


struct_names = {s["name"] for s in structs}
rs = []
emit = rs.append

emit(f"// @generated by scripts/gen-records.sh from ebpf/include/{HEADER_NAME}: do not edit.")
emit("// Change the header and rerun the script; scripts/test.sh fails when this file is stale.")
emit("""
//! Ring-buffer record layouts of kpulse's BPF programs (`ebpf/include/kpulse_events.h`), as
//! clang lays them out for the BPF target (read back from BTF), so that no offset is copied
//! by hand.
//!
//! Every `struct kp_<name>` of the header is a struct `<Name>` here with the same fields
//! (`char` arrays as `[u8; N]` with a `<field>_str()` accessor), and:
//! * `SIZE`: `sizeof(struct kp_<name>)`;
//! * `parse(bytes)`: the record at the start of `bytes`, `None` if it is shorter than `SIZE`;
//! * `parse_padded(bytes)`: never fails: bytes past the end of a short record read as zeros,
//!   like [`crate::bpf::Record`]'s accessors;
//! * `to_bytes()`: the record as the BPF program writes it (tests, replay tools).
//!
//! Fields are little-endian (host order) unless the header says "network byte order".
//! The header's enum constants and integer `#define`s are constants with their C names.
//!
//! ```ignore
//! use kpulse_sdk::records::{DropEvent, KP_EV_DROP};
//! for record in records {
//!     let Some(drop) = DropEvent::parse(record.0) else { continue };
//!     if drop.hdr.kind == KP_EV_DROP {
//!         let device = drop.ifname_str();
//!     }
//! }
//! ```
""")

# constants
for name, consts in enums:
    enum_t = var_type.get(f"__kpgen_e_{name}") if name else None
    for c in consts:
        t = enum_t if enum_t else var_type[f"__kpgen_v_{c['name']}"]
        vals = {v["name"]: v["val"] for v in t["values"]}
        value = vals[c["name"] if enum_t else f"__kpgen_c_{c['name']}"]
        rt, _ = int_type(t, c["name"])
        comment = trailing_comment(c)
        where = f"`enum {name}`" if name else "anonymous enum"
        rs.extend(doc([f"{where}: {comment}." if comment else f"{where}."]))
        emit(f"pub const {c['name']}: {rt} = {value};")
    emit("")
for k in int_macros:
    t = var_type[f"__kpgen_v_{k}"]
    value = t["values"][0]["val"]
    rt, _ = int_type(t, k)
    comment = macro_comment(k)
    define = f"`#define {k} {header_macros[k]}`"
    rs.extend(doc([f"{define}: {comment}." if comment else f"{define}."]))
    emit(f"pub const {k}: {rt} = {value};")
emit("")

for s in structs:
    cname = s["name"]
    t = var_type[f"__kpgen_s_{cname}"]
    rname = rust_type_name(cname)
    size = t["size"]
    fields, covered = [], 0
    for m in t["members"]:
        where = f"struct {cname}.{m['name']}"
        if not m.get("name"):
            fail(f"struct {cname}: anonymous members are not supported")
        if m.get("bitfield_size"):
            fail(f"{where}: bitfields are not supported")
        if m["bits_offset"] % 8:
            fail(f"{where}: not byte aligned")
        off = m["bits_offset"] // 8
        rt, fsize, reader, writer = layout(m["type_id"], where)
        if off != covered:
            fail(f"{where}: {off - covered} bytes of implicit padding before it "
                 "(pad explicitly, see the header's rules)")
        covered = off + fsize
        base, dims = c_spelling(m["type_id"])
        arr = resolve(m["type_id"])
        is_char_array = arr["kind"] == "ARRAY" and resolve(arr["type_id"]).get("name") == "char"
        fields.append(dict(name=m["name"], ident=rust_ident(m["name"]), rt=rt, off=off,
                           size=fsize, reader=reader, writer=writer, c=f"{base} {m['name']}{dims}",
                           char_array=is_char_array))
    if covered != size:
        fail(f"struct {cname}: {size - covered} bytes of implicit trailing padding")
    node = next(x for x in structs if x["name"] == cname)
    field_nodes = {f["name"]: f for f in node.get("inner", []) if f["kind"] == "FieldDecl"}

    lead = leading_comment(node) or []
    rs.extend(doc([f"`struct {cname}`, {size} bytes."] + ([""] + lead if lead else [])))
    emit("#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]")
    emit(f"pub struct {rname} {{")
    for f in fields:
        span = (f"byte {f['off']}" if not f["rt"].startswith("[")
                else f"bytes {f['off']}..{f['off'] + f['size']}")
        comment = trailing_comment(field_nodes[f["name"]]) if f["name"] in field_nodes else None
        line = f"`{f['c']}` at {span}" + (f": {comment}" if comment else "")
        rs.extend(doc([line if line.endswith(".") else line + "."], "    "))
        emit(f"    pub {f['ident']}: {f['rt']},")
    emit("}")
    emit("")
    emit(f"impl {rname} {{")
    emit(f"    /// `sizeof(struct {cname})`.")
    emit(f"    pub const SIZE: usize = {size};")
    emit("")
    emit("    /// The record at the start of `bytes`; `None` if `bytes` is shorter than")
    emit("    /// [`Self::SIZE`].")
    emit("    pub fn parse(bytes: &[u8]) -> Option<Self> {")
    emit("        (bytes.len() >= Self::SIZE).then(|| Self::read(bytes, 0))")
    emit("    }")
    emit("")
    emit("    /// The record at the start of `bytes`, reading what lies past the end of a short")
    emit("    /// `bytes` as zeros.")
    emit("    pub fn parse_padded(bytes: &[u8]) -> Self {")
    emit("        Self::read(bytes, 0)")
    emit("    }")
    emit("")
    emit("    /// The record's bytes, as the BPF program writes them.")
    emit("    pub fn to_bytes(&self) -> [u8; Self::SIZE] {")
    emit("        let mut out = [0u8; Self::SIZE];")
    emit("        self.write(&mut out, 0);")
    emit("        out")
    emit("    }")
    for f in fields:
        if f["char_array"]:
            emit("")
            emit(f"    /// `{f['name']}` up to its first NUL (lossy UTF-8).")
            emit(f"    pub fn {f['name']}_str(&self) -> String {{")
            emit(f"        c_str(&self.{f['ident']})")
            emit("    }")
    emit("")
    emit("    fn read(b: &[u8], at: usize) -> Self {")
    emit("        Self {")
    for f in fields:
        emit(f"            {f['ident']}: {f['reader'](offset_expr(f['off']), 0)},")
    emit("        }")
    emit("    }")
    emit("")
    emit("    fn write(&self, out: &mut [u8], at: usize) {")
    for f in fields:
        emit(f"        {f['writer'](f'self.' + f['ident'], offset_expr(f['off']), 0)}")
    emit("    }")
    emit("}")
    emit("")
    emit(f"impl Default for {rname} {{")
    emit("    /// All zeros.")
    emit("    fn default() -> Self {")
    emit("        Self::read(&[], 0)")
    emit("    }")
    emit("}")
    emit("")

emit("""/// A NUL-terminated string in a fixed-size `char` array: the bytes before the first NUL
/// (all of them if there is none), lossy UTF-8.
pub fn c_str(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// `N` bytes at `offset`; zeros unless all of them are in `bytes`.
fn take<const N: usize>(bytes: &[u8], offset: usize) -> [u8; N] {
    let mut out = [0u8; N];
    if let Some(src) = bytes.get(offset..offset + N) {
        out.copy_from_slice(src);
    }
    out
}

/// Copies `src` to `out` at `offset` (`out` is always large enough).
fn put(out: &mut [u8], offset: usize, src: &[u8]) {
    if let Some(dst) = out.get_mut(offset..offset + src.len()) {
        dst.copy_from_slice(src);
    }
}""")

with open(OUT, "w") as f:
    f.write("\n".join(rs) + "\n")
PY
"$RUSTFMT" --edition 2024 "$tmp/records.rs"
if ! cmp -s "$tmp/records.rs" "$out"; then
    cp "$tmp/records.rs" "$out"
    echo "gen-records: wrote $out"
fi
