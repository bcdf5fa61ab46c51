"""The committed code in src/kannon/pb is what scripts/generate_proto.py makes from proto/.

Fails CI when a .proto is edited (or grpcio-tools upgraded) without regenerating, and checks that
the checker itself notices stale, missing and stray files.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "scripts" / "generate_proto.py"


def run_generator(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def test_committed_generated_code_is_fresh() -> None:
    result = run_generator("--check")
    assert result.returncode == 0, result.stdout + result.stderr


def test_check_reports_stale_missing_and_stray_files(tmp_path: Path) -> None:
    proto_root = tmp_path / "proto"
    out_root = tmp_path / "src"
    shutil.copytree(REPO_ROOT / "proto", proto_root)
    assert (
        run_generator("--proto-root", str(proto_root), "--out-root", str(out_root)).returncode == 0
    )
    assert (
        run_generator(
            "--check", "--proto-root", str(proto_root), "--out-root", str(out_root)
        ).returncode
        == 0
    )

    stats = proto_root / "kannon" / "pb" / "stats" / "types" / "stats.proto"
    stats.write_text(
        stats.read_text().replace("string url = 3;", "string url = 3;\n  string x = 4;")
    )
    pb = out_root / "kannon" / "pb"
    (pb / "mailer" / "types" / "send_pb2.pyi").unlink()
    (pb / "stray.py").write_text("")

    result = run_generator("--check", "--proto-root", str(proto_root), "--out-root", str(out_root))

    assert result.returncode == 1
    assert "stale: stats/types/stats_pb2.py" in result.stderr
    assert "missing (not generated/committed): mailer/types/send_pb2.pyi" in result.stderr
    assert "unexpected (no .proto produces it): stray.py" in result.stderr
    assert "stale: admin" not in result.stderr


def test_generation_makes_an_importable_package_tree(tmp_path: Path) -> None:
    assert run_generator("--out-root", str(tmp_path)).returncode == 0
    pb = tmp_path / "kannon" / "pb"
    folders = [pb, *(p for p in pb.rglob("*") if p.is_dir() and p.name != "__pycache__")]
    assert all((folder / "__init__.py").is_file() for folder in folders)
    # gRPC modules only where a service is declared.
    assert (pb / "mailer" / "apiv1" / "mailerapiv1_pb2_grpc.py").is_file()
    assert not (pb / "mailer" / "types" / "send_pb2_grpc.py").exists()
