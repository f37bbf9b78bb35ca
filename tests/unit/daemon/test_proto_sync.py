"""The checked-in generated code of the daemon's API is what its .proto files generate."""

from __future__ import annotations

from pathlib import Path

import pytest

from lazybuild.api import generate


def test_generated_code_is_in_sync_with_the_protos(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools", reason="grpcio-tools is a dev dependency")
    generate.generate(tmp_path)
    fresh = generate.generated_files(tmp_path)
    checked_in = generate.generated_files(generate.SOURCE_ROOT)
    assert fresh, "no .proto generated anything"
    assert checked_in == fresh, "generated files missing or extra: run `just proto`"
    stale = [
        str(path)
        for path in fresh
        if (tmp_path / path).read_bytes() != (generate.SOURCE_ROOT / path).read_bytes()
    ]
    assert not stale, f"out of sync with their .proto (run `just proto`): {', '.join(stale)}"


def test_every_proto_has_its_generated_modules() -> None:
    for proto in generate.proto_files():
        stem = generate.SOURCE_ROOT / proto.with_suffix("")
        for suffix in generate.GENERATED_SUFFIXES:
            assert Path(f"{stem}{suffix}").is_file(), f"{proto}: no {suffix} (run `just proto`)"
