"""``lazybuild build`` end to end: real registry, lazy FUSE mounts, runc, dockerd, containerd.

Base images are eStargz (converted by lazybuild) in the session's local registry.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from lazybuild.cli.main import main
from lazybuild.oci import mediatypes
from tests.e2e.buildsupport import assert_nothing_left, lazybuild, rawjson_events, write_context
from tests.support.containerd import Containerd
from tests.support.dockerd import Dockerd
from tests.support.images import read_layout_image
from tests.support.registry import Registry

MULTI_STAGE = """\
ARG BASE
FROM ${BASE} AS build
WORKDIR /work
COPY message.txt .
RUN tr a-z A-Z < message.txt > shout.txt && rm -rf /usr/share/doc && echo compiled

FROM ${BASE}
LABEL org.example.role=e2e
ENV GREETING=hello
COPY --from=build /work/shout.txt /app/shout.txt
WORKDIR /app
ENTRYPOINT ["cat"]
CMD ["/app/shout.txt"]
"""


@pytest.fixture(scope="module")
def base_image(registry: Registry, debian_image: str) -> str:
    converted = f"{registry.host}/e2e-build/debian:esgz"
    assert main(["-q", "convert", debian_image, converted]) == 0
    return converted


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("build-state")
    yield root
    assert_nothing_left(root)


@pytest.fixture(scope="module")
def built_app(
    base_image: str, registry: Registry, state: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, Path]:
    """The multi-stage example built once and pushed; its context directory."""
    context = write_context(
        tmp_path_factory.mktemp("app"), MULTI_STAGE, {"message.txt": "built by lazybuild\n"}
    )
    ref = f"{registry.host}/e2e-build/app:1"
    lazybuild(
        state,
        "build",
        "--progress=plain",
        "--build-arg",
        f"BASE={base_image}",
        "-t",
        ref,
        "--push",
        str(context),
    )
    assert_nothing_left(state)
    return ref, context


def test_pushed_image_runs_in_dockerd(built_app: tuple[str, Path], dockerd: Dockerd) -> None:
    ref, _ = built_app
    output = dockerd.docker("run", "--rm", ref).stdout
    assert output == "BUILT BY LAZYBUILD\n"
    env = json.loads(dockerd.docker("inspect", ref).stdout)[0]["Config"]["Env"]
    assert "GREETING=hello" in env


def test_pushed_image_runs_in_containerd(
    built_app: tuple[str, Path], containerd: Containerd
) -> None:
    ref, _ = built_app
    assert containerd.run_image(ref, "cat", "/app/shout.txt") == "BUILT BY LAZYBUILD\n"


def test_pushed_image_runs_in_lazybuild_run(built_app: tuple[str, Path], state: Path) -> None:
    ref, _ = built_app
    result = lazybuild(state, "run", ref)
    assert result.stdout == "BUILT BY LAZYBUILD\n"


def test_new_layers_pass_the_reference_reader(
    built_app: tuple[str, Path], base_image: str, state: Path, tmp_path: Path
) -> None:
    from tests.support.gochecker import build_go_checker, run_go_checker

    _, context = built_app
    layout = tmp_path / "oci"
    lazybuild(
        state,
        "build",
        "-q",
        "--build-arg",
        f"BASE={base_image}",
        "-o",
        f"type=oci,dest={layout},tar=false",
        str(context),
    )
    image = read_layout_image(layout)
    checker = build_go_checker(tmp_path / "go")
    new_layers = image.layers[-3:]  # COPY --from, WORKDIR... whatever the stage added
    for layer in new_layers:
        toc_digest = layer["annotations"][mediatypes.TOC_DIGEST_ANNOTATION]
        report = run_go_checker(checker, image.blob(layer["digest"]), toc_digest)
        assert report["file_sha256"] is not None
    config = image.config
    assert config["config"]["Entrypoint"] == ["cat"]
    assert config["config"]["Cmd"] == ["/app/shout.txt"]
    assert config["config"]["WorkingDir"] == "/app"
    assert config["config"]["Labels"] == {"org.example.role": "e2e"}
    non_empty = [h for h in config["history"] if not h.get("empty_layer")]
    assert len(non_empty) == len(config["rootfs"]["diff_ids"]) == len(image.layers)


def test_second_build_runs_nothing_and_fetches_nothing(
    built_app: tuple[str, Path], base_image: str, state: Path, tmp_path: Path
) -> None:
    ref, context = built_app
    report_path = tmp_path / "fetch.json"
    result = lazybuild(
        state,
        "build",
        "--progress=rawjson",
        "--build-arg",
        f"BASE={base_image}",
        "-t",
        ref,
        "--push",
        "--fetch-report",
        str(report_path),
        str(context),
    )
    completed = [e for e in rawjson_events(result.stderr) if e["type"] == "completed"]
    # The solver stops at the first cache hit from the top, so earlier steps (the RUN)
    # need not appear at all; whatever does appear was loaded, not run.
    assert any(e["name"].startswith("[stage-1") for e in completed), completed
    assert all(e["cached"] for e in completed), completed
    report = json.loads(report_path.read_text())
    assert sum(layer["bytes_fetched"] for layer in report["layers"]) == 0


def test_changed_context_file_reruns_only_what_depends_on_it(
    base_image: str, state: Path, tmp_path: Path
) -> None:
    dockerfile = (
        "ARG BASE\nFROM ${BASE}\nCOPY a.txt /a.txt\nRUN cat /a.txt > /a.copy\n"
        "COPY b.txt /b.txt\nRUN cat /b.txt > /b.copy\n"
    )
    context = write_context(tmp_path / "ctx", dockerfile, {"a.txt": "a\n", "b.txt": "b1\n"})
    args = ["build", "--progress=rawjson", "--build-arg", f"BASE={base_image}", str(context)]
    lazybuild(state, *args)
    (context / "b.txt").write_text("b2\n")
    events = rawjson_events(lazybuild(state, *args).stderr)
    cached = {e["name"].split("] ", 1)[-1]: e["cached"] for e in events if e["type"] == "completed"}
    assert cached.get("COPY a.txt /a.txt", True) is True  # not even looked at: RUN below hit
    assert cached["RUN cat /a.txt > /a.copy"] is True
    assert cached["COPY b.txt /b.txt"] is False
    assert cached["RUN cat /b.txt > /b.copy"] is False


def _blob_texts(layout: Path) -> Iterator[bytes]:
    for blob in (layout / "blobs" / "sha256").iterdir():
        data = blob.read_bytes()
        yield data
        if data[:2] == b"\x1f\x8b":
            yield gzip.decompress(data)


def test_secrets_reach_the_step_but_no_layer_cache_or_log(base_image: str, tmp_path: Path) -> None:
    state = tmp_path / "state"
    value = "s3cr3t-" + secrets.token_hex(16)
    digest = hashlib.sha256(value.encode()).hexdigest()
    dockerfile = (
        "ARG BASE\nFROM ${BASE}\n"
        "RUN --mount=type=secret,id=token "
        "sha256sum /run/secrets/token | cut -d' ' -f1 > /from-file\n"
        "RUN --mount=type=secret,id=token,env=TOKEN sh -c 'printf %s \"$TOKEN\" | sha256sum' "
        "| cut -d' ' -f1 > /from-env\n"
    )
    context = write_context(tmp_path / "ctx", dockerfile)
    layout = tmp_path / "oci"
    local = tmp_path / "rootfs"
    result = lazybuild(
        state,
        "build",
        "--progress=plain",
        "--build-arg",
        f"BASE={base_image}",
        "--secret",
        "id=token,env=LAZYBUILD_TEST_TOKEN",
        "-o",
        f"type=oci,dest={layout},tar=false",
        "-o",
        f"type=local,dest={local}",
        str(context),
        env={**os.environ, "LAZYBUILD_TEST_TOKEN": value},
    )
    assert (local / "from-file").read_text().strip() == digest
    assert (local / "from-env").read_text().strip() == digest
    assert not (local / "run" / "secrets" / "token").exists()
    needle = value.encode()
    assert needle not in (result.stdout + result.stderr).encode()
    for data in _blob_texts(layout):
        assert needle not in data
    for path in state.rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert needle not in path.read_bytes(), path
    assert_nothing_left(state)


FAILURES = {
    "bad-instruction": ("FROM scratch\nFROBNICATE now\n", {}, ["Dockerfile:2"]),
    "failing-run": (
        "ARG BASE\nFROM ${BASE}\nRUN echo last-words-of-the-step && exit 3\n",
        {},
        ["Dockerfile:3", "exit code: 3", "last-words-of-the-step"],
    ),
    "missing-file": (
        "ARG BASE\nFROM ${BASE}\nCOPY not-here.txt /\n",
        {},
        ["Dockerfile:3", "not-here.txt"],
    ),
    "unreachable-registry": ("FROM 127.0.0.1:9/nothing/here:1\nRUN true\n", {}, ["127.0.0.1:9"]),
    "bad-dockerignore-pattern": (
        "FROM scratch\nCOPY . /\n",
        {".dockerignore": "# comment\nsrc/[a-\n"},
        [".dockerignore:2", "invalid pattern"],
    ),
    "unknown-image": ("ARG BASE\nFROM ${BASE}-missing\n", {}, ["esgz-missing"]),
}


@pytest.mark.parametrize("case", sorted(FAILURES))
def test_failing_build_says_why_and_leaves_nothing(
    case: str, base_image: str, tmp_path: Path
) -> None:
    dockerfile, files, expected = FAILURES[case]
    state = tmp_path / "state"
    context = write_context(tmp_path / "ctx", dockerfile, files)
    result = lazybuild(
        state,
        "build",
        "--progress=plain",
        "--build-arg",
        f"BASE={base_image}",
        "-o",
        f"type=local,dest={tmp_path / 'out'}",
        str(context),
        check=False,
    )
    assert result.returncode != 0
    error_lines = [
        line for line in result.stderr.splitlines() if line.startswith("lazybuild: error:")
    ]
    assert len(error_lines) == 1, result.stderr
    for text in expected:
        assert text in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert_nothing_left(state)


def test_pull_decides_whether_a_moved_tag_is_seen(
    base_image: str, tiny_image: str, registry: Registry, tmp_path: Path
) -> None:
    """Without --pull a base image resolved before is used as it was (Docker's local
    image); --pull asks the registry and sees where the tag points now."""
    state = tmp_path / "state"
    moving = f"{registry.host}/e2e-build/moving:latest"
    assert main(["-q", "convert", base_image, moving]) == 0
    context = write_context(
        tmp_path / "ctx", "ARG BASE\nFROM ${BASE}\nRUN ls /usr/bin | wc -l > /count\n"
    )
    args = ["build", "--progress=rawjson", "--build-arg", f"BASE={moving}"]
    lazybuild(state, *args, str(context))
    assert main(["-q", "convert", tiny_image, moving]) == 0  # the tag moves
    again = rawjson_events(lazybuild(state, *args, str(context)).stderr)
    assert all(e["cached"] for e in again if e["type"] == "completed")
    pulled = lazybuild(state, *args, "--pull", str(context), check=False)
    # The tiny image has no shell: the RUN step now runs, on the new image, and fails.
    assert pulled.returncode != 0
    assert "RUN ls /usr/bin" in pulled.stderr
    assert_nothing_left(state)


def test_prune_removes_the_build_cache(base_image: str, tmp_path: Path) -> None:
    state = tmp_path / "state"
    context = write_context(tmp_path / "ctx", "ARG BASE\nFROM ${BASE}\nRUN echo x > /x\n")
    args = ["build", "--progress=rawjson", "--build-arg", f"BASE={base_image}", str(context)]
    lazybuild(state, *args)
    shown = lazybuild(state, "du").stdout
    assert "build cache" in shown and "EROFS images" in shown
    assert any((state / "erofs").glob("*.meta"))  # the base's layers, kept by TOC digest
    pruned = lazybuild(state, "prune").stdout
    assert "of build cache" in pruned and "EROFS images" in pruned
    assert not (state / "build").exists()
    assert not any((state / "erofs").glob("*.meta"))
    events = rawjson_events(lazybuild(state, *args).stderr)
    run = [e for e in events if e["type"] == "completed" and "RUN echo x" in e["name"]]
    assert run and not run[0]["cached"]
    assert_nothing_left(state)


def test_pushed_image_carries_its_workload_record(built_app: tuple[str, Path]) -> None:
    import httpx

    ref, _ = built_app
    host, _, rest = ref.partition("/")
    repository, _, tag = rest.rpartition(":")
    accept = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json"
    index = httpx.get(
        f"http://{host}/v2/{repository}/manifests/{tag}", headers={"Accept": accept}
    ).json()
    assert index["mediaType"] == "application/vnd.oci.image.index.v1+json"
    kinds = [m.get("annotations", {}).get("vnd.docker.reference.type") for m in index["manifests"]]
    assert kinds == [None, "dev.lazybuild.workload-record"]
    artifact = httpx.get(
        f"http://{host}/v2/{repository}/manifests/{index['manifests'][1]['digest']}",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
    ).json()
    record_layer = artifact["layers"][0]
    record = httpx.get(f"http://{host}/v2/{repository}/blobs/{record_layer['digest']}").text
    assert '"path":"app/shout.txt"' in record.replace(" ", "")


def test_a_dockerignore_that_is_not_utf8_is_one_error_line(tmp_path: Path) -> None:
    state = tmp_path / "state"
    context = write_context(tmp_path / "ctx", "FROM scratch\nCOPY . /\n")
    (context / ".dockerignore").write_bytes(b"ok\n\xff\xfe-latin\n")
    result = lazybuild(state, "build", "--progress=plain", str(context), check=False)
    assert result.returncode == 1
    assert result.stderr.count("lazybuild: error:") == 1, result.stderr
    assert ".dockerignore:2: not valid UTF-8" in result.stderr
    assert "Traceback" not in result.stderr
    assert_nothing_left(state)


def test_a_state_dir_inside_the_context_is_not_part_of_it(tmp_path: Path) -> None:
    """A CI job that caches its state dir inside the checkout builds `COPY . .` as
    usual: the state dir (which the build itself writes to) is left out."""
    context = write_context(tmp_path / "ctx", "FROM scratch\nCOPY . /app/\n", {"a.txt": "a"})
    state = context / ".lazybuild-state"
    out = tmp_path / "out"
    for _ in range(2):  # the second time the state dir is full of the first build
        lazybuild(state, "build", "--progress=plain", "-o", f"type=local,dest={out}", str(context))
        assert sorted(path.name for path in (out / "app").iterdir()) == ["Dockerfile", "a.txt"]
    assert_nothing_left(state)
