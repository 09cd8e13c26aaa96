#!/bin/sh
# Installs Autobahn|Testsuite's `wstest` (autobahntestsuite 0.8.2, which runs only on Python
# 2.7) into $AUTOBAHN_PREFIX (default /opt/autobahn). Does nothing when it is already there.
#
# Python 2.7 comes from Debian 11's archive, pinned low so that nothing else is taken from it:
# Debian 12 has no Python 2, and pyenv would build 2.7 from python.org, which this kind of
# machine cannot reach. The Python packages come from PyPI at the versions in requirements.txt.
set -eu

prefix=${AUTOBAHN_PREFIX:-/opt/autobahn}
here=$(cd "$(dirname "$0")" && pwd)
[ -x "$prefix/bin/wstest" ] && exit 0

# A `python2.7` on PATH may be a pyenv shim for a version that is not selected, which exists
# but does not run: take the first one that runs.
py2=
for candidate in python2.7 /usr/bin/python2.7; do
    if "$candidate" -c '' >/dev/null 2>&1; then
        py2=$candidate
        break
    fi
done
if [ -z "$py2" ]; then
    if [ ! -e /etc/apt/sources.list.d/bullseye.sources ]; then
        cat > /etc/apt/sources.list.d/bullseye.sources <<'SOURCES'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bullseye
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
        cat > /etc/apt/preferences.d/bullseye-low <<'PIN'
Package: *
Pin: release n=bullseye
Pin-Priority: 100
PIN
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python2.7 python2.7-dev >/dev/null
    py2=/usr/bin/python2.7
fi

# The newest pip that runs on Python 2.7, fetched by the machine's Python 3 and run from its
# wheel to install itself.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m pip download -q --no-deps -d "$work" pip==20.3.4
export PYTHONUSERBASE="$prefix"
pip2="$py2 $work/pip-20.3.4-py2.py3-none-any.whl/pip"
$pip2 install -q --user --no-warn-script-location "$work/pip-20.3.4-py2.py3-none-any.whl" \
    setuptools==44.1.1 wheel==0.37.1 2>&1 | grep -v DEPRECATION || true
"$py2" -m pip install -q --user --no-warn-script-location -r "$here/requirements.txt" 2>&1 \
    | grep -v DEPRECATION || true
[ -x "$prefix/bin/wstest" ]
