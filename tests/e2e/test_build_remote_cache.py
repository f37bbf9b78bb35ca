"""The build cache shared through a registry (``--cache-to``/``--cache-from``), as two CI
runners share it: runner A builds and exports; runner B, with a fresh state directory,
imports it and rebuilds. Real registry, real builds, the counting proxy in front of B."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from lazybuild.cli.main import main
from tests.e2e.buildsupport import assert_nothing_left, lazybuild, rawjson_events, write_context
from tests.support.faultproxy import FaultProxy
from tests.support.registry import Registry

DOCKERFILE = """\
ARG BASE
FROM ${BASE} AS build
WORKDIR /src
COPY . .
RUN mkdir -p /out && sha256sum message.txt > /out/sum && echo built >> /out/sum

FROM ${BASE}
COPY --from=build /out /out
CMD ["cat", "/out/sum"]
"""
EPOCH = {"SOURCE_DATE_EPOCH": "1700000000"}
TOCS_AT_MOST = 1 << 20  # the base's TOCs are ~0.4 MiB; its files ~50 MiB


@pytest.fixture(scope="module")
def base_image(registry: Registry, debian_image: str) -> str:
    converted = f"{registry.host}/e2e-remote-cache/debian:esgz"
    assert main(["-q", "convert", debian_image, converted]) == 0
    return converted


def _build(
    state: Path, context: Path, base: str, *options: str, env: dict[str, str] | None = None
) -> tuple[dict[str, bool], dict[str, Any], dict[str, Any]]:
    """(cached by step name, metadata, fetch report) of one build."""
    metadata = state.parent / f"{state.name}-metadata.json"
    report = state.parent / f"{state.name}-report.json"
    result = lazybuild(
        state, "build", "--progress=rawjson", "--build-arg", f"BASE={base}",
        "--metadata-file", str(metadata), "--fetch-report", str(report), *options, str(context),
        env={**os.environ, **EPOCH, **(env or {})},
    )  # fmt: skip
    cached = {
        event["name"]: bool(event["cached"])
        for event in rawjson_events(result.stderr)
        if event["type"] == "completed"
    }
    return cached, json.loads(metadata.read_text()), json.loads(report.read_text())


def _range_length(header: str) -> int:
    start, _, end = header.removeprefix("bytes=").partition("-")
    return int(end) - int(start) + 1


def _run_steps(cached: dict[str, bool]) -> dict[str, bool]:
    return {name: hit for name, hit in cached.items() if "RUN " in name}


def test_a_second_runner_rebuilds_from_the_exported_cache_without_running_a_step(
    registry: Registry, base_image: str, tmp_path: Path
) -> None:
    context = write_context(tmp_path / "ctx", DOCKERFILE, {"message.txt": "hello\n"})
    with FaultProxy(registry.host) as proxy:
        # Both runners name the registry alike (a cache key names the base image).
        base = base_image.replace(registry.host, proxy.host)
        cache = f"{proxy.host}/e2e-remote-cache/app:buildcache"
        a_cached, a_meta, _ = _build(
            tmp_path / "a", context, base,
            "--cache-to", f"type=registry,ref={cache},mode=max",
            "-t", f"{proxy.host}/e2e-remote-cache/app:a", "--push",
        )  # fmt: skip
        assert _run_steps(a_cached) and not any(_run_steps(a_cached).values())
        proxy.clear()
        b_cached, b_meta, b_report = _build(
            tmp_path / "b", context, base,
            "--cache-from", f"type=registry,ref={cache}",
            "-t", f"{proxy.host}/e2e-remote-cache/app-b:1", "--push",
        )  # fmt: skip
        blob_reads = proxy.requests("GET", "/blobs/")
        uploads = proxy.requests("POST", "/blobs/uploads/")
    # No RUN step ran on B, and the image is A's, byte for byte.
    assert all(_run_steps(b_cached).values()), b_cached
    assert b_meta["containerimage.digest"] == a_meta["containerimage.digest"]
    # B fetched no layer content: configs and the cache's document (small, whole blobs),
    # and the TOCs of the base layers (opened while the steps were keyed, before it was
    # known that nothing would be mounted): no file of any layer.
    ranged = sum(_range_length(seen.range) for seen in blob_reads if seen.range)
    assert ranged <= TOCS_AT_MOST, blob_reads
    assert b_report["bytes_fetched"] <= TOCS_AT_MOST, b_report
    # Every layer went into B's repository by a cross-repository mount; only the
    # config (a few hundred bytes) was uploaded.
    mounted = [seen for seen in uploads if "mount=" in seen.path]
    assert len(mounted) >= 2 and len(uploads) - len(mounted) <= 1, uploads
    assert_nothing_left(tmp_path / "b")


def test_a_changed_input_reruns_only_the_steps_after_it(
    registry: Registry, base_image: str, tmp_path: Path
) -> None:
    context = write_context(tmp_path / "ctx", DOCKERFILE, {"message.txt": "hello\n"})
    cache = f"{registry.host}/e2e-remote-cache/changed:buildcache"
    _build(tmp_path / "a", context, base_image, "--cache-to", f"ref={cache},mode=max")
    (context / "message.txt").write_text("hello again\n")
    b_cached, _, _ = _build(tmp_path / "b", context, base_image, "--cache-from", cache)
    runs = _run_steps(b_cached)
    assert runs and not any(runs.values()), b_cached  # the COPY changed: the RUN reruns
    assert any(hit for name, hit in b_cached.items() if "WORKDIR" in name), b_cached
    assert_nothing_left(tmp_path / "b")


def test_a_missing_or_foreign_cache_is_a_warning_and_the_build_goes_on(
    registry: Registry, base_image: str, tmp_path: Path
) -> None:
    context = write_context(tmp_path / "ctx", DOCKERFILE, {"message.txt": "hello\n"})
    missing = f"{registry.host}/e2e-remote-cache/none:nothing"
    result = lazybuild(
        tmp_path / "state", "build", "--progress=plain", "--build-arg", f"BASE={base_image}",
        "--cache-from", missing, "--cache-from", base_image, str(context),
    )  # fmt: skip
    warnings = [line for line in result.stderr.splitlines() if "--cache-from" in line]
    assert len(warnings) == 2, result.stderr
    assert "is not a lazybuild build cache" in warnings[1], warnings
    assert_nothing_left(tmp_path / "state")


def test_mode_min_exports_the_result_steps_only(
    registry: Registry, base_image: str, tmp_path: Path
) -> None:
    context = write_context(tmp_path / "ctx", DOCKERFILE, {"message.txt": "hello\n"})
    counts = {}
    for mode in ("min", "max"):
        cache = f"{registry.host}/e2e-remote-cache/modes:{mode}"
        result = lazybuild(
            tmp_path / f"state-{mode}", "build", "--progress=plain", "--build-arg",
            f"BASE={base_image}", "--cache-to", f"ref={cache},mode={mode}", str(context),
        )  # fmt: skip
        (line,) = [ln for ln in result.stderr.splitlines() if "cache exported to" in ln]
        counts[mode] = int(line.split(": ", 1)[1].split(" records")[0])
    # min: the final stage's base and COPY; max: the build stage's steps too.
    assert 0 < counts["min"] < counts["max"], counts


READS_LIBRARIES = """\
ARG BASE
FROM ${BASE}
RUN for f in $(ls /usr/lib/x86_64-linux-gnu/*.so* | sort -r); do cat "$f" >/dev/null; done
"""


def _requests(report: dict[str, Any]) -> dict[str, int]:
    return {layer["digest"]: int(layer["requests"]) for layer in report["layers"]}


def test_what_a_step_read_travels_with_the_cache(
    registry: Registry, base_image: str, tmp_path: Path
) -> None:
    """A fresh runner whose step must run (``--no-cache``, or a changed input) prefetches
    what the step read on the exporting runner, in a few large requests."""
    context = write_context(tmp_path / "ctx", READS_LIBRARIES)
    cache = f"{registry.host}/e2e-remote-cache/learned:buildcache"
    _, _, a_report = _build(tmp_path / "a", context, base_image, "--cache-to", f"ref={cache}")
    result = lazybuild(
        tmp_path / "b", "build", "--progress=plain", "--no-cache", "--build-arg",
        f"BASE={base_image}", "--cache-from", cache, "--fetch-report",
        str(tmp_path / "b-report.json"), str(context),
    )  # fmt: skip
    assert "files read last time" in result.stderr, result.stderr
    a_requests = _requests(a_report)
    b_requests = _requests(json.loads((tmp_path / "b-report.json").read_text()))
    busiest = max(a_requests, key=lambda digest: a_requests[digest])
    assert a_requests[busiest] >= 10, a_requests
    assert b_requests[busiest] <= a_requests[busiest] // 3, (a_requests, b_requests)
    assert_nothing_left(tmp_path / "b")


WRITES_CACHE = """\
ARG BASE
FROM ${BASE}
COPY name /name
RUN --mount=type=cache,id=shared-cache,target=/cache \\
    ls /cache > /seen && cat /cache/* >> /seen 2>/dev/null; \\
    echo "written by $(cat /name)" > "/cache/$(cat /name)"
"""


def _seen(state: Path, context: Path, base: str, *options: str) -> list[str]:
    out = state.parent / f"{state.name}-out"
    lazybuild(
        state, "build", "--progress=plain", "--build-arg", f"BASE={base}",
        "-o", f"type=local,dest={out}", *options, str(context),
    )  # fmt: skip
    return (out / "seen").read_text().splitlines()


def test_cache_mounts_travel_lazily_and_only_changes_are_exported(
    registry: Registry, base_image: str, tmp_path: Path
) -> None:
    cache = f"{registry.host}/e2e-remote-cache/mounts:buildcache"
    export = f"type=registry,ref={cache},mode=max,cache-mounts=true"
    context = write_context(tmp_path / "ctx", WRITES_CACHE, {"name": "a\n"})
    assert _seen(tmp_path / "a", context, base_image, "--cache-to", export) == []
    # What A's step wrote to the mount is what the next runner's step will look up:
    # learned (a record of its own, paths in the mount), prefetched as that step starts.
    assert ["a"] in _learned_paths(registry, "e2e-remote-cache/mounts")
    # Runner B, fresh, another input: the step runs, over A's cache mount content.
    (context / "name").write_text("b\n")
    seen = _seen(tmp_path / "b", context, base_image, "--cache-from", cache, "--cache-to", export)
    assert seen == ["a", "written by a"], seen
    assert (tmp_path / "b" / "build" / "cache-mounts").is_dir()
    # Runner C, fresh: sees A's and B's files; B exported its changes as a layer of its
    # own on top of A's, not the whole directory again.
    (context / "name").write_text("c\n")
    seen = _seen(tmp_path / "c", context, base_image, "--cache-from", cache)
    assert seen == ["a", "b", "written by a", "written by b"], seen
    document = _cache_document(registry, "e2e-remote-cache/mounts", "buildcache")
    ((_, positions),) = document["mounts"].items()
    assert len(positions) == 2, document["mounts"]
    # B's record: what it read from A's content, then what it wrote.
    assert ["a", "b"] in _learned_paths(registry, "e2e-remote-cache/mounts")
    for state in ("a", "b", "c"):
        assert_nothing_left(tmp_path / state)


def test_a_cache_mount_stack_grown_deep_is_exported_as_one_layer_again(
    registry: Registry, base_image: str, tmp_path: Path
) -> None:
    """Each exporting runner adds a layer to a travelling cache mount; at
    cache-mount-layers imported layers the export merges them into one, nothing lost."""
    cache = f"{registry.host}/e2e-remote-cache/deep-mount:buildcache"
    export = f"type=registry,ref={cache},mode=max,cache-mounts=true,cache-mount-layers=2"
    context = write_context(tmp_path / "ctx", WRITES_CACHE, {"name": "r0\n"})
    _seen(tmp_path / "r0", context, base_image, "--cache-to", export)
    stacks = []
    for n in range(1, 3):
        (context / "name").write_text(f"r{n}\n")
        _seen(tmp_path / f"r{n}", context, base_image, "--cache-from", cache, "--cache-to", export)
        document = _cache_document(registry, "e2e-remote-cache/deep-mount", "buildcache")
        ((_, positions),) = document["mounts"].items()
        stacks.append(len(positions))
    assert stacks == [2, 1], stacks  # r1 adds one; r2 finds 2 imported: merged
    (context / "name").write_text("last\n")
    seen = _seen(tmp_path / "last", context, base_image, "--cache-from", cache)
    names = ["r0", "r1", "r2"]
    assert seen == [*names, *(f"written by {name}" for name in names)], seen
    for n in range(3):
        assert_nothing_left(tmp_path / f"r{n}")


def test_cache_to_can_take_chosen_cache_mounts_only(
    registry: Registry, base_image: str, tmp_path: Path
) -> None:
    dockerfile = """\
ARG BASE
FROM ${BASE}
RUN --mount=type=cache,id=keep,target=/keep --mount=type=cache,target=/skip \\
    echo kept > /keep/file && echo skipped > /skip/file
"""
    context = write_context(tmp_path / "ctx", dockerfile)
    cache = f"{registry.host}/e2e-remote-cache/chosen:buildcache"
    export = f'type=registry,ref={cache},mode=max,"cache-mounts=keep,/elsewhere"'
    lazybuild(
        tmp_path / "a", "build", "--progress=plain", "--build-arg", f"BASE={base_image}",
        "--cache-to", export, str(context),
    )  # fmt: skip
    document = _cache_document(registry, "e2e-remote-cache/chosen", "buildcache")
    keep = hashlib.sha256(b"keep").hexdigest()[:32]
    assert list(document["mounts"]) == [keep], document["mounts"]
    assert_nothing_left(tmp_path / "a")


def _learned_paths(registry: Registry, repository: str) -> list[list[str]]:
    """Each learned record of the cache's document, its paths in one list."""
    learned = _cache_document(registry, repository, "buildcache")["learned"]
    return [[path for layer in layers for path in layer] for layers in learned.values()]


def _cache_document(registry: Registry, repository: str, tag: str) -> dict[str, Any]:
    def get(path: str, accept: str = "") -> bytes:
        request = urllib.request.Request(f"http://{registry.host}/v2/{repository}/{path}")
        if accept:
            request.add_header("Accept", accept)
        with urllib.request.urlopen(request, timeout=30) as answer:
            return bytes(answer.read())

    manifest = json.loads(get(f"manifests/{tag}", "application/vnd.oci.image.manifest.v1+json"))
    return dict(json.loads(get(f"blobs/{manifest['config']['digest']}")))


def test_a_hit_whose_cached_blob_is_corrupted_runs_its_step_again(
    registry: Registry, base_image: str, tmp_path: Path
) -> None:
    context = write_context(tmp_path / "ctx", DOCKERFILE, {"message.txt": "hello\n"})
    cache = f"{registry.host}/e2e-remote-cache/corrupt:buildcache"
    _build(tmp_path / "a", context, base_image, "--cache-to", f"ref={cache},mode=max")
    document = _cache_document(registry, "e2e-remote-cache/corrupt", "buildcache")
    own = [layer for layer in document["layers"] if "source" not in layer]
    assert own, document
    for layer in own:  # every blob of the cache's own: their TOCs no longer verify
        digest = layer["descriptor"]["digest"].removeprefix("sha256:")
        data = registry.root / "docker/registry/v2/blobs/sha256" / digest[:2] / digest / "data"
        blob = bytearray(data.read_bytes())
        blob[-200:-60] = bytes(140)
        data.write_bytes(bytes(blob))
    result = lazybuild(
        tmp_path / "b", "build", "--progress=rawjson", "--build-arg", f"BASE={base_image}",
        "--cache-from", cache, str(context),
    )  # fmt: skip
    cached = {
        event["name"]: bool(event["cached"])
        for event in rawjson_events(result.stderr)
        if event["type"] == "completed"
    }
    assert not any(_run_steps(cached).values()), cached  # the RUN step ran again
    assert "imported cache hit is unusable" in result.stderr
    assert_nothing_left(tmp_path / "b")


def test_a_hit_with_a_corrupt_chunk_is_found_when_read_and_its_step_runs_again(
    registry: Registry, base_image: str, tmp_path: Path
) -> None:
    """The hit's TOC verifies, so it is mounted; a chunk deep in it does not, and that
    shows only when a later step reads the file. The build says so and runs the hit's
    step again instead of failing or serving the bytes."""
    dockerfile = """\
ARG BASE
FROM ${BASE}
RUN head -c 3000000 /dev/urandom > /data.bin
COPY message.txt /message.txt
RUN sha256sum /data.bin > /sums && cat /message.txt >> /sums
"""
    context = write_context(tmp_path / "ctx", dockerfile, {"message.txt": "a\n"})
    cache = f"{registry.host}/e2e-remote-cache/deep:buildcache"
    _build(tmp_path / "a", context, base_image, "--cache-to", f"ref={cache},mode=max")
    document = _cache_document(registry, "e2e-remote-cache/deep", "buildcache")
    own = [layer["descriptor"] for layer in document["layers"] if "source" not in layer]
    biggest = max(own, key=lambda descriptor: int(descriptor["size"]))  # data.bin's layer
    digest = biggest["digest"].removeprefix("sha256:")
    data = registry.root / "docker/registry/v2/blobs/sha256" / digest[:2] / digest / "data"
    blob = bytearray(data.read_bytes())
    middle = len(blob) // 2  # among data.bin's chunks, far from the TOC at the end
    blob[middle : middle + 64] = bytes(64)
    data.write_bytes(bytes(blob))
    (context / "message.txt").write_text("b\n")
    out = tmp_path / "out"
    result = lazybuild(
        tmp_path / "b", "build", "--progress=rawjson", "--build-arg", f"BASE={base_image}",
        "--cache-from", cache, "-o", f"type=local,dest={out}", str(context),
    )  # fmt: skip
    assert "imported cache hit is corrupt" in result.stderr, result.stderr
    assert "reading /data.bin of layer" in result.stderr, result.stderr
    completed = [event for event in rawjson_events(result.stderr) if event["type"] == "completed"]
    made = [event for event in completed if "/dev/urandom" in event["name"]]
    assert made and not made[-1]["cached"], made  # the hit's step ran again
    # The result is consistent: the sum is the one of the data.bin the build ended with.
    digest_line = (out / "sums").read_text().splitlines()[0]
    assert digest_line.split()[0] == hashlib.sha256((out / "data.bin").read_bytes()).hexdigest()
    assert (out / "sums").read_text().endswith("b\n")
    assert_nothing_left(tmp_path / "b")


def test_two_runners_exporting_to_one_ref_leave_a_whole_cache(
    registry: Registry, base_image: str, tmp_path: Path
) -> None:
    """Blobs first, manifest last: whichever export's manifest the tag ends on, every
    blob it names is there, and an importer can use it."""
    cache = f"{registry.host}/e2e-remote-cache/race:buildcache"
    runners = []
    for name in ("x", "y"):
        context = write_context(tmp_path / f"ctx-{name}", DOCKERFILE, {"message.txt": name})
        argv = [
            sys.executable, "-m", "lazybuild", "--state-dir", str(tmp_path / name),
            "build", "--progress=plain", "--build-arg", f"BASE={base_image}",
            "--cache-to", f"ref={cache},mode=max", str(context),
        ]  # fmt: skip
        runners.append(
            subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        )
    for runner in runners:
        _, stderr = runner.communicate(timeout=600)
        assert runner.returncode == 0, stderr
    document = _cache_document(registry, "e2e-remote-cache/race", "buildcache")
    for layer in document["layers"]:
        if "source" not in layer:
            digest = layer["descriptor"]["digest"]
            request = urllib.request.Request(
                f"http://{registry.host}/v2/e2e-remote-cache/race/blobs/{digest}", method="HEAD"
            )
            with urllib.request.urlopen(request, timeout=30) as answer:
                assert answer.status == 200
    # Whichever won, a runner building the winner's context from the cache runs no step.
    hits = []
    for name in ("x", "y"):
        cached, _, _ = _build(
            tmp_path / f"z{name}", tmp_path / f"ctx-{name}", base_image, "--cache-from", cache
        )
        hits.append(all(_run_steps(cached).values()))
        assert_nothing_left(tmp_path / f"z{name}")
    assert any(hits), hits


def test_secrets_never_enter_a_cache(registry: Registry, base_image: str, tmp_path: Path) -> None:
    secret = "s3cr3t-" + os.urandom(8).hex()
    dockerfile = """\
ARG BASE
FROM ${BASE}
RUN --mount=type=secret,id=token,target=/run/token \\
    --mount=type=cache,id=secret-test,target=/cache \\
    wc -c < /run/token > /length && wc -c < /run/token > /cache/length
"""
    context = write_context(tmp_path / "ctx", dockerfile)
    cache = f"{registry.host}/e2e-remote-cache/secrets:buildcache"
    lazybuild(
        tmp_path / "state", "build", "--progress=plain", "--build-arg", f"BASE={base_image}",
        "--secret", "id=token,env=TOKEN", "--cache-to",
        f"type=registry,ref={cache},mode=max,cache-mounts=true", str(context),
        env={**os.environ, "TOKEN": secret},
    )  # fmt: skip
    document = _cache_document(registry, "e2e-remote-cache/secrets", "buildcache")
    assert secret not in json.dumps(document)
    blobs = registry.root / "docker/registry/v2/blobs/sha256"
    for layer in document["layers"]:
        if "source" in layer:
            continue
        digest = layer["descriptor"]["digest"].removeprefix("sha256:")
        data = (blobs / digest[:2] / digest / "data").read_bytes()
        assert secret.encode() not in gzip.decompress(data)
    assert document["mounts"], document  # the cache mount did travel, without the secret
    assert_nothing_left(tmp_path / "state")


def test_a_local_cache_directory_serves_a_fresh_runner_lazily(
    registry: Registry, base_image: str, tmp_path: Path
) -> None:
    """``type=local``: the cache as an OCI layout directory (what a CI cache action saves
    and restores); a fresh runner's hits are read from it lazily, and its image, pushed,
    is the first runner's."""
    context = write_context(tmp_path / "ctx", DOCKERFILE, {"message.txt": "hello\n"})
    directory = tmp_path / "ci-cache"
    _, a_meta, _ = _build(
        tmp_path / "a", context, base_image,
        "--cache-to", f"type=local,dest={directory},mode=max",
        "-t", f"{registry.host}/e2e-remote-cache/local:a", "--push",
    )  # fmt: skip
    assert (directory / "index.json").is_file()
    b_cached, b_meta, _ = _build(
        tmp_path / "b", context, base_image,
        "--cache-from", f"type=local,src={directory}",
        "-t", f"{registry.host}/e2e-remote-cache/local-b:1", "--push",
    )  # fmt: skip
    assert all(_run_steps(b_cached).values()), b_cached
    assert b_meta["containerimage.digest"] == a_meta["containerimage.digest"]
    assert_nothing_left(tmp_path / "b")
