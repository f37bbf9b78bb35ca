# lazybuild tasks. Every recipe installs what it needs and can be run again safely.

set shell := ["bash", "-euo", "pipefail", "-c"]

venv := justfile_directory() / ".venv"
py := venv / "bin/python"

# Debian packages the tool, its tests and its benchmarks run against.
debs := "make git openssh-client erofs-utils docker-registry runc containerd stargz-snapshotter golang-github-containerd-stargz-snapshotter-dev golang-go debootstrap fuse3 libfuse3-dev pkg-config docker.io buildah iproute2 ca-certificates"

default:
    @just --list

# Install Debian packages that are missing (needs root) and the project's virtualenv.
setup: debs venv

# The Debian packages the tool, its tests and benchmarks run against (needs root).
debs:
    #!/usr/bin/env bash
    set -euo pipefail
    missing=()
    for p in {{debs}}; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if (( ${#missing[@]} )); then
        echo "installing Debian packages: ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
    fi

# The project's virtualenv alone (all that `check` and `unit` need).
venv:
    #!/usr/bin/env bash
    set -euo pipefail
    if [ ! -x "{{py}}" ]; then python3 -m venv "{{venv}}"; fi
    stamp="{{venv}}/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
    if [ ! -f "$stamp" ]; then
        "{{py}}" -m pip install -q --upgrade pip
        "{{py}}" -m pip install -q -e '.[dev]'
        rm -f "{{venv}}"/.installed-*
        touch "$stamp"
    fi
    # The out-of-tree Go-module frontend, as a user installs a frontend (`# syntax=gomodule`).
    "{{py}}" -c 'import lazybuild_gomodule' 2>/dev/null || "{{py}}" -m pip install -q --no-deps -e frontends/gomodule
    # Bytecode for the editable install, as pip writes it for a wheel: every lazybuild
    # process (the CLI, each filesystem process) would otherwise compile every module on
    # start where the environment sets PYTHONDONTWRITEBYTECODE. Only changed files are redone.
    "{{py}}" -m compileall -q -j 0 lazybuild frontends >/dev/null

# ruff and mypy --strict on the package, the benchmarks, the examples, the frontends and
# the tests (needs only the virtualenv).
check: venv
    {{venv}}/bin/ruff check lazybuild frontends tests bench examples
    {{venv}}/bin/ruff format --check lazybuild frontends tests bench examples
    {{venv}}/bin/mypy --strict lazybuild
    {{venv}}/bin/mypy --strict bench examples
    MYPYPATH=frontends/gomodule {{venv}}/bin/mypy --strict -p lazybuild_gomodule
    MYPYPATH=frontends/gomodule {{venv}}/bin/mypy --strict tests

# Regenerate the Python of the daemon's API from its .proto files (checked in; a unit test
# fails when they are out of sync).
proto: venv
    {{py}} -m lazybuild.api.generate

# Format the code.
fmt: venv
    {{venv}}/bin/ruff format lazybuild tests bench frontends examples
    {{venv}}/bin/ruff check --fix lazybuild tests bench frontends examples

# Static checks, then unit, integration and end-to-end tests against real parts.
test *ARGS: setup check
    {{py}} -m pytest -q -ra --durations=25 {{ARGS}}

# The fast tests only (no root, no Debian packages, no daemons).
unit *ARGS: venv
    {{py}} -m pytest -q -ra tests/unit {{ARGS}}

# The main job on a built-in example (see README).
demo: setup
    {{py}} -m examples.demo

# Benchmarks against peers in the same run; results go to docs/benchmarks.md.
bench *ARGS: setup
    {{py}} -m bench {{ARGS}}

# Long fuzz run of every parser of outside bytes (tests/fuzz; CI runs a short one with `test`).
fuzz *ARGS: setup
    HYPOTHESIS_PROFILE=fuzz {{py}} -m pytest -q tests/fuzz {{ARGS}}
