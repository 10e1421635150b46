#!/bin/sh
# Exit 0 when the application's configuration is present.
set -eu
dir=$(dirname "$0")/..
test -s "$dir/app.conf"
echo healthy
