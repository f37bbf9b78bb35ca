ARG BASE
FROM ${BASE}
ONBUILD RUN <<EOF
echo "hello world" >> /dest
EOF
