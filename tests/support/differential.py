"""Build one Dockerfile case with dockerd's legacy builder and with lazybuild, and
compare the root filesystems and image configs they make.

The two sides:

- dockerd (``DOCKER_BUILDKIT=0 docker build``), then ``docker create`` + ``docker
  export`` extracted by GNU tar as root (owners, modes, device nodes, mtimes and the
  xattrs the export carries), the image config read byte for byte from dockerd's image
  store, and the layers' diff directories (from ``docker image inspect``'s GraphDriver);
- lazybuild (``lazybuild build -o type=local,dest=... -o type=oci,dest=...,tar=false``):
  the local output is the root filesystem, the OCI layout gives config and layers.

``compare_trees`` and ``compare_configs`` return human-readable differences (empty when
the two agree); every rule that leaves something out says why next to it.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from lazybuild.oci.layout import OciLayout
from tests.support import imagebuild, procs
from tests.support.cache import cached_dir
from tests.support.dockerd import DOCKER_CLI, Dockerd
from tests.support.trees import Facts, Tree, directory_tree, flatten, layer_tree

REPO = Path(__file__).resolve().parents[2]
CASES_DIR = REPO / "tests" / "dockerfiles"
PYTHON = REPO / ".venv" / "bin" / "python"

# --- what docker's runtime puts into every container -------------------------------
#
# moby's daemon/initlayer.Setup builds an "init" layer between the image and the
# container's writable layer. `docker export` exports the container's merged view, so
# these show up in the export although the image does not hold them:
#
# - these names are unlinked and created anew in every container (empty 0755 files;
#   etc/mtab a symlink to /proc/mounts), whatever the image held there. What the image
#   holds at these paths cannot be seen through an export; lazybuild's output is checked
#   against the base image for them instead (no case writes them).
RUNTIME_REPLACED = frozenset(
    {".dockerenv", "etc/hostname", "etc/hosts", "etc/resolv.conf", "etc/mtab", "dev/console"}
)
# - these directories are created (0755, root) only when the image lacks them;
RUNTIME_MKDIRS = frozenset({"dev", "dev/pts", "dev/shm", "proc", "sys", "etc"})
# - and so the init layer changes the mtime of the directories holding the names above
#   (the root directory itself is not an entry of a tree): for these, the mtime the
#   image's layers hold is compared instead of the export's.
RUNTIME_TOUCHED_DIRS = frozenset({"dev", "etc"})

# Files every RUN gets bind-mounted (BuildKit: executor/stubs.go). When the image lacks
# one, the runtime creates an empty stub to mount on; BuildKit removes the stub after the
# step but keeps its parent's mtime from the stub's creation ("for reproducible builds",
# moby/buildkit#3148), so the RUN's layer holds /etc with the step's time. The legacy
# builder mounts them over its init layer and leaves the image's /etc alone.
RUN_MOUNTED_FILES = ("etc/hosts", "etc/resolv.conf")

# `docker export` writes no xattr but security.capability (moby's archive package reads
# only that one), so only that one can be compared.
EXPORTED_XATTRS = frozenset({"security.capability"})

# GNU tar as root: numeric owners, modes with setuid bits, device nodes, mtimes, xattrs.
UNTAR = [
    "tar", "--extract", "--file=-", "--numeric-owner", "--same-owner", "--same-permissions",
    "--xattrs", "--xattrs-include=*",
]  # fmt: skip

DOCKER_BUILD_TIMEOUT = 600.0
LAZYBUILD_BUILD_TIMEOUT = 600.0


# --- the base image ----------------------------------------------------------------------

# What Debian's -slim images leave out (documentation, man pages, locales), and a few
# other large trees no case uses: the base image's root filesystem is exported, copied,
# walked and hashed on both sides of every comparison, so it is kept small.
SLIM_EXCLUDE_GLOBS = (
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "usr/share/lintian",
    "usr/share/common-licenses",
    "usr/share/bash-completion",
    "usr/share/zoneinfo",
    "usr/share/perl5",
    "usr/lib/*/gconv",
    "usr/lib/*/perl-base",
    ".lazybuild-rootfs",  # the test cache's completion note
)
SLIM_SPLIT_AT = ("usr/share", "usr/lib")
SLIM_FORMAT_VERSION = 2


def cached_slim_debian_layout(rootfs: Path) -> Path:
    """An OCI layout (tag "bookworm-slim", three layers like the debian_image fixture's)
    of the debootstrapped ``rootfs`` without SLIM_EXCLUDE_GLOBS, built once into the
    test cache; read-only."""
    key = f"oci-differential-slim-v{SLIM_FORMAT_VERSION}-{rootfs.name}"
    return cached_dir(key, lambda scratch: _build_slim_layout(scratch, rootfs))


def _build_slim_layout(scratch: Path, rootfs: Path) -> None:
    excluded = sorted(
        str(path.relative_to(rootfs)) for glob in SLIM_EXCLUDE_GLOBS for path in rootfs.glob(glob)
    )
    layout = OciLayout.create(scratch)
    layers = [
        imagebuild.write_layer(
            layout, rootfs, exclude=[*SLIM_SPLIT_AT, *excluded], comment="debootstrap base"
        )
    ]
    for prefix in SLIM_SPLIT_AT:
        layers.append(
            imagebuild.write_layer(
                layout, rootfs, include=[prefix], exclude=excluded, comment=f"ADD /{prefix}"
            )
        )
    imagebuild.write_image(layout, layers, tag="bookworm-slim")
    # As imagebuild's cached layouts: no staging directory left in the cache.
    shutil.rmtree(scratch / "blobs" / ".staging", ignore_errors=True)


# --- cases ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """A directory of tests/dockerfiles and what its build.json asks for."""

    name: str
    directory: Path
    build_args: Mapping[str, str] = field(default_factory=dict)
    target: str | None = None
    secrets: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, name: str, cases_dir: Path = CASES_DIR) -> Case:
        directory = cases_dir / name
        options_path = directory / "build.json"
        options = json.loads(options_path.read_text()) if options_path.is_file() else {}
        return cls(
            name=name,
            directory=directory,
            build_args=dict(options.get("build_args", {})),
            target=options.get("target"),
            secrets=dict(options.get("secrets", {})),
        )

    @property
    def dockerfile(self) -> Path:
        return self.directory / "Dockerfile"


def all_case_names(cases_dir: Path = CASES_DIR) -> list[str]:
    return sorted(p.name for p in cases_dir.iterdir() if (p / "Dockerfile").is_file())


# --- build results ----------------------------------------------------------------------


@dataclass(frozen=True)
class HistoryLayer:
    """One layer of an image dockerd built, with the history entry that made it."""

    created_by: str
    created: float  # seconds since the epoch
    diff: Path  # the layer's overlay2 diff directory

    @property
    def is_run(self) -> bool:
        """Whether the layer is a RUN's (also an ONBUILD-triggered RUN's): the legacy
        builder writes ``/bin/sh -c #(nop) ...`` for every other instruction and the
        command itself for RUN (``/bin/sh -c cmd``, ``|2 A=1 B=2 /bin/sh -c cmd``, the
        exec form's argv)."""
        return "#(nop)" not in self.created_by


@dataclass(frozen=True)
class Built:
    """What one builder made of one case."""

    builder: str  # "dockerd" or "lazybuild"
    rootfs: Path
    config: dict[str, Any]  # the image config JSON (architecture, os, config, history...)
    log: str
    seconds: float
    layers: tuple[HistoryLayer, ...] = ()  # dockerd only
    oci_layout: Path | None = None  # lazybuild only

    def run_touched_directories(self, after: float) -> frozenset[str]:
        """Directories that a RUN step of this build (a layer created after ``after``:
        not the base image's) holds: the command wrote into them."""
        found: set[str] = set()
        for layer in self.layers:
            if layer.is_run and layer.created >= after:
                found |= _directories_on_disk(layer.diff)
        return frozenset(found)

    def image_mtime(self, path: str) -> int | None:
        """mtime of ``path`` in the image as its layers hold it (the topmost layer that
        has it), not as a container's export shows it; None if no layer has it."""
        for layer in reversed(self.layers):
            candidate = layer.diff / path
            if candidate.exists() or candidate.is_symlink():
                return int(candidate.lstat().st_mtime)
        return None


def _parse_created(text: str) -> float:
    """RFC 3339 with up to nanoseconds (Python parses microseconds at most)."""
    text = text.replace("Z", "+00:00")
    main, dot, rest = text.partition(".")
    if dot:
        digits = "".join(ch for ch in rest if ch.isdigit())
        zone = rest[len(digits) :]
        text = f"{main}.{digits[:6]}{zone}"
    return datetime.fromisoformat(text).timestamp()


def _directories_on_disk(root: Path) -> frozenset[str]:
    found: set[str] = set()
    for dirpath, dirnames, _ in os.walk(root):
        for name in dirnames:
            found.add(str((Path(dirpath) / name).relative_to(root)))
    return frozenset(found)


def _non_empty_history(config: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [h for h in config.get("history") or [] if not h.get("empty_layer")]


# --- dockerd ---------------------------------------------------------------------------


def docker_build(
    dockerd: Dockerd,
    case: Case,
    workdir: Path,
    *,
    tag: str,
    build_args: Mapping[str, str] = {},
    target: str | None = None,
    dockerfile: Path | None = None,
    context: Path | None = None,
    extra: Sequence[str] = (),
) -> Built:
    """``DOCKER_BUILDKIT=0 docker build`` the case, then export and read the image.

    ``build_args`` are added to the case's own; ``dockerfile`` replaces the case's
    Dockerfile (for a copy the legacy builder can read, see copy-from-image)."""
    args = {**case.build_args, **build_args}
    argv = [DOCKER_CLI, "build", "--force-rm", "-t", tag, *extra]
    argv += ["-f", str(dockerfile or case.dockerfile)]
    for key, value in args.items():
        argv += ["--build-arg", f"{key}={value}"]
    wanted_target = target if target is not None else case.target
    if wanted_target:
        argv += ["--target", wanted_target]
    argv.append(str(context or case.directory))
    started = time.monotonic()
    built = procs.run(
        argv, timeout=DOCKER_BUILD_TIMEOUT, env={**dockerd.env(), "DOCKER_BUILDKIT": "0"}
    )
    seconds = time.monotonic() - started
    rootfs = workdir / "dockerd-rootfs"
    docker_export(dockerd, tag, rootfs)
    config, layers = docker_image(dockerd, tag)
    return Built("dockerd", rootfs, config, built.stdout + built.stderr, seconds, layers)


def docker_export(dockerd: Dockerd, image: str, dest: Path) -> None:
    """``docker create`` + ``docker export`` of ``image``, extracted into ``dest``.

    The container is never started; the command given to create only satisfies images
    that have neither ENTRYPOINT nor CMD. GNU tar running as root keeps numeric owners,
    modes (setuid too), device nodes, hardlinks, mtimes and the exported xattrs; it sets
    directories' mtimes after their contents."""
    dest.mkdir(parents=True)
    container = dockerd.docker("create", image, "/lazybuild-export-placeholder").stdout.strip()
    try:
        with subprocess.Popen(
            [DOCKER_CLI, "export", container], stdout=subprocess.PIPE, env=dockerd.env()
        ) as export:
            untar = subprocess.run(
                [*UNTAR, f"--directory={dest}"],
                stdin=export.stdout,
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
            assert export.stdout is not None
            export.stdout.close()
            exported = export.wait(timeout=300)
        if exported != 0 or untar.returncode != 0:
            raise AssertionError(
                f"docker export {image} | tar -x failed ({exported}, {untar.returncode}): "
                f"{untar.stderr[-2000:]}"
            )
    finally:
        dockerd.docker("rm", "-f", container, check=False)


def docker_image(dockerd: Dockerd, image: str) -> tuple[dict[str, Any], tuple[HistoryLayer, ...]]:
    """The image config exactly as dockerd stores it (``docker image inspect`` leaves
    out history, and so which layers RUN made), and the image's layers: overlay2 diff
    directories from ``GraphDriver`` (bottom first) paired with their history entries
    (the export shows the container, these show the image)."""
    inspected = json.loads(dockerd.docker("image", "inspect", image).stdout)[0]
    image_id = inspected["Id"].removeprefix("sha256:")
    store = dockerd.data_root / "image" / dockerd.storage_driver / "imagedb" / "content"
    config: dict[str, Any] = json.loads((store / "sha256" / image_id).read_bytes())
    data = inspected["GraphDriver"]["Data"]
    lower = [Path(p) for p in data.get("LowerDir", "").split(":") if p]
    diffs = [*reversed(lower), Path(data["UpperDir"])]
    history = _non_empty_history(config)
    if len(diffs) != len(history) or len(diffs) != len(config["rootfs"]["diff_ids"]):
        raise AssertionError(
            f"{image}: {len(diffs)} layer dirs, {len(history)} non-empty history entries, "
            f"{len(config['rootfs']['diff_ids'])} diff_ids"
        )
    layers = tuple(
        HistoryLayer(entry.get("created_by", ""), _parse_created(entry["created"]), diff)
        for entry, diff in zip(history, diffs, strict=True)
    )
    return config, layers


# --- lazybuild ---------------------------------------------------------------------------


def lazybuild_argv(
    case: Case,
    *,
    state_dir: Path,
    local_dest: Path | None,
    oci_dest: Path | None,
    build_args: Mapping[str, str],
    target: str | None,
    secret_env: Mapping[str, str],
    extra: Sequence[str] = (),
    dockerfile: Path | None = None,
    context: Path | None = None,
) -> list[str]:
    argv = [str(PYTHON), "-m", "lazybuild", "--state-dir", str(state_dir), "build"]
    argv += ["-f", str(dockerfile or case.dockerfile)]
    for key, value in build_args.items():
        argv += ["--build-arg", f"{key}={value}"]
    if target:
        argv += ["--target", target]
    for secret_id, variable in secret_env.items():
        argv += ["--secret", f"id={secret_id},env={variable}"]
    if local_dest is not None:
        argv += ["-o", f"type=local,dest={local_dest}"]
    if oci_dest is not None:
        argv += ["-o", f"type=oci,dest={oci_dest},tar=false"]
    # Profiling the workload reorders layer entries, never their content: it is tested
    # on its own (tests/e2e/test_build_optimize.py) and only costs time here.
    argv += ["--progress=plain", "--no-optimize", *extra, str(context or case.directory)]
    return argv


def run_lazybuild(
    case: Case,
    workdir: Path,
    *,
    state_dir: Path,
    build_args: Mapping[str, str] = {},
    target: str | None = None,
    secrets: Mapping[str, str] | None = None,
    extra: Sequence[str] = (),
    check: bool = True,
    dockerfile: Path | None = None,
    context: Path | None = None,
    outputs: Sequence[str] = ("local", "oci"),
) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run ``lazybuild build`` on the case; ``outputs`` "local" goes to
    ``workdir``/lazybuild-rootfs, "oci" to ``workdir``/lazybuild-oci. Secrets reach it
    through environment variables, as ``--secret id=...,env=...``."""
    wanted_secrets = dict(case.secrets if secrets is None else secrets)
    secret_env = {sid: f"LAZYBUILD_TEST_SECRET_{n}" for n, sid in enumerate(wanted_secrets)}
    env = {**os.environ, **{secret_env[s]: v for s, v in wanted_secrets.items()}}
    argv = lazybuild_argv(
        case,
        state_dir=state_dir,
        local_dest=workdir / "lazybuild-rootfs" if "local" in outputs else None,
        oci_dest=workdir / "lazybuild-oci" if "oci" in outputs else None,
        build_args={**case.build_args, **build_args},
        target=target if target is not None else case.target,
        secret_env=secret_env,
        extra=extra,
        dockerfile=dockerfile,
        context=context,
    )
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    completed = procs.run(argv, timeout=LAZYBUILD_BUILD_TIMEOUT, check=check, env=env)
    return completed, time.monotonic() - started


def lazybuild_build(case: Case, workdir: Path, *, state_dir: Path, **kwargs: Any) -> Built:
    """Build the case with lazybuild and read both outputs back."""
    completed, seconds = run_lazybuild(case, workdir, state_dir=state_dir, **kwargs)
    oci = workdir / "lazybuild-oci"
    _manifest, config = read_oci_image(oci)
    return Built(
        "lazybuild",
        workdir / "lazybuild-rootfs",
        config,
        completed.stdout + completed.stderr,
        seconds,
        oci_layout=oci,
    )


@dataclass(frozen=True)
class LazyImage:
    """An image lazybuild wrote as an OCI layout, with the root filesystem its layers
    make (flattened with OCI whiteout rules), for checks that need no local export."""

    layout: Path
    config: dict[str, Any]
    manifest: dict[str, Any]
    entries: dict[str, Facts]
    log: str

    def read_file(self, path: str) -> bytes:
        """A regular file's content, from the topmost layer that holds it."""
        assert path in self.entries, f"no {path} in the image"
        for descriptor in reversed(self.manifest["layers"]):
            blob = oci_blob(self.layout, descriptor["digest"])
            with gzip.open(blob) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
                for member in tar:
                    if os.path.normpath("/" + member.name).lstrip("/") != path:
                        continue
                    extracted = tar.extractfile(member) if member.isreg() else None
                    assert extracted is not None, f"{path} is not a regular file"
                    return extracted.read()
        raise AssertionError(f"no layer holds {path}")

    def layer_trees(self, cache: dict[str, Tree]) -> list[Tree]:
        digests = [d["digest"] for d in self.manifest["layers"]]
        return [_cached_layer_tree(self.layout, digest, cache) for digest in digests]


def _cached_layer_tree(layout: Path, digest: str, cache: dict[str, Tree]) -> Tree:
    if digest not in cache:
        cache[digest] = layer_tree(oci_blob(layout, digest))
    return cache[digest]


def lazybuild_image(
    case: Case,
    workdir: Path,
    *,
    state_dir: Path,
    layer_cache: dict[str, Tree],
    also_local: bool = False,
    **kwargs: Any,
) -> LazyImage:
    """Build the case with lazybuild into an OCI layout (and with ``also_local`` into
    ``workdir``/lazybuild-rootfs too); ``layer_cache`` holds layer trees by digest (base
    layers are the same blobs in every build)."""
    outputs = ("oci", "local") if also_local else ("oci",)
    completed, _ = run_lazybuild(case, workdir, state_dir=state_dir, outputs=outputs, **kwargs)
    layout = workdir / "lazybuild-oci"
    manifest, config = read_oci_image(layout)
    trees = [_cached_layer_tree(layout, d["digest"], layer_cache) for d in manifest["layers"]]
    entries = flatten(trees)
    entries.pop("", None)
    return LazyImage(layout, config, manifest, entries, completed.stdout + completed.stderr)


def oci_blob(layout: Path, digest: str) -> Path:
    algorithm, _, hexdigest = digest.partition(":")
    return layout / "blobs" / algorithm / hexdigest


def read_oci_image(layout: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(manifest, config) of the one image of an OCI layout directory, following an
    index to the manifest for this machine's platform."""
    index = json.loads((layout / "index.json").read_text())
    descriptors = list(index["manifests"])
    while True:
        if len(descriptors) != 1:
            descriptors = [
                d
                for d in descriptors
                if (d.get("platform") or {}).get("architecture") in (None, host_architecture())
            ]
        assert len(descriptors) == 1, f"{layout}: expected one image, found {descriptors}"
        document = json.loads(oci_blob(layout, descriptors[0]["digest"]).read_bytes())
        if "manifests" in document:  # an image index
            descriptors = list(document["manifests"])
            continue
        config = json.loads(oci_blob(layout, document["config"]["digest"]).read_bytes())
        return document, config


def host_architecture() -> str:
    machine = os.uname().machine
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm"}.get(machine, machine)


def oci_layout_bytes(layout: Path) -> Iterable[tuple[str, bytes]]:
    """Every blob of a layout, gzip layers decompressed, with index.json: what to grep
    for a value that must not be in an image."""
    yield "index.json", (layout / "index.json").read_bytes()
    for blob in sorted((layout / "blobs").rglob("*")):
        if not blob.is_file():
            continue
        data = blob.read_bytes()
        if data[:2] == b"\x1f\x8b":
            # eStargz is a concatenation of gzip members; gzip reads them all.
            data = gzip.decompress(data)
        yield str(blob.relative_to(layout)), data


# --- comparison ------------------------------------------------------------------------------


ContentNormaliser = Callable[[bytes], bytes]


def drop_lines(prefix: bytes) -> ContentNormaliser:
    """A normaliser that leaves out the lines starting with ``prefix``."""

    def normalise(data: bytes) -> bytes:
        return b"".join(
            line for line in data.splitlines(keepends=True) if not line.startswith(prefix)
        )

    return normalise


@dataclass(frozen=True)
class TreeRules:
    """How to compare one case's trees.

    ``fresh_after``: a time before any build of the session. An mtime at or after it was
    set by a build (a RUN wrote the file, or a builder created a parent directory), so
    the two builders cannot agree on it to the second; older mtimes come from the base
    image, the build context, a tar archive or an image, and both must keep them.
    ``base``: the base image's tree (None: FROM scratch), for the paths docker's runtime
    replaces. ``normalise``: per-path content filters for outputs that legitimately
    differ between builders (each use says why). ``source_dir_mtimes``: directories
    whose mtime the legacy builder sets to the time of the build while BuildKit gives
    them the mtime of a source directory in the context (path -> that mtime): dockerd's
    must be fresh and lazybuild's must be the source's.
    """

    fresh_after: float
    base: Mapping[str, Facts] | None
    normalise: Mapping[str, ContentNormaliser] = field(default_factory=dict)
    source_dir_mtimes: Mapping[str, int] = field(default_factory=dict)

    def mount_stub_parents(self, lazy: Built) -> frozenset[str]:
        """Directories whose mtime lazybuild's RUN steps may change through mount stubs
        (see RUN_MOUNTED_FILES): when the base image lacks one of those files and the
        build has a RUN step."""
        base = self.base or {}
        history = lazy.config.get("history") or []
        runs = any(h.get("created_by", "").startswith("RUN ") for h in history)
        return frozenset(
            path.rpartition("/")[0] for path in RUN_MOUNTED_FILES if runs and path not in base
        )


def _mtime_is_fresh(facts: Facts, fresh_after: float) -> bool:
    return facts.mtime >= int(fresh_after)


def compare_trees(docker: Built, lazy: Built, rules: TreeRules) -> list[str]:
    """Differences between the exported dockerd container and lazybuild's local output."""
    docker_tree = directory_tree(docker.rootfs)
    lazy_tree = directory_tree(lazy.rootfs)
    expected = dict(docker_tree.entries)
    actual = dict(lazy_tree.entries)
    differences: list[str] = []

    for path in sorted(RUNTIME_REPLACED):
        expected.pop(path, None)
        # Not visible through the export: lazybuild must have left the base image's.
        base_facts = (rules.base or {}).get(path)
        got = actual.pop(path, None)
        if got != base_facts:
            differences.append(
                f"{path}: lazybuild has {got}, the base image has {base_facts} "
                "(docker's runtime replaces this path, so it is checked against the base)"
            )
    for path in sorted(RUNTIME_MKDIRS):
        made = expected.get(path)
        if (
            path not in actual
            and made is not None
            and (made.type, made.mode, made.uid, made.gid) == ("dir", 0o755, 0, 0)
        ):
            del expected[path]  # the init layer made it; the image has no such directory

    for path in sorted(expected.keys() - actual.keys()):
        differences.append(f"{path}: only in dockerd's image ({_describe(expected[path])})")
    for path in sorted(actual.keys() - expected.keys()):
        differences.append(f"{path}: only in lazybuild's image ({_describe(actual[path])})")

    # Only directories dockerd's RUN steps wrote into: the commands' doing. A directory
    # only lazybuild's RUN layers hold has been written by lazybuild itself.
    run_touched = docker.run_touched_directories(rules.fresh_after)
    stub_parents = rules.mount_stub_parents(lazy)
    for path in sorted(expected.keys() & actual.keys()):
        want, got = expected[path], actual[path]
        if path in RUNTIME_TOUCHED_DIRS:
            image_mtime = docker.image_mtime(path)
            # None: no layer holds it, the init layer made it (FROM scratch).
            want = replace(want, mtime=got.mtime if image_mtime is None else image_mtime)
        if path in stub_parents and _mtime_is_fresh(got, rules.fresh_after):
            want = replace(want, mtime=got.mtime)  # a mount stub's time (BuildKit's too)
        # Only security.capability survives `docker export`.
        want = replace(want, xattrs=_exported_xattrs(want.xattrs))
        got = replace(got, xattrs=_exported_xattrs(got.xattrs))
        if path in rules.normalise and want.type == got.type == "reg":
            normalise = rules.normalise[path]
            want_data = normalise((docker.rootfs / path).read_bytes())
            got_data = normalise((lazy.rootfs / path).read_bytes())
            if want_data != got_data:
                differences.append(
                    f"{path}: content differs after normalising: dockerd {want_data!r}, "
                    f"lazybuild {got_data!r}"
                )
            want = replace(want, size=0, sha256="")
            got = replace(got, size=0, sha256="")
        if path in rules.source_dir_mtimes:
            if not _mtime_is_fresh(want, rules.fresh_after):
                differences.append(f"{path}: dockerd's mtime {_when(want.mtime)} is not fresh")
            if got.mtime != rules.source_dir_mtimes[path]:
                differences.append(
                    f"{path}: lazybuild's mtime {_when(got.mtime)} is not the source "
                    f"directory's {_when(rules.source_dir_mtimes[path])}"
                )
            want, got = replace(want, mtime=0), replace(got, mtime=0)
        elif not _mtimes_comparable(path, want, got, rules, run_touched):
            want = replace(want, mtime=0)
            got = replace(got, mtime=0)
        if want != got:
            differences.append(f"{path}: {_fact_diff(want, got, docker.rootfs, lazy.rootfs, path)}")

    kept = expected.keys() & actual.keys()
    want_links = {frozenset(g & kept) for g in docker_tree.hardlinks if len(g & kept) > 1}
    got_links = {frozenset(g & kept) for g in lazy_tree.hardlinks if len(g & kept) > 1}
    for group in sorted(want_links - got_links, key=sorted):
        differences.append(f"hardlinked in dockerd's image only: {sorted(group)}")
    for group in sorted(got_links - want_links, key=sorted):
        differences.append(f"hardlinked in lazybuild's image only: {sorted(group)}")
    return differences


def _mtimes_comparable(
    path: str, want: Facts, got: Facts, rules: TreeRules, run_touched: frozenset[str]
) -> bool:
    if want.type == "dir" and path in run_touched:
        return False  # a RUN step wrote into it
    # Set during the builds on both sides (RUN output, a directory a COPY created or
    # wrote into): the builders ran at different times.
    return not (
        _mtime_is_fresh(want, rules.fresh_after) and _mtime_is_fresh(got, rules.fresh_after)
    )


def _exported_xattrs(xattrs: tuple[tuple[str, bytes], ...]) -> tuple[tuple[str, bytes], ...]:
    return tuple(x for x in xattrs if x[0] in EXPORTED_XATTRS)


def _describe(facts: Facts) -> str:
    text = f"{facts.type} {facts.mode:04o} {facts.uid}:{facts.gid}"
    if facts.type == "reg":
        text += f" {facts.size} bytes"
    if facts.link:
        text += f" -> {facts.link}"
    return text


def _fact_diff(want: Facts, got: Facts, docker_root: Path, lazy_root: Path, path: str) -> str:
    parts = []
    for name in Facts.__dataclass_fields__:
        a, b = getattr(want, name), getattr(got, name)
        if a == b:
            continue
        if name == "mode":
            parts.append(f"mode dockerd {a:04o}, lazybuild {b:04o}")
        elif name == "mtime":
            parts.append(f"mtime dockerd {_when(a)}, lazybuild {_when(b)}")
        elif name == "sha256" and want.type == "reg" and max(want.size, got.size) <= 400:
            a_data = (docker_root / path).read_bytes()
            b_data = (lazy_root / path).read_bytes()
            parts.append(f"content dockerd {a_data!r}, lazybuild {b_data!r}")
        elif name == "sha256":
            parts.append("content differs")
        else:
            parts.append(f"{name} dockerd {a!r}, lazybuild {b!r}")
    return "; ".join(parts)


def _when(mtime: int) -> str:
    return f"{mtime} ({time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(mtime))} UTC)"


# Config fields compared (everything a Dockerfile instruction can set). Hostname,
# Image, Attach*, Tty... are dockerd's own bookkeeping that BuildKit does not write.
CONFIG_FIELDS = (
    "Env",
    "Entrypoint",
    "Cmd",
    "User",
    "WorkingDir",
    "Labels",
    "ExposedPorts",
    "Volumes",
    "StopSignal",
    "Healthcheck",
    "Shell",
    "OnBuild",
)


def _empty_to_none(value: Any) -> Any:
    # dockerd writes null, "" or {} where BuildKit omits the field: all mean "unset".
    if value in (None, "", [], {}):
        return None
    if isinstance(value, dict):
        # Healthcheck durations and retries: 0 means unset, and Go omits them.
        return {k: v for k, v in value.items() if v not in (None, 0, "", [])} or None
    return value


def normalised_config(config: Mapping[str, Any]) -> dict[str, Any]:
    inner = dict(config.get("config") or {})
    # An unset working directory is the root (BuildKit writes "/" for FROM scratch).
    if inner.get("WorkingDir") == "/":
        inner["WorkingDir"] = ""
    result = {name: _empty_to_none(inner.get(name)) for name in CONFIG_FIELDS}
    for name in ("architecture", "os", "variant", "os.version"):
        result[name] = _empty_to_none(config.get(name))
    # MAINTAINER sets the top-level author field.
    result["author"] = _empty_to_none(config.get("author"))
    return result


def compare_configs(docker: Mapping[str, Any], lazy: Mapping[str, Any]) -> list[str]:
    """Differences between the two images' configs, and for each image alone: one
    non-empty history entry per layer."""
    differences = []
    want, got = normalised_config(docker), normalised_config(lazy)
    for name in want:
        if want[name] != got[name]:
            differences.append(f"config {name}: dockerd {want[name]!r}, lazybuild {got[name]!r}")
    for label, config in (("dockerd", docker), ("lazybuild", lazy)):
        layers = len(config.get("rootfs", {}).get("diff_ids", []))
        entries = len(_non_empty_history(config))
        if layers != entries:
            differences.append(
                f"{label}: {layers} layers but {entries} history entries that are not empty_layer"
            )
    return differences


def base_history_differences(config: Mapping[str, Any], base: Mapping[str, Any]) -> list[str]:
    """Builders copy the base image's history entries as they are and add their own."""
    history = config.get("history") or []
    differences = []
    for number, want_entry in enumerate(base.get("history") or []):
        got_entry = history[number] if number < len(history) else None
        if got_entry != want_entry:
            differences.append(
                f"history[{number}] is {got_entry}, the base image's is {want_entry}"
            )
    return differences


def describe_outputs(*built: Built) -> str:
    """Build logs, for failure messages."""
    return "\n".join(f"--- {b.builder} ({b.seconds:.1f}s) ---\n{b.log[-3000:]}" for b in built)
