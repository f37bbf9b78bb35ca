#!/usr/bin/env sh
echo -n $my_arg $* > /out
