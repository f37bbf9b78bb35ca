ARG BASE
FROM ${BASE}
ONBUILD RUN mkdir -p /out && echo -n yes >> /out/didrun
