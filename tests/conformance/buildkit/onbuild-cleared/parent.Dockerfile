ARG BASE
FROM ${BASE}
ONBUILD RUN mkdir -p /out && echo -n 11 >> /out/foo
