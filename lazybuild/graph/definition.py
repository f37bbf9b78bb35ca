"""A marshalled build graph: the one value a frontend hands to the solver.

``ops`` holds each op's canonical JSON, every op after the ops it reads from, the root
last; ``root_output`` says which output of the root is the result. ``metadata`` is keyed
by op digest and is not part of any digest. An empty ``ops`` is the empty filesystem.

``to_bytes`` writes::

    {"metadata":{"<digest>":{...}},"ops":["<op json>",...],"root_output":0,"version":1}
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field

from lazybuild.errors import LazybuildError
from lazybuild.graph._codec import DecodeError, canonical_json
from lazybuild.graph.ops import (
    Copy,
    Diff,
    Exec,
    File,
    Operation,
    OpMetadata,
    decode_metadata,
    decode_op,
    encode_metadata,
    output_count,
)

FORMAT_VERSION = 1


class DefinitionError(LazybuildError):
    """A definition that is malformed: bad JSON, a missing input, a cycle, a bad index."""


def digest_of(op_bytes: bytes) -> str:
    """The identity of an op: ``sha256:<hex>`` of its canonical JSON."""
    return "sha256:" + hashlib.sha256(op_bytes).hexdigest()


@dataclass(frozen=True)
class Definition:
    ops: tuple[bytes, ...]
    metadata: Mapping[str, OpMetadata] = field(default_factory=dict)
    root_output: int = 0

    @property
    def root_digest(self) -> str | None:
        return digest_of(self.ops[-1]) if self.ops else None

    def to_bytes(self) -> bytes:
        return canonical_json(
            {
                "version": FORMAT_VERSION,
                "ops": [op.decode("utf-8") for op in self.ops],
                "metadata": {
                    digest: encode_metadata(meta) for digest, meta in sorted(self.metadata.items())
                },
                "root_output": self.root_output,
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Definition:
        """Parse and validate; raises ``DefinitionError``."""
        try:
            document = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise DefinitionError(f"definition is not JSON: {error}") from None
        if not isinstance(document, dict) or document.get("version") != FORMAT_VERSION:
            raise DefinitionError(f"not a version {FORMAT_VERSION} definition")
        ops, metadata, root_output = (
            document.get("ops"),
            document.get("metadata", {}),
            document.get("root_output", 0),
        )
        if not isinstance(ops, list) or not all(isinstance(op, str) for op in ops):
            raise DefinitionError("definition: ops must be a list of strings")
        if not isinstance(metadata, dict) or type(root_output) is not int:
            raise DefinitionError("definition: bad metadata or root_output")
        try:
            decoded_metadata = {str(k): decode_metadata(v) for k, v in metadata.items()}
        except DecodeError as error:
            raise DefinitionError(f"definition metadata: {error}") from None
        definition = cls(
            ops=tuple(op.encode("utf-8") for op in ops),
            metadata=decoded_metadata,
            root_output=root_output,
        )
        definition.decode()
        return definition

    def decode(self) -> dict[str, Operation]:
        """Every op by digest, after checking the whole graph; raises ``DefinitionError``."""
        return validate(self)


def validate(definition: Definition) -> dict[str, Operation]:
    """Check that every op decodes and is well formed, every input exists, has the output
    it names and comes before its user, there is no cycle, every op is reachable from the
    root and metadata only names ops of this definition. Returns the ops by digest."""
    ops: dict[str, Operation] = {}
    for position, op_bytes in enumerate(definition.ops):
        digest = digest_of(op_bytes)
        if digest in ops:
            raise DefinitionError(f"op {position} ({digest}) appears twice")
        try:
            ops[digest] = decode_op(op_bytes)
        except DecodeError as error:
            raise DefinitionError(f"op {position} ({digest}): {error}") from None
    for digest, op in ops.items():
        _check_op(digest, op, ops)
    _check_acyclic(ops)
    _check_order(definition.ops)
    if ops:
        root = digest_of(definition.ops[-1])
        if not 0 <= definition.root_output < output_count(ops[root]):
            raise DefinitionError(f"root op {root} has no output {definition.root_output}")
        unreachable = set(ops) - _reachable(root, ops)
        if unreachable:
            raise DefinitionError(f"op {sorted(unreachable)[0]} is not reachable from the root")
    elif definition.root_output != 0:
        raise DefinitionError("an empty definition has no output to select")
    stray = set(definition.metadata) - set(ops)
    if stray:
        raise DefinitionError(f"metadata for unknown op {sorted(stray)[0]}")
    return ops


def _check_op(digest: str, op: Operation, ops: Mapping[str, Operation]) -> None:
    checker = _OpChecker(digest, op)
    for number, edge in enumerate(op.inputs):
        source = ops.get(edge.digest)
        if source is None:
            raise checker.fail(f"input {number} names missing op {edge.digest}")
        if not 0 <= edge.output_index < output_count(source):
            raise checker.fail(
                f"input {number}: op {edge.digest} has no output {edge.output_index}"
            )
    if isinstance(op, Exec):
        checker.check_exec(op)
    elif isinstance(op, File):
        checker.check_index(op.base_input, "base_input")
        for action in op.actions:
            if isinstance(action, Copy):
                checker.check_index(action.src_input, "copy src_input")
    elif isinstance(op, Diff):
        checker.check_index(op.lower, "diff lower")
        checker.check_index(op.upper, "diff upper")


class _OpChecker:
    def __init__(self, digest: str, op: Operation) -> None:
        self.digest = digest
        self.input_count = len(op.inputs)

    def fail(self, message: str) -> DefinitionError:
        return DefinitionError(f"op {self.digest}: {message}")

    def check_index(self, index: int | None, what: str) -> None:
        if index is not None and not 0 <= index < self.input_count:
            raise self.fail(f"{what} refers to input {index}, but the op has {self.input_count}")

    def check_exec(self, op: Exec) -> None:
        if not op.args:
            raise self.fail("exec has no args")
        if not op.mounts or op.mounts[0].dest != "/":
            raise self.fail('exec mount 0 must be the root filesystem ("/")')
        dests = [mount.dest for mount in op.mounts]
        if len(set(dests)) != len(dests):
            raise self.fail("two mounts share a destination")
        outputs = []
        for mount in op.mounts:
            self.check_index(mount.input, f"mount {mount.dest}")
            if mount.output is None:
                continue
            if mount.readonly or mount.kind != "bind":
                raise self.fail(f"mount {mount.dest}: only writable bind mounts have outputs")
            outputs.append(mount.output)
        if sorted(outputs) != list(range(len(outputs))):
            raise self.fail(f"exec outputs must be numbered 0..n-1, got {outputs}")
        names = [secret.name for secret in op.secret_env]
        if any(not name or "=" in name for name in names) or len(set(names)) != len(names):
            raise self.fail(f"secret env names must be distinct and well-formed, got {names}")


def _check_acyclic(ops: Mapping[str, Operation]) -> None:
    # Iterative three-colour DFS: a deep chain of RUN steps must not hit the recursion limit.
    done: set[str] = set()
    for start in ops:
        if start in done:
            continue
        on_path: set[str] = {start}
        stack = [(start, iter(ops[start].inputs))]
        while stack:
            digest, pending = stack[-1]
            edge = next(pending, None)
            if edge is None:
                stack.pop()
                on_path.discard(digest)
                done.add(digest)
            elif edge.digest in on_path:
                raise DefinitionError(f"cycle through op {edge.digest}")
            elif edge.digest not in done:
                on_path.add(edge.digest)
                stack.append((edge.digest, iter(ops[edge.digest].inputs)))


def _check_order(op_bytes: tuple[bytes, ...]) -> None:
    # Inputs first is what lets a loader build vertices in one pass, and the last op
    # is the root only if nothing comes after what it reads.
    seen: set[str] = set()
    for data in op_bytes:
        for edge in decode_op(data).inputs:
            if edge.digest not in seen:
                raise DefinitionError(f"op {digest_of(data)} comes before its input {edge.digest}")
        seen.add(digest_of(data))


def _reachable(root: str, ops: Mapping[str, Operation]) -> set[str]:
    seen = {root}
    pending = [root]
    while pending:
        for edge in ops[pending.pop()].inputs:
            if edge.digest not in seen:
                seen.add(edge.digest)
                pending.append(edge.digest)
    return seen
