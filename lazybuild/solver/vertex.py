"""A loaded Definition: one vertex per distinct op digest, linked by edges."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from lazybuild.graph.definition import Definition, digest_of
from lazybuild.graph.ops import Operation, OpMetadata, kind_of, output_count


@dataclass(frozen=True, eq=False)
class Vertex:
    """One op of the graph. ``digest`` is its identity within a solve, not a cache key."""

    digest: str
    operation: Operation
    metadata: OpMetadata
    inputs: tuple[Edge, ...]

    @property
    def name(self) -> str:
        """The description, or the op kind and a short digest when there is none."""
        short = self.digest.split(":", 1)[-1][:12]
        return self.metadata.description or f"{kind_of(self.operation)} {short}"

    @property
    def output_count(self) -> int:
        return output_count(self.operation)


@dataclass(frozen=True)
class Edge:
    """Output ``output_index`` of ``vertex``."""

    vertex: Vertex
    output_index: int


@dataclass(frozen=True)
class VertexGraph:
    vertices: Mapping[str, Vertex]
    root: Edge | None  # None: the definition is the empty filesystem


def load_definition(definition: Definition) -> VertexGraph:
    """Validate ``definition`` and build its vertices; raises ``DefinitionError``."""
    operations = definition.decode()
    vertices: dict[str, Vertex] = {}
    # Ops come inputs-first (validated), so every input's vertex exists before its user.
    for data in definition.ops:
        digest = digest_of(data)
        operation = operations[digest]
        inputs = tuple(Edge(vertices[i.digest], i.output_index) for i in operation.inputs)
        metadata = definition.metadata.get(digest, OpMetadata())
        vertices[digest] = Vertex(digest, operation, metadata, inputs)
    root = None
    if definition.ops:
        root = Edge(vertices[digest_of(definition.ops[-1])], definition.root_output)
    return VertexGraph(vertices, root)
