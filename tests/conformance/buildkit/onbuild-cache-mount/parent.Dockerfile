ARG BASE
FROM ${BASE}
ONBUILD RUN --mount=type=cache,target=/onbuildcache echo -n 42 >> /onbuildcache/foo && echo -n 11 >> /bar
