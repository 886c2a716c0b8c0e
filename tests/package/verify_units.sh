#!/usr/bin/env bash
# systemd_units_test: installs the vsockd component as the package does (prefix /usr) into a
# temporary root and checks the systemd units there:
#  - `systemd-analyze verify` prints nothing (unknown keys and bad values are only warnings
#    to systemd, so any message fails the test); templates are verified as instances;
#  - `systemd-analyze security --offline` keeps the services' exposure at most 2.0;
#  - what the units say agrees with the rest: the ExecStart= binary, the config files, the
#    sample config's socket = the socket unit's ListenStream=, the man page of
#    Documentation=, and the sysusers.d entry creates the User= (in a scratch root).
# Nothing is installed on this machine. Usage: verify_units.sh BUILD_DIR WORK_DIR
set -euo pipefail
build=$1
work=$2
rm -rf "$work"
mkdir -p "$work"
root=$work/root
DESTDIR=$root cmake --install "$build" --prefix /usr --component vsockd >"$work/install.log"

failures=0
fail() {
  echo "FAIL: $*" >&2
  failures=$((failures + 1))
}
check_grep() {  # FILE REGEX WHAT
  grep -Eq -- "$2" "$1" || fail "$(basename "$1"): $3 (no line matching '$2')"
}

units=$root/lib/systemd/system
for u in vsockd.service vsockd@.service vsockd.socket vsockd@.socket; do
  [[ -f $units/$u ]] || fail "not installed: /lib/systemd/system/$u"
done
((failures == 0)) || exit 1

# systemd-analyze verify checks that ExecStart='s program exists on this machine: point the
# copies at the temporary root's vsockd. Templates are verified as an instance (vm3).
verify=$work/verify
mkdir -p "$verify"
for u in vsockd.service vsockd.socket; do
  sed "s|/usr/sbin/vsockd|$root/usr/sbin/vsockd|" "$units/$u" >"$verify/$u"
done
for u in service socket; do
  sed "s|/usr/sbin/vsockd|$root/usr/sbin/vsockd|" "$units/vsockd@.$u" >"$verify/vsockd@vm3.$u"
done
out=$(cd "$verify" && systemd-analyze verify --man=no vsockd.service vsockd.socket \
  vsockd@vm3.service vsockd@vm3.socket 2>&1) || fail "systemd-analyze verify failed"
if [[ -n $out ]]; then
  fail "systemd-analyze verify has something to say:"
  echo "$out" >&2
fi

for s in vsockd.service vsockd@vm3.service; do
  if ! report=$(cd "$verify" && systemd-analyze security --offline=yes --man=no --threshold=20 \
    "$s" 2>&1); then
    fail "$s: exposure above 2.0:"
    echo "$report" >&2
  fi
  echo "$report" | tail -1
done

# What the units say, against the files they name.
check_grep "$units/vsockd.service" '^Type=notify$' "Type=notify (vsockd sends READY=1)"
check_grep "$units/vsockd.service" \
  '^ExecStart=/usr/sbin/vsockd --config /etc/vsockd/config.yaml --control /run/vsockd/control.sock$' \
  "runs the packaged vsockd with the packaged config and vsockctl's default control socket"
check_grep "$units/vsockd@.service" \
  '^ExecStart=/usr/sbin/vsockd --config /etc/vsockd/%i.yaml --control /run/vsockd/%i.control$' \
  "one config file and control socket per instance"
check_grep "$units/vsockd.service" '^ExecReload=/bin/kill -HUP \$MAINPID$' "reload is SIGHUP"
for u in vsockd.service vsockd@.service; do
  for key in '^User=vsockd$' '^RuntimeDirectory=vsockd$' '^RestrictAddressFamilies=AF_UNIX$' \
    '^ProtectSystem=strict$' '^NoNewPrivileges=yes$' '^LimitNOFILE=1048576$'; do
    check_grep "$units/$u" "$key" "hardening and limits"
  done
done
for u in vsockd.socket vsockd@.socket; do
  check_grep "$units/$u" '^SocketGroup=vsockd$' "QEMU connects as a member of group vsockd"
  check_grep "$units/$u" '^Accept=no$' "vsockd takes the listening socket"
done
check_grep "$units/vsockd@.socket" '^ListenStream=/run/vsockd/%i.vhost$' "one socket per instance"
config=$root/etc/vsockd/config.yaml
[[ -f $config ]] || fail "not installed: /etc/vsockd/config.yaml"
listen=$(sed -n 's/^ListenStream=//p' "$units/vsockd.socket")
check_grep "$config" "socket: $listen\$" "the socket unit's ListenStream=$listen is a VM's socket"
[[ -f $root/usr/share/man/man8/vsockd.8.gz ]] || fail "Documentation=man:vsockd(8): no page"

# The sysusers.d entry creates the service's user and group (in a scratch root).
sysroot=$work/sysroot
mkdir -p "$sysroot/etc"
systemd-sysusers --root="$sysroot" "$root/usr/lib/sysusers.d/vsockd.conf" >"$work/sysusers.log" 2>&1 ||
  fail "systemd-sysusers: $(cat "$work/sysusers.log")"
grep -q '^vsockd:' "$sysroot/etc/passwd" || fail "sysusers.d: no vsockd user"
grep -q '^vsockd:' "$sysroot/etc/group" || fail "sysusers.d: no vsockd group"

if ((failures > 0)); then
  echo "$failures failure(s)" >&2
  exit 1
fi
echo "systemd units: verified"
