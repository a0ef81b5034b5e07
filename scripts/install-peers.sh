#!/usr/bin/env bash
# Install the real peers the test suite and benchmarks drive (Debian packages):
#   docker-registry  -> docker-registry      containerd, ctr -> containerd
#   skopeo           -> skopeo               nginx           -> nginx-light
#   wrk              -> wrk                  dnsmasq         -> dnsmasq-base (cluster DNS tests)
#   podman           -> podman (the README's "Other clients" registries.conf, tested)
#   promtool         -> prometheus           (checks and unit-tests deploy/'s alerting rules)
#   fusermount3      -> fuse3 (libfuse3 for tests/peers/eiofs.py: real EIO read errors)
# Idempotent: does nothing when every binary is present. As root it installs only the missing
# packages, with services kept from starting (a policy-rc.d that denies every start is in
# place during the install and removed afterwards). Not root: prints what to install, exits 0
# (tests then skip, or fail under CI=true; see tests/peers/require.py).
set -euo pipefail

# binary:package, one pair per peer binary
PEERS=(
  "docker-registry:docker-registry"
  "containerd:containerd"
  "ctr:containerd"
  "skopeo:skopeo"
  "nginx:nginx-light"
  "wrk:wrk"
  "dnsmasq:dnsmasq-base"
  "podman:podman"
  "promtool:prometheus"
  "fusermount3:fuse3"
)

have() {
  # nginx lives in /usr/sbin, which a non-root PATH may lack.
  command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/usr/bin/$1" ]
}

missing=()
for pair in "${PEERS[@]}"; do
  bin=${pair%%:*}
  pkg=${pair#*:}
  if ! have "$bin"; then
    case " ${missing[*]-} " in
      *" $pkg "*) ;;
      *) missing+=("$pkg") ;;
    esac
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-peers: all peers present"
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "install-peers: missing Debian packages: ${missing[*]}"
  echo "install-peers: as root run: apt-get update && apt-get install -y --no-install-recommends ${missing[*]}"
  exit 0
fi

policy=/usr/sbin/policy-rc.d
backup=""
if [ -e "$policy" ]; then
  backup=$(mktemp /usr/sbin/policy-rc.d.install-peers.XXXXXX)
  cp -p "$policy" "$backup"
fi
restore_policy() {
  if [ -n "$backup" ]; then
    mv -f "$backup" "$policy"
  else
    rm -f "$policy"
  fi
}
trap restore_policy EXIT

# 101: "action forbidden by policy" -- postinst scripts leave nginx and containerd stopped.
printf '#!/bin/sh\nexit 101\n' >"$policy"
chmod 0755 "$policy"

# Services already running before the install are left alone afterwards.
was_active=()
if command -v systemctl >/dev/null 2>&1; then
  for svc in nginx containerd docker-registry prometheus; do
    if systemctl is-active --quiet "$svc" 2>/dev/null; then was_active+=("$svc"); fi
  done
fi

export DEBIAN_FRONTEND=noninteractive
echo "install-peers: installing ${missing[*]}"
apt-get update
apt-get install -y --no-install-recommends "${missing[@]}"

# Belt and braces: nothing the install started may be left running.
if command -v systemctl >/dev/null 2>&1; then
  for svc in nginx containerd docker-registry prometheus; do
    case " ${was_active[*]-} " in *" $svc "*) continue ;; esac
    if systemctl is-active --quiet "$svc" 2>/dev/null; then systemctl stop "$svc" || true; fi
  done
fi

for pair in "${PEERS[@]}"; do
  bin=${pair%%:*}
  if ! have "$bin"; then
    echo "install-peers: $bin still missing after install" >&2
    exit 1
  fi
done
echo "install-peers: done"
