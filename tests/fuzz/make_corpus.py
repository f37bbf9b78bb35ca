"""Writes the binary seeds of the fuzz corpus (``python -m tests.fuzz.make_corpus``).

The text seeds (manifests, Dockerfiles, ...) are written by hand; the eStargz seeds
come from lazybuild's own writer, so they are real layers. Run again only to refresh
them: the tests read the files, not this script.
"""

from __future__ import annotations

import io
import tarfile

from lazybuild.estargz import WriterOptions, encode_footer, encode_legacy_footer, write_estargz
from lazybuild.estargz.footer import FOOTER_SIZE
from lazybuild.estargz.gzipmembers import compress_member
from lazybuild.estargz.reader import parse_layer
from lazybuild.estargz.tarentry import END_OF_ARCHIVE, padding, plain_file_header
from lazybuild.estargz.toc import TOC_TAR_NAME
from tests.fuzz.fuzzkit import CORPUS


def _tar() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, data in [("etc/", None), ("etc/hostname", b"fuzz\n"), ("bin/big", None)]:
            info = tarfile.TarInfo(name)
            if data is None and name.endswith("/"):
                info.type = tarfile.DIRTYPE
                archive.addfile(info)
                continue
            payload = data if data is not None else bytes(range(256)) * 40
            info.size = len(payload)
            info.pax_headers = {"SCHILY.xattr.user.k": "v"} if name == "etc/hostname" else {}
            archive.addfile(info, io.BytesIO(payload))
        link = tarfile.TarInfo("bin/link")
        link.type = tarfile.LNKTYPE
        link.linkname = "bin/big"
        archive.addfile(link)
    return buffer.getvalue()


def main() -> None:
    out = io.BytesIO()
    write_estargz(io.BytesIO(_tar()), out, WriterOptions(chunk_size=4096, workers=1))
    blob = out.getvalue()
    opened = parse_layer(blob, 0, len(blob), None)
    (CORPUS / "layer").mkdir(parents=True, exist_ok=True)
    (CORPUS / "layer" / "small.esgz").write_bytes(blob)
    (CORPUS / "footer").mkdir(exist_ok=True)
    (CORPUS / "footer" / "estargz").write_bytes(blob[-FOOTER_SIZE:])
    (CORPUS / "footer" / "legacy").write_bytes(encode_legacy_footer(0x1234))
    (CORPUS / "footer" / "estargz-0").write_bytes(encode_footer(0))
    member = blob[opened.toc_offset : len(blob) - FOOTER_SIZE]
    (CORPUS / "toc_member").mkdir(exist_ok=True)
    (CORPUS / "toc_member" / "small.gz").write_bytes(member)
    pax = b"26 path=stargz.index.json\n"
    pax_tar = plain_file_header("PaxHeaders/x", len(pax))
    pax_tar = pax_tar[:156] + b"x" + pax_tar[157:]
    checksum = sum(pax_tar[:148]) + 8 * 0x20 + sum(pax_tar[156:])
    pax_tar = pax_tar[:148] + b"%06o\0 " % checksum + pax_tar[156:]
    toc = opened.toc_json
    tar = pax_tar + pax + padding(len(pax))
    tar += plain_file_header(TOC_TAR_NAME, len(toc)) + toc + padding(len(toc)) + END_OF_ARCHIVE
    (CORPUS / "toc_member" / "pax.gz").write_bytes(compress_member(tar, 6))
    (CORPUS / "toc_json").mkdir(exist_ok=True)
    (CORPUS / "toc_json" / "small.json").write_bytes(toc)


if __name__ == "__main__":
    main()
