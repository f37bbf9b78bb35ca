"""The image config a Dockerfile build produces, as an immutable value.

``ImageConfigState`` holds the fields of an OCI image config's ``config`` object that a
Dockerfile can change, plus ``history`` and ``author``; ``to_oci_config`` writes them
the way Docker does (empty fields left out, ports and volumes as ``{key: {}}`` maps).
``from_oci_config`` reads a base image's config back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["HealthConfig", "HistoryEntry", "ImageConfigState"]

HISTORY_COMMENT = "buildkit.dockerfile.v0"
# What an image built from scratch starts with (BuildKit's and Docker's default PATH).
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class HistoryEntry:
    """One ``history`` entry; ``empty_layer`` for steps that change only the config."""

    created_by: str
    empty_layer: bool = False
    comment: str = ""
    created: str = ""  # a base image's entries keep theirs; new ones get the image's

    def to_json(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"created_by": self.created_by}
        if self.created:
            entry["created"] = self.created
        if self.comment:
            entry["comment"] = self.comment
        if self.empty_layer:
            entry["empty_layer"] = True
        return entry


@dataclass(frozen=True)
class HealthConfig:
    """``Healthcheck`` of the config: ``test`` is ``["NONE"]``, ``["CMD", ...]`` or
    ``["CMD-SHELL", text]``; durations in nanoseconds, None when not given."""

    test: tuple[str, ...]
    interval_ns: int | None = None
    timeout_ns: int | None = None
    start_period_ns: int | None = None
    start_interval_ns: int | None = None
    retries: int | None = None

    def to_json(self) -> dict[str, Any]:
        value: dict[str, Any] = {"Test": list(self.test)}
        for key, field in (
            ("Interval", self.interval_ns),
            ("Timeout", self.timeout_ns),
            ("StartPeriod", self.start_period_ns),
            ("StartInterval", self.start_interval_ns),
            ("Retries", self.retries),
        ):
            if field:
                value[key] = field
        return value


@dataclass(frozen=True)
class ImageConfigState:
    """What a build knows of its image's config. ``env`` is ``KEY=value`` strings in
    order; ``labels`` are pairs in first-set order; ``entrypoint``/``cmd``/``shell``
    None means unset (``shell`` unset is ``/bin/sh -c``)."""

    env: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] | None = None
    cmd: tuple[str, ...] | None = None
    user: str = ""
    workdir: str = ""
    labels: tuple[tuple[str, str], ...] = ()
    exposed_ports: tuple[str, ...] = ()
    volumes: tuple[str, ...] = ()
    stop_signal: str | None = None
    healthcheck: HealthConfig | None = None
    shell: tuple[str, ...] | None = None
    onbuild: tuple[str, ...] = ()
    history: tuple[HistoryEntry, ...] = ()
    author: str = ""

    # Helpers for building the next state.

    def env_pairs(self) -> list[tuple[str, str]]:
        pairs = []
        for item in self.env:
            key, _, value = item.partition("=")
            pairs.append((key, value))
        return pairs

    def get_env(self, key: str) -> str | None:
        for name, value in self.env_pairs():
            if name == key:
                return value
        return None

    def with_env(self, key: str, value: str) -> tuple[str, ...]:
        """``env`` with ``key`` set; a replaced variable keeps its place, as in Docker."""
        pairs = self.env_pairs()
        for position, (name, _) in enumerate(pairs):
            if name == key:
                pairs[position] = (key, value)
                break
        else:
            pairs.append((key, value))
        return tuple(f"{name}={item}" for name, item in pairs)

    def with_label(self, key: str, value: str) -> tuple[tuple[str, str], ...]:
        labels = list(self.labels)
        for position, (name, _) in enumerate(labels):
            if name == key:
                labels[position] = (key, value)
                break
        else:
            labels.append((key, value))
        return tuple(labels)

    def to_oci_config(self) -> dict[str, Any]:
        """``{"config": {...}, "history": [...]}`` (and ``author`` when set), ready to be
        completed with ``rootfs``, ``created`` and the platform by the exporter."""
        config: dict[str, Any] = {}
        if self.user:
            config["User"] = self.user
        if self.exposed_ports:
            config["ExposedPorts"] = {port: {} for port in self.exposed_ports}
        if self.env:
            config["Env"] = list(self.env)
        if self.entrypoint is not None:
            config["Entrypoint"] = list(self.entrypoint)
        if self.cmd is not None:
            config["Cmd"] = list(self.cmd)
        if self.volumes:
            config["Volumes"] = {path: {} for path in self.volumes}
        if self.workdir:
            config["WorkingDir"] = self.workdir
        if self.labels:
            config["Labels"] = dict(self.labels)
        if self.stop_signal:
            config["StopSignal"] = self.stop_signal
        if self.healthcheck is not None:
            config["Healthcheck"] = self.healthcheck.to_json()
        if self.shell is not None:
            config["Shell"] = list(self.shell)
        if self.onbuild:
            config["OnBuild"] = list(self.onbuild)
        result: dict[str, Any] = {
            "config": config,
            "history": [entry.to_json() for entry in self.history],
        }
        if self.author:
            result["author"] = self.author
        return result

    @staticmethod
    def from_oci_config(document: Mapping[str, Any]) -> ImageConfigState:
        """Read an OCI image config (with ``config``/``history``) or a bare ``config``."""
        if "config" in document or "history" in document or "rootfs" in document:
            config: Mapping[str, Any] = document.get("config") or {}
            history_json = document.get("history") or []
            author = str(document.get("author") or "")
        else:
            config, history_json, author = document, [], ""

        def strings(key: str) -> tuple[str, ...] | None:
            value = config.get(key)
            return None if value is None else tuple(str(item) for item in value)

        health = config.get("Healthcheck")
        healthcheck = None
        if health:
            healthcheck = HealthConfig(
                test=tuple(health.get("Test") or ()),
                interval_ns=health.get("Interval") or None,
                timeout_ns=health.get("Timeout") or None,
                start_period_ns=health.get("StartPeriod") or None,
                start_interval_ns=health.get("StartInterval") or None,
                retries=health.get("Retries") or None,
            )
        history = tuple(
            HistoryEntry(
                created_by=str(entry.get("created_by", "")),
                empty_layer=bool(entry.get("empty_layer", False)),
                comment=str(entry.get("comment", "")),
                created=str(entry.get("created", "")),
            )
            for entry in history_json
        )
        return ImageConfigState(
            env=strings("Env") or (),
            entrypoint=strings("Entrypoint"),
            cmd=strings("Cmd"),
            user=str(config.get("User") or ""),
            workdir=str(config.get("WorkingDir") or ""),
            labels=tuple((str(k), str(v)) for k, v in (config.get("Labels") or {}).items()),
            exposed_ports=tuple(config.get("ExposedPorts") or {}),
            volumes=tuple(config.get("Volumes") or {}),
            stop_signal=config.get("StopSignal") or None,
            healthcheck=healthcheck,
            shell=strings("Shell"),
            onbuild=strings("OnBuild") or (),
            history=history,
            author=author,
        )
