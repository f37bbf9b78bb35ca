ARG BASE
FROM ${BASE}
ONBUILD COPY --from=@REGISTRY@/test/debian:bookworm-slim /etc/debian_version /out/debian_version2
