"""The workload's command-line flags and how outcomes read."""

from __future__ import annotations

import argparse
import json

import pytest

from lazybuild.cli.optimize_commands import add_parsers, workload_command, workload_options
from lazybuild.oci import mediatypes
from lazybuild.oci.descriptor import Descriptor
from lazybuild.oci.manifest import Index, parse_document
from lazybuild.oci.platform import Platform
from lazybuild.profile.artifact import (
    REFERENCE_TYPE,
    find_record,
    index_with_record,
    record_artifact,
)
from lazybuild.profile.record import RECORD_MEDIA_TYPE
from lazybuild.profile.workload import WorkloadOutcome


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_parsers(parser.add_subparsers())
    return parser.parse_args(["optimize", *argv, "src", "dst"])


def test_defaults_are_the_image_command_ten_seconds_no_network() -> None:
    options = workload_options(parse())
    assert options.command is None
    assert (options.timeout, options.network) == (10.0, "none")
    assert (options.ready, options.env) == (None, ())


def test_flags() -> None:
    args = parse(
        "--workload-cmd",
        "python3 -c 'print(1)'",
        "--workload-env",
        "A=1",
        "--workload-timeout",
        "2.5s",
        "--workload-ready",
        "^Serving HTTP",
        "--network",
        "host",
    )
    options = workload_options(args)
    assert options.command == ("python3", "-c", "print(1)")
    assert options.env == ("A=1",)
    assert options.timeout == 2.5
    assert options.ready is not None and options.ready.search("Serving HTTP on 0.0.0.0")
    assert options.network == "host"


def test_the_command_may_be_a_json_array() -> None:
    assert workload_command('["sh", "-c", "exit 3"]') == ("sh", "-c", "exit 3")


@pytest.mark.parametrize("text", ["", "[1, 2]", '["a"', "'unterminated"])
def test_bad_commands_are_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        workload_command(text)


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--workload-timeout", "0"), ("--workload-timeout", "soon"), ("--workload-ready", "(")],
)
def test_bad_values_are_usage_errors(flag: str, value: str) -> None:
    with pytest.raises(SystemExit):
        parse(flag, value)


def test_outcomes_say_what_happened() -> None:
    assert WorkloadOutcome("exited", 1.25, exit_code=0).describe() == (
        "exited with status 0 after 1.2s"
    )
    assert WorkloadOutcome("exited", 1, exit_code=3).succeeded is False
    assert "signal 11" in WorkloadOutcome("exited", 1, exit_code=139, signal=11).describe()
    assert WorkloadOutcome("ready", 0.5).succeeded
    assert "timeout" in WorkloadOutcome("timed-out", 2.0).describe()
    failed = WorkloadOutcome("failed-to-start", 0, reason="no such file")
    assert failed.describe() == "failed to start: no such file"
    assert failed.to_json() == {
        "outcome": "failed-to-start",
        "seconds": 0,
        "reason": "no such file",
    }


def test_the_record_artifact_sits_next_to_the_image_in_an_index() -> None:
    image = Descriptor(mediatypes.OCI_MANIFEST, "sha256:" + "1" * 64, 1234)
    record = b'{"path":"usr/bin/cat","layerIndex":0}\n'
    artifact = record_artifact(
        record, image, command=("cat", "/x"), outcome={"outcome": "exited", "exitCode": 0}
    )
    manifest = json.loads(artifact.manifest_bytes)
    assert manifest["artifactType"] == RECORD_MEDIA_TYPE
    assert manifest["subject"] == image.to_json()
    assert manifest["config"]["mediaType"] == "application/vnd.oci.empty.v1+json"
    assert [layer["mediaType"] for layer in manifest["layers"]] == [RECORD_MEDIA_TYPE]
    assert artifact.blobs[1][1] == record
    assert json.loads(manifest["annotations"]["dev.lazybuild.workload.command"]) == ["cat", "/x"]

    descriptor, data = index_with_record(image, Platform("linux", "amd64"), artifact)
    index = parse_document(data, descriptor.media_type, "index")
    assert isinstance(index, Index)
    # Runtimes choose the image; the record (unknown/unknown) is never chosen.
    assert index.select(Platform("linux", "amd64"), "index").digest == image.digest
    found = find_record(index)
    assert found is not None and found.digest == artifact.manifest.digest
    assert found.annotations["vnd.docker.reference.digest"] == image.digest
    assert found.annotations["vnd.docker.reference.type"] == REFERENCE_TYPE
