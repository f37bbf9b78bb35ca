"""Canonical JSON for the graph's frozen dataclasses.

The encoding is the identity of an op, so it must never depend on the Python side:
keys are sorted, there is no whitespace, text is UTF-8, ``bytes`` are base64, tuples are
lists. A field equal to its default is left out, so adding a new optional field later
does not change the digest of any op that does not use it (protobuf-encoded LLB has the
same property). A dataclass with a ``json_tag`` is written as ``{tag: body}`` wherever it
sits in a union, which is how the decoder knows which class to build.

Decoding is strict: unknown fields, wrong types and unknown tags are errors, because a
definition that decodes loosely could re-encode to different bytes than it was named by.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import functools
import json
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, TypeVar, Union

T = TypeVar("T")

JsonValue = None | bool | int | str | list["JsonValue"] | dict[str, "JsonValue"]


class DecodeError(ValueError):
    """JSON that does not describe a graph value."""


def canonical_json(value: JsonValue) -> bytes:
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def to_json(value: object) -> JsonValue:
    """Encode a dataclass value (or a field value) as canonical-JSON-ready data."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        body: dict[str, JsonValue] = {}
        for field in dataclasses.fields(value):
            field_value = getattr(value, field.name)
            if _is_default(field, field_value):
                continue
            body[field.name] = to_json(field_value)
        tag = getattr(type(value), "json_tag", None)
        return {tag: body} if isinstance(tag, str) else body
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, tuple | list):
        return [to_json(item) for item in value]
    if value is None or isinstance(value, bool | int | str):
        return value
    raise TypeError(f"cannot encode {type(value).__name__} in a graph value")


def _is_default(field: dataclasses.Field[Any], value: object) -> bool:
    if field.default is not dataclasses.MISSING:
        return bool(value == field.default) and type(value) is type(field.default)
    if field.default_factory is not dataclasses.MISSING:
        return bool(value == field.default_factory())
    return False


def from_json(hint: Any, data: object, where: str = "$") -> Any:
    """Decode ``data`` as the type ``hint`` (a dataclass, union, tuple, literal or scalar)."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return _decode_union(typing.get_args(hint), data, where)
    if origin is tuple:
        item_hint = typing.get_args(hint)[0]
        items = _expect(data, list, where)
        return tuple(from_json(item_hint, item, f"{where}[{i}]") for i, item in enumerate(items))
    if origin is Literal:
        if data not in typing.get_args(hint) or isinstance(data, bool):
            raise DecodeError(f"{where}: {data!r} is not one of {typing.get_args(hint)}")
        return data
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if isinstance(getattr(hint, "json_tag", None), str):
            return _decode_tagged((hint,), data, where)
        return _decode_fields(hint, data, where)
    if hint is bytes:
        try:
            return base64.b64decode(_expect(data, str, where), validate=True)
        except binascii.Error as error:
            raise DecodeError(f"{where}: not base64: {error}") from None
    if hint in (str, int, bool):
        # bool is an int in Python; JSON keeps them apart and so do we.
        if type(data) is not hint:
            raise DecodeError(f"{where}: expected {hint.__name__}, got {type(data).__name__}")
        return data
    raise TypeError(f"no decoder for {hint!r}")


def _decode_union(options: tuple[Any, ...], data: object, where: str) -> Any:
    if data is None and type(None) in options:
        return None
    concrete = tuple(option for option in options if option is not type(None))
    if len(concrete) == 1:
        return from_json(concrete[0], data, where)
    return _decode_tagged(concrete, data, where)


def _decode_tagged(classes: tuple[Any, ...], data: object, where: str) -> Any:
    by_tag: dict[str, Any] = {}
    for cls in classes:
        tag = getattr(cls, "json_tag", None)
        if not isinstance(tag, str):
            raise TypeError(f"{cls!r} is in a union but has no json_tag")
        by_tag[tag] = cls
    mapping = _expect(data, dict, where)
    if len(mapping) != 1:
        raise DecodeError(f"{where}: expected exactly one of {sorted(by_tag)} as the only key")
    ((tag, body),) = mapping.items()
    if tag not in by_tag:
        raise DecodeError(f"{where}: unknown kind {tag!r}")
    return _decode_fields(by_tag[tag], body, f"{where}.{tag}")


def _decode_fields(cls: type[T], data: object, where: str) -> T:
    body = _expect(data, dict, where)
    hints = _hints(typing.cast(type, cls))
    names = {field.name for field in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(body) - names)
    if unknown:
        raise DecodeError(f"{where}: unknown field {unknown[0]!r}")
    values = {
        name: from_json(hints[name], value, f"{where}.{name}") for name, value in body.items()
    }
    try:
        return cls(**values)
    except TypeError as error:  # a required field is missing
        raise DecodeError(f"{where}: {error}") from None


@functools.cache
def _hints(cls: type) -> Mapping[str, Any]:
    return typing.get_type_hints(cls)


def _expect(data: object, kind: type[T], where: str) -> T:
    if not isinstance(data, kind):
        raise DecodeError(f"{where}: expected {kind.__name__}, got {type(data).__name__}")
    return data
