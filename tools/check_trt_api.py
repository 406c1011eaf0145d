"""Extract the Python names that TensorRT's published bindings register, without importing them.

TensorRT's Python API is a pybind11 extension (``tensorrt_bindings/tensorrt.so`` inside the
``tensorrt-cu12-bindings`` / ``tensorrt-cu13-bindings`` wheels on PyPI). Importing it needs the
TensorRT libraries and a GPU driver; reading it needs neither. pybind11 registers every name as a
C string passed to a registration call: ``class_<T>(m, "Name")`` (then
``generic_type::initialize``), ``.def("method", ...)`` (``add_class_method`` or a
``class_<T>::def`` instantiation), ``.def_property("attr", ...)``
(``def_property_static_impl``), ``enum_<E>(m, "Name")`` and ``.value("MEMBER", ...)``. This tool
disassembles the extension with ``objdump`` (binutils) and, for each such call, reads the string
whose address was loaded into the name-argument register (x86-64 System V: ``%rsi`` for a method's
first argument) and the class or enum it was registered on. Strings that the linker tail-merged
(``"INT8"`` stored inside ``"UINT8"``) resolve correctly, because the address itself is followed.
Names defined in the wheel's ``tensorrt_bindings/__init__.py`` (``__version__``,
``Logger.Severity``) are read with ``ast``.

The result is one text file per wheel in ``tools/trt_api/`` (``tensorrt-<version>.txt``): a
header of ``#`` lines (wheel, sha256, how made), then one name a line, sorted: a bare name is a
module attribute (a class, an enum, a function), ``Owner.member`` a member of a registered class
or enum. The files are committed; ``tests/test_trt_api_names.py`` checks
``xinfer_stream/engines/_trt_api.py`` against them offline.

Usage (needs network access to PyPI and ``objdump``)::

    python tools/check_trt_api.py                 # download, extract, rewrite tools/trt_api/*.txt
    python tools/check_trt_api.py --check         # compare _trt_api.py with the committed lists

The extraction is a reading of machine code, so it has edges: a name registered through a path
this tool does not follow (a ``setattr`` from C++, say) is missing from the list, which makes the
check fail loudly rather than pass wrongly; argument names of ``py::arg`` are not collected.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT_DIR = REPO / "tools" / "trt_api"

# The wheels read: the oldest 10.x that JetPack 6 ships (10.3), the newest 10.x, the newest 11.x.
# 11.x is published for CUDA 13 (tensorrt-cu13-*); 10.x for CUDA 12.
WHEELS: tuple[tuple[str, str], ...] = (
    ("tensorrt-cu12-bindings", "10.3.0"),
    ("tensorrt-cu12-bindings", "10.16.1.11"),
    ("tensorrt-cu13-bindings", "11.4.0.106"),
)
PYTHON_TAG = "3.11"
# The x86-64 Linux build (older releases are tagged manylinux_2_17); the aarch64 one registers the
# same names.
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64")

_IDENT = re.compile(rb"[A-Za-z_][A-Za-z0-9_]*")
_FUNC = re.compile(r"^([0-9a-f]+) <(.*)>:$")
_LEA = re.compile(r"\blea\s+-?0x[0-9a-f]+\(%rip\),%(\w+)\s+# ([0-9a-f]+)")
_MOV = re.compile(r"\bmov\s+%(\w+),%(\w+)\s*$")
_CALL = re.compile(r"\b(?:call|jmp)\s+([0-9a-f]+) <(.*)>\s*$")
_DEST = re.compile(r",%(\w+)\s*$")
_REG_ALIASES = {"eax": "rax", "ax": "rax", "al": "rax", "ebx": "rbx", "bx": "rbx", "bl": "rbx",
                "ecx": "rcx", "cx": "rcx", "cl": "rcx", "edx": "rdx", "dx": "rdx", "dl": "rdx",
                "esi": "rsi", "si": "rsi", "sil": "rsi", "edi": "rdi", "di": "rdi", "dil": "rdi",
                "ebp": "rbp", "esp": "rsp"}


def _reg64(name: str) -> str:
    """``%edx`` and ``%dl`` are parts of ``%rdx``; ``%r8d`` of ``%r8``."""
    if re.fullmatch(r"r\d+[dwb]", name):
        return name[:-1]
    return _REG_ALIASES.get(name, name)


_CALLER_SAVED = ("rax", "rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10", "r11")
_CLASS_OF = re.compile(r"pybind11::class_<([^<>]+(?:<[^<>]*>)?)\s*>::")
_ENUM_OF = re.compile(r"pybind11::enum_<([^<>]+)>::")


@dataclass
class Registry:
    """What the extension registers: type names, members per owner, module-level functions."""

    types: set[str] = field(default_factory=set)
    members: set[tuple[str, str]] = field(default_factory=set)
    functions: set[str] = field(default_factory=set)

    def lines(self) -> list[str]:
        names = set(self.types) | set(self.functions)
        names |= {f"{owner}.{member}" for owner, member in self.members if owner}
        return sorted(names)


def _callee_head(target: str) -> str:
    """A demangled callee without its parameter list and clone suffixes, so that a class name
    holding parentheses (``bindCore(pybind11::module_&)::PyProgressMonitor``) stays whole."""
    text = re.sub(r"( \[clone [^\]]*\])+$", "", target)
    text = re.sub(r"\s*(const|noexcept|&|&&)\s*$", "", text)
    if not text.endswith(")"):
        return text
    depth = 0
    for i in range(len(text) - 1, -1, -1):
        depth += {")": 1, "(": -1}.get(text[i], 0)
        if depth == 0:
            return text[:i]
    return text


def _cpp_last(name: str) -> str:
    """``nvinfer1::v_1_0::ILogger::Severity`` -> ``Severity``; of ``class_<T, Trampoline>``, T."""
    return name.split("<")[0].split(",")[0].strip().split("::")[-1]


class _Rodata:
    def __init__(self, so: Path) -> None:
        self.data = so.read_bytes()
        out = subprocess.run(["readelf", "-SW", str(so)], capture_output=True, text=True, check=True)
        self.ranges: list[tuple[int, int, int]] = []
        for line in out.stdout.splitlines():
            m = re.match(r"\s*\[\s*\d+\]\s+(\S+)\s+\S+\s+([0-9a-f]+)\s+([0-9a-f]+)\s+([0-9a-f]+)", line)
            if m and m.group(1).startswith(".rodata"):
                self.ranges.append((int(m.group(2), 16), int(m.group(3), 16), int(m.group(4), 16)))

    def ident_at(self, addr: int) -> str | None:
        for vaddr, offset, size in self.ranges:
            if vaddr <= addr < vaddr + size:
                start = addr - vaddr + offset
                end = self.data.index(b"\0", start)
                text = self.data[start:end]
                return text.decode() if _IDENT.fullmatch(text) else None
        return None


def _functions(disassembly: str) -> Iterator[tuple[int, list[str]]]:
    """(address, instruction lines) of each function. Keyed by address: demangled names repeat
    (hot and cold parts, identical instantiations)."""
    addr, body = -1, []
    for line in disassembly.splitlines():
        m = _FUNC.match(line)
        if m:
            if body:
                yield addr, body
            addr, body = int(m.group(1), 16), []
        elif line.startswith(" "):
            body.append(line)
    if body:
        yield addr, body


def extract(so: Path) -> Registry:
    """Read the registrations of one pybind11 extension (see the module docstring)."""
    if shutil.which("objdump") is None or shutil.which("readelf") is None:
        raise SystemExit("check_trt_api needs objdump and readelf (binutils): apt-get install binutils")
    rodata = _Rodata(so)
    dis = subprocess.run(["objdump", "-d", "-C", "--no-show-raw-insn", str(so)],
                         capture_output=True, text=True, check=True).stdout
    funcs = dict(_functions(dis))
    reg = Registry()
    cpp_to_py: dict[str, str] = {}
    memo: dict[int, tuple[list[str], str]] = {}

    def helper(addr: int) -> tuple[list[str], str]:
        """What a helper registers on its caller's class (a specialised ``class_<T>::def``), and
        the class it creates, if any (a specialised ``class_<T>::class_``)."""
        if addr not in memo:
            memo[addr] = ([], "")
            memo[addr] = walk(funcs.get(addr, []), record=False)
        return memo[addr]

    def own_names(addr: int) -> list[str]:
        return helper(addr)[0]

    def walk(body: list[str], record: bool) -> tuple[list[str], str]:
        regs: dict[str, str | None] = {}
        last_ident: str | None = None
        last_class_cpp: str | None = None
        owner = ""
        registered: list[str] = []   # names registered on the caller's current owner

        def add(owner_name: str, name: str) -> None:
            if record and owner_name:
                reg.members.add((owner_name, name))
            if not owner_name:
                registered.append(name)

        for line in body:
            if (m := _LEA.search(line)):
                s = rodata.ident_at(int(m.group(2), 16))
                regs[_reg64(m.group(1))] = s
                if s:
                    last_ident = s
                if (c := _CLASS_OF.search(line)):
                    last_class_cpp = c.group(1)
                continue
            if (m := _MOV.search(line)):
                regs[_reg64(m.group(2))] = regs.get(_reg64(m.group(1)))
                continue
            m = _CALL.search(line)
            if not m or "+0x" in m.group(2):  # a jump inside a function is no call
                if (d := _DEST.search(line)):
                    regs.pop(_reg64(d.group(1)), None)  # any other write forgets the string
                continue
            callee, target = int(m.group(1), 16), m.group(2)
            head = _callee_head(target)
            rsi, rdx = regs.get("rsi"), regs.get("rdx")
            cls_m, enum_m = _CLASS_OF.search(head), _ENUM_OF.search(head)
            if "generic_type::initialize" in head and last_ident:
                owner = last_ident
                reg.types.add(owner)
                if last_class_cpp:
                    cpp_to_py.setdefault(last_class_cpp, owner)
            elif cls_m and re.search(r">::class_(<|$)", head):
                owner = rdx or helper(callee)[1] or _cpp_last(cls_m.group(1))
                reg.types.add(owner)
                cpp_to_py.setdefault(cls_m.group(1), owner)
            elif enum_m and re.search(r">::enum_(<|$)", head):
                owner = rdx or _cpp_last(enum_m.group(1))
                reg.types.add(owner)
            elif enum_m and head.endswith("::value"):
                py = _cpp_last(enum_m.group(1))
                for name in [rsi] if rsi else own_names(callee):
                    add(py, name)
            elif any(k in head for k in ("enum_base::value", "add_class_method",
                                         "def_property_static_impl")):
                if rsi:
                    add(owner, rsi)
            elif cls_m and re.search(r">::def(_static|_property\w*|_readonly\w*|_readwrite\w*)?(<|$)", head):
                if rsi:
                    # The caller passes the name: it belongs to the caller's class. The callee's
                    # own class name cannot be trusted, as the linker folds identical helpers
                    # (OnnxParser's num_errors is registered through IErrorRecorder's def).
                    add(owner, rsi)
                else:
                    for name in own_names(callee):
                        add(cpp_to_py.get(cls_m.group(1), owner), name)
            elif "module_::def" in head:
                for name in [rsi] if rsi else own_names(callee):
                    if record:
                        reg.functions.add(name)
            for r in _CALLER_SAVED:  # a call clobbers these; rbx, rbp, r12-r15 survive it
                regs.pop(r, None)
        return registered, owner

    # Two passes: the first learns the C++ -> Python class names (IBuilder -> Builder) that the
    # second needs to place members registered from helper functions.
    for record in (False, True):
        for body in funcs.values():
            walk(body, record)
    return reg


def read_init(init_py: Path, reg: Registry) -> None:
    """Add the names the wheel's ``__init__.py`` defines at module level or on classes."""
    tree = ast.parse(init_py.read_text())
    for node in tree.body:
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
            reg.functions.add(node.name)
        for t in targets:
            if isinstance(t, ast.Name):
                reg.functions.add(t.id)
            elif isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name):
                reg.members.add((t.value.id, t.attr))


def download(package: str, version: str, dest: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                    "--python-version", PYTHON_TAG,
                    *(arg for p in PLATFORMS for arg in ("--platform", p)), "-d", str(dest),
                    f"{package}=={version}"], check=True, capture_output=True)
    (wheel,) = dest.glob("*.whl")
    return wheel


def list_wheel(wheel: Path, work: Path) -> tuple[Registry, str]:
    with zipfile.ZipFile(wheel) as zf:
        zf.extract("tensorrt_bindings/tensorrt.so", work)
        zf.extract("tensorrt_bindings/__init__.py", work)
    reg = extract(work / "tensorrt_bindings" / "tensorrt.so")
    read_init(work / "tensorrt_bindings" / "__init__.py", reg)
    return reg, hashlib.sha256(wheel.read_bytes()).hexdigest()


def write_lists() -> None:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for package, version in WHEELS:
        with tempfile.TemporaryDirectory() as tmp:
            wheel = download(package, version, Path(tmp) / "wheel")
            reg, digest = list_wheel(wheel, Path(tmp) / "x")
        header = [f"# names registered by {wheel.name}",
                  f"# sha256 {digest}",
                  ("# made by tools/check_trt_api.py (objdump of tensorrt_bindings/tensorrt.so, "
                   "ast of tensorrt_bindings/__init__.py)"),
                  "# bare name: module attribute; Owner.member: member of a class or enum"]
        path = OUT_DIR / f"tensorrt-{version}.txt"
        path.write_text("\n".join(header + reg.lines()) + "\n")
        print(f"{path.relative_to(REPO)}: {len(reg.lines())} names")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="compare xinfer_stream/engines/_trt_api.py with the committed lists")
    args = parser.parse_args(argv)
    if not args.check:
        write_lists()
    sys.path.insert(0, str(REPO))
    from xinfer_stream.engines._trt_api import missing_names
    problems = missing_names(OUT_DIR)
    for line in problems:
        print(line)
    print("ok: every TensorRT name we use is registered" if not problems else
          f"{len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
