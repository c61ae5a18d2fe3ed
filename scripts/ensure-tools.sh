#!/usr/bin/env bash
# Tools the tests use besides Python: `docker-compose` validates docker-compose.yml (no Docker
# engine needed). Installed from Debian with apt-get when missing and we are root; otherwise a
# warning, and tests/test_deploy.py skips (or fails under CI=true).
set -u
if command -v docker-compose >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "ensure-tools: installing docker-compose with apt-get" >&2
  if (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose) \
    >/dev/null 2>&1 && command -v docker-compose >/dev/null 2>&1; then
    docker-compose version | head -n1 >&2
    exit 0
  fi
  echo "ensure-tools: apt-get could not install docker-compose" >&2
else
  echo "ensure-tools: docker-compose is missing (install it: apt-get install docker-compose)" >&2
fi
# Never fail the build here: the test that needs the tool reports it.
exit 0
