"""Generate the Python protobuf/gRPC code in src/kannon/pb from the .proto sources in proto/.

Owns the one recipe for generated wire code: every ``*.proto`` under the proto root is compiled
with grpc_tools' bundled protoc (``--python_out``, ``--pyi_out``, ``--grpc_python_out``) into the
source root, and every generated folder gets an ``__init__.py`` so it imports as ``kannon.pb....``.

``--check`` regenerates into a temporary directory and compares it with the committed tree, so CI
fails when someone edits a .proto (or upgrades grpcio-tools) without regenerating.

Usage::

    python scripts/generate_proto.py            # regenerate src/kannon/pb
    python scripts/generate_proto.py --check    # exit 1 and list differences if stale
"""

from __future__ import annotations

import argparse
import difflib
import shutil
import sys
import tempfile
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from google.protobuf import descriptor_pb2
from grpc_tools import protoc  # type: ignore[import-untyped,unused-ignore]  # no stubs, some versions

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PROTO_ROOT = REPO_ROOT / "proto"
DEFAULT_OUT_ROOT = REPO_ROOT / "src"
# Generated code lives in its own package so the proto folder `kannon/` cannot clash with the
# hand-written `kannon` package: proto/kannon/pb/... -> src/kannon/pb/...
GENERATED_PACKAGE = Path("kannon") / "pb"

PACKAGE_DOCSTRING = '"""Generated protobuf/gRPC code (scripts/generate_proto.py); do not edit."""\n'


def proto_files(proto_root: Path) -> list[Path]:
    """Every .proto under the root, relative to it, in a stable order."""
    return sorted(p.relative_to(proto_root) for p in proto_root.rglob("*.proto"))


def generate(proto_root: Path, out_root: Path) -> None:
    """Compile every .proto under proto_root into out_root and add missing __init__.py files.

    gRPC stubs are generated only for files that declare a service: for the others the plugin
    would emit a module holding nothing but a grpcio version check.
    """
    sources = [str(s) for s in proto_files(proto_root)]
    if not sources:
        raise SystemExit(f"no .proto files under {proto_root}")
    out_root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="kannon-proto-set-") as tmp:
        descriptor_set = Path(tmp) / "descriptors.binpb"
        run_protoc(
            proto_root,
            f"--python_out={out_root}",
            f"--pyi_out={out_root}",
            f"--descriptor_set_out={descriptor_set}",
            *sources,
        )
        files = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set.read_bytes()).file
    with_services = [f.name for f in files if f.service]
    if with_services:
        run_protoc(proto_root, f"--grpc_python_out={out_root}", *with_services)
    add_init_files(out_root / GENERATED_PACKAGE)


def run_protoc(proto_root: Path, *args: str) -> None:
    """Run grpc_tools' bundled protoc with the proto root and the well-known types on the path."""
    well_known = resources.files("grpc_tools") / "_proto"
    argv = ["grpc_tools.protoc", f"--proto_path={proto_root}", f"--proto_path={well_known}", *args]
    if protoc.main(argv) != 0:
        raise SystemExit("protoc failed (see messages above)")


def add_init_files(package_root: Path) -> None:
    """Make the generated tree (and every folder in it) an importable package."""
    folders = [package_root, *(p for p in package_root.rglob("*") if p.is_dir())]
    for folder in folders:
        if folder.name == "__pycache__":
            continue
        init = folder / "__init__.py"
        if not init.exists():
            init.write_text(PACKAGE_DOCSTRING)


def tree_files(root: Path) -> dict[str, bytes]:
    """Relative path -> content of every file under root, ignoring bytecode caches."""
    if not root.is_dir():
        return {}
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


def compare_trees(expected: dict[str, bytes], actual: dict[str, bytes]) -> list[str]:
    """Human-readable differences between freshly generated (expected) and committed (actual)."""
    problems: list[str] = []
    for name in sorted(expected.keys() - actual.keys()):
        problems.append(f"missing (not generated/committed): {name}")
    for name in sorted(actual.keys() - expected.keys()):
        problems.append(f"unexpected (no .proto produces it): {name}")
    for name in sorted(expected.keys() & actual.keys()):
        if expected[name] == actual[name]:
            continue
        diff = difflib.unified_diff(
            actual[name].decode("utf-8", "replace").splitlines(),
            expected[name].decode("utf-8", "replace").splitlines(),
            fromfile=f"committed/{name}",
            tofile=f"generated/{name}",
            lineterm="",
            n=1,
        )
        lines = list(diff)
        shown = "\n".join(lines[:20])
        more = f"\n    ... {len(lines) - 20} more diff lines" if len(lines) > 20 else ""
        problems.append(f"stale: {name}\n{shown}{more}")
    return problems


def check(proto_root: Path, out_root: Path) -> list[str]:
    """Regenerate into a temporary directory and list how the committed code differs."""
    with tempfile.TemporaryDirectory(prefix="kannon-proto-") as tmp:
        fresh_root = Path(tmp)
        generate(proto_root, fresh_root)
        expected = tree_files(fresh_root / GENERATED_PACKAGE)
    return compare_trees(expected, tree_files(out_root / GENERATED_PACKAGE))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--check",
        action="store_true",
        help="do not write; exit 1 if the committed generated code is stale",
    )
    parser.add_argument("--proto-root", type=Path, default=DEFAULT_PROTO_ROOT)
    parser.add_argument("--out-root", type=Path, default=DEFAULT_OUT_ROOT)
    args = parser.parse_args(argv)
    proto_root: Path = args.proto_root.resolve()
    out_root: Path = args.out_root.resolve()

    if args.check:
        problems = check(proto_root, out_root)
        if problems:
            print(
                f"generated code under {out_root / GENERATED_PACKAGE} is stale "
                f"({len(problems)} file(s)); run `python scripts/generate_proto.py`:",
                file=sys.stderr,
            )
            for problem in problems:
                print(f"  {problem}", file=sys.stderr)
            return 1
        print(f"generated code under {out_root / GENERATED_PACKAGE} is up to date")
        return 0

    # Start from an empty package so code from deleted .proto files does not linger.
    target = out_root / GENERATED_PACKAGE
    if target.exists():
        shutil.rmtree(target)
    generate(proto_root, out_root)
    print(f"generated {len(proto_files(proto_root))} .proto file(s) into {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
