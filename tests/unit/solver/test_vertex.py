"""Loading a Definition into vertices."""

from __future__ import annotations

import pytest

from lazybuild.graph import DefinitionError, OpMetadata, State, copy, marshal
from lazybuild.graph.definition import Definition
from lazybuild.solver import load_definition


def test_vertices_are_shared_by_digest_and_linked_by_edges() -> None:
    base = State.image("example.com/base@sha256:" + "a" * 64, "linux/amd64")
    left = base.run(["left"], metadata=OpMetadata(description="left"))
    right = base.run(["right"])
    joined = left.run(["join"]).run(["again"])
    definition = marshal(joined.file(copy(right, "/x", "/y")))
    graph = load_definition(definition)
    assert len(graph.vertices) == len(definition.ops) == 6
    root = graph.root
    assert root is not None and root.output_index == 0
    bases = {
        edge.vertex.digest
        for vertex in graph.vertices.values()
        for edge in vertex.inputs
        if edge.vertex.inputs == ()
    }
    assert len(bases) == 1
    left_vertex = next(v for v in graph.vertices.values() if v.metadata.description == "left")
    assert left_vertex.name == "left"
    assert left_vertex.inputs[0].vertex is graph.vertices[bases.pop()]
    unnamed = next(v for v in graph.vertices.values() if v.inputs == ())
    assert unnamed.name.startswith("image ") and unnamed.output_count == 1


def test_an_empty_definition_has_no_root() -> None:
    assert load_definition(marshal(State.scratch())).root is None


def test_an_invalid_definition_is_refused() -> None:
    op = State.image("a", "p").run(["x"])
    definition = marshal(op)
    with pytest.raises(DefinitionError):
        load_definition(Definition(ops=definition.ops[1:]))
