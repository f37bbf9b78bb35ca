"""Regenerates the Python of the API's ``.proto`` files (``just proto``).

The generated modules are checked in, next to their ``.proto``, so that installing
lazybuild needs no protobuf compiler; ``tests/unit/daemon/test_proto_sync.py`` runs
this into a temporary directory and fails when the checked-in files differ. protoc is
grpcio-tools' (a dev dependency, pinned so every machine generates the same bytes);
the ``.pyi`` stubs are mypy-protobuf's, which type both the messages and the gRPC
stubs strictly enough for ``mypy --strict`` (protoc's own ``--pyi_out`` leaves
``Mapping`` unparameterised and writes none for the gRPC module).

Usage: ``python -m lazybuild.api.generate [OUT_DIR]`` (default: the source tree).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

# The directory protoc resolves ``lazybuild/api/...`` imports from: the one holding the
# ``lazybuild`` package, so that generated imports are ``lazybuild.api....`` modules.
SOURCE_ROOT = Path(__file__).resolve().parents[2]
API_DIR = SOURCE_ROOT / "lazybuild" / "api"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")


def proto_files() -> list[Path]:
    """Every ``.proto`` of the API, relative to ``SOURCE_ROOT``, in a stable order."""
    return sorted(path.relative_to(SOURCE_ROOT) for path in API_DIR.rglob("*.proto"))


def generated_files(root: Path) -> list[Path]:
    """The generated modules below ``root``'s ``lazybuild/api``, relative to ``root``."""
    api = root / "lazybuild" / "api"
    found = [p for p in api.rglob("*") if p.is_file() and p.name.endswith(GENERATED_SUFFIXES)]
    return sorted(path.relative_to(root) for path in found)


def _plugin(name: str) -> str:
    # Installed next to the interpreter (the venv's bin), whether or not it is on PATH.
    return str(Path(sys.executable).parent / name)


def generate(out_dir: Path = SOURCE_ROOT) -> None:
    """Writes the generated modules of every ``.proto`` under ``out_dir``."""
    out = str(out_dir)
    command = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"--proto_path={SOURCE_ROOT}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
        f"--mypy_out={out}",
        f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
        f"--mypy_grpc_out={out}",
        *(str(path) for path in proto_files()),
    ]
    # mypy-protobuf says "Writing mypy to ..." per file: only errors are worth showing.
    done = subprocess.run(command, cwd=SOURCE_ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"protoc failed:\n{done.stderr.strip()}")


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else SOURCE_ROOT)
