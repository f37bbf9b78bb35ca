"""The image config a frontend returns, checked once and frozen.

A frontend hands back plain data; before the exporter trusts it, it must be JSON of the
OCI image config's shape (the fields Docker and containerd read have the types they
expect), of bounded size. ``ImageConfig`` is that document as a read-only mapping, so
the exporter and the build's callers take it as data; ``to_oci_config`` gives a copy
for callers that change it (profiling reads it, the exporter completes it).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator, Mapping
from typing import Any

from lazybuild.gateway.contract import MAX_CONFIG_BYTES

__all__ = ["ImageConfig", "InvalidImageConfigError", "image_config"]

_STRING_FIELDS = ("User", "WorkingDir", "StopSignal")
_LIST_FIELDS = ("Env", "OnBuild")
_OPTIONAL_LIST_FIELDS = ("Entrypoint", "Cmd", "Shell")
_SET_FIELDS = ("ExposedPorts", "Volumes")
_HISTORY_STRINGS = ("created", "created_by", "author", "comment")


class InvalidImageConfigError(ValueError):
    """The frontend's image config is not an OCI image config; the message says where."""


class ImageConfig(Mapping[str, Any]):
    """A checked OCI image config (``config``, ``history``, ``author``, …), read-only."""

    __slots__ = ("_document",)

    def __init__(self, document: Mapping[str, Any]) -> None:
        self._document: dict[str, Any] = copy.deepcopy(dict(document))

    def __getitem__(self, key: str) -> Any:
        # A copy: the document stays what was checked whoever holds a value of it.
        return copy.deepcopy(self._document[key])

    def __iter__(self) -> Iterator[str]:
        return iter(self._document)

    def __len__(self) -> int:
        return len(self._document)

    def __repr__(self) -> str:
        return f"ImageConfig({self._document!r})"

    def to_oci_config(self) -> dict[str, Any]:
        return copy.deepcopy(self._document)


def image_config(value: object) -> ImageConfig:
    """``value`` checked as an OCI image config; raises ``InvalidImageConfigError``."""
    if not isinstance(value, Mapping):
        raise InvalidImageConfigError(f"the image config is a {type(value).__name__}, not a dict")
    try:
        encoded = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise InvalidImageConfigError(f"the image config is not JSON: {error}") from None
    if len(encoded) > MAX_CONFIG_BYTES:
        raise InvalidImageConfigError(
            f"the image config is {len(encoded)} bytes, over the limit of {MAX_CONFIG_BYTES}"
        )
    # Decoded again, so what is kept is exactly JSON (tuples become lists, no subclasses).
    document: dict[str, Any] = json.loads(encoded)
    # null is what Go's encoder writes for an empty field: it means absent.
    settings = document.get("config")
    _check_settings({} if settings is None else settings)
    history = document.get("history")
    _check_history([] if history is None else history)
    if not isinstance(document.get("author", ""), str):
        raise InvalidImageConfigError("author must be a string")
    return ImageConfig(document)


def _check_settings(settings: object) -> None:
    if not isinstance(settings, dict):
        raise InvalidImageConfigError("config must be an object")
    for key in _STRING_FIELDS:
        if not isinstance(settings.get(key, ""), str):
            raise InvalidImageConfigError(f"config.{key} must be a string")
    for key in _LIST_FIELDS:
        _check_strings(settings.get(key) or [], f"config.{key}")
    for key in _OPTIONAL_LIST_FIELDS:
        if settings.get(key) is not None:
            _check_strings(settings[key], f"config.{key}")
    for key in _SET_FIELDS:
        members = settings.get(key) or {}
        if not isinstance(members, dict) or any(v != {} for v in members.values()):
            raise InvalidImageConfigError(f"config.{key} must map names to {{}}")
    labels = settings.get("Labels") or {}
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        raise InvalidImageConfigError("config.Labels must map names to strings")
    for item in settings.get("Env") or []:
        if not item.partition("=")[0]:
            raise InvalidImageConfigError(f"config.Env entry {item!r} has no name")
    health = settings.get("Healthcheck")
    if health is not None and not isinstance(health, dict):
        raise InvalidImageConfigError("config.Healthcheck must be an object")


def _check_strings(value: object, where: str) -> None:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise InvalidImageConfigError(f"{where} must be a list of strings")


def _check_history(history: object) -> None:
    if not isinstance(history, list):
        raise InvalidImageConfigError("history must be a list")
    for number, entry in enumerate(history):
        if not isinstance(entry, dict):
            raise InvalidImageConfigError(f"history entry {number} must be an object")
        for key in _HISTORY_STRINGS:
            if not isinstance(entry.get(key, ""), str):
                raise InvalidImageConfigError(f"history entry {number}: {key} must be a string")
        if not isinstance(entry.get("empty_layer", False), bool):
            raise InvalidImageConfigError(f"history entry {number}: empty_layer must be a boolean")
