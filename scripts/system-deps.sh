#!/usr/bin/env bash
# System packages the tests need that PyPI cannot provide. CI runs as root on a bare Debian
# machine; elsewhere, install them yourself or run this with sudo.
set -euo pipefail

missing=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
# The `make run` test runs the printed curl commands verbatim.
command -v curl >/dev/null 2>&1 || missing+=(curl)
# The dashboard's browser tests drive Debian's chromium (Playwright cannot download one here).
[ -x /usr/bin/chromium ] || missing+=(chromium)
# SADP discovery tests run in their own network namespace (unshare) and bring its lo up.
command -v ip >/dev/null 2>&1 || [ -x /usr/sbin/ip ] || [ -x /sbin/ip ] || missing+=(iproute2)
# The alert rules are checked and unit-tested with Prometheus's own promtool.
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)

[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
    echo "system-deps: need ${missing[*]}; run: sudo apt-get install -y ${missing[*]}" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# The prometheus package starts a server on :9090; only its promtool is needed.
case " ${missing[*]} " in *" prometheus "*)
    if command -v systemctl >/dev/null 2>&1; then systemctl disable --now prometheus >/dev/null 2>&1 || true; fi
    pkill -x prometheus >/dev/null 2>&1 || true ;;
esac
# The package starts a system nginx on port 80; the tests run their own instances.
case " ${missing[*]} " in *" nginx "*) ;; *) exit 0 ;; esac
if command -v systemctl >/dev/null 2>&1; then systemctl disable --now nginx >/dev/null 2>&1 || true; fi
pkill -x nginx >/dev/null 2>&1 || true
