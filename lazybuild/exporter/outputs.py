"""Where a build's result goes: ``-o/--output`` specs, ``--push``, ``--load`` and ``-t``,
read the way ``docker buildx build`` reads them.

A spec is CSV (``type=oci,dest=out.tar``; quote a field holding commas:
``"name=a:1,b:2"``); a spec with no ``=`` is a directory (``-o DIR`` is
``type=local,dest=DIR``). ``type=registry`` is ``type=image,push=true``. ``--push``
sets push=true on image outputs, or adds one; ``--load`` adds ``type=docker`` unless
there is one. ``-t`` names fill ``name`` where an image, oci or docker output has none.

lazybuild has no daemon and so no image store: an image output must push, and
``type=docker`` without ``dest`` loads into a Docker engine (what ``--load`` does).
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from lazybuild.errors import InvalidReferenceError, UsageError
from lazybuild.registry.reference import Reference

__all__ = [
    "DockerOutput",
    "ImageOutput",
    "LocalOutput",
    "OciOutput",
    "OutputSpec",
    "TarOutput",
    "outputs_from_flags",
    "parse_output",
]

STDOUT = "-"


@dataclass(frozen=True)
class ImageOutput:
    """Push the image to a registry under each of ``names``."""

    names: tuple[str, ...] = ()
    push: bool = False


@dataclass(frozen=True)
class OciOutput:
    """An OCI image layout: a tar at ``dest`` ("-" for stdout) or, with ``tar=False``, a
    directory."""

    dest: str
    tar: bool = True
    names: tuple[str, ...] = ()


@dataclass(frozen=True)
class DockerOutput:
    """A ``docker load`` tarball at ``dest`` ("-" for stdout), or with no ``dest``
    loaded into the Docker engine that DOCKER_HOST names."""

    dest: str | None = None
    names: tuple[str, ...] = ()


@dataclass(frozen=True)
class LocalOutput:
    """The final root filesystem, copied into the directory ``dest``."""

    dest: Path


@dataclass(frozen=True)
class TarOutput:
    """The final root filesystem as one tar at ``dest`` ("-" for stdout): what
    ``type=local`` writes, as an archive."""

    dest: str


OutputSpec = ImageOutput | OciOutput | DockerOutput | LocalOutput | TarOutput

# Options accepted and what they may be; every layer lazybuild writes is eStargz, which
# is gzip to every other tool, and manifests are always OCI.
_COMMON_OPTIONS = {"compression": ("estargz", "gzip"), "oci-mediatypes": ("true",)}
_OPTIONS: Mapping[str, frozenset[str]] = {
    "image": frozenset({"name", "push", "unpack", "store", *_COMMON_OPTIONS}),
    "oci": frozenset({"name", "dest", "tar", *_COMMON_OPTIONS}),
    "docker": frozenset({"name", "dest", *_COMMON_OPTIONS}),
    "local": frozenset({"dest"}),
    "tar": frozenset({"dest"}),
}
_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_FALSE = {"0", "f", "F", "FALSE", "false", "False"}


def parse_output(text: str) -> OutputSpec:
    """One ``-o`` value as an output spec; ``UsageError`` (one line) when it makes no sense."""
    if not text.strip():
        raise UsageError("empty --output value")
    if "=" not in text and "," not in text:
        if text == STDOUT:
            return TarOutput(STDOUT)  # buildx: -o - is type=tar,dest=-
        return LocalOutput(Path(text))
    fields = _csv_fields(text)
    kind = fields.pop("type", None)
    if kind is None:
        raise UsageError(
            f"output {text!r}: type= is required (image, registry, oci, docker, local, tar)"
        )
    if kind == "registry":
        kind = "image"
        fields.setdefault("push", "true")
    if kind not in _OPTIONS:
        supported = "image, registry, oci, docker, local, tar"
        raise UsageError(f"output {text!r}: unknown type {kind!r} (supported: {supported})")
    _check_options(text, kind, fields)
    names = _names(fields.get("name", ""))
    if kind == "image":
        return ImageOutput(names, _bool(text, fields, "push", default=False))
    if kind == "oci":
        archive = fields.get("dest", STDOUT)
        if not archive:
            raise UsageError(f"output {text!r}: dest= is empty")
        return OciOutput(archive, _bool(text, fields, "tar", default=True), names)
    if kind == "docker":
        return DockerOutput(fields.get("dest") or None, names)
    if kind == "tar":
        # buildx writes to stdout when dest= is absent, but refuses a terminal there.
        return TarOutput(fields.get("dest") or STDOUT)
    directory = fields.get("dest")
    if not directory:
        raise UsageError(f"output {text!r}: type=local needs dest=DIR")
    if directory == STDOUT:
        # buildx turns type=local,dest=- into a tar on stdout (its local exporter
        # cannot write a directory there).
        return TarOutput(STDOUT)
    return LocalOutput(Path(directory))


def outputs_from_flags(
    outputs: Sequence[str], tags: Sequence[str], *, push: bool, load: bool
) -> list[OutputSpec]:
    """The outputs of ``-o`` values, ``-t`` tags and ``--push``/``--load``, as buildx
    combines them. An empty list means the result goes nowhere (the caller warns)."""
    specs = [parse_output(text) for text in outputs]
    if push:
        if any(isinstance(spec, ImageOutput) for spec in specs):
            specs = [replace(s, push=True) if isinstance(s, ImageOutput) else s for s in specs]
        else:
            specs.append(ImageOutput(push=True))
    if load and not any(isinstance(spec, DockerOutput) for spec in specs):
        specs.append(DockerOutput())
    tag_names = _names(",".join(tags))
    for name in tag_names:
        _check_name(name, "-t")
    specs = [_with_default_names(spec, tag_names) for spec in specs]
    for spec in specs:
        _validate(spec)
    to_stdout = [s for s in specs if isinstance(s, OciOutput | DockerOutput | TarOutput)]
    if sum(spec.dest == STDOUT for spec in to_stdout) > 1:
        # Two archives on one stream could not be told apart.
        raise UsageError("only one output can go to standard output (dest=-)")
    return specs


def _csv_fields(text: str) -> dict[str, str]:
    try:
        rows = list(csv.reader([text], skipinitialspace=False, strict=True))
    except csv.Error as error:
        raise UsageError(f"output {text!r}: not valid CSV: {error}") from None
    fields: dict[str, str] = {}
    for field in rows[0] if rows else []:
        key, sep, value = field.partition("=")
        if not sep:
            raise UsageError(f"output {text!r}: {field!r} is not key=value")
        key = key.strip().lower()
        if key in fields:
            raise UsageError(f"output {text!r}: {key}= is given twice")
        fields[key] = value
    return fields


def _check_options(text: str, kind: str, fields: Mapping[str, str]) -> None:
    allowed = _OPTIONS[kind]
    for key, value in fields.items():
        if key not in allowed:
            known = ", ".join(sorted(allowed))
            raise UsageError(f"output {text!r}: type={kind} has no option {key!r} (has: {known})")
        choices = _COMMON_OPTIONS.get(key)
        if choices is not None and value not in choices:
            raise UsageError(
                f"output {text!r}: {key}={value} is not supported (lazybuild writes "
                f"{key}={choices[0]})"
            )


def _bool(text: str, fields: Mapping[str, str], key: str, *, default: bool) -> bool:
    value = fields.get(key)
    if value is None:
        return default
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise UsageError(f"output {text!r}: {key}={value} is not true or false")


def _names(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


def _check_name(name: str, where: str) -> None:
    try:
        Reference.parse(name)
    except InvalidReferenceError as error:
        raise UsageError(f"{where} {name!r}: {error}") from None


def _with_default_names(spec: OutputSpec, tags: tuple[str, ...]) -> OutputSpec:
    if isinstance(spec, ImageOutput | OciOutput | DockerOutput) and not spec.names:
        return replace(spec, names=tags)
    return spec


def _validate(spec: OutputSpec) -> None:
    if isinstance(spec, ImageOutput):
        if not spec.push:
            raise UsageError(
                "type=image without push=true: lazybuild has no image store; "
                "add push=true (or --push), or use --load"
            )
        if not spec.names:
            raise UsageError("pushing needs an image name: add -t NAME or name=NAME to the output")
    if isinstance(spec, ImageOutput | OciOutput | DockerOutput):
        for name in spec.names:
            _check_name(name, "output name")
