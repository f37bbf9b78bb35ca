"""Hostile TOCs through `lazybuild mount`, before anything is verified: a PAX record of
length 0 (it used to spin a worker thread at 100%, deaf to SIGTERM), a PAX size that is
not a number (a traceback), a footer pointing the TOC at offset 0 of a big blob (the
whole blob read into memory). Each is one error line, exit 1, quickly, nothing mounted."""

from __future__ import annotations

import hashlib
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from lazybuild.estargz import encode_footer
from lazybuild.estargz.gzipmembers import compress_member
from lazybuild.oci import mediatypes
from lazybuild.oci.descriptor import Descriptor
from lazybuild.oci.layout import OciLayout
from tests.integration.test_lazy_commands import lazybuild_argv, mounts_under
from tests.support.imagebuild import Layer, push_oci_layout, write_image
from tests.support.registry import Registry
from tests.unit.estargz.test_hostile_toc import pax_member

pytestmark = pytest.mark.root


@dataclass(frozen=True)
class _AnnotatedLayer(Layer):
    toc_digest: str = ""

    def descriptor(self) -> Descriptor:
        annotations = {mediatypes.TOC_DIGEST_ANNOTATION: self.toc_digest}
        return Descriptor(mediatypes.OCI_LAYER_GZIP, self.digest, self.size, annotations)


def _estargz_like(toc_member: bytes, padding: int = 0) -> bytes:
    body = compress_member(b"\0" * 1024, 6) + b"\0" * padding
    return body + toc_member + encode_footer(len(body))


CASES = {
    "pax-record-of-length-zero": _estargz_like(pax_member(b"0 path=x\n")),
    "pax-size-not-a-number": _estargz_like(pax_member(b"13 size=abc\n")),
    "toc-at-offset-zero": compress_member(b"\0" * 1024, 6) + b"\0" * (80 << 20) + encode_footer(0),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_hostile_toc_is_one_error_line(case: str, registry: Registry, tmp_path: Path) -> None:
    layout = OciLayout.create(tmp_path / "layout")
    blob = CASES[case]
    digest = layout.write_blob(blob)
    fake_toc = "sha256:" + hashlib.sha256(b"not the TOC").hexdigest()
    layer = _AnnotatedLayer(digest, "sha256:" + "0" * 64, len(blob), toc_digest=fake_toc)
    write_image(layout, [layer])
    push_oci_layout(tmp_path / "layout", registry.host, "test/hostile-toc", case)
    state = tmp_path / "state"
    target = tmp_path / "mnt"
    target.mkdir()
    started = time.monotonic()
    result = subprocess.run(
        lazybuild_argv(state, "mount", f"{registry.host}/test/hostile-toc:{case}", str(target)),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("lazybuild: error:")]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert time.monotonic() - started < 60
    assert mounts_under(state) == []
