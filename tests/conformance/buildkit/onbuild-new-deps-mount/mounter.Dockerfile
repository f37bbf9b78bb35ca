ARG BASE
FROM ${BASE}
ONBUILD RUN --mount=type=bind,target=/in,from=inputstage mkdir /out && cat /in/foo > /out/bar && cat /in/out/debian_version2 > /out/bar2
